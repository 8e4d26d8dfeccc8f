//! Kafka plumbing shared by broker-auth's binaries: client settings, topic administration and
//! header helpers. The message contract itself lives in `broker-auth-contract`.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

pub use rdkafka;

use broker_auth_contract::TopicClass;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("could not create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("could not delete topic {topic}: {code}")]
    DeleteTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("kafka metadata request failed: {0}")]
    Metadata(KafkaError),
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach Kafka and how to shape the topics we create.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma separated `host:port`.
    pub brokers: String,
    /// `fetch.wait.max.ms` for consumers. Small on the reply path: the RPC round trip waits on it.
    pub fetch_wait_max_ms: u32,
    /// Partitions of topics this process creates when they are missing.
    pub topic_partitions: i32,
    /// Replication factor of topics this process creates when they are missing.
    pub replication_factor: i32,
    /// How long a producer keeps trying to deliver a record (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long the topics this process creates keep their records.
    pub retention: TopicRetention,
    /// Extra librdkafka properties (e.g. `security.protocol`), applied last.
    pub extra: Vec<(String, String)>,
}

/// Retention of the topics broker-auth creates, by what they carry ([`TopicClass`]), so codes
/// and bcrypt hashes do not sit in Kafka for the broker's default week or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRetention {
    /// `mail-outbox` and the reply topics: a code is worth nothing after its few minutes and
    /// a reply is awaited for seconds.
    pub short: Duration,
    /// The request topics: long enough to ride out a worker-tier outage (a creation that lands
    /// late is still answered by request id).
    pub requests: Duration,
    /// The dead-letter topic: long enough for a person to look.
    pub dead_letters: Duration,
    /// `retention.bytes` of every partition, a bound on disk whatever the traffic.
    pub bytes_per_partition: u64,
}

impl Default for TopicRetention {
    fn default() -> Self {
        Self {
            short: Duration::from_secs(60 * 60),
            requests: Duration::from_secs(24 * 60 * 60),
            dead_letters: Duration::from_secs(7 * 24 * 60 * 60),
            bytes_per_partition: 1 << 30,
        }
    }
}

/// Extra librdkafka properties both binaries take (flattened into their configs): what a
/// deployment's Kafka needs and broker-auth has no setting of its own for, such as
/// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`,
/// or `debug` when diagnosing.
///
/// Kept as the raw text and parsed by [`PropertiesArgs::pairs`], not by clap: clap's error for a
/// bad value quotes the value, and this one may hold a password.
#[derive(Clone, Default, clap::Args)]
pub struct PropertiesArgs {
    /// Extra librdkafka properties as `key=value` entries separated by `;` (secret: may hold
    /// `sasl.password`). Applied last, so they override broker-auth's own client settings.
    #[arg(
        long = "kafka-properties",
        env = "KAFKA_PROPERTIES",
        hide_env_values = true
    )]
    pub kafka_properties: Option<String>,
}

impl std::fmt::Debug for PropertiesArgs {
    /// The keys only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .pairs()
            .map(|pairs| pairs.into_iter().map(|(key, _)| key).collect())
            .unwrap_or_default();
        f.debug_struct("PropertiesArgs")
            .field("keys", &keys)
            .finish()
    }
}

impl PropertiesArgs {
    /// The properties as [`KafkaSettings::extra`] wants them. Empty entries (a trailing `;`)
    /// are skipped. A key is lowercase letters, digits, dots and underscores, as every
    /// librdkafka property is named; a value may be empty or contain `=`. The error names the
    /// entry by number and never quotes a value.
    pub fn pairs(&self) -> std::result::Result<Vec<(String, String)>, String> {
        let Some(text) = &self.kafka_properties else {
            return Ok(Vec::new());
        };
        let mut pairs = Vec::new();
        for (n, entry) in text.split(';').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("KAFKA_PROPERTIES: entry {} is not key=value", n + 1))?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
            {
                return Err(format!(
                    "KAFKA_PROPERTIES: entry {} does not start with a librdkafka property name \
                     (lowercase letters, digits, dots and underscores, then =)",
                    n + 1
                ));
            }
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
        Ok(pairs)
    }
}

