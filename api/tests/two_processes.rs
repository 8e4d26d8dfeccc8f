//! Two API processes — the real binary, twice — sharing one Kafka: every reply must reach the
//! process that asked, and codes and sessions work across them through Redis.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use axum::http::StatusCode;
use broker_auth_e2e::{Client, Mode, TestEnv, set_arg, wait_until_ok};
use broker_auth_testkit::process::free_port;

const PASSWORD: &str = "correct horse battery";

/// A running `broker-auth-api` process, killed when dropped.
struct ApiProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_process(env: &TestEnv) -> ApiProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut args = env.api_args();
    args.remove(0);
    set_arg(&mut args, "--listen", &addr.to_string());
    let child = Command::new(env!("CARGO_BIN_EXE_broker-auth-api"))
        .args(&args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = ApiProcess { child, addr };
    wait_until_ok(&format!("http://{addr}/readyz")).await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_on_one_kafka_each_get_their_own_replies() {
    let env = TestEnv::start(Mode::Distributed).await;
    let first = spawn_process(&env).await;
    let second = spawn_process(&env).await;
    let processes = [&first, &second];

    let flows = (0..6).map(|i| {
        let env = &env;
        let here = processes[i % 2].addr;
        let there = processes[(i + 1) % 2].addr;
        async move {
            let email = env.new_email();
            // Each user is its own client address: the API gives one client IP one password
            // hash at a time (a second one at once is a 429), and these users run in parallel.
            let source = std::net::IpAddr::from([127, 0, 4, u8::try_from(i + 1).unwrap()]);
            let client = Client::for_origin_from(&format!("http://{here}"), source);
            assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
            let code = env.code_for(&email).await;
            let client = client.with_origin(&format!("http://{there}"));
            let (status, body) = client.verify(&email, &code, PASSWORD, "Twin").await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let client = client.with_origin(&format!("http://{here}"));
            assert_eq!(client.me().await.0, StatusCode::OK);
            assert_eq!(client.signin(&email, PASSWORD).await.0, StatusCode::OK);
        }
    });
    futures::future::join_all(flows).await;
}
