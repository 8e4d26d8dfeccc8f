//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use broker_auth_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use broker_auth_user_store::{PostgresUserRepository, UserRepository};

use crate::metrics::Metrics;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HealthState {
    pub repository: Arc<PostgresUserRepository>,
    pub directory_consumer: Arc<StreamConsumer>,
    pub mail_consumer: Arc<StreamConsumer>,
    /// A topic whose metadata proves the cluster answers.
    pub probe_topic: String,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when Postgres answers, Kafka answers, and both consumers have partitions assigned.
async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, state.repository.ping())
        .await
        .is_ok_and(|pinged| pinged.is_ok());
    let consumer = state.directory_consumer.clone();
    let topic = state.probe_topic.clone();
    // The metadata request blocks for up to its timeout; keep it off the async workers.
    let kafka = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(Some(&topic), CHECK_TIMEOUT).is_ok()
    })
    .await
    .unwrap_or(false);
    let assigned = |consumer: &StreamConsumer| {
        consumer
            .assignment()
            .map(|partitions| partitions.count())
            .unwrap_or(0)
    };
    let directory_partitions = assigned(&state.directory_consumer);
    let mail_partitions = assigned(&state.mail_consumer);
    let ready = postgres && kafka && directory_partitions > 0 && mail_partitions > 0;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let verdict = |ok: bool| if ok { "ok" } else { "failing" };
    let body = format!(
        "postgres: {}\nkafka: {}\ndirectory consumer: {directory_partitions} partitions assigned\n\
         mail consumer: {mail_partitions} partitions assigned\n",
        verdict(postgres),
        verdict(kafka),
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