/// The retention settings both binaries take (flattened into their configs), so the API and
/// dbproc create topics alike whichever starts first.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// How long `mail-outbox` and the reply topics keep records, in milliseconds (only for
    /// topics created when missing).
    #[arg(long, env = "KAFKA_SHORT_RETENTION_MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(60_000..))]
    pub kafka_short_retention_ms: u64,

    /// How long the request topics keep records, in milliseconds.
    #[arg(long, env = "KAFKA_REQUEST_RETENTION_MS", default_value_t = 86_400_000,
          value_parser = clap::value_parser!(u64).range(60_000..))]
    pub kafka_request_retention_ms: u64,

    /// How long the dead-letter topic keeps records, in milliseconds.
    #[arg(long, env = "KAFKA_DEAD_LETTER_RETENTION_MS", default_value_t = 604_800_000,
          value_parser = clap::value_parser!(u64).range(60_000..))]
    pub kafka_dead_letter_retention_ms: u64,

    /// Most bytes each partition of those topics keeps (`retention.bytes`).
    #[arg(long, env = "KAFKA_RETENTION_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1_048_576..))]
    pub kafka_retention_bytes: u64,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        let retention = TopicRetention::default();
        Self {
            kafka_short_retention_ms: millis(retention.short),
            kafka_request_retention_ms: millis(retention.requests),
            kafka_dead_letter_retention_ms: millis(retention.dead_letters),
            kafka_retention_bytes: retention.bytes_per_partition,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RetentionArgs {
    pub fn retention(&self) -> TopicRetention {
        TopicRetention {
            short: Duration::from_millis(self.kafka_short_retention_ms),
            requests: Duration::from_millis(self.kafka_request_retention_ms),
            dead_letters: Duration::from_millis(self.kafka_dead_letter_retention_ms),
            bytes_per_partition: self.kafka_retention_bytes,
        }
    }
}

impl TopicRetention {
    /// The topic configs a new `topic` gets. A topic that is not one of broker-auth's (tests
    /// create some) is kept like a request topic: bounded all the same.
    pub fn topic_configs(&self, topic: &str) -> [(&'static str, String); 3] {
        let retention = match TopicClass::of(topic) {
            Some(TopicClass::Mail | TopicClass::Reply) => self.short,
            // Read late by compliance systems: the long class.
            Some(TopicClass::DeadLetter | TopicClass::Events) => self.dead_letters,
            Some(TopicClass::Request) | None => self.requests,
        };
        [
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", retention.as_millis().to_string()),
            ("retention.bytes", self.bytes_per_partition.to_string()),
        ]
    }
}

/// How long the broker keeps a consumer group member that has stopped heartbeating.
///
/// Seconds, not Kafka's 45 s, so a member that died and does not come back has its partitions
/// moved soon. Long enough to ride out what routinely interrupts a static member without a
/// rebalance: a pod restarted after a crash comes back under its `group.instance.id` and takes
/// its partitions back as if nothing happened, and a broker or network outage of 10 s (the
/// drill's link cut) plus the reconnect does not expire anyone. On tansu 0.6 it matters more: a
/// static group whose leader's session expires while another member heartbeats can be left
/// without a leader for good (docs/drills.md). Measured by `scripts/drill`: with 10 s, the
/// 10 s Kafka cut left the group stuck in one of three runs; with 15 s, every fault recovered.
/// `KAFKA_PROPERTIES=session.timeout.ms=…` overrides it.
pub const GROUP_SESSION_TIMEOUT: Duration = Duration::from_secs(15);

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            fetch_wait_max_ms: 10,
            topic_partitions: 3,
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(10),
            retention: TopicRetention::default(),
            extra: Vec::new(),
        }
    }

    /// The configuration every client starts from, with the extra properties applied.
    pub fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.max.ms", "1000");
        self.apply_extra(&mut config);
        config
    }

    /// Extra properties win over everything this crate sets, so they go on last.
    fn apply_extra(&self, config: &mut ClientConfig) {
        for (key, value) in &self.extra {
            config.set(key, value);
        }
    }

    /// A producer tuned for the latency-critical request/reply path.
    pub fn producer(&self) -> Result<FutureProducer> {
        self.producer_with(&[])
    }

    /// [`KafkaSettings::producer`] with more properties of the caller's (the extra properties
    /// still win).
    pub fn producer_with(&self, properties: &[(&str, &str)]) -> Result<FutureProducer> {
        let mut config = self.base_config();
        config.set("linger.ms", "0").set("acks", "all").set(
            "message.timeout.ms",
            self.delivery_timeout.as_millis().max(1).to_string(),
        );
        for (key, value) in properties {
            config.set(*key, *value);
        }
        self.apply_extra(&mut config);
        Ok(config.create()?)
    }

    /// A consumer in `group_id` that never commits on its own: callers store offsets after the
    /// work is durable and commit them.
    pub fn group_consumer(&self, group_id: &str) -> Result<StreamConsumer> {
        Ok(self.group_consumer_config(group_id).create()?)
    }

    /// The configuration of [`KafkaSettings::group_consumer`], for callers that create the
    /// consumer with a context of their own.
    pub fn group_consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set(
                "session.timeout.ms",
                GROUP_SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "1000");
        self.apply_extra(&mut config);
        config
    }

    /// A consumer for manual partition assignment (no group membership, no commits), e.g. the
    /// API's reply reader.
    pub fn assigned_consumer(&self, client_id: &str) -> Result<StreamConsumer> {
        let mut config = self.base_config();
        config
            // librdkafka wants a group id even for assign(); it is never joined or committed.
            .set("group.id", client_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("fetch.error.backoff.ms", "50");
        self.apply_extra(&mut config);
        Ok(config.create()?)
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        Ok(self.base_config().create()?)
    }

    fn metadata_client(&self) -> Result<BaseConsumer> {
        Ok(self.base_config().create()?)
    }
}

