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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("could not create topic {topic}: {code}")]
    CreateTopic {
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
    /// Extra librdkafka properties (e.g. `security.protocol`), applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            fetch_wait_max_ms: 10,
            topic_partitions: 3,
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(10),
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
        let mut config = self.base_config();
        config.set("linger.ms", "0").set("acks", "all").set(
            "message.timeout.ms",
            self.delivery_timeout.as_millis().max(1).to_string(),
        );
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
            .set("session.timeout.ms", "10000")
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

/// Creates the topics that do not exist yet with the settings' partitions and replication.
/// Topics that already exist are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> Result<()> {
    let admin = settings.admin()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic,
                settings.topic_partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
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
    tokio::task::spawn_blocking(move || {
        topics
            .into_iter()
            .map(|topic| {
                let metadata = client
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(Error::Metadata)?;
                let count = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                if count == 0 {
                    return Err(Error::MissingTopic(topic));
                }
                Ok((topic, i32::try_from(count).unwrap_or(i32::MAX)))
            })
            .collect()
    })
    .await?
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
