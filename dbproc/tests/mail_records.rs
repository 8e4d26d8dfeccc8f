//! The mailer's records: a redelivered mail request is not sent again, and records (mail and
//! user creation) older than the retention are pruned.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Harness, MailSettings};
use uuid::Uuid;

/// Mails `to` once more (same key, so the same partition) and waits until that mail arrives:
/// everything before it on the partition has been handled by then.
async fn a_later_mail_arrives(harness: &Harness, to: &str, patience: Duration) {
    harness
        .mail(to, json!({"template": "account_exists"}))
        .await;
    harness
        .smtp
        .wait_for(
            |m| m.is_to(to) && m.subject().as_deref() == Some("You already have an account"),
            patience,
        )
        .await
        .expect("the later mail arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_mail_request_is_not_sent_twice() {
    let harness = Harness::start("mail-once").await;
    let request_id = Uuid::new_v4();
    let to = "once@example.com";
    let payload = support::sealed_mail(
        support::MAIL_SEAL_KEY,
        request_id,
        to,
        &json!({"template": "signup_code", "code": "271828", "expires_in_minutes": 5}),
    );
    // The same record twice, as a crash after sending but before the offset commit delivers it.
    let mail_topic = harness.topics.mail();
    harness.produce(&mail_topic, to, &payload, &[]).await;
    harness.produce(&mail_topic, to, &payload, &[]).await;
    // A later mail on the same partition marks the point where both were handled.
    a_later_mail_arrives(&harness, to, Duration::from_secs(20)).await;

    let codes: Vec<_> = harness
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m.text().contains("271828"))
        .collect();
    assert_eq!(
        codes.len(),
        1,
        "the code mail was sent {} times",
        codes.len()
    );
    assert_eq!(
        codes[0].header("Message-ID"),
        Some(format!("<{request_id}@example.com>"))
    );
    assert_eq!(
        harness.metric("dbproc_mail_duplicates_skipped_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_being_sent_at_shutdown_is_finished_and_not_sent_again_after_restart() {
    let mut harness = Harness::start("mail-shutdown").await;
    // The server takes its time to accept the message after its data, so the stop comes while
    // dbproc waits for the answer: a sender abandoned there leaves a mail the server took, and
    // its redelivery after the restart sends it again.
    harness.smtp.set_accept_delay(Duration::from_secs(2));
    let to = "mid-send@example.com";
    harness
        .mail(
            to,
            json!({"template": "signup_code", "code": "161803", "expires_in_minutes": 5}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while harness.smtp.data_received() == 0 {
        assert!(
            Instant::now() < deadline,
            "the mail's data never reached the server"
        );
        // Polling the capture's counter: a short pause between looks, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    harness.stop_dbproc().await;
    harness.smtp.set_accept_delay(Duration::ZERO);
    harness.start_dbproc(MailSettings::default()).await;
    // A later mail on the same partition (same key) marks the point where a redelivery of the
    // first would have been handled.
    a_later_mail_arrives(&harness, to, Duration::from_secs(30)).await;
    let sent = harness
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m.text().contains("161803"))
        .count();
    assert_eq!(
        sent, 1,
        "the mail being sent at shutdown was sent {sent} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_the_retention_are_pruned_at_start() {
    let mut harness = Harness::start("prune").await;
    let pool = sqlx::PgPool::connect(harness.database.url()).await.unwrap();
    let old: Vec<Uuid> = (0..1_200).map(|_| Uuid::new_v4()).collect();
    let fresh = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sent_mail (request_id, sent_at) \
         SELECT id, now() - interval '8 days' FROM unnest($1::uuid[]) AS id",
    )
    .bind(&old)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO sent_mail (request_id) VALUES ($1)")
        .bind(fresh)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO user_creation_requests (request_id, email, outcome, handled_at) \
         SELECT id, 'taken@example.com', 'already_exists', now() - interval '8 days' \
         FROM unnest($1::uuid[]) AS id",
    )
    .bind(&old)
    .execute(&pool)
    .await
    .unwrap();

    harness.stop_dbproc().await;
    harness.start_dbproc(MailSettings::default()).await;

    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("sent_mail").await > 1 || count("user_creation_requests").await > 0 {
        assert!(Instant::now() < deadline, "the old records were not pruned");
        // Polling the database: a short pause between polls, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sent_mail WHERE request_id = $1)")
            .bind(fresh)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(kept, "a fresh record was pruned");
}
