//! The two group consumers: how they are configured, what they report about their group
//! membership, and how their offsets are committed.
//!
//! Offsets move only through [`commit`], called after a record's effect is durable.
//!
//! Group membership is built to recover in seconds: static membership (`group.instance.id`, from
//! the pod name) lets a restarted replica take its partitions back without a rebalance, the
//! session timeout is seconds, and cooperative-sticky assignment (the kafka crate's consumer
//! settings) leaves the partitions that do not move alone during a rebalance.
//!
//! librdkafka hands rebalances to the application only inside a poll. A worker retrying one
//! record (database or SMTP down) therefore keeps polling: on its first retry it pauses every
//! partition it holds ([`HeldRecord`]), so polls serve rebalances and deliver no records, and it
//! resumes them when the record is done. A rebalance never waits for a retry.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::ClientContext;
use broker_auth_kafka::rdkafka::Message;
use broker_auth_kafka::rdkafka::Offset;
use broker_auth_kafka::rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use broker_auth_kafka::rdkafka::error::{KafkaError, KafkaResult};
use broker_auth_kafka::rdkafka::message::BorrowedMessage;
use broker_auth_kafka::rdkafka::topic_partition_list::TopicPartitionList;
use broker_auth_kafka::rdkafka::types::RDKafkaErrorCode;

use tokio_util::sync::CancellationToken;

use crate::metrics::{ConsumerLabels, Metrics, RebalanceLabels};

/// How long a worker may go without polling before librdkafka gives its partitions to another
/// member (`max.poll.interval.ms`, librdkafka's default, set explicitly because the mail retry
/// schedule is checked against it). A record in retry keeps polling ([`HeldRecord`]), so only a
/// single SMTP or database call counts against it.
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
    /// A record is in retry and every partition is paused: partitions assigned meanwhile are
    /// paused too, so the polls that serve the group deliver nothing.
    holding: AtomicBool,
    /// The partitions held, followed from the rebalance events themselves: asking librdkafka
    /// for its assignment inside a rebalance callback deadlocks when the callback runs from
    /// the consumer's close.
    assigned: Mutex<HashSet<(String, i32)>>,
}

impl ClientContext for MembershipContext {}

