//! `/healthz`, `/readyz` and `/metrics`.
//!
//! `/readyz` is public (the kubelet and load balancers probe it), so it answers from a cached
//! check refreshed at most once a second: a flood of probes costs one Redis PING and one Kafka
//! metadata request per second, not one per probe, and never touches the hashing slots.
//! `/metrics` is served only on the operational port (`METRICS_LISTEN`).

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::time::Instant;

use super::AppState;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    status: &'static str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    status: ReadinessStatus,
    checks: ReadinessChecks,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    NotReady,
}

/// One entry per dependency. The port is public, so only which check failed is told; the reason
/// goes to the log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReadinessChecks {
    store: CheckStatus,
    directory: CheckStatus,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Unavailable,
}

/// How long a readiness result is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The result of one dependency check: why each dependency is not ready, if it is not.
#[derive(Debug, Clone)]
pub struct CheckResults {
    pub store: Result<(), String>,
    pub directory: Result<(), String>,
}

impl CheckResults {
    fn is_ready(&self) -> bool {
        self.store.is_ok() && self.directory.is_ok()
    }
}

/// The latest readiness result and a single-flight refresh.
#[derive(Default)]
pub struct ReadinessCache {
    latest: std::sync::Mutex<Option<(Instant, CheckResults)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl ReadinessCache {
    fn latest(&self, max_age: Option<Duration>) -> Option<CheckResults> {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        latest
            .as_ref()
            .filter(|(at, _)| max_age.is_none_or(|age| at.elapsed() < age))
            .map(|(_, readiness)| readiness.clone())
    }

    /// A result at most [`READINESS_TTL`] old, running `check` only when there is none. While one
    /// caller refreshes, the others get the previous result instead of queueing behind it (or
    /// wait for the very first one).
    pub async fn get<F>(&self, check: impl FnOnce() -> F) -> CheckResults
    where
        F: Future<Output = CheckResults>,
    {
        if let Some(fresh) = self.latest(Some(READINESS_TTL)) {
            return fresh;
        }
        let _refreshing = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.latest(None) {
                Some(stale) => return stale,
                None => self.refreshing.lock().await,
            },
        };
        // Someone else may have refreshed while this caller waited for the lock.
        if let Some(fresh) = self.latest(Some(READINESS_TTL)) {
            return fresh;
        }
        let readiness = check().await;
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), readiness.clone()));
        readiness
    }
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process answers.", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready: the store answers and the directory can be asked (Kafka reachable, reply reader positioned).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers.", body = Readiness),
        (status = 503, description = "A dependency does not answer; `checks` says which.", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let results = state
        .readiness
        .get(|| async {
            let store = state.store.ping().await.map_err(|e| e.to_string());
            let directory = state.directory.ready().await;
            // The reasons go to the log once per check; the body only says which check failed.
            for (check, result) in [("store", &store), ("directory", &directory)] {
                if let Err(reason) = result {
                    tracing::warn!(check, reason, "not ready");
                }
            }
            CheckResults { store, directory }
        })
        .await;
    let check = |result: &Result<(), String>| match result {
        Ok(()) => CheckStatus::Ok,
        Err(_) => CheckStatus::Unavailable,
    };
    let ready = results.is_ready();
    let body = Readiness {
        status: if ready {
            ReadinessStatus::Ready
        } else {
            ReadinessStatus::NotReady
        },
        checks: ReadinessChecks {
            store: check(&results.store),
            directory: check(&results.directory),
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics.", content_type = "application/openmetrics-text", body = String),
        (status = 500, response = super::openapi::Internal),
    )
)]
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

/// The operational port: `/metrics`, and the probes too, for scrapers and tools that look there.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { super::ApiError::NotFound })
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn ready() -> CheckResults {
        CheckResults {
            store: Ok(()),
            directory: Ok(()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_probes_runs_one_check_per_second() {
        let cache = ReadinessCache::default();
        let checks = AtomicUsize::new(0);
        let check = || async {
            checks.fetch_add(1, Ordering::SeqCst);
            ready()
        };
        for _ in 0..1000 {
            assert!(cache.get(check).await.is_ready());
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        tokio::time::advance(READINESS_TTL).await;
        for _ in 0..1000 {
            cache.get(check).await;
        }
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_during_a_slow_check_get_the_previous_result_without_waiting() {
        let cache = Arc::new(ReadinessCache::default());
        cache.get(|| async { ready() }).await;
        tokio::time::advance(READINESS_TTL).await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(|| async {
                        let _ = released.await;
                        CheckResults {
                            store: Err("down".into()),
                            directory: Ok(()),
                        }
                    })
                    .await
            })
        };
        // Let the slow check start and take the refresh.
        while cache.refreshing.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let during = cache
            .get(|| async { panic!("a second check while one runs") })
            .await;
        assert!(during.is_ready(), "the previous result is served meanwhile");
        release.send(()).unwrap();
        assert!(!slow.await.unwrap().is_ready());
        assert!(!cache.get(|| async { ready() }).await.is_ready(), "cached");
    }
}
