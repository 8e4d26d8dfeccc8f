//! What reconcile and the metrics API need from Kafka, behind a trait so reconcile can be
//! tested against a mock API server without a broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::crd::UncommittedPartitionPolicy;
use crate::error::{Error, Result};
use crate::lag::{self, ConsumerLag, PartitionOffsets};

/// How long one Kafka admin or offset request may take.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// Something deleting a BrokerAuth's Kafka data had to leave, and the broker's answer. Only
/// answers that asking again cannot change end up here (the broker does not implement the
/// request, or refuses it); the operator reports them in a warning Event and lets the BrokerAuth go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftInKafka {
    /// `topic` or `consumer group`.
    pub kind: &'static str,
    pub name: String,
    pub answer: String,
}

impl std::fmt::Display for LeftInKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.name, self.answer)
    }
}

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

    /// Deletes consumer groups and so their committed offsets. A group that does not exist
    /// counts as deleted; a transient failure (a member still in the group, a coordinator
    /// moving, the broker unreachable) is an error, to be retried.
    async fn delete_consumer_groups(
        &self,
        settings: &KafkaSettings,
        groups: &[String],
    ) -> Result<Vec<LeftInKafka>>;

    /// Deletes topics, on the same terms as [`KafkaAdmin::delete_consumer_groups`].
    async fn delete_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
    ) -> Result<Vec<LeftInKafka>>;

    /// The names of the cluster's topics that start with `prefix`.
    async fn list_topics(&self, settings: &KafkaSettings, prefix: &str) -> Result<Vec<String>>;
}

/// How the broker answered a deletion.
#[derive(Debug, PartialEq, Eq)]
enum DeleteAnswer {
    Deleted,
    /// Asking again will not help: leave it and say so.
    Refused,
    /// Worth asking again.
    Transient,
}

fn judge_delete(code: RDKafkaErrorCode, already_gone: RDKafkaErrorCode) -> DeleteAnswer {
    use RDKafkaErrorCode as Code;
    match code {
        Code::NoError => DeleteAnswer::Deleted,
        code if code == already_gone => DeleteAnswer::Deleted,
        // A broker without the API (tansu, old Kafka) or that does not know what to do with it,
        // a cluster with topic deletion off, missing ACLs.
        Code::UnsupportedVersion
        | Code::UnsupportedFeature
        | Code::Unknown
        | Code::InvalidRequest
        | Code::TopicDeletionDisabled
        | Code::PolicyViolation
        | Code::InvalidGroupId
        | Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed => DeleteAnswer::Refused,
        _ => DeleteAnswer::Transient,
    }
}

/// Sorts the per-name answers of one delete request: deleted names are logged, refused ones
/// returned, and the first transient one fails the call.
fn sort_answers(
    kind: &'static str,
    answers: Vec<Result<String, (String, RDKafkaErrorCode)>>,
    already_gone: RDKafkaErrorCode,
) -> Result<Vec<LeftInKafka>> {
    let mut left = Vec::new();
    for answer in answers {
        let (name, code) = match answer {
            Ok(name) => (name, RDKafkaErrorCode::NoError),
            Err(failed) => failed,
        };
        match judge_delete(code, already_gone) {
            DeleteAnswer::Deleted => tracing::info!(kind, %name, "deleted from kafka"),
            DeleteAnswer::Refused => left.push(LeftInKafka {
                kind,
                name,
                answer: code.to_string(),
            }),
            DeleteAnswer::Transient => {
                return Err(Error::KafkaDelete {
                    what: format!("{kind} {name}"),
                    code,
                });
            }
        }
    }
    Ok(left)
}

/// A failure of the whole request: refused for every name, or transient.
fn whole_request_failed(
    kind: &'static str,
    names: &[String],
    error: rdkafka::error::KafkaError,
) -> Result<Vec<LeftInKafka>> {
    match error.rdkafka_error_code() {
        Some(code) if judge_delete(code, RDKafkaErrorCode::NoError) == DeleteAnswer::Refused => {
            Ok(names
                .iter()
                .map(|name| LeftInKafka {
                    kind,
                    name: name.clone(),
                    answer: code.to_string(),
                })
                .collect())
        }
        _ => Err(error.into()),
    }
}

/// The real thing, on librdkafka, with long-lived clients per Kafka cluster.
#[derive(Default)]
pub struct RdKafkaAdmin {
    clusters: Mutex<HashMap<String, Arc<ClusterClients>>>,
}

/// The clients the operator keeps for one Kafka cluster (one bootstrap list and its extra
/// properties), reused by every reconcile and metric read: an admin client, a consumer outside
/// any group for metadata and ListOffsets, and, since librdkafka binds OffsetFetch to a
/// consumer's `group.id`, one consumer per consumer group whose commits are read (never joined).
pub struct ClusterClients {
    admin: AdminClient<DefaultClientContext>,
    offsets: Arc<BaseConsumer>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    settings: KafkaSettings,
}

impl ClusterClients {
    fn new(settings: &KafkaSettings) -> Result<Self> {
        Ok(Self {
            admin: settings.base_config().create()?,
            offsets: Arc::new(settings.base_config().create()?),
            groups: Mutex::new(HashMap::new()),
            settings: settings.clone(),
        })
    }

