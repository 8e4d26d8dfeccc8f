use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{InstanceId, ReplyHeaders, RequestHeaders, RequestKind, Topics};
use broker_auth_kafka::{KafkaSettings, raw_headers};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{DirectoryError, DirectoryTransport};
use crate::metrics::Metrics;

/// Deadlines and intervals of the request/reply exchange.
#[derive(Debug, Clone, Copy)]
pub struct RpcTiming {
    /// How long a call waits for its reply before failing (the API answers 503).
    pub reply_timeout: Duration,
    /// How often the reply reader checks its reply topic: re-created if it was deleted, added
    /// partitions followed.
    pub partition_check: Duration,
}

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Vec<u8>>>>>;

/// Request/reply over Kafka.
///
/// Every API instance has a reply topic of its own, `{prefix}api-replies.{instance}`, named in
/// each request's `reply-to`: it reads only the replies to its own requests, however many
/// instances run. It reads by assignment (no consumer group, so no rebalances), from the end
/// offsets it saw at start, and picks the replies whose `correlation-id` it is waiting for; the
/// rest arrived too late (or were meant for an earlier process with the same instance id) and are
/// dropped. The topic is deleted at shutdown ([`KafkaTransport::delete_reply_topic`]); the
/// operator deletes those of instances that died without shutting down.
pub struct KafkaTransport {
    /// Reply partitions the reader is assigned.
    reply_partitions: Arc<AtomicUsize>,
    producer: FutureProducer,
    /// The reply reader and the topic keeper, which alone hold the reply consumer: once both
    /// ended, the consumer is closed.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    topics: Topics,
    /// This instance's reply topic, and the settings that create it ([`REPLY_TOPIC_PARTITIONS`]).
    reply_topic: String,
    reply_topic_settings: KafkaSettings,
    pending: Pending,
    timeout: Duration,
    positioned: Arc<AtomicBool>,
    /// Set once by [`KafkaTransport::with_metrics`]; the reply reader counts what it reads.
    metrics: Arc<OnceLock<Metrics>>,
}

/// Removes a pending call when its future ends, however it ends.
struct PendingGuard<'a> {
    pending: &'a Pending,
    correlation_id: Uuid,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.correlation_id);
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Vec<u8>>>> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Partitions of an instance's reply topic. One instance's replies fit one partition easily on
/// Apache Kafka, but tansu 0.6 spends more per record the longer a partition gets: with one
/// partition, `scripts/bench`'s distributed signups fell from 608/s on a fresh topic to 262/s
/// after the latency and throughput runs had filled it; three partitions (the replies keyed by
/// email, as before) kept 544/s.
const REPLY_TOPIC_PARTITIONS: i32 = 3;

impl KafkaTransport {
    /// Ensures the deployment's topics and this instance's reply topic exist, positions the reply
    /// reader at the end of the reply topic and starts it. The reader stops when `shutdown` is
    /// cancelled.
    pub async fn start(
        settings: &KafkaSettings,
        producer: FutureProducer,
        topics: Topics,
        instance: &InstanceId,
        timing: RpcTiming,
        shutdown: CancellationToken,
    ) -> Result<Self, broker_auth_kafka::Error> {
        let RpcTiming {
            reply_timeout: timeout,
            partition_check,
        } = timing;
        broker_auth_kafka::ensure_topics(settings, &topics.all()).await?;
        let reply_topic = topics.instance_replies(instance);
        let mut reply_topic_settings = settings.clone();
        reply_topic_settings.topic_partitions = REPLY_TOPIC_PARTITIONS;
        broker_auth_kafka::ensure_topics(&reply_topic_settings, std::slice::from_ref(&reply_topic))
            .await?;
        let consumer =
            Arc::new(settings.assigned_consumer(&format!("broker-auth-api-replies-{instance}"))?);
        let partitions = broker_auth_kafka::partition_counts(
            settings,
            std::slice::from_ref(&reply_topic),
            Duration::from_secs(10),
        )
        .await?;
        let count = partitions.first().map_or(0, |(_, count)| *count);
        // Explicit end offsets rather than Offset::End: a reply produced before librdkafka
        // resolved "end" would otherwise be skipped.
        let assignment = {
            let consumer = consumer.clone();
            let topic = reply_topic.clone();
            tokio::task::spawn_blocking(
                move || -> Result<TopicPartitionList, broker_auth_kafka::Error> {
                    let mut list = TopicPartitionList::new();
                    for partition in 0..count {
                        let (_, high) = consumer.fetch_watermarks(
                            &topic,
                            partition,
                            Duration::from_secs(10),
                        )?;
                        list.add_partition_offset(&topic, partition, Offset::Offset(high))?;
                    }
                    Ok(list)
                },
            )
            .await??
        };
        consumer.assign(&assignment)?;
        tracing::info!(topic = %reply_topic, partitions = count, "reading replies");

        let pending: Pending = Arc::default();
        let reply_partitions = Arc::new(AtomicUsize::new(assignment.count()));
        let positioned = Arc::new(AtomicBool::new(true));
        let metrics = Arc::new(OnceLock::new());
        let reader = tokio::spawn(
            read_replies(
                consumer.clone(),
                pending.clone(),
                metrics.clone(),
                PositionedGuard(positioned.clone()),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("reply_reader")),
        );
        let keeper = tokio::spawn(
            ReplyTopicKeeper {
                consumer,
                settings: reply_topic_settings.clone(),
                topic: reply_topic.clone(),
                assigned: count,
                assigned_total: reply_partitions.clone(),
            }
            .run(partition_check, shutdown)
            .instrument(tracing::info_span!("reply_topic_keeper")),
        );
        Ok(Self {
            reply_partitions,
            producer,
            tasks: Mutex::new(vec![reader, keeper]),
            topics,
            reply_topic,
            reply_topic_settings,
            pending,
            timeout,
            positioned,
            metrics,
        })
    }