impl ConsumerContext for MembershipContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let labels = ConsumerLabels {
            consumer: self.name.label(),
        };
        match rebalance {
            Rebalance::Assign(partitions) | Rebalance::Revoke(partitions) => {
                if matches!(rebalance, Rebalance::Assign(_)) {
                    // librdkafka keeps a partition's pause across revocation and reassignment:
                    // one paused during a retry is resumed when assigned again, unless a retry
                    // is going on now, in which case it is paused like the others.
                    let result = if self.holding.load(Ordering::Acquire) {
                        consumer.pause(partitions)
                    } else {
                        consumer.resume(partitions)
                    };
                    if let Err(error) = result {
                        tracing::warn!(consumer = self.name.label(), %error, "could not pause or resume newly assigned partitions");
                    }
                }
                let moved = partitions
                    .elements()
                    .into_iter()
                    .map(|p| (p.topic().to_owned(), p.partition()));
                let mut held = self
                    .assigned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let event = if matches!(rebalance, Rebalance::Assign(_)) {
                    held.extend(moved);
                    self.joined.store(true, Ordering::Release);
                    "assign"
                } else {
                    for partition in moved {
                        held.remove(&partition);
                    }
                    "revoke"
                };
                let assigned = held.len();
                drop(held);
                self.metrics
                    .assigned_partitions
                    .get_or_create(&labels)
                    .set(i64::try_from(assigned).unwrap_or(i64::MAX));
                // With cooperative assignment these are the partitions that moved, often none.
                self.metrics
                    .rebalanced_partitions
                    .get_or_create(&RebalanceLabels {
                        consumer: self.name.label(),
                        event,
                    })
                    .inc_by(u64::try_from(partitions.count()).unwrap_or(u64::MAX));
                tracing::info!(
                    consumer = self.name.label(),
                    event,
                    moved = partitions.count(),
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

/// How a replica takes part in its consumer groups.
#[derive(Debug, Clone)]
pub struct Membership {
    /// `group.instance.id`: static membership when set.
    pub instance_id: Option<String>,
    /// `partition.assignment.strategy`.
    pub assignment_strategy: String,
}

/// A consumer in `group_id` that never commits on its own (the settings of
/// [`KafkaSettings::group_consumer`], plus a context that follows the membership). With an
/// instance id it is a static member: restarted with the same id, it takes its partitions back
/// without a rebalance. Returns it with the flag that turns true once it has joined the group.
pub fn group_consumer(
    kafka: &KafkaSettings,
    group_id: &str,
    membership: &Membership,
    name: ConsumerName,
    metrics: Arc<Metrics>,
) -> KafkaResult<(GroupConsumer, Arc<AtomicBool>)> {
    let mut config = kafka.group_consumer_config(group_id);
    config.set(
        "partition.assignment.strategy",
        &membership.assignment_strategy,
    );
    // Set explicitly: the mail retry budget is checked against it at start.
    config.set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string());
    if let Some(instance_id) = &membership.instance_id {
        // Unique per group, not per process: the two consumers are in different groups.
        config.set("group.instance.id", instance_id);
    }
    let joined = Arc::new(AtomicBool::new(false));
    let context = MembershipContext {
        name,
        joined: joined.clone(),
        metrics,
        holding: AtomicBool::new(false),
        assigned: Mutex::new(HashSet::new()),
    };
    Ok((config.create_with_context(context)?, joined))
}

fn is_assigned(consumer: &GroupConsumer, topic: &str, partition: i32) -> bool {
    consumer
        .context()
        .assigned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&(topic.to_owned(), partition))
}

/// The pause after a consumer error before polling again.
///
/// Short and fixed, not a growing backoff: librdkafka reconnects by itself, and the errors it
/// reports (a broker down, a transport failure) are events queued in front of whatever came
/// after them — a group's revocation among them, which the group waits on until it is served.
/// A backoff that grew to seconds per error left a revocation queued behind dozens of errors
/// from a 10 s network cut, and the group unassigned for minutes (`scripts/drill`). The pause
/// only keeps a burst of errors from becoming a hot loop.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The next record of `consumer`, or `None` once `shutdown` is cancelled (or the consumer hit a
/// fatal error). Errors are logged and polling goes on after [`ERROR_PAUSE`].
pub async fn next_record<'c>(
    consumer: &'c GroupConsumer,
    name: ConsumerName,
    shutdown: &CancellationToken,
) -> Option<BorrowedMessage<'c>> {
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => return Some(message),
            Err(error) => {
                // E.g. another live member with the same group.instance.id fenced this one: it
                // will never consume again, so stop and let the process be restarted.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    tracing::error!(consumer = name.label(), ?code, %reason, "fatal consumer error");
                    return None;
                }
                tracing::warn!(consumer = name.label(), %error, "consumer error");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Why a record in hand was given up before its work was done. Either way it stays uncommitted
/// and is delivered again: after the restart, or to the partition's new owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Shutdown was asked for.
    Shutdown,
    /// The record's partition was revoked while the record was being retried.
    Revoked,
}

/// The record a worker is working on: its attempts and the waits between them end at shutdown,
/// and a partition no longer assigned is not committed.
///
/// On the first retry it pauses every partition of the consumer and from then on polls the
/// consumer during every wait and attempt, so the group's rebalances are served while the
/// record is retried (a paused partition delivers nothing; librdkafka drops what it had
/// prefetched and, on resume, fetches again from the next offset the application has not seen).
/// [`HeldRecord::release`] resumes them. A record that a poll delivers all the same (none
/// should) is not lost: its partition is rewound to it on release.
pub struct HeldRecord<'h> {
    consumer: &'h GroupConsumer,
    name: ConsumerName,
    topic: String,
    partition: i32,
    shutdown: &'h CancellationToken,
    /// Whether this record paused the consumer (it is in retry).
    holding: bool,
    /// Where to rewind partitions a poll delivered records of while holding.
    rewind: Vec<(String, i32, i64)>,
}

impl<'h> HeldRecord<'h> {
    pub fn new(
        consumer: &'h GroupConsumer,
        name: ConsumerName,
        message: &BorrowedMessage<'_>,
        shutdown: &'h CancellationToken,
    ) -> Self {
        Self {
            consumer,
            name,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            shutdown,
            holding: false,
            rewind: Vec::new(),
        }
    }

    /// Whether this consumer still owns the record's partition (a commit is pointless if not).
    pub fn still_assigned(&self) -> bool {
        is_assigned(self.consumer, &self.topic, self.partition)
    }

    /// Waits `delay` before the next attempt.
    pub async fn wait(&mut self, delay: Duration) -> Result<(), Abandoned> {
        self.wait_through_revocation(delay).await?;
        if self.still_assigned() {
            Ok(())
        } else {
            tracing::info!(
                consumer = self.name.label(),
                topic = %self.topic,
                partition = self.partition,
                "the partition of the record in retry was revoked; its new owner takes the record over"
            );
            Err(Abandoned::Revoked)
        }
    }

