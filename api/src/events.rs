//! Security events: produced to the `auth-events` topic in distributed mode, written to the log
//! in embedded mode. Handing one on never blocks or fails a request: events wait in a bounded
//! buffer, and one that does not fit, or that Kafka does not take in time, is dropped and
//! counted (`broker_auth_api_auth_events_dropped_total`).

use std::sync::Arc;
use std::time::Duration;

use broker_auth_contract::{AuthEvent, AuthEventKind};
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where events go.
pub trait EventSink: Send + Sync + 'static {
    /// Hands `event` on without waiting.
    fn emit(&self, event: AuthEvent);
}

/// Events waiting for Kafka at most, before new ones are dropped.
pub const EVENT_BUFFER: usize = 10_000;
/// Events on their way to Kafka at once.
const IN_FLIGHT: usize = 64;

/// Distributed mode: a bounded buffer drained to the `auth-events` topic by a background task.
pub struct KafkaEvents {
    sender: mpsc::Sender<AuthEvent>,
    metrics: Metrics,
}

impl KafkaEvents {
    /// Starts the task that produces to `topic`, each event within `timeout`, until `stop` is
    /// cancelled (at shutdown); events still in the buffer then are not produced.
    pub fn start(
        producer: FutureProducer,
        topic: String,
        timeout: Duration,
        capacity: usize,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<AuthEvent>(capacity.max(1));
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let events = futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|event| (event, receiver))
            });
            let producing = events.for_each_concurrent(IN_FLIGHT, |event| {
                let (producer, topic, metrics) = (&producer, &topic, &task_metrics);
                async move {
                    let body = serde_json::to_vec(&event).unwrap_or_default();
                    let record = FutureRecord::to(topic).key(&event.subject).payload(&body);
                    match producer.send(record, Timeout::After(timeout)).await {
                        Ok(_) => metrics.auth_event(event.kind),
                        Err((error, _)) => {
                            metrics.auth_event_dropped();
                            tracing::warn!(%error, kind = event.kind.label(), "an auth event was not delivered");
                        }
                    }
                }
            });
            tokio::select! {
                () = producing => {}
                () = stop.cancelled() => {}
            }
        });
        Self { sender, metrics }
    }
}

impl EventSink for KafkaEvents {
    fn emit(&self, event: AuthEvent) {
        if let Err(error) = self.sender.try_send(event) {
            self.metrics.auth_event_dropped();
            tracing::warn!(
                kind = error.into_inner().kind.label(),
                "an auth event was dropped: the buffer is full"
            );
        }
    }
}

/// Embedded mode: one log line per event (target `auth_event`), as its JSON.
pub struct LogEvents {
    metrics: Metrics,
}

impl LogEvents {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl EventSink for LogEvents {
    fn emit(&self, event: AuthEvent) {
        let json = serde_json::to_string(&event).unwrap_or_default();
        tracing::info!(target: "auth_event", kind = event.kind.label(), event = %json, "auth event");
        self.metrics.auth_event(event.kind);
    }
}

/// A sink that keeps what it is given, for tests.
#[derive(Default)]
pub struct CollectedEvents(std::sync::Mutex<Vec<AuthEvent>>);

impl CollectedEvents {
    pub fn events(&self) -> Vec<AuthEvent> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl EventSink for CollectedEvents {
    fn emit(&self, event: AuthEvent) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
}

/// What every event of one request shares, taken from the request.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub ip_prefix: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub route: Option<String>,
}

impl EventContext {
    /// An event of `kind` about `subject`, with this request's details.
    pub fn event(&self, kind: AuthEventKind, subject: Subject) -> AuthEvent {
        let (subject, user_id, address_hash) = match subject {
            Subject::User(id) => (id.to_string(), Some(id), None),
            Subject::Address(hash) => (format!("address:{hash}"), None, Some(hash)),
            Subject::UserAndAddress(id, hash) => (id.to_string(), Some(id), Some(hash)),
            Subject::Network => (
                format!("network:{}", self.ip_prefix.as_deref().unwrap_or("unknown")),
                None,
                None,
            ),
        };
        AuthEvent {
            version: broker_auth_contract::WIRE_VERSION,
            event_id: uuid::Uuid::new_v4(),
            kind,
            at: crate::http::now_rfc3339(),
            subject,
            user_id,
            address_hash,
            reason: None,
            sessions_revoked: None,
            ip_prefix: self.ip_prefix.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            trace_id: self.trace_id.clone(),
            route: self.route.clone(),
        }
    }
}

/// Whom an event is about, which decides its key.
pub enum Subject {
    User(uuid::Uuid),
    /// The keyed hash of an address with no known account.
    Address(String),
    UserAndAddress(uuid::Uuid, String),
    /// Only the client's network is known (a rate limit before the body was read).
    Network,
}

/// The sink of a running API.
pub type Events = Arc<dyn EventSink>;

#[cfg(test)]
mod tests {
    use super::*;
    use broker_auth_kafka::KafkaSettings;

    fn context() -> EventContext {
        EventContext {
            ip_prefix: Some("192.0.2.0/24".into()),
            user_agent: None,
            request_id: "r".into(),
            trace_id: None,
            route: None,
        }
    }

    fn dropped(metrics: &Metrics) -> f64 {
        let text = metrics.render().unwrap();
        text.lines()
            .find(|line| line.starts_with("broker_auth_api_auth_events_dropped_total"))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Kafka unreachable and the buffer small: emitting never waits, and what does not fit is
    /// counted as dropped at once; what did fit is dropped when its delivery times out.
    #[tokio::test]
    async fn with_kafka_unreachable_events_are_dropped_and_counted_never_waited_for() {
        let producer = KafkaSettings::new("127.0.0.1:1").producer().unwrap();
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let sink = KafkaEvents::start(
            producer,
            "auth-events".into(),
            Duration::from_millis(300),
            4,
            metrics.clone(),
            stop.clone(),
        );
        let started = std::time::Instant::now();
        for _ in 0..100 {
            sink.emit(context().event(AuthEventKind::Logout, Subject::Network));
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "emitting waited"
        );
        assert!(dropped(&metrics) >= 90.0, "{}", dropped(&metrics));
        // Each buffered event is dropped when librdkafka gives up on it (message.timeout.ms, 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while dropped(&metrics) < 100.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                dropped(&metrics)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
    }

    #[test]
    fn subjects_key_events_by_user_address_or_network() {
        let id = uuid::Uuid::new_v4();
        let by_user = context().event(AuthEventKind::Logout, Subject::User(id));
        assert_eq!(by_user.subject, id.to_string());
        let by_address =
            context().event(AuthEventKind::SigninFailed, Subject::Address("ab".into()));
        assert_eq!(by_address.subject, "address:ab");
        assert_eq!(by_address.address_hash.as_deref(), Some("ab"));
        let by_network = context().event(AuthEventKind::RateLimited, Subject::Network);
        assert_eq!(by_network.subject, "network:192.0.2.0/24");
        assert_ne!(by_user.event_id, by_address.event_id);
    }

    #[test]
    fn the_log_sink_counts_what_it_writes() {
        let metrics = Metrics::new();
        LogEvents::new(metrics.clone())
            .emit(context().event(AuthEventKind::Logout, Subject::Network));
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("broker_auth_api_auth_events_total{kind=\"logout\"} 1")
        );
    }
}
