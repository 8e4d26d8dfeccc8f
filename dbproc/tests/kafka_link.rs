//! dbproc when its network link to Kafka fails for longer than a consumer-group session: the
//! broker drops it from both groups, and once the link is back it must rejoin and serve again
//! on its own, without a restart.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use broker_auth_kafka::GROUP_SESSION_TIMEOUT;
use broker_auth_testkit::private::PrivateTansu;
use broker_auth_testkit::process::free_port;
use broker_auth_testkit::tcp_proxy::TcpProxy;
use serde_json::json;
use support::{Harness, MailSettings};

/// Longer than the consumers' session timeout, so the broker drops them from their groups
/// while the link is down.
const CUT: Duration = GROUP_SESSION_TIMEOUT.saturating_add(Duration::from_secs(2));
/// How long a mail may take once the link is back: a rejoin takes a few seconds.
const PATIENCE: Duration = Duration::from_secs(45);

fn code_mail(code: &str) -> serde_json::Value {
    json!({ "template": "signup_code", "code": code, "expires_in_minutes": 15 })
}

async fn delivered(harness: &Harness, to: &str) -> bool {
    harness
        .smtp
        .wait_for(|mail| mail.is_to(to), PATIENCE)
        .await
        .is_some()
}

/// Dynamic membership: tansu (0.6) can leave a group of static members without a leader after
/// their sessions expire (docs/drills.md), which this test is not about. The production mail
/// retry schedule (up to 30 s between attempts): the consumer used to wait that long after
/// each error, so a revocation queued behind the errors of the cut went unserved for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_cut_longer_than_the_session_dbproc_rejoins_and_serves_again() {
    let tansu_port = free_port().unwrap();
    let mut link = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], tansu_port)))
        .await
        .unwrap();
    let _tansu = PrivateTansu::start_in_memory(tansu_port, link.addr())
        .await
        .unwrap();
    let production_retries = MailSettings {
        max_attempts: 8,
        retry_initial_ms: 500,
        retry_max_ms: 30_000,
    };
    let harness = Harness::start_on(
        "kafka-link",
        production_retries,
        link.addr().to_string(),
        None,
    )
    .await;

    harness
        .mail("before@example.com", code_mail("111111"))
        .await;
    assert!(
        delivered(&harness, "before@example.com").await,
        "dbproc never served the mail topic before the cut"
    );

    link.cut().await;
    // The fault itself: the link stays down past the session timeout.
    tokio::time::sleep(CUT).await;
    link.restore().await.unwrap();

    harness.mail("after@example.com", code_mail("222222")).await;
    assert!(
        delivered(&harness, "after@example.com").await,
        "no mail within {PATIENCE:?} of the link coming back: the mail group was not served again"
    );
    let ready = harness
        .poll_http("/readyz", Duration::from_secs(10), |status, body| {
            status == 200 && body.contains("directory consumer: joined")
        })
        .await;
    assert!(ready.contains("mail consumer: joined"), "{ready}");
}
