//! The steady load: virtual users who sign up, read their code from the SMTP capture, verify,
//! call `me`, sign in and call `me` again, retrying every 503 after its `Retry-After`. Every
//! answer is counted against the phase during which its request was sent.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_auth_testkit::smtp::SmtpCapture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
/// A request still unanswered after this long counts as hung.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a virtual user waits for its code mail before giving up on that signup.
/// Shorter than a phase, so a lost mail costs the load one walk, not the rest of the drill (the
/// loss is counted at the end, after the mail has had time to settle).
const MAIL_PATIENCE: Duration = Duration::from_secs(30);
/// The most a virtual user waits before retrying a 503, whatever Retry-After says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// What one phase's requests came to.
#[derive(Debug, Default, Clone)]
pub struct PhaseCounts {
    pub ok: u64,
    pub unavailable: u64,
    /// Verifies answered 400 `invalid_code` because a newer code replaced theirs: a signup
    /// answered 503 whose mail still went out, then the retried signup's code. Expected: the
    /// newest code is the only one that works. Counted here once the newer code has arrived.
    pub superseded: u64,
    /// Anything else, by description (status and error code, "hung", "connection failed").
    pub other: BTreeMap<String, u64>,
}

impl PhaseCounts {
    pub fn others(&self) -> u64 {
        self.other.values().sum()
    }
}

/// A signup answered 202, and a verify answered 201.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub email: String,
    pub phase: usize,
}

#[derive(Debug, Clone)]
pub struct Verified {
    pub email: String,
    pub user_id: String,
    pub phase: usize,
}

/// Everything the load observed, shared by the virtual users.
#[derive(Default)]
pub struct Ledger {
    phase: AtomicUsize,
    counts: Mutex<Vec<PhaseCounts>>,
    pub signups: Mutex<Vec<Accepted>>,
    pub verified: Mutex<Vec<Verified>>,
}

impl Ledger {
    pub fn new(phases: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(vec![PhaseCounts::default(); phases]),
            ..Self::default()
        })
    }

    pub fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    pub fn phase(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }

    pub fn counts(&self) -> Vec<PhaseCounts> {
        lock(&self.counts).clone()
    }

    /// Moves one answer counted as `described` in `phase` to the superseded codes.
    fn superseded(&self, phase: usize, described: &str) {
        let mut counts = lock(&self.counts);
        let Some(counts) = counts.get_mut(phase) else {
            return;
        };
        if let Some(count) = counts.other.get_mut(described).filter(|c| **c > 0) {
            *count -= 1;
            if *count == 0 {
                counts.other.remove(described);
            }
            counts.superseded += 1;
        }
    }

    fn count(&self, phase: usize, outcome: &Outcome) {
        let mut counts = lock(&self.counts);
        let Some(counts) = counts.get_mut(phase) else {
            return;
        };
        match outcome {
            Outcome::Answered { status, .. } if status.is_success() => counts.ok += 1,
            Outcome::Answered {
                status,
                retry_after: Some(_),
                ..
            } if *status == StatusCode::SERVICE_UNAVAILABLE => counts.unavailable += 1,
            other => *counts.other.entry(other.describe()).or_default() += 1,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one request came to.
#[derive(Debug)]
pub enum Outcome {
    Answered {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Value,
    },
    Hung,
    Failed(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Answered { status, body, .. } => {
                let code = body["error"]["code"].as_str().unwrap_or("");
                format!("{} {code}", status.as_u16()).trim().to_owned()
            }
            Outcome::Hung => format!("no answer within {REQUEST_TIMEOUT:?}"),
            Outcome::Failed(error) => format!("connection failed: {error}"),
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self, Outcome::Answered { status, .. } if status.is_success())
    }
}

/// A request's final answer (after retrying 503s), and where the ledger counted it.
struct Answer {
    status: StatusCode,
    body: Value,
    phase: usize,
    described: String,
}

/// One client with its own cookie jar against the API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    ledger: Arc<Ledger>,
}

/// The client address of the `n`th client of `kind` (`VIRTUAL_USERS` or `PROBES`): each gets its
/// own loopback address, as separate people would have, so the API's per-IP limits and its one
/// hashing place per client address see separate clients. 127.kind.x.y: 63,750 addresses a kind.
pub fn source(kind: u8, n: usize) -> IpAddr {
    let n = n % (255 * 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        kind,
        u8::try_from(n / 250).unwrap_or(0),
        1 + u8::try_from(n % 250).unwrap_or(0),
    ))
}

/// The second octet of the virtual users' and the probe's client addresses.
pub const VIRTUAL_USERS: u8 = 2;
pub const PROBES: u8 = 3;