/// Creates the topics that do not exist yet with the settings' partitions, replication and
/// retention ([`TopicRetention::topic_configs`]). Topics that already exist are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> Result<()> {
    create_missing_topics(settings, topics).await.map(|_| ())
}

/// [`ensure_topics`], saying which topics it created. Asking the broker to create a topic is
/// also the one reliable way to learn whether it exists: tansu 0.6 goes on describing a deleted
/// topic in metadata.
pub async fn create_missing_topics(
    settings: &KafkaSettings,
    topics: &[String],
) -> Result<Vec<String>> {
    let admin = settings.admin()?;
    let configs: Vec<[(&'static str, String); 3]> = topics
        .iter()
        .map(|topic| settings.retention.topic_configs(topic))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|(topic, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    topic,
                    settings.topic_partitions,
                    TopicReplication::Fixed(settings.replication_factor),
                ),
                |new_topic, (key, value)| new_topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, "created kafka topic");
                created.push(topic);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
        }
    }
    Ok(created)
}

/// Deletes topics; one that does not exist counts as deleted.
pub async fn delete_topics(settings: &KafkaSettings, topics: &[String]) -> Result<()> {
    let admin = settings.admin()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "deleted kafka topic"),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(Error::DeleteTopic { topic, code }),
        }
    }
    Ok(())
}

/// The partition count of each topic, in the order given. Fails when a topic is missing.
pub async fn partition_counts(
    settings: &KafkaSettings,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32)>> {
    let client = settings.metadata_client()?;
    let topics = topics.to_vec();
    // librdkafka's metadata call blocks; keep it off the async runtime.
    tokio::task::spawn_blocking(move || partition_counts_blocking(&client, &topics, timeout))
        .await?
}

/// [`partition_counts`] with a client of the caller's, from one metadata request per topic.
/// Blocks: call it off the async runtime.
pub fn partition_counts_blocking<C: Consumer>(
    client: &C,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32)>> {
    topics
        .iter()
        .map(|topic| {
            let metadata =
                client
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|error| match error.rdkafka_error_code() {
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic,
                        ) => Error::MissingTopic(topic.clone()),
                        _ => Error::Metadata(error),
                    })?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if count == 0 {
                return Err(Error::MissingTopic(topic.clone()));
            }
            Ok((topic.clone(), i32::try_from(count).unwrap_or(i32::MAX)))
        })
        .collect()
}

