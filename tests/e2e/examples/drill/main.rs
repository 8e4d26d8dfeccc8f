//! Fault drills: the distributed system (the real api and dbproc binaries) under a steady load,
//! against private Postgres, Redis and tansu instances it starts itself, while each dependency in
//! turn is killed, restarted or cut off. One row per fault: what the clients were answered, how
//! long until everything worked again, and what was lost or duplicated.
//!
//! ```sh
//! scripts/drill            # the full drill
//! scripts/drill --quick    # the short version CI runs
//! ```
//!
//! Options: `--quick`, `--users N` (concurrent virtual users), `--dbproc-bin PATH` and
//! `--api-bin PATH` (default: next to this program), `--dynamic-membership` (dbproc without
//! `group.instance.id`, for comparison), `--assignment STRATEGY` (dbproc's partition assignment;
//! default `range`, as tansu needs with static members), `--only NAME` (run the faults whose
//! name contains it).
//! Exits non-zero when a user or a mail was lost, a user duplicated, a request answered anything
//! but 2xx or 503 with Retry-After, or the system did not recover.

mod load;
mod report;
mod system;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker_auth_testkit::process::Stop;
use tokio_util::sync::CancellationToken;

use crate::load::{Ledger, Probe};
use crate::report::{PhaseResult, Survivor, Table};
use crate::system::{Binaries, Result, System};

/// The faults, in the order they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    DbprocKill,
    DbprocTerm,
    RedisRestart,
    PostgresRestart,
    KafkaRestart,
    CutKafka,
    CutPostgres,
    CutRedis,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::DbprocKill,
        Fault::DbprocTerm,
        Fault::RedisRestart,
        Fault::PostgresRestart,
        Fault::KafkaRestart,
        Fault::CutKafka,
        Fault::CutPostgres,
        Fault::CutRedis,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::DbprocKill => "dbproc SIGKILL, restart 3 s later",
            Fault::DbprocTerm => "dbproc SIGTERM, restart 3 s later",
            Fault::RedisRestart => "Redis restart",
            Fault::PostgresRestart => "Postgres restart",
            Fault::KafkaRestart => "Kafka broker restart",
            Fault::CutKafka => "cut api+dbproc <-> Kafka 10 s",
            Fault::CutPostgres => "cut dbproc <-> Postgres 10 s",
            Fault::CutRedis => "cut api <-> Redis 10 s",
        }
    }
}

/// How long each part of a phase lasts.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Load before the fault.
    steady: Duration,
    /// Load after recovery, before the next fault.
    settle: Duration,
    /// How long a killed dbproc stays down.
    dbproc_down: Duration,
    /// How long a link stays cut.
    cut: Duration,
    /// Longest wait for recovery before the phase counts as not recovered.
    recovery_limit: Duration,
}

struct Settings {
    binaries: Binaries,
    users: usize,
    timing: Timing,
    only: Option<String>,
}

