//! A legitimate user's signin latency, unloaded and under a signin flood, printed as a table.
//!
//! ```sh
//! scripts/dev-services
//! cargo run --release -p broker-auth-e2e --example signin_flood -- [signins] [bcrypt-cost] [distributed|embedded] [connections-per-flooding-ip]
//! ```
//!
//! The flood comes from eight client addresses (127.0.0.2–127.0.0.9), each with several
//! connections signing in as fresh random addresses as fast as the API answers, so every attempt
//! passes the per-address limits and would cost a bcrypt. The legitimate user signs in from
//! addresses of its own (127.0.1.x, one per signin, as many different people would), one signin
//! at a time, first with no flood, then after the flood has run for a few seconds. The API runs
//! with its production limits (20 signins a minute per IP, default hashing budget). Defaults:
//! 30 signins, bcrypt cost 12, distributed mode, 4 connections per flooding address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use broker_auth_e2e::{Client, Mode, Options, TestEnv};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct horse battery";
/// How long the flood runs before the legitimate user is measured, so the figures are the
/// steady state rather than the first second.
const FLOOD_WARM_UP: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let signins: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let bcrypt_cost: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(12);
    let mode = match args.next().as_deref() {
        Some("embedded") => Mode::Embedded,
        _ => Mode::Distributed,
    };
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let options = Options {
        bcrypt_cost,
        signin_rate_limit_per_minute: 20,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let email = env.new_email();
    env.register(&email, PASSWORD).await;

    let mut next_source = 0u8;
    let mut legitimate = |env: &TestEnv| {
        next_source = next_source.wrapping_add(1);
        Client::from_source(env.api(), IpAddr::V4(Ipv4Addr::new(127, 0, 1, next_source)))
    };
    // Warm-up: connections and the first directory round trip are not measured.
    assert_eq!(
        legitimate(&env).signin(&email, PASSWORD).await.0,
        StatusCode::OK
    );

    let unloaded = measure(&env, &email, signins, &mut legitimate).await;

    let stop = CancellationToken::new();
    let flood_started = Instant::now();
    let flooders: Vec<_> = (2..=9u8)
        .flat_map(|last| (0..connections).map(move |_| last))
        .map(|last| {
            let client = Client::from_source(env.api(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                while !stop.is_cancelled() {
                    let email = format!("flood-{}@example.com", uuid::Uuid::new_v4().simple());
                    let status = client.signin(&email, "some password").await.0;
                    *statuses.entry(status.as_u16()).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(FLOOD_WARM_UP).await;
    let flooded = measure(&env, &email, signins, &mut legitimate).await;
    stop.cancel();
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let mut flood: BTreeMap<u16, usize> = BTreeMap::new();
    for flooder in flooders {
        for (status, count) in flooder.await.expect("a flooder") {
            *flood.entry(status).or_default() += count;
        }
    }

    println!(
        "\nlegitimate signin under a signin flood: {mode:?} mode, bcrypt cost {bcrypt_cost}, \
         {signins} signins per phase, flood from 8 addresses x {connections} connections\n"
    );
    println!("| phase | p50 ms | p90 ms | max ms | non-200 |\n|---|---:|---:|---:|---:|");
    for (phase, sample) in [("unloaded", &unloaded), ("under flood", &flooded)] {
        println!(
            "| {phase} | {:.1} | {:.1} | {:.1} | {} |",
            sample.quantile(0.5),
            sample.quantile(0.9),
            sample.quantile(1.0),
            sample.failures
        );
    }
    println!(
        "\nunder flood / unloaded, p50: {:.2}x\n",
        flooded.quantile(0.5) / unloaded.quantile(0.5)
    );
    let total: usize = flood.values().sum();
    println!("| flood answer | count | share |\n|---|---:|---:|");
    for (status, count) in &flood {
        println!(
            "| {status} | {count} | {:.1}% |",
            100.0 * *count as f64 / total.max(1) as f64
        );
    }
    println!(
        "\nflood: {total} requests in {flood_secs:.1} s ({:.0}/s)",
        total as f64 / flood_secs
    );
}

struct Sample {
    durations: Vec<Duration>,
    failures: usize,
}

impl Sample {
    fn quantile(&self, q: f64) -> f64 {
        let index = ((self.durations.len() as f64 - 1.0) * q).round() as usize;
        self.durations
            .get(index)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

async fn measure(
    env: &TestEnv,
    email: &str,
    signins: usize,
    legitimate: &mut impl FnMut(&TestEnv) -> Client,
) -> Sample {
    let mut durations = Vec::new();
    let mut failures = 0;
    for _ in 0..signins {
        let client = legitimate(env);
        let started = Instant::now();
        let (status, _) = client.signin(email, PASSWORD).await;
        durations.push(started.elapsed());
        if status != StatusCode::OK {
            failures += 1;
        }
    }
    durations.sort();
    Sample {
        durations,
        failures,
    }
}
