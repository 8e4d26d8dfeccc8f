//! The worker tier's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    /// `ok`, `rejected` or `internal_error`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// `directory` or `mail`.
    pub consumer: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// `directory` or `mail`.
    pub consumer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RebalanceLabels {
    /// `directory` or `mail`.
    pub consumer: &'static str,
    /// `assign` or `revoke`.
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailLabels {
    pub template: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailFailureLabels {
    pub template: &'static str,
    /// `transient` or `permanent` (and the mail error kinds of the mail crate).
    pub error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests_handled: Family<RequestLabels, Counter>,
    pub request_duration: Family<KindLabels, Histogram>,
    pub store_retries: Counter,
    pub replies_dropped: Counter,
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    pub mail_sent: Family<MailLabels, Counter>,
    pub mail_duplicates_skipped: Family<MailLabels, Counter>,
    pub mail_failed_attempts: Family<MailFailureLabels, Counter>,
    pub mail_duration: Histogram,
    pub assigned_partitions: Family<ConsumerLabels, Gauge>,
    pub rebalanced_partitions: Family<RebalanceLabels, Counter>,
    pub retrying_records: Family<ConsumerLabels, Gauge>,
    pub offset_commit_failures: Family<ConsumerLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbproc");
        let requests_handled = Family::<RequestLabels, Counter>::default();
        registry.register(
            "directory_requests_handled",
            "User-directory requests answered, by kind and outcome",
            requests_handled.clone(),
        );
        let request_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms … ~4 s
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "directory_request_duration_seconds",
            "Time from reading a request to its reply being acknowledged by Kafka",
            request_duration.clone(),
        );
        let store_retries = Counter::default();
        registry.register(
            "directory_store_retries",
            "Requests retried because the database was unavailable",
            store_retries.clone(),
        );
        let replies_dropped = Counter::default();
        registry.register(
            "directory_replies_dropped",
            "Replies dropped because their reply topic no longer exists (its API instance is gone)",
            replies_dropped.clone(),
        );
        let dead_lettered = Family::<DeadLetterLabels, Counter>::default();
        registry.register(
            "dead_lettered",
            "Records sent to the dead-letter topic, by consumer and reason",
            dead_lettered.clone(),
        );
        let mail_sent = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_sent",
            "Mails accepted by the SMTP server",
            mail_sent.clone(),
        );
        let mail_duplicates_skipped = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_duplicates_skipped",
            "Redelivered mail requests not sent again because an earlier delivery was sent",
            mail_duplicates_skipped.clone(),
        );
        let mail_failed_attempts = Family::<MailFailureLabels, Counter>::default();
        registry.register(
            "mail_failed_attempts",
            "SMTP attempts that failed, by template and error class",
            mail_failed_attempts.clone(),
        );
        // 1 ms … ~65 s: a mail in retry waits out its backoff within this record's time.
        let mail_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "mail_duration_seconds",
            "Time from reading a mail record to being done with it: sent and recorded, skipped as a duplicate, or dead-lettered (retries included)",
            mail_duration.clone(),
        );
        let assigned_partitions = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_assigned_partitions",
            "Partitions assigned to this replica, by consumer; 0 on a replica beyond the partition count",
            assigned_partitions.clone(),
        );
        let rebalanced_partitions = Family::<RebalanceLabels, Counter>::default();
        registry.register(
            "consumer_rebalanced_partitions",
            "Partitions assigned to or revoked from this replica by group rebalances, by consumer and event",
            rebalanced_partitions.clone(),
        );
        let retrying_records = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_retrying_records",
            "1 while a consumer retries a record (database or SMTP unavailable): its partitions are paused behind it, and it keeps serving the group's rebalances",
            retrying_records.clone(),
        );
        let offset_commit_failures = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_offset_commit_failures",
            "Offset commits Kafka refused, by consumer; the records since the last commit are redelivered",
            offset_commit_failures.clone(),
        );
        for consumer in ["directory", "mail"] {
            // Present from the start, so a dashboard shows 0 rather than no data.
            let labels = ConsumerLabels { consumer };
            assigned_partitions.get_or_create(&labels).set(0);
            retrying_records.get_or_create(&labels).set(0);
            offset_commit_failures.get_or_create(&labels).inc_by(0);
            for event in ["assign", "revoke"] {
                rebalanced_partitions
                    .get_or_create(&RebalanceLabels { consumer, event })
                    .inc_by(0);
            }
        }
        Self {
            registry,
            requests_handled,
            request_duration,
            store_retries,
            replies_dropped,
            dead_lettered,
            mail_sent,
            mail_duplicates_skipped,
            mail_failed_attempts,
            mail_duration,
            assigned_partitions,
            rebalanced_partitions,
            retrying_records,
            offset_commit_failures,
        }
    }
}

/// Holds a consumer's `consumer_retrying_records` gauge at 1 until dropped, i.e. until the
/// record is done or abandoned at shutdown.
pub struct RetryingRecord(Gauge);

impl Drop for RetryingRecord {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

impl Metrics {
    /// Marks `consumer` as retrying the record in hand.
    pub fn retrying(&self, consumer: &'static str) -> RetryingRecord {
        let gauge = self
            .retrying_records
            .get_or_create(&ConsumerLabels { consumer })
            .clone();
        gauge.set(1);
        RetryingRecord(gauge)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
