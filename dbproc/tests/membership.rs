//! dbproc's consumer-group membership against tansu: a replica killed and restarted takes its
//! partitions back without disturbing the others (static membership).

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker_auth_contract::RequestKind;
use broker_auth_testkit::process::free_port;
use serde_json::json;
use support::{Harness, PARTITIONS, metric_value};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(30);

/// The real dbproc binary as one replica of `harness`'s groups, with static membership
/// `instance_id`, serving its metrics on `metrics_port`.
fn spawn_binary(harness: &Harness, instance_id: &str, metrics_port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_broker-auth-dbproc"))
        .args([
            "serve",
            "--kafka-brokers",
            &harness.kafka.brokers,
            "--kafka-topic-prefix",
            harness.topics.prefix(),
            "--kafka-topic-partitions",
            &PARTITIONS.to_string(),
            "--kafka-fetch-wait-ms",
            "10",
            "--kafka-group-instance-id",
            instance_id,
            "--kafka-assignment-strategy",
            &support::assignment_strategy(),
            "--database-url",
            harness.database.url(),
            "--smtp-url",
            &harness.smtp.url(),
            "--mail-from",
            "Broker Auth <no-reply@example.com>",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .env("RUST_LOG", "warn")
        .env("MAIL_SEAL_KEY", support::MAIL_SEAL_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The `/readyz` body at `url` once `condition` holds for it, failing after [`PATIENCE`].
async fn poll(url: &str, what: &str, condition: impl Fn(u16, &str) -> bool) -> String {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await {
            let status = response.status().as_u16();
            last = response.text().await.unwrap_or_default();
            if condition(status, &last) {
                return last;
            }
        }
        // Polling an HTTP endpoint: a short pause between polls, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {url} never satisfied the condition within {PATIENCE:?}; last body:\n{last}");
}

/// The partitions a `/readyz` body reports for `consumer`.
fn assigned(body: &str, consumer: &str) -> usize {
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{consumer} consumer: joined, ")))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

/// Waits until the two replicas are ready and share every partition of both groups.
async fn wait_until_settled(survivor: &str, other: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut bodies = Vec::new();
        let mut ready = true;
        for url in [survivor, other] {
            match client.get(url).send().await {
                Ok(response) => {
                    ready &= response.status() == 200;
                    bodies.push(response.text().await.unwrap_or_default());
                }
                Err(_) => {
                    ready = false;
                    bodies.push(String::new());
                }
            }
        }
        let total = |consumer| bodies.iter().map(|b| assigned(b, consumer)).sum::<usize>();
        let each_has_some = bodies.iter().all(|b| assigned(b, "directory") > 0);
        let partitions = PARTITIONS as usize;
        if ready
            && each_has_some
            && total("directory") == RequestKind::ALL.len() * partitions
            && total("mail") == partitions
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the two replicas never settled:\n{}",
            bodies.join("---\n")
        );
        // Polling HTTP endpoints: a short pause between polls, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Partitions that moved to or from the replica behind `metrics_url`, over both groups.
async fn moved_partitions(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, "dbproc_consumer_rebalanced_partitions_total")
}

/// Kills the binary replica with `signal`, restarts it with the same instance id, and checks
/// that the in-process survivor was never part of a rebalance and that every partition serves.
async fn a_replica_restarted_after(signal: &str) {
    let harness = Harness::start(&format!("restart-{signal}")).await;
    let survivor_ready = harness.metrics_url("/readyz");
    poll(
        &survivor_ready,
        "the first replica is ready",
        |status, _| status == 200,
    )
    .await;
    let port = free_port().unwrap();
    let other_ready = format!("http://127.0.0.1:{port}/readyz");
    let instance_id = format!("binary-{}", Uuid::new_v4().simple());
    let mut child = spawn_binary(&harness, &instance_id, port);
    wait_until_settled(&survivor_ready, &other_ready).await;
    let before = moved_partitions(&harness.metrics_url("/metrics")).await;

    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let mut child = spawn_binary(&harness, &instance_id, port);
    wait_until_settled(&survivor_ready, &other_ready).await;

    // Every partition answers: keys spread over all of them.
    let mut replies = harness.reply_reader();
    let mut correlations = Vec::new();
    for n in 0..4 * PARTITIONS {
        correlations.push(
            harness
                .request(
                    RequestKind::ExistenceCheck,
                    Uuid::new_v4(),
                    json!({"email": format!("spread-{n}@example.com")}),
                )
                .await,
        );
    }
    for correlation in &correlations {
        replies.reply(correlation).await;
    }
    let after = moved_partitions(&harness.metrics_url("/metrics")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        after, before,
        "the surviving replica took part in a rebalance ({before} partitions moved before, {after} after)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_and_restarted_takes_its_partitions_back_without_a_rebalance() {
    a_replica_restarted_after("KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_and_restarted_takes_its_partitions_back_without_a_rebalance() {
    a_replica_restarted_after("TERM").await;
}

/// A replica retrying a record (its database unreachable) still serves the group: a replica
/// that joins meanwhile gets partitions at once and answers their requests, instead of waiting
/// for the retry to end (up to `max.poll.interval.ms`, five minutes). Nothing is lost: the held
/// request and the ones behind it are answered once the database is back.
///
/// Without the pause-and-poll of `HeldRecord` the new replica never gets a partition within
/// the deadline: the rebalance waits for the first replica's next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_retry_does_not_hold_up_a_rebalance() {
    let mut harness = Harness::start("retry-rebalance").await;
    let mut replies = harness.reply_reader();
    harness
        .poll_http("/readyz", PATIENCE, |status, _| status == 200)
        .await;
    harness.database_proxy.cut().await;
    let held = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "held@example.com"}),
        )
        .await;
    harness
        .poll_http("/metrics", PATIENCE, |_, body| {
            metric_value(
                body,
                "dbproc_consumer_retrying_records{consumer=\"directory\"}",
            ) >= 1.0
        })
        .await;

    // A second replica that reaches the database directly joins while the record is in retry.
    let replica = harness.start_replica_with(harness.database.url()).await;
    poll(
        &replica.url("/readyz"),
        "the new replica gets partitions while the first retries",
        |status, body| status == 200 && assigned(body, "directory") > 0,
    )
    .await;

    // Requests on every partition: those on the new replica's partitions are answered now.
    let mut correlations = Vec::new();
    for n in 0..4 * PARTITIONS {
        correlations.push(
            harness
                .request(
                    RequestKind::ExistenceCheck,
                    Uuid::new_v4(),
                    json!({"email": format!("behind-{n}@example.com")}),
                )
                .await,
        );
    }
    replies
        .wait_for("a reply from the new replica", PATIENCE, |record| {
            record
                .header(broker_auth_contract::headers::CORRELATION_ID)
                .is_some_and(|id| correlations.iter().any(|c| c == id))
        })
        .await;

    // The database comes back: every request is answered, the held one too (one whose partition
    // moved may be answered twice, identically: handling is idempotent).
    harness.database_proxy.restore().await.unwrap();
    for correlation in correlations.iter().chain([&held]) {
        replies.reply(correlation).await;
    }
    for correlation in correlations.iter().chain([&held]) {
        let answers = replies
            .seen()
            .iter()
            .filter(|r| {
                r.header(broker_auth_contract::headers::CORRELATION_ID) == Some(correlation)
            })
            .count();
        assert!(answers >= 1, "{correlation} was never answered");
    }
    drop(replica);
}