impl Client {
    pub fn new(api: &str, ledger: Arc<Ledger>, source: IpAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .timeout(REQUEST_TIMEOUT)
                .local_address(source)
                .build()
                .expect("an HTTP client"),
            base: format!("{api}/api/v1/auth"),
            ledger,
        }
    }

    /// Sends one request and counts its outcome against the phase it was sent in.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Outcome {
        self.send_in_phase(method, path, body).await.1
    }

    /// [`Client::send`], also saying which phase the outcome was counted in.
    async fn send_in_phase(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (usize, Outcome) {
        let phase = self.ledger.phase();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                Outcome::Answered {
                    status,
                    retry_after,
                    body,
                }
            }
            Err(error) if error.is_timeout() => Outcome::Hung,
            Err(error) => Outcome::Failed(error.to_string()),
        };
        self.ledger.count(phase, &outcome);
        (phase, outcome)
    }

    /// Sends until the answer is not a 503 (waiting Retry-After between tries), or `stop`.
    /// Hung and failed requests are retried too: a real client would.
    async fn until_answered(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        stop: &CancellationToken,
    ) -> Option<Answer> {
        loop {
            let (phase, outcome) = self.send_in_phase(method.clone(), path, body.clone()).await;
            let described = outcome.describe();
            let wait = match outcome {
                Outcome::Answered {
                    status,
                    retry_after,
                    ..
                } if status == StatusCode::SERVICE_UNAVAILABLE => {
                    retry_after.unwrap_or(Duration::from_secs(1))
                }
                Outcome::Answered { status, body, .. } => {
                    return Some(Answer {
                        status,
                        body,
                        phase,
                        described,
                    });
                }
                Outcome::Hung | Outcome::Failed(_) => Duration::from_secs(1),
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                // Waiting as Retry-After asks, as a well-behaved client does.
                () = tokio::time::sleep(wait.min(MAX_RETRY_WAIT)) => {}
            }
        }
    }
}

/// The `n`th of `users` virtual users: one walk through every flow after another, until `stop`.
/// Each walk is a new person at a new client address (the per-IP limits allow a person a few
/// signins a minute, and a virtual user walks faster than that).
pub async fn virtual_user(
    api: String,
    smtp: Arc<SmtpCapture>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    (n, users): (usize, usize),
) {
    let mut walks = 0;
    while !stop.is_cancelled() {
        let client = Client::new(
            &api,
            ledger.clone(),
            source(VIRTUAL_USERS, walks * users + n),
        );
        walk(&client, &smtp, &ledger, &stop).await;
        walks += 1;
    }
}

async fn walk(client: &Client, smtp: &SmtpCapture, ledger: &Ledger, stop: &CancellationToken) {
    use reqwest::Method;
    let email = format!("drill-{}@example.com", Uuid::new_v4().simple());
    let signup = json!({ "email": email });
    let Some(Answer { status, .. }) = client
        .until_answered(Method::POST, "/signup", Some(signup), stop)
        .await
    else {
        return;
    };
    if status != StatusCode::ACCEPTED {
        return;
    }
    lock(&ledger.signups).push(Accepted {
        email: email.clone(),
        phase: ledger.phase(),
    });
    let mut used_codes = Vec::new();
    // A code mail may be followed by a newer one (a signup answered 503 whose mail went out
    // anyway, then the retry's): verify with the newest code, and again if a newer one comes.
    // A 400 on a code that a newer one then replaced is expected, not a fault's damage.
    let mut refused: Option<Answer> = None;
    loop {
        let Some(code) = newest_code(smtp, &email, &used_codes, stop).await else {
            return;
        };
        if let Some(refused) = refused.take() {
            ledger.superseded(refused.phase, &refused.described);
        }
        used_codes.push(code.clone());
        let verify = json!({ "email": email, "otp": code, "password": PASSWORD, "name": "Drill" });
        let Some(answer) = client
            .until_answered(Method::POST, "/verify", Some(verify), stop)
            .await
        else {
            return;
        };
        let Answer {
            status, ref body, ..
        } = answer;
        if status == StatusCode::CREATED {
            lock(&ledger.verified).push(Verified {
                email: email.clone(),
                user_id: body["user"]["id"].as_str().unwrap_or_default().to_owned(),
                phase: ledger.phase(),
            });
            break;
        }
        if status != StatusCode::BAD_REQUEST || body["error"]["code"] != "invalid_code" {
            return;
        }
        refused = Some(answer);
    }
    for (method, path, body) in [
        (Method::GET, "/me", None),
        (
            Method::POST,
            "/signin",
            Some(json!({ "email": email, "password": PASSWORD })),
        ),
        (Method::GET, "/me", None),
    ] {
        match client.until_answered(method, path, body, stop).await {
            Some(answer) if answer.status.is_success() => {}
            _ => return,
        }
    }
}

