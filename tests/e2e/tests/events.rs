//! Security events on the `auth-events` topic: one of each kind the flows produce, with what a
//! compliance system needs and nothing secret.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::collections::HashMap;
use std::time::Instant;

use broker_auth_contract::{AuthEvent, AuthEventKind, Topics};
use broker_auth_e2e::{Client, Mode, Options, PATIENCE, TestEnv, extract_code};
use broker_auth_kafka::KafkaSettings;
use broker_auth_testkit::services;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use reqwest::{Method, StatusCode};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "plum kettle orbit 42";

/// Reads the deployment's auth events until `done` says it has what it needs.
async fn read_events(
    env: &TestEnv,
    done: impl Fn(&[(String, AuthEvent)]) -> bool,
) -> Vec<(String, AuthEvent)> {
    let topics = Topics::new(env.prefix.clone()).unwrap();
    let consumer: StreamConsumer = KafkaSettings::new(services::kafka_brokers())
        .group_consumer(&format!("{}events-reader", env.prefix))
        .unwrap();
    consumer.subscribe(&[&topics.auth_events()]).unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the events never arrived; got {events:#?}");
        let Ok(record) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let record = record.unwrap();
        let key = String::from_utf8(record.key().unwrap().to_vec()).unwrap();
        let payload = record.payload().unwrap();
        let raw = String::from_utf8_lossy(payload).into_owned();
        for secret in [PASSWORD, NEW_PASSWORD, "$2b$"] {
            assert!(!raw.contains(secret), "an event carries a secret: {raw}");
        }
        assert!(
            !raw.contains("@example.com"),
            "an event carries an address: {raw}"
        );
        events.push((key, serde_json::from_slice::<AuthEvent>(payload).unwrap()));
    }
    events
}

