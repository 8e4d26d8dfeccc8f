//! A dbproc running in-process against real Postgres, Kafka (tansu) and an SMTP capture, with
//! topics, consumer groups and a database of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_auth_contract::{
    Envelope, MailRequest, MailSealKey, MailTemplate, RequestKind, Topics, headers,
};
use broker_auth_dbproc::{App, Config};
use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use broker_auth_kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use broker_auth_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker_auth_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use broker_auth_testkit::postgres::TestDatabase;
use broker_auth_testkit::services::{kafka_brokers, require_kafka, unique_prefix};
use broker_auth_testkit::smtp::SmtpCapture;
use broker_auth_testkit::tcp_proxy::TcpProxy;
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PARTITIONS: i32 = 3;
/// The `MAIL_SEAL_KEY` of every harness's dbproc.
pub const MAIL_SEAL_KEY: &str = "harness-mail-seal-key-harness-mail-seal-key";
pub const HASH: &str = "$2b$04$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

/// The assignment strategy tests run dbproc with: `KAFKA_ASSIGNMENT_STRATEGY`, default `range`
/// (tansu stalls cooperative rebalances of static members; see dbproc's `--help`).
pub fn assignment_strategy() -> String {
    std::env::var("KAFKA_ASSIGNMENT_STRATEGY").unwrap_or_else(|_| "range".to_owned())
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Reads every record of the given topics from the beginning, by assignment (no group).
pub struct Reader {
    consumer: StreamConsumer,
    seen: Vec<Record>,
}

impl Reader {
    pub fn new(kafka: &KafkaSettings, topics: &[String]) -> Self {
        let consumer = kafka
            .assigned_consumer(&format!("test-reader-{}", Uuid::new_v4()))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            for partition in 0..PARTITIONS {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&assignment).unwrap();
        Self {
            consumer,
            seen: Vec::new(),
        }
    }

    /// The first record matching `predicate`, waiting up to `timeout` for it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Record) -> bool,
    ) -> Record {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.seen.iter().find(|r| predicate(r)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; records seen: {:#?}",
                self.seen
            );
            if let Ok(received) = tokio::time::timeout(left, self.consumer.recv()).await {
                let message = received.unwrap();
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.seen.push(Record {
                    topic: message.topic().to_owned(),
                    key: message.key().map(<[u8]>::to_vec),
                    headers,
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
            }
        }
    }

    /// The reply carrying `correlation_id`.
    pub async fn reply(&mut self, correlation_id: &str) -> Record {
        self.wait_for(
            &format!("reply with correlation-id {correlation_id}"),
            Duration::from_secs(20),
            |r| r.header(headers::CORRELATION_ID) == Some(correlation_id),
        )
        .await
    }

    pub fn seen(&self) -> &[Record] {
        &self.seen
    }
}

/// Everything one test needs; dropping it drops the database.
pub struct Harness {
    pub topics: Topics,
    pub kafka: KafkaSettings,
    pub smtp: SmtpCapture,
    pub producer: FutureProducer,
    pub database: TestDatabase,
    /// dbproc reaches Postgres through this, so a test can make the database unreachable.
    pub database_proxy: TcpProxy,
    /// The harness's dbproc keeps its static group membership across restarts, like a pod;
    /// `None`: dynamic membership.
    instance_id: Option<String>,
    running: Option<Running>,
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<broker_auth_dbproc::Result<()>>,
    metrics_addr: SocketAddr,
}

/// Another dbproc replica in the same consumer groups as the harness's; stopped when dropped.
pub struct Replica {
    running: Running,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.metrics_addr)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.running.shutdown.cancel();
    }
}

/// Mail settings of a harness.
#[derive(Debug, Clone, Copy)]
pub struct MailSettings {
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for MailSettings {
    fn default() -> Self {
        // About 9 s of quick retries, and still within what `Config::validate` accepts.
        Self {
            max_attempts: 25,
            retry_initial_ms: 20,
            retry_max_ms: 400,
        }
    }
}

impl Harness {
    pub async fn start(test: &str) -> Self {
        Self::start_with(test, MailSettings::default()).await
    }