fn settings() -> Result<Settings> {
    let own_dir = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(PathBuf::from)
        .ok_or("cannot tell where the binaries are")?;
    let mut binaries = Binaries {
        api: own_dir.join("broker-auth-api"),
        dbproc: own_dir.join("broker-auth-dbproc"),
        dynamic_membership: false,
        // tansu stalls cooperative rebalances of static members (see dbproc's --help).
        assignment_strategy: "range".to_owned(),
    };
    let mut quick = false;
    let mut users = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--dynamic-membership" => binaries.dynamic_membership = true,
            "--assignment" => {
                binaries.assignment_strategy =
                    args.next().ok_or("--assignment needs a strategy")?;
            }
            "--users" => users = args.next().and_then(|n| n.parse().ok()),
            "--api-bin" => binaries.api = args.next().ok_or("--api-bin needs a path")?.into(),
            "--dbproc-bin" => {
                binaries.dbproc = args.next().ok_or("--dbproc-bin needs a path")?.into();
            }
            "--only" => only = args.next(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    for binary in [&binaries.api, &binaries.dbproc] {
        if !binary.exists() {
            return Err(format!(
                "{} is missing: build it (scripts/drill does) or name it",
                binary.display()
            )
            .into());
        }
    }
    let timing = if quick {
        Timing {
            steady: Duration::from_secs(2),
            settle: Duration::from_secs(2),
            dbproc_down: Duration::from_secs(3),
            cut: Duration::from_secs(10),
            recovery_limit: Duration::from_secs(60),
        }
    } else {
        Timing {
            steady: Duration::from_secs(10),
            settle: Duration::from_secs(10),
            dbproc_down: Duration::from_secs(3),
            cut: Duration::from_secs(10),
            recovery_limit: Duration::from_secs(180),
        }
    };
    Ok(Settings {
        binaries,
        users: users.unwrap_or(if quick { 4 } else { 8 }),
        timing,
        only,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match drill().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("drill: targets missed (see the table)");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("drill: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn drill() -> Result<bool> {
    let settings = settings()?;
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| {
            settings
                .only
                .as_deref()
                .is_none_or(|o| f.name().contains(o))
        })
        .collect();
    eprintln!("drill: starting private Postgres, Redis, tansu, two dbproc replicas and the api");
    let mut system = System::start(&settings.binaries, 2).await?;
    let smtp = system.smtp.clone();
    let api = system.api_url("");
    let probe = Probe::register(&api, &smtp, 24).await?;

    let ledger = Ledger::new(faults.len());
    let stop = CancellationToken::new();
    let mut users = Vec::new();
    for n in 0..settings.users {
        users.push(tokio::spawn(load::virtual_user(
            api.clone(),
            smtp.clone(),
            ledger.clone(),
            stop.clone(),
            (n, settings.users),
        )));
    }

    let mut results = Vec::new();
    for (phase, fault) in faults.iter().enumerate() {
        ledger.set_phase(phase);
        eprintln!("drill: {}", fault.name());
        tokio::time::sleep(settings.timing.steady).await;
        let survivor_before = survivor_revoked(&system).await;
        let restored = inject(&mut system, *fault, &settings.timing).await?;
        let recovery = probe
            .recovered_after(restored, settings.timing.recovery_limit)
            .await;
        let survivor_after = survivor_revoked(&system).await;
        tokio::time::sleep(settings.timing.settle).await;
        // A killed replica comes back under its static membership: nothing may move. A replica
        // stopped with SIGTERM leaves the group (a stopped pod of a Deployment does not come
        // back under its name), so the group rebalances twice; with `range` assignment, as on
        // tansu, that takes the survivor's partitions too, briefly.
        let survivor = matches!(fault, Fault::DbprocKill | Fault::DbprocTerm).then(|| Survivor {
            revoked: survivor_after - survivor_before,
            must_keep: *fault == Fault::DbprocKill,
        });
        results.push(PhaseResult::new(fault.name(), recovery, survivor));
    }
    stop.cancel();
    for user in users {
        let _ = user.await;
    }
    let table = Table::account(results, &ledger, &smtp, &system.database_url()).await?;
    table.print();
    let met = table.targets_met();
    if !met {
        eprintln!(
            "drill: the processes' most frequent warnings and errors:\n{}",
            system.log_summary()
        );
        eprintln!("drill: logs kept in {}", system.keep_logs().display());
    }
    Ok(met)
}

/// Injects `fault` and undoes it; returns when the dependency is back (restarted or restored).
async fn inject(system: &mut System, fault: Fault, timing: &Timing) -> Result<Instant> {
    match fault {
        Fault::DbprocKill | Fault::DbprocTerm => {
            let how = if fault == Fault::DbprocKill {
                Stop::Kill
            } else {
                Stop::Term
            };
            system.stop_dbproc(0, how).await?;
            tokio::time::sleep(timing.dbproc_down).await;
            let restarted = Instant::now();
            system.start_dbproc(0).await?;
            Ok(restarted)
        }
        Fault::RedisRestart => {
            system.redis.stop(Stop::Term).await?;
            system.redis.start_server().await?;
            Ok(Instant::now())
        }
        Fault::PostgresRestart => {
            system.postgres.stop().await?;
            system.postgres.start_server().await?;
            Ok(Instant::now())
        }
        Fault::KafkaRestart => {
            system.tansu.stop(Stop::Term).await?;
            system.tansu.start_server().await?;
            Ok(Instant::now())
        }
        Fault::CutKafka | Fault::CutPostgres | Fault::CutRedis => {
            let link = match fault {
                Fault::CutKafka => &mut system.kafka_link,
                Fault::CutPostgres => &mut system.postgres_link,
                _ => &mut system.redis_link,
            };
            link.cut().await;
            tokio::time::sleep(timing.cut).await;
            link.restore().await?;
            Ok(Instant::now())
        }
    }
}

/// Partitions revoked from the surviving dbproc replica so far, over both groups.
async fn survivor_revoked(system: &System) -> f64 {
    let Some(survivor) = system.dbprocs.get(1) else {
        return 0.0;
    };
    let text = match reqwest::get(survivor.url("/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return f64::NAN,
    };
    text.lines()
        .filter(|line| {
            line.starts_with("dbproc_consumer_rebalanced_partitions_total")
                && line.contains(r#"event="revoke""#)
        })
        .map(|line| broker_auth_e2e::metric_sum_in(line, ""))
        .sum()
}
