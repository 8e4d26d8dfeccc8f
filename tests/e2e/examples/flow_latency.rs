//! Latency of the five endpoints against the real services, printed as a table.
//!
//! ```sh
//! scripts/dev-services
//! cargo run --release -p broker-auth-e2e --example flow_latency -- [iterations] [bcrypt-cost] [distributed|embedded]
//! ```
//!
//! Each iteration walks signup → verify → me → logout → signin for a new address, one request at
//! a time, through the real API (and dbproc over Kafka in distributed mode). Defaults: 50
//! iterations, bcrypt cost 12 (the production default), distributed mode.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use broker_auth_e2e::{Client, Mode, Options, TestEnv};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";
const ENDPOINTS: [&str; 5] = ["signup", "verify", "signin", "me", "logout"];

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let bcrypt_cost: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(12);
    let mode = match args.next().as_deref() {
        Some("embedded") => Mode::Embedded,
        _ => Mode::Distributed,
    };
    let options = Options {
        bcrypt_cost,
        rate_limit_per_minute: 1_000_000,
        ..Options::default()
    };
    let env = TestEnv::start_with(mode, options).await;
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut time =
        |name, started: Instant| samples.entry(name).or_default().push(started.elapsed());

    // One warm-up walk so connection set-up is not measured.
    let warm_up = env.new_email();
    env.register(&warm_up, PASSWORD).await;

    for _ in 0..iterations {
        let email = env.new_email();
        let client = Client::new(env.api());

        let started = Instant::now();
        let (status, body) = client.signup(&email).await;
        time("signup", started);
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let code = env.code_for(&email).await;

        let started = Instant::now();
        let (status, body) = client.verify(&email, &code, PASSWORD, "Bench").await;
        time("verify", started);
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let started = Instant::now();
        let (status, _) = client.me().await;
        time("me", started);
        assert_eq!(status, StatusCode::OK);

        let started = Instant::now();
        let status = client.logout().await;
        time("logout", started);
        assert_eq!(status, StatusCode::NO_CONTENT);

        let started = Instant::now();
        let (status, _) = client.signin(&email, PASSWORD).await;
        time("signin", started);
        assert_eq!(status, StatusCode::OK);
    }

    println!(
        "\nbroker-auth endpoint latency: {mode:?} mode, bcrypt cost {bcrypt_cost}, {iterations} sequential iterations\n"
    );
    println!("| endpoint | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    for name in ENDPOINTS {
        let mut durations = samples.remove(name).unwrap_or_default();
        durations.sort();
        let at = |q: f64| {
            let index = ((durations.len() as f64 - 1.0) * q).round() as usize;
            durations
                .get(index)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
    }
}
