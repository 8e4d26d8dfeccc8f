//! The two group consumers: how they are configured, what they report about their group
//! membership, and how their offsets are committed.
//!
//! Offsets move only through [`commit`], called after a record's effect is durable. librdkafka
//! hands a revocation to the application only inside a poll, and the workers poll only between
//! records, so a partition cannot be taken away while its record is in hand — except when the
//! worker holds one record past `max.poll.interval.ms` and librdkafka leaves the group. Then the
//! late commit carries a stale generation and the coordinator refuses it; [`MembershipContext`]
//! counts that refusal and the record is redelivered to the partition's new owner.
//!
//! The flip side: a worker retrying one record (database down) does not serve rebalances, so
//! with the default eager protocol a scale event waits for it — up to `max.poll.interval.ms` —
//! while the other members sit without partitions. `dbproc_consumer_retrying_records` shows
//! when that is the case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::ClientContext;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use broker_auth_kafka::rdkafka::error::{KafkaError, KafkaResult};
use broker_auth_kafka::rdkafka::message::BorrowedMessage;
use broker_auth_kafka::rdkafka::topic_partition_list::TopicPartitionList;
use broker_auth_kafka::rdkafka::types::RDKafkaErrorCode;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::{ConsumerLabels, Metrics};

/// How long a worker may hold one record before librdkafka gives its partitions to another
/// member (`max.poll.interval.ms`, librdkafka's default, set explicitly because the mail retry
/// schedule is checked against it).
pub const MAX_POLL_INTERVAL_MS: u64 = 300_000;

pub type GroupConsumer = StreamConsumer<MembershipContext>;

/// Which of dbproc's two consumers, as named in logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerName {
    Directory,
    Mail,
}

impl ConsumerName {
    pub fn label(self) -> &'static str {
        match self {
            ConsumerName::Directory => "directory",
            ConsumerName::Mail => "mail",
        }
    }
}

/// Follows one consumer's group membership: whether it has joined the group (received an
/// assignment, possibly empty), how many partitions it holds, and whether commits fail.
pub struct MembershipContext {
    name: ConsumerName,
    joined: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl ClientContext for MembershipContext {}

impl ConsumerContext for MembershipContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let labels = ConsumerLabels {
            consumer: self.name.label(),
        };
        match rebalance {
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {
                let assigned = consumer.assignment().map(|list| list.count()).unwrap_or(0);
                if matches!(rebalance, Rebalance::Assign(_)) {
                    self.joined.store(true, Ordering::Release);
                }
                self.metrics
                    .assigned_partitions
                    .get_or_create(&labels)
                    .set(i64::try_from(assigned).unwrap_or(i64::MAX));
                tracing::info!(
                    consumer = self.name.label(),
                    event = if matches!(rebalance, Rebalance::Assign(_)) {
                        "assign"
                    } else {
                        "revoke"
                    },
                    assigned,
                    "consumer group rebalanced"
                );
            }
            Rebalance::Error(error) => {
                tracing::warn!(consumer = self.name.label(), %error, "consumer group rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            // A commit with nothing stored since the last one, e.g. the final one at shutdown.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.metrics
                    .offset_commit_failures
                    .get_or_create(&ConsumerLabels {
                        consumer: self.name.label(),
                    })
                    .inc();
                tracing::warn!(
                    consumer = self.name.label(),
                    %error,
                    "kafka refused an offset commit; the records since the last commit will be redelivered"
                );
            }
        }
    }
}

/// A consumer in `group_id` that never commits on its own (the settings of
/// [`KafkaSettings::group_consumer`], plus a context that follows the membership). Returns it
/// with the flag that turns true once it has joined the group.
pub fn group_consumer(
    kafka: &KafkaSettings,
    group_id: &str,
    name: ConsumerName,
    metrics: Arc<Metrics>,
) -> KafkaResult<(GroupConsumer, Arc<AtomicBool>)> {
    let mut config = kafka.group_consumer_config(group_id);
    // Set explicitly: the mail retry budget is checked against it at start.
    config.set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string());
    let joined = Arc::new(AtomicBool::new(false));
    let context = MembershipContext {
        name,
        joined: joined.clone(),
        metrics,
    };
    Ok((config.create_with_context(context)?, joined))
}

/// The next record of `consumer`, or `None` once `shutdown` is cancelled. librdkafka reconnects
/// by itself after an error; the pause (`backoff`, growing with consecutive errors) keeps a
/// broker outage from becoming a hot loop.
pub async fn next_record<'c>(
    consumer: &'c GroupConsumer,
    name: ConsumerName,
    backoff: &Backoff,
    shutdown: &CancellationToken,
) -> Option<BorrowedMessage<'c>> {
    let mut consecutive_errors = 0;
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => return Some(message),
            Err(error) => {
                consecutive_errors += 1;
                tracing::warn!(consumer = name.label(), %error, "consumer error");
                if !backoff.wait(consecutive_errors, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Marks `message` done: stores its offset and commits asynchronously, so the lag the operator
/// reads drops as soon as the work is durable. A commit Kafka refuses is reported by
/// [`MembershipContext::commit_callback`]; it only means redelivery, which is harmless because
/// handling is idempotent.
pub fn commit(consumer: &GroupConsumer, message: &BorrowedMessage<'_>) {
    if let Err(error) = consumer
        .store_offset_from_message(message)
        .and_then(|()| consumer.commit_consumer_state(CommitMode::Async))
    {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            %error,
            "could not commit an offset; the record may be redelivered"
        );
    }
}

/// Commits what was stored, waits for it, and leaves the consumer group. Blocking; run it off
/// the async runtime.
pub fn close(name: ConsumerName, consumer: Arc<GroupConsumer>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Every finished record's offset was already committed.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(
            consumer = name.label(),
            %error,
            "the final offset commit failed; the last records may be redelivered"
        ),
    }
    consumer.unsubscribe();
    // Dropping the last handle closes the consumer, which leaves the group at once so the
    // partitions move to the remaining members without waiting for a session timeout.
    if Arc::strong_count(&consumer) > 1 {
        tracing::warn!(
            consumer = name.label(),
            "a consumer handle outlives shutdown; the group is left when it is dropped"
        );
    }
    drop(consumer);
}
