//! `/healthz`, `/readyz` and `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, json_response};

/// Alive: the process answers.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// Ready: the store answers and the directory can be asked (Kafka reachable, reply reader positioned).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await.map_err(|e| e.to_string());
    let directory = state.directory.ready().await;
    // The reasons go to the log; the port is public, so the body only says which check failed.
    let check = |name: &str, result: &Result<(), String>| match result {
        Ok(()) => json!("ok"),
        Err(reason) => {
            tracing::warn!(check = name, reason, "not ready");
            json!("unavailable")
        }
    };
    let body = json!({
        "status": if store.is_ok() && directory.is_ok() { "ready" } else { "not_ready" },
        "checks": { "store": check("store", &store), "directory": check("directory", &directory) },
    });
    let status = if store.is_ok() && directory.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => super::ApiError::Internal(format!("metrics: {error}")).into_response(),
    }
}