    pub async fn start_with(test: &str, mail: MailSettings) -> Self {
        require_kafka().await;
        Self::start_on(
            test,
            mail,
            kafka_brokers(),
            Some(format!("dbproc-{}", Uuid::new_v4().simple())),
        )
        .await
    }

    /// A harness whose dbproc reaches Kafka at `brokers` (e.g. a private broker behind a
    /// proxy), as a static member `instance_id` or, with `None`, a dynamic one.
    pub async fn start_on(
        test: &str,
        mail: MailSettings,
        brokers: String,
        instance_id: Option<String>,
    ) -> Self {
        // `RUST_LOG=broker_auth_dbproc=debug cargo nextest run … --no-capture` shows what the
        // in-process replicas do.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let topics = Topics::new(unique_prefix(test)).unwrap();
        let mut kafka = KafkaSettings::new(brokers);
        kafka.topic_partitions = PARTITIONS;
        kafka.fetch_wait_max_ms = 10;
        let smtp = SmtpCapture::start().await.unwrap();
        let database = TestDatabase::create().await;
        let database_proxy = TcpProxy::start(database.server_addr().await).await.unwrap();
        let producer = kafka.producer().unwrap();
        let mut harness = Self {
            topics,
            kafka,
            smtp,
            producer,
            database,
            database_proxy,
            instance_id,
            running: None,
        };
        harness.start_dbproc(mail).await;
        harness
    }

    /// The settings of a replica with static membership `instance_id` (`None`: dynamic).
    pub fn config(&self, mail: MailSettings, instance_id: Option<&str>) -> Config {
        Config {
            // An empty id turns static membership off (the pod name would be used otherwise).
            kafka_group_instance_id: Some(instance_id.unwrap_or_default().to_owned()),
            kafka_assignment_strategy: assignment_strategy(),
            kafka_brokers: self.kafka.brokers.clone(),
            kafka_topic_prefix: self.topics.clone(),
            kafka_topic_partitions: PARTITIONS,
            kafka_replication_factor: 1,
            kafka_retention: broker_auth_kafka::RetentionArgs::default(),
            kafka_properties: broker_auth_kafka::PropertiesArgs::default(),
            kafka_fetch_wait_ms: 10,
            database_url: SecretString::from(self.database.url_through(self.database_proxy.addr())),
            database_max_connections: 4,
            smtp_url: SecretString::from(self.smtp.url()),
            mail_from: "Broker Auth <no-reply@example.com>".parse().unwrap(),
            mail_max_attempts: mail.max_attempts,
            mail_retry_initial_ms: mail.retry_initial_ms,
            mail_retry_max_ms: mail.retry_max_ms,
            mail_seal_key: SecretString::from(MAIL_SEAL_KEY),
            record_retention_secs: 7 * 24 * 3600,
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
        }
    }

    pub async fn start_dbproc(&mut self, mail: MailSettings) {
        assert!(self.running.is_none(), "dbproc is already running");
        let app = App::build(self.config(mail, self.instance_id.as_deref()))
            .await
            .unwrap();
        let metrics_addr = app.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        self.running = Some(Running {
            shutdown,
            task,
            metrics_addr,
        });
    }

    /// Starts another replica sharing the harness's topics, groups and database.
    pub async fn start_replica(&self) -> Replica {
        self.start_replica_with(&self.database.url_through(self.database_proxy.addr()))
            .await
    }

    /// Starts another replica (a static member of its own) that reaches Postgres at
    /// `database_url`, e.g. directly while the harness's dbproc is cut off.
    pub async fn start_replica_with(&self, database_url: &str) -> Replica {
        let mut config = self.config(
            MailSettings::default(),
            Some(&format!("replica-{}", Uuid::new_v4().simple())),
        );
        config.database_url = SecretString::from(database_url.to_owned());
        let app = App::build(config).await.unwrap();
        let metrics_addr = app.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Replica {
            running: Running {
                shutdown,
                task,
                metrics_addr,
            },
        }
    }

    /// Cancels dbproc and waits for it to finish; returns how long that took.
    pub async fn stop_dbproc(&mut self) -> Duration {
        let running = self.running.take().expect("dbproc is running");
        let started = Instant::now();
        running.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .expect("dbproc stops")
            .unwrap()
            .unwrap();
        started.elapsed()
    }

