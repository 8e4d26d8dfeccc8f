//! Reconcile: BrokerAuth → ConfigMap, Deployments, Services, HPAs (or a KEDA ScaledObject),
//! PodDisruptionBudgets and Kafka topics, then status and events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_auth_contract::Topics;
use broker_auth_kafka::KafkaSettings;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, field, info_span, warn};

use crate::crd::{BrokerAuth, BrokerAuthStatus, Condition, TierStatus};
use crate::error::{Error, Result};
use crate::kafka::{KafkaAdmin, LeftInKafka, TopicReport};
use crate::metrics::{InstanceLabels, Metrics};
use crate::resources::{self, MANAGER, MAX_NAME_LEN, Tier};

pub const FINALIZER: &str = "auth.cfdbroker.io/cleanup";

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const PARTITIONS_SUFFICIENT: &str = "PartitionsSufficient";

/// What reconcile needs: the API client, Kafka, an event recorder and metrics.
pub struct Context {
    pub client: Client,
    pub kafka: Arc<dyn KafkaAdmin>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

/// The entry point the controller calls.
pub async fn reconcile(ba: Arc<BrokerAuth>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!(
        "reconcile",
        namespace = field::Empty,
        name = %ba.name_any(),
        generation = ba.metadata.generation.unwrap_or_default(),
    );
    async move {
        let started = Instant::now();
        ctx.metrics.reconciles.inc();
        let namespace = ba.namespace().ok_or(Error::MissingNamespace)?;
        tracing::Span::current().record("namespace", namespace.as_str());
        // kube's finalizer helper drops the finalizer as soon as cleanup succeeds, so waiting
        // for the workloads to stop happens before it is called.
        if ba.meta().deletion_timestamp.is_some()
            && ba.finalizers().iter().any(|f| f == FINALIZER)
            && let Some(waiting) = stop_workloads(&ba, &namespace, &ctx).await?
        {
            ctx.metrics.observe_duration(started.elapsed());
            return Ok(waiting);
        }
        let api: Api<BrokerAuth> = Api::namespaced(ctx.client.clone(), &namespace);
        let result = finalizer(&api, FINALIZER, ba, |event| async {
            match event {
                FinalizerEvent::Apply(ba) => apply(&ba, &namespace, &ctx).await,
                FinalizerEvent::Cleanup(ba) => cleanup(&ba, &namespace, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
        ctx.metrics.observe_duration(started.elapsed());
        result
    }
    .instrument(span)
    .await
}

/// Retries a failed reconcile after a pause; failures are counted by reason.
pub fn error_policy(ba: Arc<BrokerAuth>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %ba.name_any(), %error, "reconcile failed");
    ctx.metrics.record_failure(error.metric_label());
    Action::requeue(Duration::from_secs(30))
}

/// Problems the schema cannot catch (or that a cluster without CEL, or an object stored before
/// the schema caught them, let through).
pub fn spec_problems(ba: &BrokerAuth, namespace: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let name = ba.name_any();
    let spec = &ba.spec;
    if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name is {} characters; at most {MAX_NAME_LEN} fit the derived object names",
            name.len()
        ));
    }
    if let Err(error) = Topics::for_deployment(namespace, &name) {
        problems.push(error.to_string());
    }
    for (tier, min, max) in [
        ("api", spec.api.min_replicas, spec.api.max_replicas),
        ("dbproc", spec.dbproc.min_replicas, spec.dbproc.max_replicas),
    ] {
        if min < 1 {
            problems.push(format!("{tier}.minReplicas must be at least 1"));
        }
        if min > max {
            problems.push(format!(
                "{tier}.minReplicas ({min}) must not exceed {tier}.maxReplicas ({max})"
            ));
        }
    }
    // The schema requires it, but a BrokerAuth stored before it did is not re-validated.
    if spec.dbproc.mail_from.trim().is_empty() {
        problems.push(
            "dbproc.mailFrom is required: dbproc does not start without a sender address (MAIL_FROM)"
                .into(),
        );
    }
    if spec.dbproc.lag_per_replica < 1 {
        problems.push("dbproc.lagPerReplica must be at least 1".into());
    }
    // The CPU HPA computes utilization against the request; without one it never scales.
    if let Some(resources) = &spec.api.resources
        && !resources
            .requests
            .as_ref()
            .is_some_and(|requests| requests.contains_key("cpu"))
    {
        problems.push(
            "api.resources.requests.cpu is required: the api HPA scales on CPU utilization".into(),
        );
    }
    problems
}

/// How the operator reaches the BrokerAuth's Kafka, and the topics it creates there.
pub fn kafka_settings(ba: &BrokerAuth) -> KafkaSettings {
    let mut settings = KafkaSettings::new(ba.spec.kafka.bootstrap_servers.clone());
    settings.topic_partitions = resources::topic_partitions(&ba.spec);
    settings.replication_factor = ba.spec.kafka.replication_factor;
    settings
}

/// dbproc's lag over its request topics: the total, and the value the autoscaler sees (capped
/// per the spec). Reconcile shows the first in status; the external metrics API serves the second.
pub async fn measure_lag(
    kafka: &dyn KafkaAdmin,
    ba: &BrokerAuth,
    topics: &Topics,
) -> Result<(i64, i64)> {
    let lag = kafka
        .consumer_lag(
            &kafka_settings(ba),
            &topics.dbproc_group(),
            &topics.request_topics(),
            ba.spec.autoscaling.uncommitted_partitions,
        )
        .await?;
    let value = lag.metric_value(
        ba.spec.dbproc.lag_per_replica,
        ba.spec.autoscaling.cap_lag_at_partitions,
    );
    Ok((lag.total(), value))
}

/// Outcome of one pass, turned into status.
struct Observed {
    stalled: Option<(String, String)>,
    kafka_problem: Option<String>,
    topics: Option<TopicReport>,
    api: TierStatus,
    dbproc: TierStatus,
    rolling_out: bool,
    lag: Option<i64>,
}

async fn apply(ba: &BrokerAuth, namespace: &str, ctx: &Context) -> Result<Action> {
    let name = ba.name_any();
    let mut observed = Observed {
        stalled: None,
        kafka_problem: None,
        topics: None,
        api: TierStatus::default(),
        dbproc: TierStatus::default(),
        rolling_out: false,
        lag: None,
    };

    let problems = spec_problems(ba, namespace);
    if !problems.is_empty() {
        observed.stalled = Some(("InvalidSpec".into(), problems.join("; ")));
        update_status(ba, namespace, ctx, &observed, None).await?;
        // Nothing to retry: a spec change triggers the next reconcile.
        return Ok(Action::await_change());
    }
    let topics = Topics::for_deployment(namespace, &name)?;

    let (secret_versions, missing) = secret_versions(ba, namespace, &ctx.client).await?;
    if !missing.is_empty() {
        observed.stalled = Some((
            "SecretNotFound".into(),
            format!(
                "Secret(s) {} not found in namespace {namespace}",
                missing.join(", ")
            ),
        ));
        update_status(ba, namespace, ctx, &observed, Some(&topics)).await?;
        // Secrets are not watched; look again soon.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    let settings = kafka_settings(ba);
    match ctx
        .kafka
        .ensure_topics(&settings, &topics.all(), ba.spec.dbproc.max_replicas)
        .await
    {
        Ok(mut report) => {
            // Only request topics are shared by dbproc's consumers; replies are read by
            // assignment, so their partition count does not limit scaling.
            let request_topics = topics.request_topics();
            report
                .under_partitioned
                .retain(|(topic, _)| request_topics.contains(topic));
            observed.topics = Some(report);
        }
        Err(error) => {
            ctx.metrics.record_failure(error.metric_label());
            observed.kafka_problem = Some(format!("ensuring topics failed: {error}"));
        }
    }

    for child in resources::desired_objects(ba, namespace, &topics, &secret_versions) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &child.resource);
        let applied = match api
            .patch(
                &child.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&child.body),
            )
            .await
        {
            Ok(applied) => applied,
            Err(kube::Error::Api(status))
                if status.code == 404 && child.resource.group == "keda.sh" =>
            {
                observed.stalled = Some((
                    "KedaNotInstalled".into(),
                    "autoscaling.provider is Keda but the cluster has no keda.sh ScaledObject API"
                        .into(),
                ));
                continue;
            }
            // The API server refused what the spec produced (e.g. a resource quantity the CRD
            // schema cannot check): retrying cannot help, only a spec change can.
            Err(kube::Error::Api(status)) if status.code == 422 => {
                // The first rejection is reported; fixing it reveals the next.
                observed.stalled.get_or_insert((
                    "ChildRejected".into(),
                    format!(
                        "the API server rejected {} {}: {}",
                        child.resource.kind, child.name, status.message
                    ),
                ));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if child.resource.kind == "Deployment" {
            let status = tier_status(&applied);
            let rolling = rolling_out(&applied);
            observed.rolling_out |= rolling;
            if child.name == Tier::Api.object_name(&name) {
                observed.api = status;
            } else {
                observed.dbproc = status;
            }
        }
    }
    delete_obsolete_autoscaler(ba, namespace, &ctx.client).await?;

    if observed.kafka_problem.is_none() {
        match measure_lag(ctx.kafka.as_ref(), ba, &topics).await {
            Ok((total, value)) => {
                ctx.metrics
                    .dbproc_lag
                    .get_or_create(&InstanceLabels {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                    })
                    .set(value);
                observed.lag = Some(total);
            }
            Err(error) => {
                ctx.metrics.record_failure(error.metric_label());
                observed.kafka_problem = Some(format!("measuring consumer lag failed: {error}"));
            }
        }
    }

    let ready = update_status(ba, namespace, ctx, &observed, Some(&topics)).await?;
    Ok(if observed.stalled.is_some() {
        Action::await_change()
    } else if ready && observed.kafka_problem.is_none() {
        // Refresh the lag shown in status now and then; children changes trigger sooner.
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(15))
    })
}

