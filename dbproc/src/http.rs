//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use broker_auth_kafka::rdkafka::consumer::Consumer;
use broker_auth_user_store::{PostgresUserRepository, UserRepository};

use crate::consumer::GroupConsumer;
use crate::metrics::Metrics;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HealthState {
    pub repository: Arc<PostgresUserRepository>,
    pub directory: ConsumerHealth,
    pub mail: ConsumerHealth,
    /// A topic whose metadata proves the cluster answers.
    pub probe_topic: String,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct ConsumerHealth {
    pub consumer: Arc<GroupConsumer>,
    /// Turns true at the consumer's first assignment (which may be empty).
    pub joined: Arc<AtomicBool>,
}

impl ConsumerHealth {
    fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    fn assigned_partitions(&self) -> usize {
        self.consumer
            .assignment()
            .map(|partitions| partitions.count())
            .unwrap_or(0)
    }
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when Postgres answers, Kafka answers, and both consumers have joined their groups.
///
/// Holding partitions is deliberately not required. dbproc receives no Service traffic, so
/// readiness only gates rollouts and disruption budgets; a replica beyond the partition count
/// (the HPA may scale past it) is a healthy standby that takes over partitions at the next
/// rebalance, and every rebalance briefly leaves all members without partitions — requiring
/// them would mark such replicas unready forever and the whole tier unready at each scale
/// event. The partition counts are in the body and in `dbproc_consumer_assigned_partitions`.
async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, state.repository.ping())
        .await
        .is_ok_and(|pinged| pinged.is_ok());
    let consumer = state.directory.consumer.clone();
    let topic = state.probe_topic.clone();
    // The metadata request blocks for up to its timeout; keep it off the async workers.
    // (`broker_auth_kafka::is_reachable` takes only consumers with the default context.)
    let kafka = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(Some(&topic), CHECK_TIMEOUT).is_ok()
    })
    .await
    .unwrap_or(false);
    let ready = postgres && kafka && state.directory.joined() && state.mail.joined();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let verdict = |ok: bool| if ok { "ok" } else { "failing" };
    let membership = |consumer: &ConsumerHealth| {
        if consumer.joined() {
            format!(
                "joined, {} partitions assigned",
                consumer.assigned_partitions()
            )
        } else {
            "not joined yet".to_owned()
        }
    };
    let body = format!(
        "postgres: {}\nkafka: {}\ndirectory consumer: {}\nmail consumer: {}\n",
        verdict(postgres),
        verdict(kafka),
        membership(&state.directory),
        membership(&state.mail),
    );
    (status, body)
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