    pub fn metrics_url(&self, path: &str) -> String {
        let running = self.running.as_ref().expect("dbproc is running");
        format!("http://{}{path}", running.metrics_addr)
    }

    /// Polls `path` until `condition` holds for the body, or fails after `timeout`.
    pub async fn poll_http(
        &self,
        path: &str,
        timeout: Duration,
        condition: impl Fn(u16, &str) -> bool,
    ) -> String {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(response) = client.get(self.metrics_url(path)).send().await {
                let status = response.status().as_u16();
                last = response.text().await.unwrap_or_default();
                if condition(status, &last) {
                    return last;
                }
            }
            // Polling an HTTP endpoint: a short pause between polls, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{path} never satisfied the condition within {timeout:?}; last body:\n{last}");
    }

    pub fn reader(&self, topics: &[String]) -> Reader {
        Reader::new(&self.kafka, topics)
    }

    pub fn reply_reader(&self) -> Reader {
        self.reader(&self.topics.reply_topics())
    }

    pub fn dead_letter_reader(&self) -> Reader {
        self.reader(&[self.topics.dead_letter()])
    }

    /// Produces a raw record and waits for Kafka's acknowledgement.
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        record_headers: &[(&str, &str)],
    ) {
        let mut owned = OwnedHeaders::new();
        for (key, value) in record_headers {
            owned = owned.insert(Header {
                key,
                value: Some(*value),
            });
        }
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(owned),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Sends a well-formed directory request; returns its correlation id.
    pub async fn request(&self, kind: RequestKind, request_id: Uuid, body: Value) -> String {
        self.request_replying_to(kind, request_id, body, &self.topics.reply(kind))
            .await
    }

    /// [`Harness::request`] with the reply asked on `reply_to`.
    pub async fn request_replying_to(
        &self,
        kind: RequestKind,
        request_id: Uuid,
        body: Value,
        reply_to: &str,
    ) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        let email = body["email"].as_str().unwrap_or_default().to_owned();
        let payload = serde_json::to_vec(&Envelope::new(request_id, body)).unwrap();
        self.produce(
            &self.topics.request(kind),
            &email,
            &payload,
            &[
                (headers::CORRELATION_ID, &correlation_id),
                (headers::REPLY_TO, reply_to),
                (
                    headers::TRACEPARENT,
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
        )
        .await;
        correlation_id
    }

    /// Sends a mail request to the mail topic, its code sealed as the API seals it.
    /// `template` is `{"template": "account_exists"}` or
    /// `{"template": "signup_code", "code": …, "expires_in_minutes": …}`.
    pub async fn mail(&self, to: &str, template: Value) {
        self.mail_sealed_with(MAIL_SEAL_KEY, to, template).await;
    }

    /// [`Harness::mail`] with the code sealed under another `MAIL_SEAL_KEY`.
    pub async fn mail_sealed_with(&self, seal_key: &str, to: &str, template: Value) {
        let payload = sealed_mail(seal_key, Uuid::new_v4(), to, &template);
        self.produce(&self.topics.mail(), to, &payload, &[]).await;
    }

    /// The value of a metric sample line starting with `prefix`, 0 when absent.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = reqwest::get(self.metrics_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, prefix)
    }
}

pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
        }
    }
}

/// The mail-topic payload of request `request_id`: `template` as [`Harness::mail`] takes it,
/// with its code sealed under `seal_key`.
pub fn sealed_mail(seal_key: &str, request_id: Uuid, to: &str, template: &Value) -> Vec<u8> {
    let template = match template["template"].as_str() {
        Some("signup_code") => MailTemplate::SignupCode {
            code: template["code"].as_str().unwrap().to_owned(),
            expires_in_minutes: template["expires_in_minutes"]
                .as_u64()
                .unwrap()
                .try_into()
                .unwrap(),
        },
        Some("account_exists") => MailTemplate::AccountExists,
        other => panic!("no such mail template: {other:?}"),
    };
    let mail = MailRequest {
        to: to.to_owned(),
        template,
    };
    let sealed = MailSealKey::from_secret(seal_key.as_bytes())
        .unwrap()
        .seal(mail);
    Envelope::new(request_id, sealed).to_json()
}