/// How often a BrokerAuth being deleted looks again whether its workloads are gone (their
/// deletion also triggers a reconcile, through `Controller::owns`).
pub const WORKLOADS_GONE_POLL: Duration = Duration::from_secs(5);

/// For how long after deletion was requested a transient Kafka failure (a consumer still in a
/// group until its session times out, a coordinator moving, the broker unreachable) is retried.
/// After that the BrokerAuth goes anyway and a warning Event names what was left: a Kafka that
/// is gone for good must not keep it forever.
pub const KAFKA_CLEANUP_GRACE: Duration = Duration::from_secs(300);

/// First stage of deletion: the api and dbproc Deployments are deleted with foreground
/// propagation, so they exist until their pods are gone. Returns the requeue to wait with while
/// either still exists. Only then may Kafka data go: a dbproc still running would recreate the
/// group's offsets, and an api still running would produce into deleted topics.
async fn stop_workloads(ba: &BrokerAuth, namespace: &str, ctx: &Context) -> Result<Option<Action>> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let name = ba.name_any();
    let mut running = Vec::new();
    for tier in [Tier::Api, Tier::Dbproc] {
        let deployment = tier.object_name(&name);
        // Deleting again while a foreground deletion runs is harmless and answers whether the
        // object is still there (the object) or gone (404, or a Status when deleted at once).
        match api.delete(&deployment, &DeleteParams::foreground()).await {
            // Left: the object, still there; Right: a Status, deleted.
            Ok(answer) if answer.is_left() => running.push(deployment),
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    if running.is_empty() {
        Ok(None)
    } else {
        tracing::info!(deployments = ?running, "waiting for the workloads to stop before deleting kafka data");
        Ok(Some(Action::requeue(WORKLOADS_GONE_POLL)))
    }
}

/// Last stage of deletion, once no pod of the BrokerAuth runs: its topics and its consumer
/// groups' committed offsets, unless `kafka.deleteTopicsOnDelete` is off. The offsets go too:
/// a BrokerAuth re-created under the same name would otherwise find its new, empty topics
/// behind old commits (lag read as 0, records skipped). Kept, they stay together.
async fn cleanup(ba: &BrokerAuth, namespace: &str, ctx: &Context) -> Result<Action> {
    // Other child objects go with the BrokerAuth through their owner references.
    // A name no topics can be derived from never had topics; failing here would keep the
    // finalizer, and the BrokerAuth, forever.
    let topics = Topics::for_deployment(namespace, &ba.name_any()).ok();
    if let (true, Some(topics)) = (ba.spec.kafka.delete_topics_on_delete, topics) {
        match delete_kafka_data(ba, &topics, ctx).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                let left: Vec<String> = left.iter().map(ToString::to_string).collect();
                warn!(left = ?left, "kafka refused to delete some of the BrokerAuth's data");
                publish(
                    ctx,
                    ba,
                    EventType::Warning,
                    "KafkaDataLeft",
                    &format!(
                        "Kafka refused to delete, so these remain: {}",
                        left.join(", ")
                    ),
                )
                .await;
            }
            Err(error) if !grace_expired(ba) => {
                // Keeps the finalizer; error_policy tries again.
                return Err(error);
            }
            Err(error) => {
                warn!(%error, "giving up on deleting kafka data");
                publish(
                    ctx,
                    ba,
                    EventType::Warning,
                    "KafkaDataLeft",
                    &format!(
                        "topics and consumer groups with prefix {} may remain; still failing after {} s: {error}",
                        topics.prefix(),
                        KAFKA_CLEANUP_GRACE.as_secs()
                    ),
                )
                .await;
            }
        }
    }
    ctx.metrics.dbproc_lag.remove(&InstanceLabels {
        namespace: namespace.to_owned(),
        name: ba.name_any(),
    });
    Ok(Action::await_change())
}