    /// Reports every exchange's duration and timeouts, and every reply read, to `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let _ = self.metrics.set(metrics);
        self
    }

    /// The topic this instance reads its replies from.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Deletes this instance's reply topic: at shutdown, once no request waits for a reply and
    /// the reader has stopped (the shutdown token of [`KafkaTransport::start`] is cancelled).
    /// The reply consumer is closed first: a client that knows a topic deleted under it can
    /// crash (librdkafka 2.x segfaults on tansu 0.6's metadata for a deleted topic).
    pub async fn delete_reply_topic(&self) -> Result<(), broker_auth_kafka::Error> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.await?;
        }
        broker_auth_kafka::delete_topics(
            &self.reply_topic_settings,
            std::slice::from_ref(&self.reply_topic),
        )
        .await
    }
}

/// Clears the transport's readiness when the reply reader ends, however it ends (a panic too).
struct PositionedGuard(Arc<AtomicBool>);

impl Drop for PositionedGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Looks after the reply topic beside the reader, so a slow metadata call never delays replies:
/// creates it again if it was deleted (the operator deletes the topics of instances it thinks
/// are gone; someone may by hand), and follows partitions added to it.
struct ReplyTopicKeeper {
    consumer: Arc<StreamConsumer>,
    /// With the reply topic's partition count, to create it again.
    settings: KafkaSettings,
    topic: String,
    /// Partitions assigned.
    assigned: i32,
    /// Shared count of assigned partitions, for [`KafkaTransport::reply_partitions`].
    assigned_total: Arc<AtomicUsize>,
}

impl ReplyTopicKeeper {
    async fn run(mut self, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => self.check().await,
            }
        }
    }

    async fn check(&mut self) {
        let topics = std::slice::from_ref(&self.topic);
        // Asked to create it, the broker says whether it was gone (tansu's metadata may go on
        // describing a deleted topic, so metadata cannot tell).
        match broker_auth_kafka::create_missing_topics(&self.settings, topics).await {
            Ok(created) if !created.is_empty() => {
                tracing::warn!(topic = %self.topic, "the reply topic was gone; created it again");
                // Everything in the new topic is for this instance: read it from the start.
                self.assign_from_start(0..self.settings.topic_partitions, true);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "could not check the reply topic");
                return;
            }
        }
        match broker_auth_kafka::partition_counts(&self.settings, topics, Duration::from_secs(5))
            .await
        {
            Ok(counts) => {
                let count = counts.first().map_or(0, |(_, count)| *count);
                if count > self.assigned {
                    tracing::info!(topic = %self.topic, from = self.assigned, to = count, "following new reply partitions");
                    self.assign_from_start(self.assigned..count, false);
                }
            }
            Err(error) => tracing::debug!(%error, "could not count the reply topic's partitions"),
        }
    }

    /// Assigns `partitions` from their beginning: a new partition (or a re-created topic) holds
    /// only replies produced after it was created. `replace` drops the old assignment.
    fn assign_from_start(&mut self, partitions: std::ops::Range<i32>, replace: bool) {
        let mut list = TopicPartitionList::new();
        for partition in partitions.clone() {
            if let Err(error) = list.add_partition_offset(&self.topic, partition, Offset::Beginning)
            {
                tracing::warn!(%error, "could not add a reply partition");
                return;
            }
        }
        let assigned = if replace {
            self.consumer.assign(&list)
        } else {
            self.consumer.incremental_assign(&list)
        };
        match assigned {
            Ok(()) => {
                self.assigned = partitions.end;
                self.assigned_total.store(
                    usize::try_from(self.assigned).unwrap_or(0),
                    Ordering::Release,
                );
            }
            Err(error) => tracing::warn!(%error, "could not assign reply partitions"),
        }
    }
}