fn of_kind(events: &[(String, AuthEvent)], kind: AuthEventKind) -> Vec<&(String, AuthEvent)> {
    events.iter().filter(|(_, e)| e.kind == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_flow_leaves_its_events_keyed_by_user_and_without_secrets() {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            rate_limit_per_minute: 40,
            ..Options::default()
        },
    )
    .await;
    let email = env.new_email();
    let stranger = env.new_email();

    // signup_requested, account_created
    let browser = env.register(&email, PASSWORD).await;
    let (_, me) = browser.me().await;
    let user_id = me["user"]["id"].as_str().unwrap().to_owned();
    // signin_failed twice (a wrong password, an unknown address), signin_succeeded
    let phone = Client::new(env.api());
    assert_eq!(
        phone.signin(&email, "not it").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        phone.signin(&stranger, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let response = phone
        .request(Method::POST, "/signin")
        .header("user-agent", "Events Test/1.0")
        .header("x-request-id", "req-events-1")
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // code_burned
    let burner = Client::new(env.api());
    assert_eq!(burner.signup(&stranger).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&stranger).await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for _ in 0..6 {
        burner.verify(&stranger, wrong, PASSWORD, "Eve").await;
    }
    // password_changed and sessions_revoked (the phone's session), then a recovery
    assert_eq!(
        browser.change_password(PASSWORD, NEW_PASSWORD).await.0,
        StatusCode::OK
    );
    assert_eq!(browser.recover(&email).await.0, StatusCode::ACCEPTED);
    let mail = env
        .mail_for(&email, |mail| {
            mail.subject().is_some_and(|s| s.contains("recovery code"))
        })
        .await;
    let recovery = extract_code(&mail.text()).unwrap();
    assert_eq!(
        browser.recover_verify(&email, &recovery, PASSWORD).await.0,
        StatusCode::OK
    );
    // logout, and a rate limit: the per-IP limit of /me
    assert_eq!(browser.logout().await, StatusCode::NO_CONTENT);
    let mut limited = false;
    for _ in 0..60 {
        if browser.me().await.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited);

    let wanted = [
        AuthEventKind::SignupRequested,
        AuthEventKind::AccountCreated,
        AuthEventKind::SigninFailed,
        AuthEventKind::SigninSucceeded,
        AuthEventKind::CodeBurned,
        AuthEventKind::PasswordChanged,
        AuthEventKind::SessionsRevoked,
        AuthEventKind::RecoveryRequested,
        AuthEventKind::Logout,
        AuthEventKind::RateLimited,
    ];
    let events = read_events(&env, |events| {
        wanted.iter().all(|kind| !of_kind(events, *kind).is_empty())
            && of_kind(events, AuthEventKind::PasswordChanged).len() >= 2
            && of_kind(events, AuthEventKind::SigninFailed).len() >= 2
    })
    .await;

    for (key, event) in &events {
        assert_eq!(event.version, 1);
        assert_eq!(key, &event.subject, "keyed by its subject");
        assert!(
            event.at.ends_with('Z') && event.at.len() == 24,
            "{}",
            event.at
        );
        assert!(!event.request_id.is_empty());
        // Present where the process traces (telemetry initialised, as in the binaries); the
        // in-process API of this harness has no tracer.
        if let Some(trace_id) = &event.trace_id {
            assert_eq!(trace_id.len(), 32, "{event:?}");
        }
        if let Some(prefix) = &event.ip_prefix {
            assert_eq!(prefix, "127.0.0.0/24");
        }
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|(_, e)| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");

    let by_user = |kind| {
        of_kind(&events, kind)
            .into_iter()
            .filter(|(key, _)| *key == user_id)
            .count()
    };
    for kind in [
        AuthEventKind::AccountCreated,
        AuthEventKind::SigninSucceeded,
        AuthEventKind::PasswordChanged,
        AuthEventKind::SessionsRevoked,
        AuthEventKind::Logout,
    ] {
        assert!(
            by_user(kind) >= 1,
            "no {kind:?} keyed by the user: {events:#?}"
        );
    }

    let succeeded = of_kind(&events, AuthEventKind::SigninSucceeded);
    let tagged = succeeded
        .iter()
        .find(|(_, e)| e.request_id == "req-events-1")
        .expect("the request id is carried");
    assert_eq!(tagged.1.user_agent.as_deref(), Some("Events Test/1.0"));
    assert_eq!(tagged.1.route.as_deref(), Some("/api/v1/auth/signin"));

    let failures: HashMap<&str, &AuthEvent> = of_kind(&events, AuthEventKind::SigninFailed)
        .into_iter()
        .map(|(_, e)| (e.reason.as_deref().unwrap(), e))
        .collect();
    assert_eq!(failures["wrong_password"].subject, user_id);
    let unknown = failures["unknown_address"];
    assert!(unknown.user_id.is_none());
    let address_hash = unknown.address_hash.clone().unwrap();
    assert_eq!(unknown.subject, format!("address:{address_hash}"));
    assert_eq!(address_hash.len(), 64);
    // The same address always has the same hash: the burned code was the stranger's.
    let burned = of_kind(&events, AuthEventKind::CodeBurned);
    assert_eq!(
        burned[0].1.address_hash.as_deref(),
        Some(address_hash.as_str())
    );
    assert_eq!(burned[0].1.reason.as_deref(), Some("signup"));

    let reasons: Vec<&str> = of_kind(&events, AuthEventKind::PasswordChanged)
        .iter()
        .filter_map(|(_, e)| e.reason.as_deref())
        .collect();
    assert!(
        reasons.contains(&"change") && reasons.contains(&"recovery"),
        "{reasons:?}"
    );
    let revoked = of_kind(&events, AuthEventKind::SessionsRevoked);
    let change = revoked
        .iter()
        .find(|(_, e)| e.reason.as_deref() == Some("password_change"))
        .unwrap();
    assert_eq!(change.1.sessions_revoked, Some(1), "the phone's session");
    let limited = of_kind(&events, AuthEventKind::RateLimited);
    assert_eq!(limited[0].1.reason.as_deref(), Some("per_ip"));
    assert_eq!(limited[0].0, "network:127.0.0.0/24");
}
