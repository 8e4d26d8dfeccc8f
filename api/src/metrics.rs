//! Prometheus metrics of the API.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    awaited: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The API's metrics; cheap to clone (every clone updates the same series).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RouteLabels>,
    rpc_durations: HistogramFamily<KindLabels>,
    rpc_timeouts: Family<KindLabels, Counter>,
    replies_read: Family<ReplyLabels, Counter>,
    hash_queue_wait: Histogram,
    hash_running: Gauge,
    hash_slots: Gauge,
    hash_refused: Family<ReasonLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    auth_events: Family<KindLabels, Counter>,
    auth_events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("broker_auth_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15)));
        let rpc_durations: HistogramFamily<KindLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14)));
        let rpc_timeouts = Family::<KindLabels, Counter>::default();
        let replies_read = Family::<ReplyLabels, Counter>::default();
        let hash_queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        let hash_running = Gauge::default();
        let hash_slots = Gauge::default();
        let hash_refused = Family::<ReasonLabels, Counter>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let auth_events = Family::<KindLabels, Counter>::default();
        let auth_events_dropped = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration by route",
            durations.clone(),
        );
        registry.register(
            "kafka_rpc_duration_seconds",
            "User-directory requests to dbproc over Kafka, from produce to reply or timeout, by request kind",
            rpc_durations.clone(),
        );
        registry.register(
            "kafka_rpc_timeouts",
            "User-directory requests whose reply did not come within the reply timeout (answered 503), by request kind",
            rpc_timeouts.clone(),
        );
        registry.register(
            "kafka_replies_read",
            "Reply records the reply reader read: awaited=\"true\" answered a request of this instance, \"false\" were another instance's or came after the timeout",
            replies_read.clone(),
        );
        for awaited in ["true", "false"] {
            let _ = replies_read.get_or_create(&ReplyLabels { awaited });
        }
        registry.register(
            "password_hash_queue_wait_seconds",
            "Time a password hash or check waited for a hashing slot (0 when one was free)",
            hash_queue_wait.clone(),
        );
        registry.register(
            "password_hashes_running",
            "Password hashes and checks running now (saturation: divided by password_hash_slots)",
            hash_running.clone(),
        );
        registry.register(
            "password_hash_slots",
            "Hashing slots: how many hashes may run at once (HASH_CONCURRENCY)",
            hash_slots.clone(),
        );
        registry.register(
            "password_hash_refused",
            "Password hashes refused by the hashing budget: busy (queue full, 503) or client_busy (this client already has one, 429)",
            hash_refused.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429, by the limit that refused them",
            rate_limited.clone(),
        );
        // Every limit is exported from the start, so a rate over it is 0 rather than absent.
        for limit in crate::http::RateLimit::ALL {
            let _ = rate_limited.get_or_create(&LimitLabels {
                limit: limit.label(),
            });
        }
        registry.register(
            "auth_events",
            "Security events handed on (to the auth-events topic, or the log in embedded mode), by kind",
            auth_events.clone(),
        );
        for kind in broker_auth_contract::AuthEventKind::ALL {
            let _ = auth_events.get_or_create(&KindLabels { kind: kind.label() });
        }
        registry.register(
            "auth_events_dropped",
            "Security events dropped: the buffer was full or Kafka did not take them in time",
            auth_events_dropped.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            durations,
            rpc_durations,
            rpc_timeouts,
            replies_read,
            hash_queue_wait,
            hash_running,
            hash_slots,
            hash_refused,
            rate_limited,
            auth_events,
            auth_events_dropped,
        }
    }

    /// A security event handed on.
    pub fn auth_event(&self, kind: broker_auth_contract::AuthEventKind) {
        self.auth_events
            .get_or_create(&KindLabels { kind: kind.label() })
            .inc();
    }

    /// A security event dropped.
    pub fn auth_event_dropped(&self) {
        self.auth_events_dropped.inc();
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One request/reply exchange with dbproc of `kind` (its label) that took `elapsed`.
    pub fn observe_rpc(&self, kind: &'static str, elapsed: Duration, timed_out: bool) {
        let labels = KindLabels { kind };
        self.rpc_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if timed_out {
            self.rpc_timeouts.get_or_create(&labels).inc();
        }
    }

    /// A reply record read; `awaited` when a request of this instance was waiting for it.
    pub fn reply_read(&self, awaited: bool) {
        self.replies_read
            .get_or_create(&ReplyLabels {
                awaited: if awaited { "true" } else { "false" },
            })
            .inc();
    }

    pub fn rate_limited(&self, limit: crate::http::RateLimit) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    /// The hashing budget's view of these metrics.
    pub fn hashing(&self, slots: usize) -> HashMetrics {
        self.hash_slots
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
        for reason in ["busy", "client_busy"] {
            let _ = self.hash_refused.get_or_create(&ReasonLabels { reason });
        }
        HashMetrics {
            queue_wait: self.hash_queue_wait.clone(),
            running: self.hash_running.clone(),
            refused: self.hash_refused.clone(),
        }
    }

    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the password hasher reports: how long requests wait for a slot, how many hashes run,
/// and what the budget refuses.
#[derive(Clone)]
pub struct HashMetrics {
    queue_wait: Histogram,
    running: Gauge,
    refused: Family<ReasonLabels, Counter>,
}

impl HashMetrics {
    pub fn waited(&self, wait: Duration) {
        self.queue_wait.observe(wait.as_secs_f64());
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a hash as running until the returned guard is dropped.
    pub fn running(&self) -> RunningHash {
        self.running.inc();
        RunningHash(self.running.clone())
    }
}

/// A running hash, counted in `password_hashes_running` while it lives.
pub struct RunningHash(Gauge);

impl Drop for RunningHash {
    fn drop(&mut self) {
        self.0.dec();
    }
}
