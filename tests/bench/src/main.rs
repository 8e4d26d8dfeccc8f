//! `scripts/bench`: throughput, latency and memory of broker-auth against the floors it cannot
//! beat, measured in one run against the real binaries (release builds) and real Postgres,
//! Redis and Kafka (tansu). Prints one markdown table per section; `--json` writes the figures.
//! No test asserts a timing; the targets table says which targets this run met.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker_auth_e2e::Mode;
use clap::Parser;
use serde_json::{Value, json};

mod deploy;
mod floors;
mod flows;
mod load;
mod report;
mod scale_out;
mod stats;
mod worker_tier;

use deploy::{Deployment, Settings, usage_of};
use flows::Endpoint;
use report::{Table, num, verdict};
use stats::{Samples, ms};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Parser)]
#[command(about = "Measure broker-auth against its floors; see docs/capacity.md")]
struct Cli {
    /// The short run CI does (under 2 minutes): fewer samples, shorter steps, smaller backlogs.
    #[arg(long)]
    quick: bool,
    /// Also write every figure to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// bcrypt cost of the API (production default: 12).
    #[arg(long, default_value_t = 12)]
    bcrypt_cost: u32,
    /// `KAFKA_FETCH_WAIT_MS` of the API's reply reader (default: the API's default).
    #[arg(long, default_value_t = 10)]
    api_fetch_wait_ms: u32,
    /// `KAFKA_FETCH_WAIT_MS` of dbproc (default: dbproc's default).
    #[arg(long, default_value_t = 10)]
    dbproc_fetch_wait_ms: u32,
    /// Only these sections (floors are always measured): latency, throughput, memory,
    /// worker-tier, scale-out.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// How much each section does.
struct Plan {
    repetitions: floors::Repetitions,
    latency_iterations: usize,
    concurrency: Vec<usize>,
    warm_up: Duration,
    step: Duration,
    sessions: usize,
    backlog: usize,
    drain_partitions: Vec<u32>,
    /// How long the idle cost is measured.
    idle: Duration,
    /// Mails queued for the mail drain.
    mails: usize,
    scale_out: Vec<usize>,
}

impl Plan {
    fn for_run(quick: bool) -> Self {
        if quick {
            Self {
                repetitions: floors::Repetitions {
                    bcrypt: 3,
                    round_trips: 300,
                    kafka: 10,
                },
                latency_iterations: 5,
                concurrency: vec![8, 64],
                warm_up: Duration::from_millis(200),
                step: Duration::from_secs(1),
                sessions: 5_000,
                backlog: 1_500,
                drain_partitions: vec![3],
                idle: Duration::from_secs(3),
                mails: 100,
                scale_out: vec![1, 2],
            }
        } else {
            Self {
                repetitions: floors::Repetitions {
                    bcrypt: 7,
                    round_trips: 2_000,
                    kafka: 50,
                },
                latency_iterations: 50,
                concurrency: vec![1, 8, 64, 256],
                warm_up: Duration::from_secs(1),
                step: Duration::from_secs(5),
                sessions: 100_000,
                backlog: 10_000,
                drain_partitions: vec![1, 3, 6],
                idle: Duration::from_secs(10),
                mails: 1_000,
                scale_out: vec![1, 2, 4, 8],
            }
        }
    }
}

/// The figures the targets are judged on.
#[derive(Default)]
struct Figures {
    me_rate: HashMap<&'static str, f64>,
    knee: HashMap<(&'static str, &'static str), f64>,
    overhead_p50: HashMap<(&'static str, &'static str), f64>,
    peak_rss: HashMap<&'static str, f64>,
    /// Live sessions opened in the memory run, and the API's peak RSS with them.
    sessions_rss: Option<(usize, f64)>,
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Embedded => "embedded",
        Mode::Distributed => "distributed",
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("bench failed: {error}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let plan = Plan::for_run(cli.quick);
    let wants = |section: &str| cli.only.is_empty() || cli.only.iter().any(|s| s == section);
    let started = Instant::now();
    let settings = |mode: Mode| Settings {
        mode,
        bcrypt_cost: cli.bcrypt_cost,
        apis: 1,
        api_fetch_wait_ms: cli.api_fetch_wait_ms,
        dbproc_fetch_wait_ms: cli.dbproc_fetch_wait_ms,
        partitions: 3,
    };
    println!(
        "# broker-auth bench ({}): bcrypt cost {}, KAFKA_FETCH_WAIT_MS api {} / dbproc {}, {} cores",
        if cli.quick { "quick" } else { "full" },
        cli.bcrypt_cost,
        cli.api_fetch_wait_ms,
        cli.dbproc_fetch_wait_ms,
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    let mut tables = Vec::new();
    let mut figures = Figures::default();

    let floors = floors::measure(
        cli.bcrypt_cost,
        cli.api_fetch_wait_ms,
        cli.dbproc_fetch_wait_ms,
        &plan.repetitions,
    )
    .await?;
    let mut table = Table::new("1. Floors (medians)", &["floor", "ms", "note"]);
    for (name, note) in [
        ("bcrypt", format!("one hash at cost {}", floors.bcrypt_cost)),
        ("redis", "PING".to_owned()),
        ("postgres", "SELECT 1".to_owned()),
        (
            "kafka_rpc",
            "request → group consumer → reply → assigned consumer".to_owned(),
        ),
        ("kafka_produce", "one record, acks=all".to_owned()),
        ("http", "axum handler that does nothing".to_owned()),
    ] {
        table.row(vec![json!(name), json!(ms(floors.part(name))), json!(note)]);
    }
    table.row(vec![
        json!("signin ceiling"),
        Value::Null,
        json!(format!(
            "{:.1} signins/s = {} cores ÷ one hash",
            floors.signin_ceiling(),
            floors.cores
        )),
    ]);
    table.print();
    tables.push(table);

    for mode in [Mode::Embedded, Mode::Distributed] {
        if !(wants("latency") || wants("throughput") || wants("memory")) {
            break;
        }
        let deployment = Deployment::start(&settings(mode)).await?;
        if wants("latency") {
            let table = latency_table(&deployment, mode, &floors, &plan, &mut figures).await?;
            table.print();
            tables.push(table);
        }
        if wants("throughput") {
            let table = throughput_table(&deployment, mode, &plan, &mut figures).await?;
            table.print();
            tables.push(table);
        }
        let name = mode_name(mode);
        // The RSS targets are judged after the throughput runs only.
        if let Some(usage) = usage_of(deployment.api()).filter(|_| wants("throughput")) {
            figures.peak_rss.insert(
                if mode == Mode::Embedded {
                    "api embedded"
                } else {
                    "api distributed"
                },
                usage.peak_rss_mib,
            );
        }
        if let Some(usage) = deployment
            .dbproc
            .as_ref()
            .and_then(usage_of)
            .filter(|_| wants("throughput"))
        {
            figures.peak_rss.insert("dbproc", usage.peak_rss_mib);
        }
        eprintln!(
            "({name} done after {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        deployment.stop().await;
    }

    if wants("memory") {
        let table = memory_table(&settings(Mode::Embedded), &plan, &mut figures).await?;
        table.print();
        tables.push(table);
    }

    let mut lag_threshold = None;
    if wants("worker-tier") {
        let (table, threshold) = worker_tier_table(&settings(Mode::Distributed), &plan).await?;
        lag_threshold = Some(threshold);
        table.print();
        tables.push(table);
    }

    if wants("scale-out") {
        let table =
            scale_out::table(&settings(Mode::Distributed), &plan.scale_out, plan.step).await?;
        table.print();
        tables.push(table);
    }

    let table = targets_table(&floors, &figures, lag_threshold);
    table.print();
    tables.push(table);
    println!("\n(bench took {:.0} s)", started.elapsed().as_secs_f64());

    if let Some(path) = &cli.json {
        let document = json!({
            "quick": cli.quick,
            "bcrypt_cost": cli.bcrypt_cost,
            "api_fetch_wait_ms": cli.api_fetch_wait_ms,
            "dbproc_fetch_wait_ms": cli.dbproc_fetch_wait_ms,
            "cores": floors.cores,
            "sections": tables.iter().map(Table::to_json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)?;
    }
    Ok(())
}

async fn latency_table(
    deployment: &Deployment,
    mode: Mode,
    floors: &floors::Floors,
    plan: &Plan,
    figures: &mut Figures,
) -> Result<Table> {
    let mut samples =
        flows::latency(deployment, plan.latency_iterations, floors.bcrypt_cost).await?;
    // The bcrypt floor of this table: hashes taken between the walks, not at the run's start
    // (a 300 ms hash varies by several percent over a run, more than the overheads looked for).
    let bcrypt = samples
        .get_mut("bcrypt")
        .and_then(Samples::p50)
        .unwrap_or_else(|| ms(floors.bcrypt));
    let name = mode_name(mode);
    let mut table = Table::new(
        &format!(
            "2. Latency per flow, concurrency 1, {name} ({} walks)",
            plan.latency_iterations
        ),
        &[
            "flow",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "floor ms",
            "overhead ms",
            "floor is",
        ],
    );
    for flow in flows::FLOWS {
        let parts = flows::floor_parts(flow, mode);
        let others: Vec<&str> = parts.iter().copied().filter(|p| *p != "bcrypt").collect();
        let hashes = parts.iter().filter(|p| **p == "bcrypt").count();
        let floor = ms(floors.sum(&others)) + bcrypt * hashes as f64;
        let flow_samples = samples.entry(flow).or_default();
        let p50 = flow_samples.p50();
        let overhead = p50.map(|p50| p50 - floor);
        if let Some(overhead) = overhead {
            figures.overhead_p50.insert((name, flow), overhead);
        }
        table.row(vec![
            json!(flow),
            num(p50),
            num(flow_samples.quantile_ms(0.9)),
            num(flow_samples.quantile_ms(0.99)),
            json!(floor),
            num(overhead),
            json!(parts.join(" + ")),
        ]);
    }
    table.note(format!(
        "bcrypt in these floors: {bcrypt:.1} ms, the median of one hash by the bench after each walk."
    ));
    Ok(table)
}

async fn throughput_table(
    deployment: &Deployment,
    mode: Mode,
    plan: &Plan,
    figures: &mut Figures,
) -> Result<Table> {
    let name = mode_name(mode);
    // Codes for every verify the sweep can make: bcrypt bounds verify to a few per second.
    let verify_budget = plan.concurrency.iter().sum::<usize>() + 50 * plan.concurrency.len();
    let fixtures = flows::fixtures(deployment, 8, verify_budget).await?;
    let mut table = Table::new(
        &format!(
            "3. Throughput, {name} ({:?} per step, {:?} for signin and verify)",
            plan.step,
            plan.step.max(Duration::from_secs(3))
        ),
        &[
            "endpoint",
            "concurrency",
            "req/s",
            "p50 ms",
            "p99 ms",
            "refused",
            "failed",
            "api cores",
            "dbproc cores",
            "services cores",
            "loadgen cores",
        ],
    );
    // Signup last: the mail it queues keeps dbproc busy for a while after.
    for endpoint in [
        Endpoint::Me,
        Endpoint::Signin,
        Endpoint::Verify,
        Endpoint::Signup,
    ] {
        // A hashing endpoint answers a few requests a second: it gets longer steps, so each
        // counts enough answers and the warm-up fills the hashing queue.
        let (warm_up, duration) = if endpoint.hashes() {
            (
                plan.warm_up.max(Duration::from_secs(2)),
                plan.step.max(Duration::from_secs(3)),
            )
        } else {
            (plan.warm_up, plan.step)
        };
        for &concurrency in &plan.concurrency {
            let mut step = flows::throughput(
                deployment,
                &fixtures,
                endpoint,
                concurrency,
                warm_up,
                duration,
            )
            .await?;
            let rate = step.result.rate();
            let knee = figures.knee.entry((name, endpoint.name())).or_insert(0.0);
            *knee = knee.max(rate);
            if endpoint == Endpoint::Me {
                let best = figures.me_rate.entry(name).or_insert(0.0);
                *best = best.max(rate);
            }
            table.row(vec![
                json!(endpoint.name()),
                json!(concurrency),
                json!(rate),
                num(step.result.latencies.p50()),
                num(step.result.latencies.quantile_ms(0.99)),
                json!(step.result.refused),
                json!(step.result.failed),
                num(step.api_cores),
                num(step.dbproc_cores),
                json!(step.services_cores),
                json!(step.result.loadgen_cores),
            ]);
            if let Some(failure) = &step.result.first_failure {
                table.note(format!(
                    "{} at {concurrency}: first failure: {failure}",
                    endpoint.name()
                ));
            }
        }
    }
    Ok(table)
}

async fn memory_table(settings: &Settings, plan: &Plan, figures: &mut Figures) -> Result<Table> {
    let mut table = Table::new(
        "4. Memory (peak RSS, MiB)",
        &["process", "peak RSS MiB", "target MiB", "after"],
    );
    for (process, target) in [
        ("api embedded", 40.0),
        ("api distributed", 40.0),
        ("dbproc", 30.0),
    ] {
        table.row(vec![
            json!(process),
            num(figures.peak_rss.get(process).copied()),
            json!(target),
            json!("the latency and throughput runs"),
        ]);
    }
    // Sessions cost memory, not hashing: the cheapest cost makes 100,000 of them quick to open.
    let deployment = Deployment::start(&Settings {
        bcrypt_cost: 4,
        ..settings.clone()
    })
    .await?;
    let (email, _) = flows::register(&deployment, None).await?;
    let before = usage_of(deployment.api()).map(|u| u.rss_mib);
    // As many workers as the API hashes at once, so few signins are shed; a shed one is retried.
    let workers = 8;
    let per_worker = plan.sessions.div_ceil(workers);
    let origin = deployment.api().origin();
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let http = flows::Http::new(&origin, Some(load::source(i)));
            let email = email.clone();
            tokio::spawn(async move {
                let http = http?;
                let mut opened = 0usize;
                let mut attempts = 0usize;
                while opened < per_worker {
                    attempts += 1;
                    if attempts > per_worker * 10 {
                        return Err::<usize, Error>("signins are refused again and again".into());
                    }
                    // Each signin opens a session; the client's own cookie is replaced.
                    match http.signin(&email).await?.status {
                        reqwest::StatusCode::OK => opened += 1,
                        reqwest::StatusCode::TOO_MANY_REQUESTS
                        | reqwest::StatusCode::SERVICE_UNAVAILABLE => {}
                        status => return Err(format!("signin answered {status}").into()),
                    }
                }
                Ok(opened)
            })
        })
        .collect();
    let mut opened = 0;
    for task in tasks {
        opened += task.await??;
    }
    let after = usage_of(deployment.api());
    figures.sessions_rss = after.map(|u| (opened, u.peak_rss_mib));
    table.row(vec![
        json!(format!("api embedded, {opened} live sessions")),
        num(after.map(|u| u.peak_rss_mib)),
        json!(if plan.sessions >= 100_000 {
            120.0
        } else {
            f64::NAN
        }),
        json!(format!(
            "RSS {:.1} MiB before the sessions, {:.1} after",
            before.unwrap_or(f64::NAN),
            after.map_or(f64::NAN, |u| u.rss_mib)
        )),
    ]);
    deployment.stop().await;
    Ok(table)
}

async fn worker_tier_table(settings: &Settings, plan: &Plan) -> Result<(Table, f64)> {
    let marks: Vec<usize> = [100, 1_000, 5_000, 10_000]
        .into_iter()
        .filter(|mark| *mark <= plan.backlog)
        .collect();
    let mut columns = vec![
        "partitions".to_owned(),
        "backlog".to_owned(),
        "records/s per replica".to_owned(),
        "startup s".to_owned(),
    ];
    columns.extend(marks.iter().map(|mark| format!("wait at lag {mark} s")));
    columns.push("lag for wait = timeout/2".to_owned());
    let column_names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut table = Table::new(
        &format!(
            "5. Worker tier: one dbproc replica draining a backlog (reply timeout {:?})",
            worker_tier::REPLY_TIMEOUT
        ),
        &column_names,
    );
    let mut threshold = f64::INFINITY;
    for &partitions in &plan.drain_partitions {
        let drain = worker_tier::drain(settings, partitions, plan.backlog, &marks).await?;
        threshold = threshold.min(drain.lag_threshold());
        let mut row = vec![
            json!(partitions),
            json!(drain.requests),
            json!(drain.rate),
            json!(drain.startup.as_secs_f64()),
        ];
        for mark in &marks {
            row.push(num(drain
                .waits
                .iter()
                .find(|(m, _)| m == mark)
                .map(|(_, wait)| wait.as_secs_f64())));
        }
        row.push(json!(drain.lag_threshold()));
        table.row(row);
    }
    let mail = worker_tier::mail_drain(settings, plan.mails).await?;
    table.note(format!(
        "Mail: one replica sent {} queued signup mails to the SMTP capture at {:.0} mails/s.",
        mail.mails, mail.rate
    ));
    let idle = worker_tier::idle_cost(settings, plan.idle).await?;
    table.note(format!(
        "Idle (no requests, {:?}): api {:.3} cores, dbproc {:.3} cores, Redis + Postgres + tansu {:.3} cores \
         at KAFKA_FETCH_WAIT_MS api {} / dbproc {}.",
        plan.idle,
        idle.api,
        idle.dbproc,
        idle.services,
        settings.api_fetch_wait_ms,
        settings.dbproc_fetch_wait_ms
    ));
    table.note(format!(
        "lagThreshold (target lag per replica) = the slowest rate × reply timeout ÷ 2 = {threshold:.0}: \
         a request queued behind that lag is answered within half the API's reply timeout."
    ));
    Ok((table, threshold))
}

fn targets_table(floors: &floors::Floors, figures: &Figures, lag_threshold: Option<f64>) -> Table {
    let mut table = Table::new("Targets", &["target", "measured", "verdict"]);
    let ratio = match (
        figures.me_rate.get("distributed"),
        figures.me_rate.get("embedded"),
    ) {
        (Some(d), Some(e)) if *e > 0.0 => Some(d / e),
        _ => None,
    };
    table.row(vec![
        json!("me: distributed throughput ≥ 70 % of embedded"),
        json!(ratio.map_or("—".to_owned(), |r| format!("{:.0} %", r * 100.0))),
        verdict(ratio.map(|r| r >= 0.7)),
    ]);
    let me_overhead = figures.overhead_p50.get(&("distributed", "me")).copied();
    table.row(vec![
        json!("me: p50 overhead ≤ 0.3 ms over its floor (distributed)"),
        num(me_overhead),
        verdict(me_overhead.map(|o| o <= 0.3)),
    ]);
    let signin = figures.knee.get(&("distributed", "signin")).copied();
    let ceiling = floors.signin_ceiling();
    table.row(vec![
        json!("signin: throughput ≥ 90 % of the bcrypt ceiling (distributed)"),
        json!(signin.map_or("—".to_owned(), |s| format!(
            "{s:.1}/s of {ceiling:.1}/s = {:.0} %",
            s / ceiling * 100.0
        ))),
        verdict(signin.map(|s| s >= 0.9 * ceiling)),
    ]);
    for flow in ["signup", "verify", "signin"] {
        let overhead = figures.overhead_p50.get(&("distributed", flow)).copied();
        table.row(vec![
            json!(format!(
                "{flow}: p50 overhead ≤ 3 ms over its floors (distributed)"
            )),
            num(overhead),
            verdict(overhead.map(|o| o <= 3.0)),
        ]);
    }
    let signup = figures.knee.get(&("distributed", "signup")).copied();
    table.row(vec![
        json!("signup: ≥ 1,500 req/s at the knee (distributed)"),
        num(signup),
        verdict(signup.map(|s| s >= 1500.0)),
    ]);
    for (process, target) in [
        ("api embedded", 40.0),
        ("api distributed", 40.0),
        ("dbproc", 30.0),
    ] {
        let rss = figures.peak_rss.get(process).copied();
        table.row(vec![
            json!(format!(
                "{process}: peak RSS ≤ {target} MiB after the throughput runs"
            )),
            num(rss),
            verdict(rss.map(|r| r <= target)),
        ]);
    }
    let sessions = figures.sessions_rss;
    table.row(vec![
        json!("embedded api with 100,000 sessions ≤ 120 MiB"),
        json!(sessions.map_or("—".to_owned(), |(opened, rss)| format!(
            "{rss:.1} MiB with {opened} sessions"
        ))),
        // A run with fewer sessions (--quick) does not judge this target.
        verdict(sessions.and_then(|(opened, rss)| (opened >= 100_000).then_some(rss <= 120.0))),
    ]);
    table.row(vec![
        json!("lagThreshold from the worker-tier figures"),
        num(lag_threshold),
        json!("derived"),
    ]);
    table
}
