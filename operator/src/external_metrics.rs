//! The `external.metrics.k8s.io/v1beta1` API the HPA reads dbproc's lag from, served behind an
//! APIService. One metric, [`LAG_METRIC`], selected by the [`INSTANCE_LABEL`] label.
//!
//! Metric values are served only to a user the aggregator vouches for (see [`crate::front_proxy`])
//! and the kube-apiserver authorizes (see [`crate::access_review`]). Discovery, OpenAPI and
//! health documents are static and open: the aggregator's availability check reads discovery
//! without naming a user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access_review::SubjectAccessReviewer;
use crate::crd::BrokerAuth;
use crate::front_proxy::{FrontProxyTrust, VerifiedClientCert};
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;
use crate::reconcile::measure_lag;
use crate::resources::{INSTANCE_LABEL, LAG_METRIC};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
/// How long a metric read waits for a replica that just started to list the BrokerAuths.
pub const STORE_READY_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ExternalMetricsState {
    /// BrokerAuths as the watch last saw them.
    pub brokerauths: Store<BrokerAuth>,
    pub kafka: Arc<dyn KafkaAdmin>,
    /// Who may speak for a user (the aggregator's proxy certificate).
    pub front_proxy: Arc<FrontProxyTrust>,
    /// Whether that user may read a metric.
    pub access: Arc<SubjectAccessReviewer>,
    /// Where requests are counted by outcome.
    pub metrics: Arc<Metrics>,
}

pub fn router(state: ExternalMetricsState) -> Router {
    Router::new()
        .route("/apis/external.metrics.k8s.io/v1beta1", get(resource_list))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(metric_values).layer(axum::middleware::from_fn_with_state(
                state.metrics.clone(),
                count_outcome,
            )),
        )
        // The aggregator fetches these; an empty document keeps it from logging errors.
        .route("/openapi/v2", get(openapi_v2))
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(json!({"paths": {}})) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(state)
}

/// Counts each metric request by the outcome its status tells.
async fn count_outcome(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let outcome = match response.status() {
        StatusCode::OK => "ok",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "unavailable",
    };
    metrics.external_metrics_request(outcome);
    response
}

async fn resource_list() -> axum::Json<Value> {
    axum::Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": LAG_METRIC,
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    }))
}

async fn openapi_v2() -> axum::Json<Value> {
    axum::Json(json!({
        "swagger": "2.0",
        "info": {"title": "broker-auth external metrics", "version": "v1beta1"},
        "paths": {},
    }))
}

#[derive(Debug, Deserialize)]
pub struct MetricQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

/// A Kubernetes `Status` error body, as API clients expect.
fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Equality requirements of a label selector (`a=b,c==d`); other operators are refused.
pub fn parse_equality_selector(selector: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for requirement in selector.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let (key, value) = requirement
            .split_once("==")
            .or_else(|| requirement.split_once('='))
            .ok_or_else(|| format!("unsupported selector requirement {requirement:?}"))?;
        if key.ends_with('!') {
            return Err(format!("unsupported selector requirement {requirement:?}"));
        }
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

async fn metric_values(
    State(state): State<ExternalMetricsState>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<MetricQuery>,
    client_cert: Option<Extension<VerifiedClientCert>>,
    headers: HeaderMap,
) -> Response {
    let user = match state
        .front_proxy
        .authenticate(client_cert.as_ref().map(|c| &c.0), &headers)
    {
        Ok(user) => user,
        Err(reason) => {
            tracing::debug!(%reason, "unauthenticated external metrics request");
            return status_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized".into(),
            );
        }
    };
    match state
        .access
        .may_read_metric(&user, &namespace, &metric)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return status_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "user {:?} cannot get {GROUP}/{metric} in namespace {namespace:?}",
                    user.name
                ),
            );
        }
        Err(error) => {
            tracing::warn!(%error, "SubjectAccessReview failed");
            return status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "could not authorize the request".into(),
            );
        }
    }
    if metric != LAG_METRIC {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no external metric {metric:?}; this server serves {LAG_METRIC}"),
        );
    }
    // Until the watch has listed the BrokerAuths, "none matches" would be a lie the HPA acts on.
    let listed = tokio::time::timeout(STORE_READY_WAIT, state.brokerauths.wait_until_ready()).await;
    if !matches!(listed, Ok(Ok(()))) {
        return status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the operator has not listed the BrokerAuths yet".into(),
        );
    }
    let selector = match parse_equality_selector(query.label_selector.as_deref().unwrap_or("")) {
        Ok(selector) => selector,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let brokerauths: Vec<Arc<BrokerAuth>> = match selector.get(INSTANCE_LABEL) {
        Some(name) => state
            .brokerauths
            .get(&ObjectRef::new(name).within(&namespace))
            .into_iter()
            .collect(),
        None => state
            .brokerauths
            .state()
            .into_iter()
            .filter(|ba| ba.namespace().as_deref() == Some(namespace.as_str()))
            .collect(),
    };
    let mut items = Vec::new();
    for ba in brokerauths {
        let Some(item) = lag_item(&state, &namespace, &ba).await else {
            return status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "could not measure the consumer lag of {}/{}",
                    namespace,
                    ba.name_any()
                ),
            );
        };
        items.push(item);
    }
    if items.is_empty() {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no BrokerAuth in namespace {namespace} matches the selector"),
        );
    }
    axum::Json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }))
    .into_response()
}

async fn lag_item(state: &ExternalMetricsState, namespace: &str, ba: &BrokerAuth) -> Option<Value> {
    let name = ba.name_any();
    let topics = broker_auth_contract::Topics::for_deployment(namespace, &name).ok()?;
    let (_, value) = measure_lag(state.kafka.as_ref(), ba, &topics)
        .await
        .inspect_err(|error| tracing::warn!(%namespace, %name, %error, "lag measurement failed"))
        .ok()?;
    Some(json!({
        "metricName": LAG_METRIC,
        "metricLabels": {INSTANCE_LABEL: name},
        "timestamp": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // A plain integer is a valid Kubernetes quantity.
        "value": value.to_string(),
    }))
}
