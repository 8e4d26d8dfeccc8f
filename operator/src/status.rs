//! Status of a BrokerAuth: conditions from what a reconcile observed, written only when they
//! changed, and an Event for each condition change worth telling.

use broker_auth_contract::Topics;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::crd::{BrokerAuth, BrokerAuthStatus, Condition, TierStatus};
use crate::error::Result;
use crate::kafka::TopicReport;
use crate::metrics::InstanceLabels;
use crate::reconcile::{Context, PARTITIONS_SUFFICIENT, READY, RECONCILING, STALLED};
use crate::resources::MANAGER;

/// Outcome of one pass, turned into status.
#[derive(Debug, Default)]
pub struct Observed {
    /// Reason and message of what stops the reconcile until something changes.
    pub stalled: Option<(String, String)>,
    pub kafka_problem: Option<String>,
    pub topics: Option<TopicReport>,
    pub api: TierStatus,
    pub dbproc: TierStatus,
    pub rolling_out: bool,
    /// The autoscaler of the other provider is still being removed.
    pub switching_autoscaler: Option<String>,
    pub lag: Option<i64>,
}

pub fn tier_status(deployment: &DynamicObject) -> TierStatus {
    let status = &deployment.data["status"];
    let read = |key: &str| {
        status[key]
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(0)
    };
    TierStatus {
        replicas: read("replicas"),
        ready_replicas: read("readyReplicas"),
    }
}

pub fn rolling_out(deployment: &DynamicObject) -> bool {
    let status = &deployment.data["status"];
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    let replicas = status["replicas"].as_i64().unwrap_or(0);
    let updated = status["updatedReplicas"].as_i64().unwrap_or(0);
    let ready = status["readyReplicas"].as_i64().unwrap_or(0);
    observed < generation || updated < replicas || ready < replicas
}

/// A condition that keeps its transition time when its status did not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn conditions(ba: &BrokerAuth, observed: &Observed) -> Vec<Condition> {
    let previous = ba
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = ba.metadata.generation;
    let mut conditions = Vec::new();
    if let Some((reason, message)) = &observed.stalled {
        conditions.push(condition(
            previous,
            STALLED,
            true,
            reason,
            message.clone(),
            generation,
        ));
        conditions.push(condition(
            previous,
            READY,
            false,
            reason,
            "reconcile is stalled; see the Stalled condition".into(),
            generation,
        ));
        conditions.push(condition(
            previous,
            RECONCILING,
            false,
            reason,
            "waiting for what the Stalled condition names to change".into(),
            generation,
        ));
        return conditions;
    }
    conditions.push(condition(
        previous,
        STALLED,
        false,
        "Valid",
        "the spec is valid and its Secrets exist".into(),
        generation,
    ));
    let tiers_ready = observed.api.ready_replicas >= 1 && observed.dbproc.ready_replicas >= 1;
    let tiers = format!(
        "api {}/{} ready, dbproc {}/{} ready",
        observed.api.ready_replicas,
        observed.api.replicas,
        observed.dbproc.ready_replicas,
        observed.dbproc.replicas
    );
    let (ready, ready_reason, ready_message) = match (&observed.kafka_problem, tiers_ready) {
        (Some(problem), _) => (false, "KafkaUnavailable", problem.clone()),
        (None, true) => (true, "TiersReady", tiers.clone()),
        (None, false) => (false, "TiersNotReady", tiers.clone()),
    };
    conditions.push(condition(
        previous,
        READY,
        ready,
        ready_reason,
        ready_message,
        generation,
    ));
    let (reconciling, reason, message) = if observed.kafka_problem.is_some() {
        (true, "KafkaUnavailable", "retrying Kafka".to_owned())
    } else if let Some(waiting) = &observed.switching_autoscaler {
        (true, "SwitchingAutoscaler", waiting.clone())
    } else if observed.rolling_out {
        (true, "RollingOut", tiers)
    } else {
        (
            false,
            "UpToDate",
            "every child object is applied and rolled out".to_owned(),
        )
    };
    conditions.push(condition(
        previous,
        RECONCILING,
        reconciling,
        reason,
        message,
        generation,
    ));
    if let Some(report) = &observed.topics {
        let (ok, reason, message) = if report.under_partitioned.is_empty() {
            (
                true,
                "EnoughPartitions",
                "request topics have at least dbproc.maxReplicas partitions".to_owned(),
            )
        } else {
            let listed: Vec<String> = report
                .under_partitioned
                .iter()
                .map(|(topic, count)| format!("{topic} ({count})"))
                .collect();
            (
                false,
                "TooFewPartitions",
                format!(
                    "topics with fewer partitions than dbproc.maxReplicas ({}): {}; consumers beyond the partition count stay idle",
                    ba.spec.dbproc.max_replicas,
                    listed.join(", ")
                ),
            )
        };
        conditions.push(condition(
            previous,
            PARTITIONS_SUFFICIENT,
            ok,
            reason,
            message,
            generation,
        ));
    }
    conditions
}

/// Writes status through server-side apply when it differs from what is stored, and publishes
/// events for condition changes. Returns whether the BrokerAuth is Ready.
pub async fn update_status(
    ba: &BrokerAuth,
    namespace: &str,
    ctx: &Context,
    observed: &Observed,
    topics: Option<&Topics>,
) -> Result<bool> {
    let conditions = conditions(ba, observed);
    let status = BrokerAuthStatus {
        observed_generation: ba.metadata.generation,
        conditions,
        api: observed.api.clone(),
        dbproc: observed.dbproc.clone(),
        lag: observed.lag,
        topic_prefix: topics.map(|t| t.prefix().to_owned()),
        consumer_group: topics.map(Topics::dbproc_group),
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    let instance = InstanceLabels {
        namespace: namespace.to_owned(),
        name: ba.name_any(),
    };
    ctx.metrics
        .ready
        .get_or_create(&instance)
        .set(i64::from(ready));
    ctx.metrics
        .dbproc_max_replicas
        .get_or_create(&instance)
        .set(i64::from(ba.spec.dbproc.max_replicas));
    ctx.metrics
        .dbproc_replicas
        .get_or_create(&instance)
        .set(i64::from(observed.dbproc.replicas));
    // Unchanged conditions keep their transition times, so an unchanged status compares equal
    // and costs no write (and no watch event anywhere).
    if ba.status.as_ref() == Some(&status) {
        return Ok(ready);
    }
    let api: Api<BrokerAuth> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "auth.cfdbroker.io/v1alpha1",
        "kind": "BrokerAuth",
        "status": status,
    });
    api.patch_status(
        &ba.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;

    let previous = ba
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    for condition in &status.conditions {
        let changed = previous
            .iter()
            .find(|c| c.type_ == condition.type_)
            .is_none_or(|c| c.status != condition.status || c.reason != condition.reason);
        let noteworthy = match (condition.type_.as_str(), condition.status.as_str()) {
            (STALLED, "True") | (PARTITIONS_SUFFICIENT, "False") => Some(EventType::Warning),
            (READY, "True") => Some(EventType::Normal),
            (READY, "False") if observed.kafka_problem.is_some() => Some(EventType::Warning),
            _ => None,
        };
        if let (true, Some(severity)) = (changed, noteworthy) {
            publish(ctx, ba, severity, &condition.reason, &condition.message).await;
        }
    }
    Ok(ready)
}

pub async fn publish(
    ctx: &Context,
    ba: &BrokerAuth,
    severity: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: severity,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are best effort; a failure to record one must not fail the reconcile.
    if let Err(error) = ctx.recorder.publish(&event, &ba.object_ref(&())).await {
        warn!(%error, "could not publish event");
    }
}
