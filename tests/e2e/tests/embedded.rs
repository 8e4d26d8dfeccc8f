//! What only embedded mode has: one process whose data lives in a SQLite file beside a generated
//! secret and a session snapshot.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use broker_auth_e2e::{Client, TestEnv};
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
