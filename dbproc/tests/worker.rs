//! dbproc end to end against Postgres, Kafka (tansu) and an SMTP capture.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use broker_auth_contract::{InstanceId, RequestKind, Topics, headers};
use serde_json::json;
use support::{HASH, Harness, MailSettings, metric_value};
use uuid::Uuid;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_every_kind_round_trip_through_kafka() {
    let harness = Harness::start("roundtrip").await;
    let mut replies = harness.reply_reader();

    let unknown = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "ada@example.com"}),
        )
        .await;
    let reply = replies.reply(&unknown).await;
    assert_eq!(
        reply.topic,
        harness.topics.reply(RequestKind::ExistenceCheck)
    );
    assert_eq!(reply.key.as_deref(), Some(&b"ada@example.com"[..]));
    assert_eq!(reply.header(headers::TRACEPARENT), Some(TRACEPARENT));
    let body = reply.json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["result"]["exists"], false);

    let creation_id = Uuid::new_v4();
    let creation = harness
        .request(
            RequestKind::UserCreation,
            creation_id,
            json!({"email": "ada@example.com", "name": "Ada", "password_hash": HASH}),
        )
        .await;
    let body = replies.reply(&creation).await.json();
    assert_eq!(body["request_id"], creation_id.to_string());
    assert_eq!(body["result"]["outcome"], "created");
    let user_id = body["result"]["user"]["id"].as_str().unwrap().to_owned();

    let known = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "ada@example.com"}),
        )
        .await;
    assert_eq!(replies.reply(&known).await.json()["result"]["exists"], true);

    let login = harness
        .request(
            RequestKind::Authentication,
            Uuid::new_v4(),
            json!({"email": "ada@example.com"}),
        )
        .await;
    let body = replies.reply(&login).await.json();
    assert_eq!(body["result"]["account"]["user"]["id"], user_id.as_str());
    assert_eq!(body["result"]["account"]["password_hash"], HASH);

    let invalid = harness
        .request(
            RequestKind::UserCreation,
            Uuid::new_v4(),
            json!({"email": "Not Normalized@x", "name": "A", "password_hash": HASH}),
        )
        .await;
    let body = replies.reply(&invalid).await.json();
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["code"], "invalid_email");

    harness
        .poll_http("/healthz", Duration::from_secs(5), |status, _| {
            status == 200
        })
        .await;
    harness
        .poll_http("/readyz", Duration::from_secs(30), |status, _| {
            status == 200
        })
        .await;
    let metrics = harness
        .poll_http("/metrics", Duration::from_secs(5), |status, _| {
            status == 200
        })
        .await;
    assert_eq!(
        metric_value(
            &metrics,
            "dbproc_directory_requests_handled_total{kind=\"existence_check\",outcome=\"ok\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "dbproc_directory_requests_handled_total{kind=\"user_creation\",outcome=\"rejected\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(metrics.contains("dbproc_directory_request_duration_seconds_bucket"));
    assert!(!metrics.contains(HASH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_creation_request_is_answered_identically() {
    let harness = Harness::start("redelivery").await;
    let mut replies = harness.reply_reader();
    let request_id = Uuid::new_v4();
    let body = json!({"email": "grace@example.com", "name": "Grace", "password_hash": HASH});

    let first = harness
        .request(RequestKind::UserCreation, request_id, body.clone())
        .await;
    let first = replies.reply(&first).await;
    let again = harness
        .request(RequestKind::UserCreation, request_id, body)
        .await;
    let again = replies.reply(&again).await;

    assert_eq!(first.json()["result"]["outcome"], "created");
    assert_eq!(again.payload, first.payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_password_update_is_answered_identically_and_applied_once() {
    let harness = Harness::start("password-redelivery").await;
    let mut replies = harness.reply_reader();
    let email = "ada@example.com";
    let created = harness
        .request(
            RequestKind::UserCreation,
            Uuid::new_v4(),
            json!({"email": email, "name": "Ada", "password_hash": HASH}),
        )
        .await;
    assert_eq!(
        replies.reply(&created).await.json()["result"]["outcome"],
        "created"
    );

    let new_hash = "$2b$04$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
    let request_id = Uuid::new_v4();
    let update =
        json!({"email": email, "password_hash": new_hash, "request_digest": "ab".repeat(32)});
    let first = harness
        .request(RequestKind::PasswordUpdate, request_id, update.clone())
        .await;
    let first = replies.reply(&first).await;
    assert_eq!(
        first.json()["result"]["outcome"],
        "updated",
        "{}",
        first.json()
    );
    let changed_at = first.json()["result"]["password_changed_at_ms"].clone();
    assert!(changed_at.is_i64(), "{}", first.json());

    // Another change lands, then the first request is delivered again: it is answered as the
    // first time and does not put its password back.
    let other = harness
        .request(
            RequestKind::PasswordUpdate,
            Uuid::new_v4(),
            json!({"email": email, "password_hash": HASH, "request_digest": "cd".repeat(32)}),
        )
        .await;
    replies.reply(&other).await;
    let again = harness
        .request(RequestKind::PasswordUpdate, request_id, update)
        .await;
    let again = replies.reply(&again).await;
    assert_eq!(again.payload, first.payload);

    let lookup = harness
        .request(
            RequestKind::Authentication,
            Uuid::new_v4(),
            json!({"email": email}),
        )
        .await;
    let account = replies.reply(&lookup).await.json()["result"]["account"].clone();
    assert_eq!(account["password_hash"], HASH);
    assert!(account["password_changed_at_ms"].as_i64() >= changed_at.as_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_messages_after_them_answered() {
    let harness = Harness::start("poison").await;
    let mut replies = harness.reply_reader();
    let mut dead_letters = harness.dead_letter_reader();
    let topic = harness.topics.request(RequestKind::ExistenceCheck);
    let reply_to = harness.topics.reply(RequestKind::ExistenceCheck);
    let key = "victim@example.com"; // one key, so one partition: the good request queues behind the poison
    let good_body = br#"{"version":1,"request_id":"6f1c1d43-6b6c-4f0e-8b7e-1d1d7d8f4c11","email":"victim@example.com"}"#;

    // (expected reason, payload, headers)
    type Poison<'a> = (&'a str, &'a [u8], Vec<(&'a str, &'a str)>);
    let poison: [Poison<'_>; 5] = [
        (
            "undecodable",
            b"{not json",
            vec![
                (headers::CORRELATION_ID, "11111111-1111-1111-1111-111111111111"),
                (headers::REPLY_TO, &reply_to),
            ],
        ),
        (
            "undecodable",
            br#"{"version":99,"request_id":"6f1c1d43-6b6c-4f0e-8b7e-1d1d7d8f4c11","email":"a@b.c"}"#,
            vec![
                (headers::CORRELATION_ID, "22222222-2222-2222-2222-222222222222"),
                (headers::REPLY_TO, &reply_to),
            ],
        ),
        (
            "missing_reply_to",
            good_body,
            vec![(headers::CORRELATION_ID, "33333333-3333-3333-3333-333333333333")],
        ),
        (
            "invalid_reply_to",
            good_body,
            vec![
                (headers::CORRELATION_ID, "44444444-4444-4444-4444-444444444444"),
                (headers::REPLY_TO, "someone-elses-topic"),
            ],
        ),
        (
            "invalid_correlation_id",
            good_body,
            vec![
                (headers::CORRELATION_ID, "not-a-uuid"),
                (headers::REPLY_TO, &reply_to),
            ],
        ),
    ];
    for (_, payload, record_headers) in &poison {
        harness.produce(&topic, key, payload, record_headers).await;
    }
    let good = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": key}),
        )
        .await;

    assert_eq!(replies.reply(&good).await.json()["result"]["exists"], false);
    for (reason, payload, _) in &poison {
        let dead = dead_letters
            .wait_for(
                &format!("dead letter {reason}"),
                Duration::from_secs(20),
                |r| {
                    r.payload == *payload
                        && r.header(headers::DEAD_LETTER_REASON)
                            .is_some_and(|found| found.starts_with(reason))
                },
            )
            .await;
        assert_eq!(dead.key.as_deref(), Some(key.as_bytes()));
        let source = dead.header(headers::DEAD_LETTER_SOURCE).unwrap();
        assert!(source.starts_with(&format!("{topic}/")), "{source}");
    }
    // The original headers travel with the dead letter.
    assert!(
        dead_letters
            .seen()
            .iter()
            .any(|r| { r.header(headers::REPLY_TO) == Some("someone-elses-topic") })
    );
    // None of the poison got a reply.
    assert!(
        replies
            .seen()
            .iter()
            .all(|r| r.header(headers::CORRELATION_ID) == Some(good.as_str()))
    );

    let dead_lettered = harness
        .metric("dbproc_dead_lettered_total{consumer=\"directory\"")
        .await;
    assert_eq!(dead_lettered, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_while_dbproc_is_down_is_answered_after_it_restarts() {
    let mut harness = Harness::start("restart").await;
    let mut replies = harness.reply_reader();
    let before = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "before@example.com"}),
        )
        .await;
    replies.reply(&before).await;

    let stopping = harness.stop_dbproc().await;
    assert!(
        stopping < Duration::from_secs(5),
        "stopping took {stopping:?}"
    );

    let during = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "during@example.com"}),
        )
        .await;
    harness.start_dbproc(MailSettings::default()).await;
    replies.reply(&during).await;
    // The request answered before the stop was committed, so it is not answered twice.
    let answers_before = replies
        .seen()
        .iter()
        .filter(|r| r.header(headers::CORRELATION_ID) == Some(before.as_str()))
        .count();
    assert_eq!(answers_before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_retried_while_the_database_is_unreachable_and_answered_after() {
    let mut harness = Harness::start("db-down").await;
    let mut replies = harness.reply_reader();
    harness.database_proxy.cut().await;

    let creation = harness
        .request(
            RequestKind::UserCreation,
            Uuid::new_v4(),
            json!({"email": "patient@example.com", "name": "Pat", "password_hash": HASH}),
        )
        .await;
    harness
        .poll_http("/metrics", Duration::from_secs(20), |_, body| {
            metric_value(body, "dbproc_directory_store_retries_total") >= 1.0
        })
        .await;
    harness
        .poll_http("/readyz", Duration::from_secs(10), |status, body| {
            status == 503 && body.contains("postgres: failing")
        })
        .await;
    harness.database_proxy.restore().await.unwrap();

    let body = replies.reply(&creation).await.json();
    assert_eq!(body["result"]["outcome"], "created");
    // Exactly one answer: the request was retried in place, not skipped and not duplicated.
    assert_eq!(
        replies
            .seen()
            .iter()
            .filter(|r| r.header(headers::CORRELATION_ID) == Some(creation.as_str()))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_delivered_once_smtp_comes_back() {
    let mut harness = Harness::start("smtp-down").await;
    harness.smtp.stop().await;

    harness
        .mail(
            "ada@example.com",
            json!({"template": "signup_code", "code": "314159", "expires_in_minutes": 5}),
        )
        .await;
    // Wait until the worker has actually failed against the stopped server.
    harness
        .poll_http("/metrics", Duration::from_secs(20), |_, body| {
            metric_value(
                body,
                "dbproc_mail_failed_attempts_total{template=\"signup_code\",error=\"transient\"}",
            ) >= 1.0
        })
        .await;
    harness.smtp.restart().await.unwrap();

    let mail = harness
        .smtp
        .wait_for(|m| m.is_to("ada@example.com"), Duration::from_secs(20))
        .await
        .expect("the mail arrives after SMTP is back");
    assert!(mail.text().contains("314159"), "{}", mail.text());
    assert_eq!(mail.from, "no-reply@example.com");
    harness
        .poll_http("/metrics", Duration::from_secs(5), |_, body| {
            metric_value(body, "dbproc_mail_sent_total{template=\"signup_code\"}") == 1.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_refused_permanently_is_dead_lettered_at_once() {
    let harness = Harness::start("smtp-550").await;
    let mut dead_letters = harness.dead_letter_reader();
    harness.smtp.reject_recipients_with(Some(550));

    harness
        .mail("gone@example.com", json!({"template": "account_exists"}))
        .await;
    let dead = dead_letters
        .wait_for("dead-lettered mail", Duration::from_secs(20), |r| {
            r.key.as_deref() == Some(&b"gone@example.com"[..])
        })
        .await;
    let reason = dead.header(headers::DEAD_LETTER_REASON).unwrap();
    assert!(reason.starts_with("smtp_permanent"), "{reason}");
    assert!(
        dead.header(headers::DEAD_LETTER_SOURCE)
            .unwrap()
            .starts_with(&harness.topics.mail())
    );
    assert_eq!(dead.json()["to"], "gone@example.com");
    assert_eq!(
        harness.metric("dbproc_mail_failed_attempts_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_failing_transiently_is_dead_lettered_after_the_last_attempt() {
    let settings = MailSettings {
        max_attempts: 3,
        retry_initial_ms: 10,
        retry_max_ms: 50,
    };
    let harness = Harness::start_with("smtp-451", settings).await;
    let mut dead_letters = harness.dead_letter_reader();
    harness.smtp.reject_recipients_with(Some(451));

    harness
        .mail(
            "later@example.com",
            json!({"template": "signup_code", "code": "271828", "expires_in_minutes": 5}),
        )
        .await;
    let dead = dead_letters
        .wait_for("dead-lettered mail", Duration::from_secs(20), |r| {
            r.key.as_deref() == Some(&b"later@example.com"[..])
        })
        .await;
    let reason = dead.header(headers::DEAD_LETTER_REASON).unwrap();
    assert!(
        reason.starts_with("smtp_attempts_exhausted after 3 attempts"),
        "{reason}"
    );
    assert_eq!(
        harness
            .metric(
                "dbproc_mail_failed_attempts_total{template=\"signup_code\",error=\"transient\"}"
            )
            .await,
        3.0
    );
    assert!(harness.smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_mail_request_is_dead_lettered() {
    let harness = Harness::start("mail-poison").await;
    let mut dead_letters = harness.dead_letter_reader();
    harness
        .produce(&harness.topics.mail(), "x@example.com", b"[]", &[])
        .await;
    harness
        .mail("next@example.com", json!({"template": "account_exists"}))
        .await;

    dead_letters
        .wait_for("dead-lettered mail", Duration::from_secs(20), |r| {
            r.payload == b"[]"
                && r.header(headers::DEAD_LETTER_REASON)
                    .is_some_and(|reason| reason.starts_with("undecodable"))
        })
        .await;
    harness
        .smtp
        .wait_for(|m| m.is_to("next@example.com"), Duration::from_secs(20))
        .await
        .expect("the mail after the poison is still sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_is_answered_as_rejected_and_kept_on_the_dead_letter_topic() {
    let harness = Harness::start("invalid").await;
    let mut replies = harness.reply_reader();
    let mut dead_letters = harness.dead_letter_reader();

    let correlation = harness
        .request(
            RequestKind::ExistenceCheck,
            Uuid::new_v4(),
            json!({"email": "Not An Email"}),
        )
        .await;

    let reply = replies.reply(&correlation).await.json();
    assert_eq!(reply["status"], "rejected");
    assert_eq!(reply["code"], "invalid_email");
    let dead = dead_letters
        .wait_for("the rejected request", Duration::from_secs(20), |r| {
            r.header(headers::CORRELATION_ID) == Some(correlation.as_str())
        })
        .await;
    let reason = dead.header(headers::DEAD_LETTER_REASON).unwrap();
    assert!(reason.starts_with("rejected: invalid_email"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_while_a_request_waits_for_the_database_and_nothing_is_lost() {
    let mut harness = Harness::start("stop-while-retrying").await;
    let mut replies = harness.reply_reader();
    harness.database_proxy.cut().await;

    let creation = harness
        .request(
            RequestKind::UserCreation,
            Uuid::new_v4(),
            json!({"email": "held@example.com", "name": "Held", "password_hash": HASH}),
        )
        .await;
    harness
        .poll_http("/metrics", Duration::from_secs(20), |_, body| {
            metric_value(
                body,
                "dbproc_consumer_retrying_records{consumer=\"directory\"}",
            ) == 1.0
        })
        .await;

    let stopping = harness.stop_dbproc().await;
    assert!(
        stopping < Duration::from_secs(5),
        "stopping took {stopping:?}"
    );
    assert!(
        replies.seen().is_empty(),
        "nothing was answered while the database was down"
    );

    // The abandoned record was not committed: the next start answers it.
    harness.database_proxy.restore().await.unwrap();
    harness.start_dbproc(MailSettings::default()).await;
    let body = replies.reply(&creation).await.json();
    assert_eq!(body["result"]["outcome"], "created");
    harness
        .poll_http("/metrics", Duration::from_secs(5), |_, body| {
            metric_value(
                body,
                "dbproc_consumer_retrying_records{consumer=\"directory\"}",
            ) == 0.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_beyond_the_partition_count_is_ready_and_holds_no_partitions() {
    let harness = Harness::start("surplus-replica").await;
    let mut replicas = Vec::new();
    for _ in 0..support::PARTITIONS {
        replicas.push(harness.start_replica().await);
    }
    let mut urls = vec![harness.metrics_url("/readyz")];
    urls.extend(replicas.iter().map(|replica| replica.url("/readyz")));

    // The mail topic has PARTITIONS partitions, so once the groups have settled one of the
    // PARTITIONS + 1 replicas holds none of them. (The directory group's 3 x PARTITIONS request
    // partitions are spread over every replica by the cooperative-sticky assignor.)
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut bodies = Vec::new();
    loop {
        bodies.clear();
        let mut all_ready = true;
        for url in &urls {
            let response = client.get(url).send().await.unwrap();
            all_ready &= response.status() == 200;
            bodies.push(response.text().await.unwrap());
        }
        let directory_total: usize = bodies
            .iter()
            .map(|body| assigned(body, "directory consumer"))
            .sum();
        let mail_total: usize = bodies
            .iter()
            .map(|body| assigned(body, "mail consumer"))
            .sum();
        let idle = bodies
            .iter()
            .filter(|body| assigned(body, "mail consumer") == 0)
            .count();
        let settled = directory_total
            == broker_auth_contract::RequestKind::ALL.len() * support::PARTITIONS as usize
            && mail_total == support::PARTITIONS as usize
            && idle >= 1;
        if all_ready && settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas never settled as all ready with one idle:\n{}",
            bodies.join("---\n")
        );
        // Polling HTTP endpoints: a short pause between polls, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The partitions a `/readyz` body reports for `consumer`.
fn assigned(body: &str, consumer: &str) -> usize {
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{consumer}: joined, ")))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_whose_code_cannot_be_opened_is_dead_lettered_sealed_and_never_sent() {
    let harness = Harness::start("mail-unsealable").await;
    let mut dead_letters = harness.dead_letter_reader();
    // Sealed under another key (a key rotated on one tier only), and a plaintext code as a
    // producer that does not seal would send it.
    harness
        .mail_sealed_with(
            "another-seal-key-another-seal-key-another",
            "rotated@example.com",
            json!({"template": "signup_code", "code": "577215", "expires_in_minutes": 5}),
        )
        .await;
    let plaintext = serde_json::to_vec(&json!({
        "version": 1,
        "request_id": Uuid::new_v4(),
        "to": "plain@example.com",
        "template": "signup_code",
        "code": "141421",
        "expires_in_minutes": 5,
    }))
    .unwrap();
    harness
        .produce(&harness.topics.mail(), "plain@example.com", &plaintext, &[])
        .await;
    harness
        .mail(
            "sealed@example.com",
            json!({"template": "signup_code", "code": "662607", "expires_in_minutes": 5}),
        )
        .await;

    let rotated = dead_letters
        .wait_for(
            "the mail sealed under another key",
            Duration::from_secs(20),
            |r| r.key.as_deref() == Some(&b"rotated@example.com"[..]),
        )
        .await;
    let reason = rotated.header(headers::DEAD_LETTER_REASON).unwrap();
    assert!(reason.starts_with("unsealable"), "{reason}");
    assert!(
        !String::from_utf8_lossy(&rotated.payload).contains("577215"),
        "the dead letter keeps the code sealed"
    );
    let plain = dead_letters
        .wait_for("the plaintext mail", Duration::from_secs(20), |r| {
            r.key.as_deref() == Some(&b"plain@example.com"[..])
        })
        .await;
    let reason = plain.header(headers::DEAD_LETTER_REASON).unwrap();
    assert!(reason.starts_with("undecodable"), "{reason}");

    let mail = harness
        .smtp
        .wait_for(|m| m.is_to("sealed@example.com"), Duration::from_secs(20))
        .await
        .expect("the properly sealed mail after them is sent");
    assert!(mail.text().contains("662607"), "{}", mail.text());
    assert!(
        harness
            .smtp
            .messages()
            .iter()
            .all(|m| !m.is_to("rotated@example.com") && !m.is_to("plain@example.com")),
        "a mail whose code could not be opened was sent"
    );
    assert_eq!(
        harness
            .metric("dbproc_dead_lettered_total{consumer=\"mail\",reason=\"unsealable\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_waiting_between_attempts_at_shutdown_is_sent_after_the_restart() {
    let settings = MailSettings {
        max_attempts: 25,
        retry_initial_ms: 2_000,
        retry_max_ms: 2_000,
    };
    let mut harness = Harness::start_with("smtp-down-at-stop", settings).await;
    harness.smtp.stop().await;
    harness
        .mail(
            "kept@example.com",
            json!({"template": "signup_code", "code": "161803", "expires_in_minutes": 5}),
        )
        .await;
    harness
        .poll_http("/metrics", Duration::from_secs(20), |_, body| {
            metric_value(body, "dbproc_consumer_retrying_records{consumer=\"mail\"}") == 1.0
        })
        .await;

    let stopping = harness.stop_dbproc().await;
    assert!(
        stopping < Duration::from_secs(2),
        "stopping mid-backoff took {stopping:?}"
    );

    harness.smtp.restart().await.unwrap();
    harness.start_dbproc(settings).await;
    let mail = harness
        .smtp
        .wait_for(|m| m.is_to("kept@example.com"), Duration::from_secs(20))
        .await
        .expect("the mail abandoned at shutdown arrives after the restart");
    assert!(mail.text().contains("161803"), "{}", mail.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_the_asking_instances_topic_and_one_whose_topic_is_gone_is_dropped() {
    let harness = Harness::start("instance-replies").await;
    let instance = |id: &str| InstanceId::parse(id).unwrap();
    let own = harness.topics.instance_replies(&instance("api-7c9d-live1"));
    broker_auth_kafka::ensure_topics(&harness.kafka, std::slice::from_ref(&own))
        .await
        .unwrap();
    let mut replies = harness.reader(std::slice::from_ref(&own));
    let mut dead_letters = harness.dead_letter_reader();
    let kind = RequestKind::ExistenceCheck;
    // One key, so one partition: each request queues behind the one before it.
    let body = json!({"email": "queued@example.com"});

    // An instance that is gone (its topic deleted at its shutdown, or never made) asked first.
    let gone = harness.topics.instance_replies(&instance("api-7c9d-gone1"));
    let lost = harness
        .request_replying_to(kind, Uuid::new_v4(), body.clone(), &gone)
        .await;
    // Another deployment's instance topic is not for this dbproc to write to.
    let foreign = Topics::new("someone-else.")
        .unwrap()
        .instance_replies(&instance("api-7c9d-live1"));
    let refused = harness
        .request_replying_to(kind, Uuid::new_v4(), body.clone(), &foreign)
        .await;
    let answered = harness
        .request_replying_to(kind, Uuid::new_v4(), body, &own)
        .await;

    let reply = replies.reply(&answered).await;
    assert_eq!(reply.topic, own);
    assert_eq!(reply.json()["result"]["exists"], false);
    dead_letters
        .wait_for(
            "the foreign reply-to dead-lettered",
            Duration::from_secs(20),
            |r| {
                r.header(headers::CORRELATION_ID) == Some(refused.as_str())
                    && r.header(headers::DEAD_LETTER_REASON)
                        .is_some_and(|reason| reason.starts_with("invalid_reply_to"))
            },
        )
        .await;
    assert!(
        replies
            .seen()
            .iter()
            .all(|r| r.header(headers::CORRELATION_ID) != Some(lost.as_str()))
    );
    assert_eq!(
        harness
            .metric("dbproc_directory_replies_dropped_total")
            .await,
        1.0
    );
}