    /// Waits `delay` before the next attempt, and goes on even if the partition was revoked:
    /// for work that must be finished once begun.
    pub async fn wait_through_revocation(&mut self, delay: Duration) -> Result<(), Abandoned> {
        self.hold();
        let consumer = self.consumer;
        let name = self.name;
        let rewind = &mut self.rewind;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Abandoned::Shutdown),
            () = tokio::time::sleep(delay) => Ok(()),
            never = serve_group(consumer, name, rewind) => match never {},
        }
    }

    /// Runs one attempt of the work; only shutdown cuts it short. In retry, the group is served
    /// while the attempt runs.
    pub async fn attempt<F: Future>(&mut self, work: F) -> Result<F::Output, Abandoned> {
        if !self.holding {
            return tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Err(Abandoned::Shutdown),
                output = work => Ok(output),
            };
        }
        let consumer = self.consumer;
        let name = self.name;
        let rewind = &mut self.rewind;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Abandoned::Shutdown),
            output = work => Ok(output),
            never = serve_group(consumer, name, rewind) => match never {},
        }
    }

    /// `Err(Abandoned::Shutdown)` once shutdown was asked for: work not begun yet is left for
    /// redelivery.
    pub fn check_shutdown(&self) -> Result<(), Abandoned> {
        if self.shutdown.is_cancelled() {
            Err(Abandoned::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Runs one attempt of work that must not be cut off once begun, such as an SMTP send (the
    /// server may have taken the message before its answer arrives, and a mail abandoned there
    /// is sent again on redelivery) and the record that it was sent: shutdown does not stop it,
    /// its own timeouts bound it. In retry, the group is served while it runs.
    pub async fn finish<F: Future>(&mut self, work: F) -> F::Output {
        if !self.holding {
            return work.await;
        }
        let consumer = self.consumer;
        let name = self.name;
        let rewind = &mut self.rewind;
        tokio::select! {
            biased;
            output = work => output,
            never = serve_group(consumer, name, rewind) => match never {},
        }
    }

    /// Pauses every partition the consumer holds, once per record.
    fn hold(&mut self) {
        if self.holding {
            return;
        }
        self.holding = true;
        self.consumer
            .context()
            .holding
            .store(true, Ordering::Release);
        let paused = self
            .consumer
            .assignment()
            .and_then(|assignment| self.consumer.pause(&assignment));
        if let Err(error) = paused {
            tracing::warn!(consumer = self.name.label(), %error, "could not pause the partitions during a retry");
        }
    }

    /// The record is done (or given up): resumes the partitions paused for its retry, and
    /// rewinds any partition a poll delivered records of meanwhile.
    pub fn release(self) {
        if !self.holding {
            return;
        }
        let context = self.consumer.context();
        context.holding.store(false, Ordering::Release);
        // What is assigned now; partitions revoked meanwhile are resumed when assigned again.
        let resumed = self
            .consumer
            .assignment()
            .and_then(|assignment| self.consumer.resume(&assignment));
        if let Err(error) = resumed {
            tracing::error!(consumer = self.name.label(), %error, "could not resume the partitions after a retry");
        }
        for (topic, partition, offset) in self.rewind {
            if !is_assigned(self.consumer, &topic, partition) {
                continue; // Its new owner starts from the committed offset.
            }
            if let Err(error) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::error!(consumer = self.name.label(), %topic, partition, offset, %error, "could not rewind to a record delivered during a retry");
            }
        }
    }
}

/// Polls `consumer` for ever, so librdkafka serves the group's rebalances while a record is in
/// retry. The partitions are paused, so no record should come; one that does is noted for a
/// rewind on release (the earliest per partition), never dropped.
async fn serve_group(
    consumer: &GroupConsumer,
    name: ConsumerName,
    rewind: &mut Vec<(String, i32, i64)>,
) -> std::convert::Infallible {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let (topic, partition, offset) =
                    (message.topic(), message.partition(), message.offset());
                tracing::debug!(
                    consumer = name.label(),
                    topic,
                    partition,
                    offset,
                    "a record came in during a retry; it is read again afterwards"
                );
                if !rewind.iter().any(|(t, p, _)| t == topic && *p == partition) {
                    rewind.push((topic.to_owned(), partition, offset));
                }
            }
            Err(error) => {
                tracing::debug!(consumer = name.label(), %error, "consumer error while serving the group during a retry");
                tokio::time::sleep(ERROR_PAUSE).await;
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
