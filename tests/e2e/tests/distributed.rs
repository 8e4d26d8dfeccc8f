//! What only the distributed deployment has: a worker tier that can stop, poison messages, and an
//! SMTP server that can be down. (Several API processes on one Kafka: api/tests/two_processes.rs.)

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::time::{Duration, Instant};

use broker_auth_contract::{RequestKind, Topics};
use broker_auth_e2e::{Client, Mode, Options, PATIENCE, REPLY_TIMEOUT, TestEnv, metric_sum};
use broker_auth_kafka::KafkaSettings;
use broker_auth_testkit::private::PrivateRedis;
use broker_auth_testkit::services;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dbproc_stopped_requests_fail_fast_with_503_and_recover_when_it_returns() {
    let mut env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    let client = Client::new(env.api());

    env.dbproc.take().expect("dbproc runs").stop().await;
    let started = Instant::now();
    let response = client
        .request(reqwest::Method::POST, "/signup")
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .expect("the API answers");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        elapsed < REPLY_TIMEOUT + Duration::from_secs(2),
        "503 took {elapsed:?}"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "service_unavailable");
    // The unanswered request is counted, for the alert on RPC timeouts.
    let metrics = env.api().metrics_url("/metrics");
    assert_eq!(
        metric_sum(
            &metrics,
            "broker_auth_api_kafka_rpc_timeouts_total{kind=\"existence_check\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "broker_auth_api_kafka_rpc_duration_seconds_count{kind=\"existence_check\"}"
        )
        .await,
        1.0
    );

    env.dbproc = Some(env.spawn_dbproc().await);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = client.signup(&email).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "signup never recovered: {status}"
        );
    }
    let code = env.code_for(&email).await;
    assert_eq!(
        client.verify(&email, &code, PASSWORD, "Back").await.0,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_while_the_worker_keeps_serving() {
    let env = TestEnv::start(Mode::Distributed).await;
    let topics = Topics::new(env.prefix.clone()).expect("a valid prefix");
    let settings = KafkaSettings::new(services::kafka_brokers());
    let producer = settings.producer().expect("a producer");
    // Keyed like the user registered next, so the poison sits on the same partition, in front
    // of that user's requests: a stalled partition would fail the registration.
    let email = env.new_email();
    producer
        .send(
            FutureRecord::to(&topics.request(RequestKind::UserCreation))
                .key(&email)
                .payload("{ this is not json"),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("the poison record is produced");

    // The worker keeps answering.
    env.register(&email, PASSWORD).await;

    // And the poison record is on the dead-letter topic, with its reason.
    let consumer: StreamConsumer = settings
        .group_consumer(&format!("{}dlq-reader", env.prefix))
        .expect("a consumer");
    consumer
        .subscribe(&[&topics.dead_letter()])
        .expect("subscribe");
    let record = tokio::time::timeout(PATIENCE, consumer.recv())
        .await
        .expect("a dead letter within the deadline")
        .expect("a record");
    assert_eq!(record.payload(), Some(&b"{ this is not json"[..]));
    assert!(
        broker_auth_kafka::header_str(
            rdkafka::message::Message::headers(&record),
            broker_auth_contract::headers::DEAD_LETTER_REASON
        )
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_sent_while_smtp_is_down_is_delivered_after_it_returns() {
    let mut env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    env.smtp.stop().await;

    let started = Instant::now();
    assert_eq!(
        Client::new(env.api()).signup(&email).await.0,
        StatusCode::ACCEPTED
    );
    assert!(
        started.elapsed() < REPLY_TIMEOUT,
        "signup must not wait on SMTP"
    );

    // A delivery really failed (and will be retried) before SMTP comes back.
    let metrics = env.dbproc.as_ref().expect("dbproc runs").url("/metrics");
    let deadline = Instant::now() + PATIENCE;
    while metric_sum(&metrics, "dbproc_mail_failed_attempts_total").await < 1.0 {
        assert!(Instant::now() < deadline, "no failed delivery was recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    env.smtp.restart().await.expect("the capture restarts");
    let code = env.code_for(&email).await;
    assert_eq!(code.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_consumed_while_dbproc_is_down_works_again_once_it_is_back() {
    let mut env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    env.dbproc.take().expect("dbproc runs").stop().await;
    let (status, body) = client.verify(&email, &code, PASSWORD, "Patient").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    env.dbproc = Some(env.spawn_dbproc().await);
    let (status, body) = client.verify(&email, &code, PASSWORD, "Patient").await;
    assert_eq!(status, StatusCode::CREATED, "the code was lost: {body}");
    // Exactly one account, even though the first creation request may have landed late.
    assert_eq!(
        Client::new(env.api()).signin(&email, PASSWORD).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_answered_503_while_dbproc_is_down_use_up_no_code_attempt() {
    let mut env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    env.dbproc.take().expect("dbproc runs").stop().await;
    // More retries than the code has attempts (OTP_MAX_ATTEMPTS is 5): none of them counts.
    for attempt in 1..=7 {
        let (status, body) = client.verify(&email, &code, PASSWORD, "Patient").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {body}"
        );
    }

    // Back up: the restarted replica may take a few seconds to take its partitions back and
    // work through the queued requests, and until then verify answers 503 (which, again, costs
    // no attempt). Then the code still works.
    env.dbproc = Some(env.spawn_dbproc().await);
    let (status, body) = verify_once_served(&client, &email, &code, PASSWORD, "Patient").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the retries burned the code: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_that_refuses_writes_gets_503_with_retry_after_not_a_500() {
    // A private Redis with the chart's policy: refuse writes when full, evict nothing.
    let redis =
        PrivateRedis::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
            .await
            .expect("a private redis-server (apt-get install redis-server)");
    let options = Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    };
    let env = TestEnv::start_with(Mode::Distributed, options).await;
    let client = Client::new(env.api());
    let email = env.new_email();

    let mut filler = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let chunk = "x".repeat(64 * 1024);
    let mut filled = false;
    for i in 0..1000 {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&chunk)
            .query_async(&mut filler)
            .await;
        if let Err(error) = set {
            assert!(error.to_string().contains("OOM"), "{error}");
            filled = true;
            break;
        }
    }
    assert!(filled, "Redis never reported OOM");

    for path in ["/signup", "/signin"] {
        let response = client
            .request(reqwest::Method::POST, path)
            .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
    }

    // Room again (this Redis is the test's own): the API recovers by itself.
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut filler)
        .await
        .unwrap();
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mail_topic_holds_no_usable_code_yet_dbproc_mails_the_right_one() {
    let env = TestEnv::start(Mode::Distributed).await;
    let topics = Topics::new(env.prefix.clone()).expect("a valid prefix");
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    // The raw record, as anyone who can read the topic (or the broker's disk) sees it.
    let settings = KafkaSettings::new(services::kafka_brokers());
    let consumer: StreamConsumer = settings
        .group_consumer(&format!("{}mail-dump", env.prefix))
        .expect("a consumer");
    consumer.subscribe(&[&topics.mail()]).expect("subscribe");
    let payload = tokio::time::timeout(PATIENCE, async {
        loop {
            let record = consumer.recv().await.expect("a record");
            if record.key() == Some(email.as_bytes()) {
                break record.payload().unwrap_or_default().to_vec();
            }
        }
    })
    .await
    .expect("the mail record within the deadline");
    let raw = String::from_utf8_lossy(&payload);
    assert!(
        !raw.contains(&code),
        "the code is readable in the topic: {raw}"
    );
    let body: serde_json::Value = serde_json::from_slice(&payload).expect("a JSON body");
    assert_eq!(body["template"], "signup_code");
    assert!(body.get("code").is_none(), "{body}");
    assert!(
        body["sealed_code"].as_str().is_some_and(|s| s.len() > 40),
        "{body}"
    );

    // What dbproc opened and mailed is the code the API issued.
    let (status, body) = client.verify(&email, &code, PASSWORD, "Sealed").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_another_password_after_a_lost_reply_is_refused_and_the_first_stands() {
    let mut env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    let client = Client::new(env.api());
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    // The creation request is queued in Kafka, but its reply never comes in time: 503, and the
    // code is given back.
    env.dbproc.take().expect("dbproc runs").stop().await;
    let (status, body) = client.verify(&email, &code, PASSWORD, "First").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    env.dbproc = Some(env.spawn_dbproc().await);

    // The first request lands when dbproc is back; the retry under the same request id with
    // another password must not be answered "created" with the first one's account.
    let other_password = "a different passphrase";
    let (status, body) = verify_once_served(&client, &email, &code, other_password, "First").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "request_conflict", "{body}");
    let (status, body) = client.verify(&email, &code, PASSWORD, "Second").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another name conflicts too: {body}"
    );

    // The honest retry still works, and the account has the first password only.
    let (status, body) = client.verify(&email, &code, PASSWORD, "First").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["name"], "First");
    let fresh = Client::new(env.api());
    assert_eq!(
        fresh.signin(&email, other_password).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fresh.signin(&email, PASSWORD).await.0, StatusCode::OK);
}

/// A verify retried while it answers 503 (dbproc restarted a moment ago and still taking its
/// partitions back; each 503 waits for the reply timeout, and costs no code attempt), up to
/// [`PATIENCE`].
async fn verify_once_served(
    client: &Client,
    email: &str,
    code: &str,
    password: &str,
    name: &str,
) -> (StatusCode, serde_json::Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = client.verify(email, code, password, name).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            return (status, body);
        }
    }
}

/// Runs `ACL <args>` on `redis` as its default (all-powerful) user.
async fn acl(redis: &PrivateRedis, args: &[&str]) {
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(args)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}

/// The account is created but its session cannot be stored (the API's Redis user may not write
/// session keys yet): the verify fails, and must give the code back, so the retry gets the
/// account and a session rather than `invalid_code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_whose_session_cannot_be_stored_gives_the_code_back() {
    let redis = PrivateRedis::start_with(&[])
        .await
        .expect("a private redis-server (apt-get install redis-server)");
    let key_kinds_but_sessions = ["~*otp:*", "~*cooldown:*", "~*rate:*", "~*throttle:*"];
    let mut user = vec!["SETUSER", "api", "on", ">api-password", "+@all"];
    user.extend(key_kinds_but_sessions);
    acl(&redis, &user).await;
    let options = Options {
        redis_url: Some(redis.url().replace("redis://", "redis://api:api-password@")),
        ..Options::default()
    };
    let env = TestEnv::start_with(Mode::Distributed, options).await;
    let client = Client::new(env.api());
    let email = env.new_email();
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;

    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert!(status.is_server_error(), "{status} {body}");

    acl(&redis, &["SETUSER", "api", "~*"]).await;
    let (status, body) = client.verify(&email, &code, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::CREATED, "the retry got {body}");
    assert_eq!(client.me().await.0, StatusCode::OK);
    let (status, signed_in) = Client::new(env.api()).signin(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(signed_in["user"]["id"], body["user"]["id"], "one account");
}

/// A verify holds its code while the account is created. When the creation fails (dbproc is
/// down) and the release fails too (the API's Redis user may no longer touch codes, as when
/// the link to Redis is cut), the code must still work: the person's retry, with the same
/// details, takes the hold over. (Before holds, the code was deleted before the creation and
/// put back after a failure; with the store unreachable it stayed deleted, and the retry got
/// `invalid_code` — the drill's Redis cut found it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_that_cannot_release_its_code_leaves_it_to_the_retry() {
    let redis = PrivateRedis::start_with(&[])
        .await
        .expect("a private redis-server (apt-get install redis-server)");
    acl(
        &redis,
        &["SETUSER", "api", "on", ">api-password", "+@all", "~*"],
    )
    .await;
    let options = Options {
        redis_url: Some(redis.url().replace("redis://", "redis://api:api-password@")),
        ..Options::default()
    };
    let mut env = TestEnv::start_with(Mode::Distributed, options).await;
    let email = env.new_email();
    assert_eq!(
        Client::new(env.api()).signup(&email).await.0,
        StatusCode::ACCEPTED
    );
    let code = env.code_for(&email).await;
    env.dbproc.take().expect("dbproc runs").stop().await;

    let first = {
        let (client, email, code) = (Client::new(env.api()), email.clone(), code.clone());
        tokio::spawn(async move { client.verify(&email, &code, PASSWORD, "Ada").await })
    };
    // Once the verify has asked for the account (it then waits for dbproc's reply until its
    // timeout), the API may no longer touch codes.
    let topics = Topics::new(env.prefix.clone()).expect("a valid prefix");
    let consumer: StreamConsumer = KafkaSettings::new(services::kafka_brokers())
        .group_consumer(&format!("{}creation-watch", env.prefix))
        .expect("a consumer");
    consumer
        .subscribe(&[&topics.request(RequestKind::UserCreation)])
        .expect("subscribe");
    tokio::time::timeout(PATIENCE, consumer.recv())
        .await
        .expect("the creation request within the deadline")
        .expect("a record");
    acl(
        &redis,
        &[
            "SETUSER",
            "api",
            "resetkeys",
            "~*cooldown:*",
            "~*rate:*",
            "~*throttle:*",
        ],
    )
    .await;
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    acl(&redis, &["SETUSER", "api", "~*"]).await;
    env.dbproc = Some(env.spawn_dbproc().await);
    let client = Client::new(env.api());
    let (status, body) = verify_once_served(&client, &email, &code, PASSWORD, "Ada").await;
    assert_eq!(status, StatusCode::CREATED, "the retry got {body}");
    assert_eq!(client.me().await.0, StatusCode::OK);
}

/// Defence in depth: the password changed in the directory, but the sessions' revocation never
/// happened (the API died between the two, say). The next signin learns the time of the change
/// from the directory and refuses every session started before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_revocation_is_caught_up_by_the_next_signin() {
    let env = TestEnv::start(Mode::Distributed).await;
    let email = env.new_email();
    let old = env.register(&email, PASSWORD).await;
    let other = Client::new(env.api());
    assert_eq!(other.signin(&email, PASSWORD).await.0, StatusCode::OK);

    let database = env
        .database
        .as_ref()
        .expect("distributed mode has a database");
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database.url())
        .await
        .unwrap();
    // A change a moment from now on the database's clock, so the sessions above are older.
    sqlx::query(
        "UPDATE users SET password_changed_at = now() + interval '1 second' WHERE email = $1",
    )
    .bind(&email)
    .execute(&mut connection)
    .await
    .unwrap();
    // Nothing told the API yet: the old sessions still work.
    assert_eq!(old.me().await.0, StatusCode::OK);

    let deadline = Instant::now() + PATIENCE;
    let newer = Client::new(env.api());
    loop {
        // A signin started before the change's time is itself refused; it is not the user's
        // fault, and the next one a moment later works.
        assert_eq!(newer.signin(&email, PASSWORD).await.0, StatusCode::OK);
        if newer.me().await.0 == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no signin after the change worked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(old.me().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(other.me().await.0, StatusCode::UNAUTHORIZED);
    let (_, listed) = newer.sessions().await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");
}