    /// The consumer that reads `group`'s commits.
    fn group(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = groups.get(group) {
            return Ok(consumer.clone());
        }
        let mut config = self.settings.base_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: Arc<BaseConsumer> = Arc::new(config.create()?);
        groups.insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// Offsets of every partition of `topics` for `group`, in a few batched requests.
    pub async fn offsets(
        &self,
        group: &str,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, i32, PartitionOffsets)>> {
        let metadata = self.offsets.clone();
        let group = self.group(group)?;
        let topics = topics.to_vec();
        // librdkafka's offset calls block; keep them off the async runtime.
        tokio::task::spawn_blocking(move || lag::read_offsets(&metadata, &group, &topics, timeout))
            .await?
    }
}

impl RdKafkaAdmin {
    /// The clients for the cluster `settings` reach, made on first use.
    pub fn clients(&self, settings: &KafkaSettings) -> Result<Arc<ClusterClients>> {
        let key = cluster_key(settings);
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clients) = clusters.get(&key) {
            return Ok(clients.clone());
        }
        let clients = Arc::new(ClusterClients::new(settings)?);
        clusters.insert(key, clients.clone());
        Ok(clients)
    }
}

/// Clients are shared by everything reaching the same brokers with the same properties.
fn cluster_key(settings: &KafkaSettings) -> String {
    let mut key = settings.brokers.clone();
    for (name, value) in &settings.extra {
        key.push_str(&format!("\n{name}={value}"));
    }
    key
}

#[async_trait]
impl KafkaAdmin for RdKafkaAdmin {
    async fn ensure_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
        min_partitions: i32,
    ) -> Result<TopicReport> {
        broker_auth_kafka::ensure_topics(settings, topics).await?;
        let counts = self
            .clients(settings)?
            .partition_counts(topics, KAFKA_TIMEOUT)
            .await?;
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
        let offsets = self
            .clients(settings)?
            .offsets(group, topics, KAFKA_TIMEOUT)
            .await?;
        Ok(ConsumerLag::from_offsets(&offsets, policy))
    }

    async fn delete_consumer_groups(
        &self,
        settings: &KafkaSettings,
        groups: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        let clients = self.clients(settings)?;
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
        match clients.admin.delete_groups(&names, &options).await {
            Ok(answers) => {
                sort_answers("consumer group", answers, RDKafkaErrorCode::GroupIdNotFound)
            }
            Err(error) => whole_request_failed("consumer group", groups, error),
        }
    }

    async fn delete_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        let clients = self.clients(settings)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        match clients.admin.delete_topics(&names, &options).await {
            Ok(answers) => {
                sort_answers("topic", answers, RDKafkaErrorCode::UnknownTopicOrPartition)
            }
            Err(error) => whole_request_failed("topic", topics, error),
        }
    }

    async fn list_topics(&self, settings: &KafkaSettings, prefix: &str) -> Result<Vec<String>> {
        self.clients(settings)?
            .topics_named(prefix, KAFKA_TIMEOUT)
            .await
    }
}

impl ClusterClients {
    /// The names of the cluster's topics that start with `prefix`, from one metadata request.
    pub async fn topics_named(&self, prefix: &str, timeout: Duration) -> Result<Vec<String>> {
        let metadata = self.offsets.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let metadata = metadata
                .fetch_metadata(None, timeout)
                .map_err(broker_auth_kafka::Error::Metadata)?;
            Ok(metadata
                .topics()
                .iter()
                .map(|topic| topic.name())
                .filter(|name| name.starts_with(&prefix))
                .map(str::to_owned)
                .collect())
        })
        .await?
    }

    /// The partition count of each topic; fails when one is missing.
    pub async fn partition_counts(
        &self,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, i32)>> {
        let metadata = self.offsets.clone();
        let topics = topics.to_vec();
        let counts = tokio::task::spawn_blocking(move || {
            broker_auth_kafka::partition_counts_blocking(&*metadata, &topics, timeout)
        })
        .await??;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_answers_are_done_left_or_retried() {
        use RDKafkaErrorCode as Code;
        let gone = Code::GroupIdNotFound;
        assert_eq!(judge_delete(Code::NoError, gone), DeleteAnswer::Deleted);
        assert_eq!(judge_delete(gone, gone), DeleteAnswer::Deleted);
        for refused in [
            Code::UnsupportedVersion,
            Code::UnsupportedFeature,
            Code::Unknown,
            Code::TopicDeletionDisabled,
            Code::GroupAuthorizationFailed,
        ] {
            assert_eq!(
                judge_delete(refused, gone),
                DeleteAnswer::Refused,
                "{refused:?}"
            );
        }
        for transient in [
            Code::NonEmptyGroup,
            Code::RequestTimedOut,
            Code::NotCoordinator,
            Code::CoordinatorLoadInProgress,
        ] {
            assert_eq!(
                judge_delete(transient, gone),
                DeleteAnswer::Transient,
                "{transient:?}"
            );
        }
    }

    #[test]
    fn one_transient_answer_fails_the_call_and_refusals_are_returned() {
        let left = sort_answers(
            "topic",
            vec![
                Ok("a".into()),
                Err(("b".into(), RDKafkaErrorCode::UnknownTopicOrPartition)),
                Err(("c".into(), RDKafkaErrorCode::TopicDeletionDisabled)),
            ],
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )
        .unwrap();
        assert_eq!(
            left,
            [LeftInKafka {
                kind: "topic",
                name: "c".into(),
                answer: RDKafkaErrorCode::TopicDeletionDisabled.to_string()
            }]
        );
        let retry = sort_answers(
            "consumer group",
            vec![Err(("g".into(), RDKafkaErrorCode::NonEmptyGroup))],
            RDKafkaErrorCode::GroupIdNotFound,
        );
        assert!(matches!(retry, Err(Error::KafkaDelete { .. })));
    }
}