impl KafkaTransport {
    /// How many reply partitions the reader follows (those of this instance's reply topic).
    pub fn reply_partitions(&self) -> usize {
        self.reply_partitions.load(Ordering::Acquire)
    }
}

async fn read_replies(
    consumer: Arc<StreamConsumer>,
    pending: Pending,
    metrics: Arc<OnceLock<Metrics>>,
    _positioned: PositionedGuard,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading replies failed; retrying");
                continue;
            }
        };
        let Ok(ReplyHeaders {
            correlation_id,
            traceparent,
        }) = ReplyHeaders::decode(&raw_headers(message.headers()))
        else {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "reply without a valid correlation-id dropped"
            );
            continue;
        };
        let waiter = lock(&pending).remove(&correlation_id);
        if let Some(metrics) = metrics.get() {
            metrics.reply_read(waiter.is_some());
        }
        match waiter {
            Some(waiter) => {
                // The end of the request's trace: a child of the span that produced the reply.
                let span = tracing::info_span!(
                    "directory_reply_received",
                    otel.kind = "consumer",
                    %correlation_id,
                    partition = message.partition(),
                    offset = message.offset(),
                );
                broker_auth_telemetry::set_remote_parent(&span, traceparent.as_deref());
                let _entered = span.enter();
                let _ = waiter.send(message.payload().unwrap_or_default().to_vec());
            }
            None => tracing::trace!(%correlation_id, "reply for another instance or too late"),
        }
    }
}

#[async_trait]
impl DirectoryTransport for KafkaTransport {
    async fn round_trip(
        &self,
        kind: RequestKind,
        key: &str,
        request_id: Uuid,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, DirectoryError> {
        let correlation_id = Uuid::new_v4();
        // The request record carries this span's trace context: dbproc's handling is its child.
        let span = tracing::info_span!(
            "directory_rpc",
            otel.kind = "client",
            kind = kind.label(),
            %request_id,
            %correlation_id,
        );
        self.exchange(kind, key, correlation_id, body)
            .instrument(span)
            .await
    }

    async fn ready(&self) -> Result<(), String> {
        if !self.positioned.load(Ordering::Acquire) {
            return Err("the reply reader is not running".into());
        }
        let producer = self.producer.clone();
        let reachable = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok()
        });
        if !reachable.await.unwrap_or(false) {
            return Err("kafka is not reachable".into());
        }
        Ok(())
    }
}

impl KafkaTransport {
    /// Produces the request and waits for its reply, within the reply timeout.
    async fn exchange(
        &self,
        kind: RequestKind,
        key: &str,
        correlation_id: Uuid,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, DirectoryError> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.pending).insert(correlation_id, sender);
        let _guard = PendingGuard {
            pending: &self.pending,
            correlation_id,
        };

        let request_topic = self.topics.request(kind);
        let request_headers = RequestHeaders {
            correlation_id,
            reply_to: self.reply_topic.clone(),
            traceparent: broker_auth_telemetry::traceparent(&tracing::Span::current()),
        }
        .encode();
        let record = FutureRecord::to(&request_topic)
            .key(key)
            .payload(&body)
            .headers(broker_auth_kafka::headers(
                request_headers
                    .iter()
                    .map(|(name, value)| (*name, value.as_str())),
            ));

        let exchange = async {
            self.producer
                .send(record, Timeout::After(self.timeout))
                .await
                .map_err(|(error, _)| DirectoryError::Unavailable(error.to_string()))?;
            receiver
                .await
                .map_err(|_| DirectoryError::Unavailable("the reply reader stopped".into()))
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, exchange).await;
        if let Some(metrics) = self.metrics.get() {
            metrics.observe_rpc(kind.label(), started.elapsed(), result.is_err());
        }
        let result = result.map_err(|_| DirectoryError::Timeout(self.timeout))?;
        // The span carries the kind, request id and correlation id.
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            ok = result.is_ok(),
            "directory round trip"
        );
        result
    }
}
