//! What reconcile and the metrics API need from Kafka, behind a trait so reconcile can be
//! tested against a mock API server without a broker.

use std::time::Duration;

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::crd::UncommittedPartitionPolicy;
use crate::error::{Error, Result};
use crate::lag::{self, ConsumerLag};

/// How long one Kafka admin or offset request may take.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// What ensuring the topics found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicReport {
    /// Existing topics with fewer partitions than required, with their count.
    pub under_partitioned: Vec<(String, i32)>,
}

#[async_trait]
pub trait KafkaAdmin: Send + Sync + 'static {
    /// Creates missing topics with `partitions` partitions and reports existing topics that have
    /// fewer than `min_partitions` (Kafka cannot shrink, and growing re-keys partitions, so the
    /// operator warns rather than changes them).
    async fn ensure_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
        min_partitions: i32,
    ) -> Result<TopicReport>;

    async fn consumer_lag(
        &self,
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
        policy: UncommittedPartitionPolicy,
    ) -> Result<ConsumerLag>;

    async fn delete_topics(&self, settings: &KafkaSettings, topics: &[String]) -> Result<()>;
}

/// The real thing, on librdkafka.
#[derive(Debug, Default, Clone)]
pub struct RdKafkaAdmin;

#[async_trait]
impl KafkaAdmin for RdKafkaAdmin {
    async fn ensure_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
        min_partitions: i32,
    ) -> Result<TopicReport> {
        broker_auth_kafka::ensure_topics(settings, topics).await?;
        let counts = broker_auth_kafka::partition_counts(settings, topics, KAFKA_TIMEOUT).await?;
        Ok(TopicReport {
            under_partitioned: counts
                .into_iter()
                .filter(|(_, count)| *count < min_partitions)
                .collect(),
        })
    }

    async fn consumer_lag(
        &self,
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
        policy: UncommittedPartitionPolicy,
    ) -> Result<ConsumerLag> {
        lag::consumer_lag(settings, group, topics, policy, KAFKA_TIMEOUT).await
    }

    async fn delete_topics(&self, settings: &KafkaSettings, topics: &[String]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = settings.base_config().create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        for result in admin.delete_topics(&names, &options).await? {
            match result {
                Ok(topic) => tracing::info!(%topic, "deleted kafka topic"),
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(Error::DeleteTopic { topic, code });
                }
            }
        }
        Ok(())
    }
}
