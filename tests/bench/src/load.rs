//! A closed-loop load generator: `concurrency` workers, each sending its next request as soon
//! as the last one is answered, for a fixed time. Each worker connects from a loopback address
//! of its own (127.0.x.y), so the API's per-IP limits see as many clients as there are workers.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::deploy::{Usage, usage};
use crate::stats::Samples;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 429 or 503: the service shed the request, as it should under overload. The worker waits
    /// the `Retry-After` it was given before its next request, as a well-behaved client does.
    Refused(Duration),
    /// Anything else; the first few are printed.
    Failed(String),
    /// The worker has nothing left to send (e.g. no codes left to verify).
    Exhausted,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct RunResult {
    pub ok: usize,
    pub refused: usize,
    pub failed: usize,
    /// Latencies of the requests that succeeded.
    pub latencies: Samples,
    pub elapsed: Duration,
    /// CPU the bench process used, in cores (the load generator and the SMTP capture).
    pub loadgen_cores: f64,
    pub first_failure: Option<String>,
}

impl RunResult {
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }
}

/// The loopback source address of worker `index`: 127.0.10.1, 127.0.10.2, … (200 per block).
pub fn source(index: usize) -> IpAddr {
    let block = u8::try_from(10 + index / 200).unwrap_or(u8::MAX);
    let host = u8::try_from(1 + index % 200).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, block, host))
}

/// Runs `concurrency` workers for `warm_up` + `duration`, and counts the requests answered in
/// the last `duration` (whenever they were sent): throughput is those answers over `duration`.
/// Requests still unanswered at the end are abandoned. `worker(i)` makes worker `i`'s request
/// function.
pub async fn run<W, F, Fut>(
    concurrency: usize,
    warm_up: Duration,
    duration: Duration,
    worker: W,
) -> RunResult
where
    W: Fn(usize) -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let started = Instant::now();
    let counted_from = started + warm_up;
    let deadline = counted_from + duration;
    let cpu_before = usage("self").map_or(0.0, |u: Usage| u.cpu_seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut request = worker(i);
            tokio::spawn(async move {
                let mut result = RunResult::default();
                loop {
                    let sent = Instant::now();
                    let Ok(outcome) = tokio::time::timeout_at(deadline.into(), request()).await
                    else {
                        break;
                    };
                    let counted = Instant::now() >= counted_from;
                    match outcome {
                        Outcome::Ok if counted => {
                            result.ok += 1;
                            result.latencies.push(sent.elapsed());
                        }
                        Outcome::Refused(retry_after) => {
                            result.refused += usize::from(counted);
                            let resume = (Instant::now() + retry_after).min(deadline);
                            tokio::time::sleep_until(resume.into()).await;
                        }
                        Outcome::Failed(why) if counted => {
                            result.failed += 1;
                            result.first_failure.get_or_insert(why);
                        }
                        Outcome::Exhausted => break,
                        Outcome::Ok | Outcome::Failed(_) => {}
                    }
                }
                result
            })
        })
        .collect();
    let mut total = RunResult::default();
    for task in tasks {
        if let Ok(result) = task.await {
            total.ok += result.ok;
            total.refused += result.refused;
            total.failed += result.failed;
            total.latencies.extend(result.latencies);
            if total.first_failure.is_none() {
                total.first_failure = result.first_failure;
            }
        }
    }
    total.elapsed = Instant::now()
        .min(deadline)
        .saturating_duration_since(counted_from);
    let cpu_after = usage("self").map_or(0.0, |u| u.cpu_seconds);
    let wall = started.elapsed().as_secs_f64();
    total.loadgen_cores = if wall > 0.0 {
        (cpu_after - cpu_before) / wall
    } else {
        0.0
    };
    total
}

/// The outcome of an HTTP answer with `status` and `Retry-After` (seconds): `expected` is success.
pub fn outcome_of(
    status: reqwest::StatusCode,
    retry_after: Option<u64>,
    expected: reqwest::StatusCode,
    what: &str,
) -> Outcome {
    if status == expected {
        Outcome::Ok
    } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        Outcome::Refused(Duration::from_secs(retry_after.unwrap_or(1)))
    } else {
        Outcome::Failed(format!("{what}: {status}"))
    }
}
