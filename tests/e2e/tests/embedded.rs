//! What only embedded mode has: one process whose data lives in a SQLite file beside a generated
//! secret and a session snapshot.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::time::Duration;

use broker_auth_e2e::{Client, Mode, Options, TestEnv};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_sessions_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("ba-embedded-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("auth.db");

    let mut env = TestEnv::start_embedded_with_database(&database).await;
    let email = env.new_email();
    let client = env.register(&email, PASSWORD).await;
    assert!(dir.join("auth.db.jwt-secret").exists());

    env.restart_api().await;
    let client = client.at(env.api());
    let (status, body) = client.me().await;
    assert_eq!(status, StatusCode::OK, "the session was lost: {body}");
    assert_eq!(body["user"]["email"], email.as_str());
    let fresh = Client::new(env.api());
    assert_eq!(fresh.signin(&email, PASSWORD).await.0, StatusCode::OK);

    drop(env);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_smtp_server_gets_backpressure_instead_of_a_growing_mail_queue() {
    let options = Options {
        mail_queue_capacity: 4,
        ..Options::default()
    };
    let env = TestEnv::start_with(Mode::Embedded, options).await;
    // Far slower than signups arrive: nothing is delivered during the flood.
    env.smtp.set_accept_delay(Duration::from_secs(5));
    let client = Client::new(env.api());
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let email = env.new_email();
        let response = client
            .request(reqwest::Method::POST, "/signup")
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::ACCEPTED => accepted.push(email),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("signup answered {other}"),
        }
    }
    assert!(
        refused > 0,
        "all {} signups were queued behind a stalled SMTP server",
        accepted.len()
    );
    assert!(!accepted.is_empty());

    // Everything that was accepted is delivered once SMTP catches up.
    env.smtp.set_accept_delay(Duration::ZERO);
    for email in &accepted {
        env.code_for(email).await;
    }
}