/// The consumer groups first, and the topics only when they went: offsets left behind without
/// their topics are the one state worse than keeping both (a re-created BrokerAuth would read its
/// new topics' lag as 0 behind them), so a broker that refuses DeleteGroups keeps the topics too.
async fn delete_kafka_data(
    ba: &BrokerAuth,
    topics: &Topics,
    ctx: &Context,
) -> Result<Vec<LeftInKafka>> {
    let settings = kafka_settings(ba);
    let mut left = ctx
        .kafka
        .delete_consumer_groups(&settings, &[topics.dbproc_group(), topics.mailer_group()])
        .await?;
    if left.is_empty() {
        left = ctx.kafka.delete_topics(&settings, &topics.all()).await?;
    } else {
        left.extend(topics.all().into_iter().map(|topic| LeftInKafka {
            kind: "topic",
            name: topic,
            answer: "kept with its consumer groups' offsets".into(),
        }));
    }
    Ok(left)
}

fn grace_expired(ba: &BrokerAuth) -> bool {
    ba.meta().deletion_timestamp.as_ref().is_some_and(|since| {
        let waited = Timestamp::now().duration_since(since.0);
        waited.as_secs() >= i64::try_from(KAFKA_CLEANUP_GRACE.as_secs()).unwrap_or(i64::MAX)
    })
}

