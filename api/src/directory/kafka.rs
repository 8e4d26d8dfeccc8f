use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{ReplyHeaders, RequestHeaders, RequestKind, Topics};
use broker_auth_kafka::{KafkaSettings, raw_headers};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
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
    /// How often the reply reader looks for partitions added to the reply topics.
    pub partition_check: Duration,
}

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Vec<u8>>>>>;

/// Request/reply over Kafka.
///
/// Every API instance reads every partition of the reply topics by assignment (no consumer
/// group, so no rebalances), starting from the end offsets it saw at start, and picks the
/// replies whose `correlation-id` it is waiting for; the rest belong to other instances or
/// arrived too late and are dropped.
pub struct KafkaTransport {
    /// Reply partitions the reader is assigned, over all reply topics.
    reply_partitions: Arc<AtomicUsize>,
    producer: FutureProducer,
    consumer: Arc<StreamConsumer>,
    topics: Topics,
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

impl KafkaTransport {
    /// Ensures the topics exist, positions the reply reader at the end of every reply partition
    /// and starts it. The reader stops when `shutdown` is cancelled.
    pub async fn start(
        settings: &KafkaSettings,
        producer: FutureProducer,
        topics: Topics,
        timing: RpcTiming,
        shutdown: CancellationToken,
    ) -> Result<Self, broker_auth_kafka::Error> {
        let RpcTiming {
            reply_timeout: timeout,
            partition_check,
        } = timing;
        broker_auth_kafka::ensure_topics(settings, &topics.all()).await?;
        let consumer = Arc::new(
            settings.assigned_consumer(&format!("broker-auth-api-replies-{}", Uuid::new_v4()))?,
        );
        let partitions = broker_auth_kafka::partition_counts(
            settings,
            &topics.reply_topics(),
            Duration::from_secs(10),
        )
        .await?;
        // Explicit end offsets rather than Offset::End: a reply produced before librdkafka
        // resolved "end" would otherwise be skipped.
        let assignment = {
            let consumer = consumer.clone();
            let partitions = partitions.clone();
            tokio::task::spawn_blocking(
                move || -> Result<TopicPartitionList, broker_auth_kafka::Error> {
                    let mut list = TopicPartitionList::new();
                    for (topic, count) in partitions {
                        for partition in 0..count {
                            let (_, high) = consumer.fetch_watermarks(
                                &topic,
                                partition,
                                Duration::from_secs(10),
                            )?;
                            list.add_partition_offset(&topic, partition, Offset::Offset(high))?;
                        }
                    }
                    Ok(list)
                },
            )
            .await??
        };
        consumer.assign(&assignment)?;

        let pending: Pending = Arc::default();
        let reply_partitions = Arc::new(AtomicUsize::new(assignment.count()));
        let positioned = Arc::new(AtomicBool::new(true));
        let metrics = Arc::new(OnceLock::new());
        tokio::spawn(
            read_replies(
                consumer.clone(),
                pending.clone(),
                metrics.clone(),
                PositionedGuard(positioned.clone()),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("reply_reader")),
        );
        tokio::spawn(
            PartitionFollower {
                consumer: consumer.clone(),
                settings: settings.clone(),
                assigned: partitions.into_iter().collect(),
                assigned_total: reply_partitions.clone(),
            }
            .run(partition_check, shutdown)
            .instrument(tracing::info_span!("reply_partition_follower")),
        );
        Ok(Self {
            reply_partitions,
            producer,
            consumer,
            topics,
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
}

/// Clears the transport's readiness when the reply reader ends, however it ends (a panic too).
struct PositionedGuard(Arc<AtomicBool>);

impl Drop for PositionedGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Watches the reply topics for added partitions, beside the reader so a slow metadata call
/// never delays replies.
struct PartitionFollower {
    consumer: Arc<StreamConsumer>,
    settings: KafkaSettings,
    /// Partitions assigned per reply topic.
    assigned: HashMap<String, i32>,
    /// Shared count of assigned partitions, for [`KafkaTransport::reply_partitions`].
    assigned_total: Arc<AtomicUsize>,
}

impl PartitionFollower {
    async fn run(mut self, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => self.follow_new_partitions().await,
            }
        }
    }

    /// Assigns partitions added since the last look, from their beginning: a new partition
    /// holds only replies produced after it was created.
    async fn follow_new_partitions(&mut self) {
        let topics: Vec<String> = self.assigned.keys().cloned().collect();
        let counts = match broker_auth_kafka::partition_counts(
            &self.settings,
            &topics,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(counts) => counts,
            Err(error) => {
                tracing::debug!(%error, "could not refresh reply-topic partitions");
                return;
            }
        };
        let mut added = TopicPartitionList::new();
        for (topic, count) in counts {
            let known = self.assigned.get(&topic).copied().unwrap_or(0);
            for partition in known..count {
                if let Err(error) = added.add_partition_offset(&topic, partition, Offset::Beginning)
                {
                    tracing::warn!(%error, "could not add a reply partition");
                    return;
                }
            }
            if count > known {
                tracing::info!(%topic, from = known, to = count, "following new reply partitions");
            }
            self.assigned.insert(topic, count.max(known));
        }
        if added.count() == 0 {
            return;
        }
        match self.consumer.incremental_assign(&added) {
            Ok(()) => {
                let total: i32 = self.assigned.values().sum();
                self.assigned_total
                    .store(usize::try_from(total).unwrap_or(0), Ordering::Release);
            }
            Err(error) => tracing::warn!(%error, "could not assign new reply partitions"),
        }
    }
}

impl KafkaTransport {
    /// How many reply partitions the reader follows (all partitions of all reply topics).
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
        if !broker_auth_kafka::is_reachable(self.consumer.clone(), Duration::from_secs(2)).await {
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
        let reply_topic = self.topics.reply(kind);
        let request_headers = RequestHeaders {
            correlation_id,
            reply_to: reply_topic,
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