/// Whether the cluster answers a metadata request within `timeout`.
pub async fn is_reachable<C>(client: std::sync::Arc<C>, timeout: Duration) -> bool
where
    C: Consumer + Send + Sync + 'static,
{
    // librdkafka's metadata call blocks; keep it off the async runtime.
    tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}

/// The UTF-8 value of header `name`, if present and valid.
pub fn header_str<'a>(headers: Option<&'a BorrowedHeaders>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// A consumed record's headers as `(name, value)` pairs, the form the contract's decoders read
/// (`broker_auth_contract::RequestHeaders::decode`).
pub fn raw_headers(headers: Option<&BorrowedHeaders>) -> Vec<(&str, Option<&[u8]>)> {
    headers.map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|header| (header.key, header.value))
            .collect()
    })
}

/// Builds record headers from `(name, value)` pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// Copies every header of a consumed record, e.g. to dead-letter it with its context intact.
pub fn copy_headers(from: Option<&BorrowedHeaders>) -> OwnedHeaders {
    from.map(|headers| headers.detach()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(topic: &str) -> std::collections::BTreeMap<&'static str, String> {
        TopicRetention::default()
            .topic_configs(topic)
            .into_iter()
            .collect()
    }

    #[test]
    fn extra_properties_parse_and_bad_ones_are_refused_without_quoting_them() {
        let properties = |text: &str| PropertiesArgs {
            kafka_properties: Some(text.to_owned()),
        };
        assert_eq!(
            properties("security.protocol=SASL_SSL; sasl.password=a=b;debug=;")
                .pairs()
                .unwrap(),
            [
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.password".to_owned(), "a=b".to_owned()),
                ("debug".to_owned(), String::new()),
            ]
        );
        assert!(PropertiesArgs::default().pairs().unwrap().is_empty());
        assert!(properties("").pairs().unwrap().is_empty());
        for (bad, entry) in [
            ("sasl.password hunter2", 1),
            ("a=b;=hunter2", 2),
            ("Sasl.Password=hunter2", 1),
            ("a b=hunter2", 1),
        ] {
            let error = properties(bad).pairs().unwrap_err();
            assert!(error.contains(&format!("entry {entry}")), "{bad}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        // Debug shows the keys, never the values.
        let debug = format!("{:?}", properties("sasl.password=hunter2"));
        assert!(
            debug.contains("sasl.password") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn the_flags_default_to_the_default_retention() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            retention: RetentionArgs,
        }
        let parsed = Cli::parse_from(["test"]).retention;
        assert_eq!(parsed.retention(), TopicRetention::default());
        assert_eq!(
            RetentionArgs::default().retention(),
            TopicRetention::default()
        );
        let short = Cli::parse_from(["test", "--kafka-short-retention-ms", "600000"]).retention;
        assert_eq!(short.retention().short, Duration::from_secs(600));
        assert!(Cli::try_parse_from(["test", "--kafka-short-retention-ms", "1000"]).is_err());
    }

    #[test]
    fn codes_and_replies_are_kept_an_hour_requests_a_day_dead_letters_a_week() {
        let topics = broker_auth_contract::Topics::new("p.").unwrap();
        assert_eq!(configs(&topics.mail())["retention.ms"], "3600000");
        for reply in topics.reply_topics() {
            assert_eq!(configs(&reply)["retention.ms"], "3600000", "{reply}");
        }
        for request in topics.request_topics() {
            assert_eq!(configs(&request)["retention.ms"], "86400000", "{request}");
        }
        assert_eq!(configs(&topics.dead_letter())["retention.ms"], "604800000");
        for topic in topics.all() {
            assert_eq!(configs(&topic)["cleanup.policy"], "delete");
            assert_eq!(configs(&topic)["retention.bytes"], "1073741824");
        }
    }
}