/// The resource versions of the referenced Secrets, and the names of those that are missing.
async fn secret_versions(
    ba: &BrokerAuth,
    namespace: &str,
    client: &Client,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<&str> = ba
        .spec
        .secrets
        .all()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut versions = BTreeMap::new();
    let mut missing = Vec::new();
    for name in names {
        // Metadata only: the operator never reads secret values.
        match api.get_metadata_opt(name).await? {
            Some(secret) => {
                versions.insert(
                    name.to_owned(),
                    secret.resource_version().unwrap_or_default(),
                );
            }
            None => missing.push(name.to_owned()),
        }
    }
    Ok((versions, missing))
}

async fn delete_obsolete_autoscaler(
    ba: &BrokerAuth,
    namespace: &str,
    client: &Client,
) -> Result<()> {
    let (resource, name) = resources::obsolete_dbproc_autoscaler(ba);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!(kind = %resource.kind, %name, "deleted the autoscaler of the other provider");
            Ok(())
        }
        // Already gone, or (for KEDA) the API does not exist in this cluster.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn tier_status(deployment: &DynamicObject) -> TierStatus {
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

fn rolling_out(deployment: &DynamicObject) -> bool {
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
            "waiting for the spec or its Secrets to be fixed".into(),
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

/// Writes status through server-side apply and publishes events for condition changes.
/// Returns whether the BrokerAuth is Ready.
async fn update_status(
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
    Ok(status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True"))
}

async fn publish(ctx: &Context, ba: &BrokerAuth, severity: EventType, reason: &str, note: &str) {
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