/// The code of the newest mail to `email` not in `used`, waiting for one to arrive.
async fn newest_code(
    smtp: &SmtpCapture,
    email: &str,
    used: &[String],
    stop: &CancellationToken,
) -> Option<String> {
    let fresh = |mail: &broker_auth_testkit::smtp::ReceivedMail| {
        mail.is_to(email)
            && broker_auth_e2e::extract_code(&mail.text()).is_some_and(|c| !used.contains(&c))
    };
    let arrived = tokio::select! {
        () = stop.cancelled() => return None,
        arrived = smtp.wait_for(fresh, MAIL_PATIENCE) => arrived,
    };
    arrived?;
    smtp.messages()
        .iter()
        .rev()
        .find(|mail| fresh(mail))
        .and_then(|mail| broker_auth_e2e::extract_code(&mail.text()))
}

/// Probe users, registered before the drill, whose addresses spread over every partition.
pub struct Probe {
    users: Vec<String>,
    api: String,
    /// Rounds so far: each round's clients come from fresh addresses, so the per-IP limits
    /// never refuse a probe that runs several rounds a minute.
    rounds: AtomicUsize,
}

impl Probe {
    /// Registers `count` users (the drill's first requests, before any fault).
    pub async fn register(
        api: &str,
        smtp: &SmtpCapture,
        count: usize,
    ) -> Result<Self, crate::system::Error> {
        let ledger = Ledger::new(0);
        let stop = CancellationToken::new();
        for n in 0..count {
            let client = Client::new(api, ledger.clone(), source(PROBES, n));
            walk(&client, smtp, &ledger, &stop).await;
        }
        let users = lock(&ledger.verified)
            .iter()
            .map(|v| v.email.clone())
            .collect::<Vec<_>>();
        if users.len() < count {
            return Err(format!(
                "only {} of {count} probe users could be registered",
                users.len()
            )
            .into());
        }
        Ok(Self {
            users,
            api: api.to_owned(),
            rounds: AtomicUsize::new(1),
        })
    }

    /// One round: every probe user signs in and calls `me`, and as many fresh addresses sign
    /// up, each request once. `Err` names the requests that did not succeed and what they got.
    pub async fn round(&self) -> Result<(), String> {
        use reqwest::Method;
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let ledger = Ledger::new(0);
        let rounds = self.users.iter().enumerate().map(|(n, email)| {
            let address = source(PROBES, round * self.users.len() + n);
            let client = Client::new(&self.api, ledger.clone(), address);
            async move {
                let mut failed = Vec::new();
                let signin = json!({ "email": email, "password": PASSWORD });
                let signup =
                    json!({ "email": format!("probe-{}@example.com", Uuid::new_v4().simple()) });
                let outcome = client.send(Method::POST, "/signin", Some(signin)).await;
                if outcome.succeeded() {
                    let outcome = client.send(Method::GET, "/me", None).await;
                    if !outcome.succeeded() {
                        failed.push(format!("me: {}", outcome.describe()));
                    }
                } else {
                    failed.push(format!("signin: {}", outcome.describe()));
                }
                let outcome = client.send(Method::POST, "/signup", Some(signup)).await;
                if !outcome.succeeded() {
                    failed.push(format!("signup: {}", outcome.describe()));
                }
                failed
            }
        });
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for failure in futures::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
        {
            *failures.entry(failure).or_default() += 1;
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(failures
            .iter()
            .map(|(what, count)| format!("{what} x{count}"))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// Seconds from `since` until a probe round succeeds, or after `limit`, what the last
    /// round's failed requests got.
    pub async fn recovered_after(&self, since: Instant, limit: Duration) -> Result<f64, String> {
        let mut last = String::from("no round ran");
        while since.elapsed() < limit {
            let round_started = Instant::now();
            match self.round().await {
                Ok(()) => return Ok(since.elapsed().as_secs_f64()),
                Err(failures) => last = failures,
            }
            // Between failed rounds: at most a few per second, bounded by `limit`.
            let pause = Duration::from_millis(250).saturating_sub(round_started.elapsed());
            tokio::time::sleep(pause).await;
        }
        Err(last)
    }
}

/// Per email: how many signups were answered 202, and in which phase the last one was.
pub fn accepted_signups(signups: &[Accepted]) -> HashMap<String, (u64, usize)> {
    let mut by_email: HashMap<String, (u64, usize)> = HashMap::new();
    for signup in signups {
        let entry = by_email.entry(signup.email.clone()).or_default();
        entry.0 += 1;
        entry.1 = signup.phase;
    }
    by_email
}
