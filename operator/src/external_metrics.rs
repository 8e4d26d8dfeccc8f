//! The `external.metrics.k8s.io/v1beta1` API the HPA reads dbproc's lag from, served behind an
//! APIService. One metric, [`LAG_METRIC`], selected by the [`INSTANCE_LABEL`] label.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::crd::BrokerAuth;
use crate::kafka::KafkaAdmin;
use crate::resources::{INSTANCE_LABEL, LAG_METRIC};

pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

#[derive(Clone)]
pub struct ExternalMetricsState {
    /// BrokerAuths as the watch last saw them.
    pub brokerauths: Store<BrokerAuth>,
    pub kafka: Arc<dyn KafkaAdmin>,
}

pub fn router(state: ExternalMetricsState) -> Router {
    Router::new()
        .route("/apis/external.metrics.k8s.io/v1beta1", get(resource_list))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(metric_values),
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
) -> Response {
    if metric != LAG_METRIC {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no external metric {metric:?}; this server serves {LAG_METRIC}"),
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
    let mut settings =
        broker_auth_kafka::KafkaSettings::new(ba.spec.kafka.bootstrap_servers.clone());
    settings.topic_partitions = crate::resources::topic_partitions(&ba.spec);
    let lag = state
        .kafka
        .consumer_lag(
            &settings,
            &topics.dbproc_group(),
            &topics.request_topics(),
            ba.spec.autoscaling.uncommitted_partitions,
        )
        .await
        .inspect_err(|error| tracing::warn!(%namespace, %name, %error, "lag measurement failed"))
        .ok()?;
    let value = lag.metric_value(
        ba.spec.dbproc.lag_per_replica,
        ba.spec.autoscaling.cap_lag_at_partitions,
    );
    Some(json!({
        "metricName": LAG_METRIC,
        "metricLabels": {INSTANCE_LABEL: name},
        "timestamp": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // A plain integer is a valid Kubernetes quantity.
        "value": value.to_string(),
    }))
}
