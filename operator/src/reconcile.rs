//! Reconcile: BrokerAuth → ConfigMap, Deployments, Services, HPAs (or a KEDA ScaledObject),
//! PodDisruptionBudgets and Kafka topics, then status and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_auth_contract::Topics;
use broker_auth_kafka::KafkaSettings;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, field, info_span, warn};

use crate::autoscaler::{self, Switch};
use crate::crd::{self, BrokerAuth, LagMetricsProvider};
use crate::deletion;
use crate::error::{Error, Result};
use crate::kafka::{KafkaAdmin, TopicReport};
use crate::metrics::{InstanceLabels, Metrics};
use crate::reply_topics::{self, Orphans};
use crate::resources::{self, MANAGER, MAX_NAME_LEN, Tier};
use crate::status::{Observed, rolling_out, tier_status, update_status};

pub const FINALIZER: &str = "auth.cfdbroker.io/cleanup";

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const PARTITIONS_SUFFICIENT: &str = "PartitionsSufficient";

/// How often a BrokerAuth stalled on something outside its spec (KEDA missing, an admission
/// webhook refusing, an autoscaler it does not own) looks again.
pub const STALLED_RECHECK: Duration = Duration::from_secs(60);
/// How often the operator looks whether KEDA has been installed, to start watching ScaledObjects.
pub const KEDA_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often a switch between autoscaling providers looks whether the old autoscaler is gone.
pub const SWITCH_POLL: Duration = Duration::from_secs(5);
/// First and longest pause after a failed reconcile; the pause doubles per consecutive failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Topics are created when the spec changes and checked again this often (someone may delete
/// one), not on every lag refresh.
pub const TOPICS_RECHECK: Duration = Duration::from_secs(300);

/// What reconcile needs: the API client, Kafka, an event recorder, metrics, and what it remembers
/// between reconciles.
pub struct Context {
    pub client: Client,
    pub kafka: Arc<dyn KafkaAdmin>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How often lag and status are refreshed: the requeue of every settled reconcile.
    pub refresh: Duration,
    /// Consecutive failed reconciles per BrokerAuth, for the backoff of `error_policy`.
    failures: Mutex<HashMap<ObjectRef<BrokerAuth>, u32>>,
    /// The topics ensured per BrokerAuth: for which generation, when, and what was found.
    topics: Mutex<HashMap<ObjectRef<BrokerAuth>, EnsuredTopics>>,
    /// Instance reply topics seen without their pod.
    orphans: Mutex<Orphans>,
}

#[derive(Clone)]
struct EnsuredTopics {
    generation: Option<i64>,
    at: tokio::time::Instant,
    report: TopicReport,
}

impl Context {
    pub fn new(
        client: Client,
        kafka: Arc<dyn KafkaAdmin>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        refresh: Duration,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            kafka,
            recorder,
            metrics,
            refresh,
            failures: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Orphans::default()),
        }
    }

    /// Runs `f` on the record of orphaned reply topics.
    pub(crate) fn orphans<T>(&self, f: impl FnOnce(&mut Orphans) -> T) -> T {
        f(&mut self.orphans.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pause before retrying `ba` after one more failure: 5 s, doubling, at most 5 minutes.
    fn next_backoff(&self, ba: &BrokerAuth) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return BACKOFF_MAX;
        };
        let count = failures.entry(ObjectRef::from_obj(ba)).or_insert(0);
        *count = count.saturating_add(1);
        let doublings = (*count - 1).min(16);
        BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX)
    }

    fn succeeded(&self, ba: &BrokerAuth) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&ObjectRef::from_obj(ba));
        }
    }

    pub(crate) fn forget(&self, ba: &BrokerAuth) {
        self.succeeded(ba);
        if let Ok(mut topics) = self.topics.lock() {
            topics.remove(&ObjectRef::from_obj(ba));
        }
        self.orphans(|orphans| orphans.forget(ba));
    }
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
        let result = reconcile_once(&ba, &ctx).await;
        ctx.metrics.observe_duration(started.elapsed());
        if result.is_ok() {
            ctx.succeeded(&ba);
        }
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_once(ba: &Arc<BrokerAuth>, ctx: &Arc<Context>) -> Result<Action> {
    let namespace = ba.namespace().ok_or(Error::MissingNamespace)?;
    tracing::Span::current().record("namespace", namespace.as_str());
    // kube's finalizer helper drops the finalizer as soon as cleanup succeeds, so waiting
    // for the workloads to stop happens before it is called.
    if ba.meta().deletion_timestamp.is_some()
        && ba.finalizers().iter().any(|f| f == FINALIZER)
        && let Some(waiting) = deletion::stop_workloads(ba, &namespace, ctx).await?
    {
        return Ok(waiting);
    }
    let api: Api<BrokerAuth> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, ba.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(ba) => apply(&ba, &namespace, ctx).await,
            FinalizerEvent::Cleanup(ba) => deletion::cleanup(&ba, &namespace, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retries a failed reconcile after a pause that doubles with each consecutive failure of the
/// same BrokerAuth; failures are counted by reason.
pub fn error_policy(ba: Arc<BrokerAuth>, error: &Error, ctx: Arc<Context>) -> Action {
    let pause = ctx.next_backoff(&ba);
    warn!(name = %ba.name_any(), %error, retry_in_s = pause.as_secs(), "reconcile failed");
    ctx.metrics.record_failure(error.metric_label());
    Action::requeue(pause)
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
    if let Some(problem) = crd::bootstrap_servers_problem(&spec.kafka.bootstrap_servers) {
        problems.push(format!("kafka.bootstrapServers: {problem}"));
    }
    // Only KEDA scales a Deployment to and from zero; an HPA needs at least one replica.
    let dbproc_floor = match spec.autoscaling.provider {
        LagMetricsProvider::Keda => 0,
        LagMetricsProvider::Operator => 1,
    };
    for (tier, floor, min, max) in [
        ("api", 1, spec.api.min_replicas, spec.api.max_replicas),
        (
            "dbproc",
            dbproc_floor,
            spec.dbproc.min_replicas,
            spec.dbproc.max_replicas,
        ),
    ] {
        if min < floor {
            problems.push(format!(
                "{tier}.minReplicas must be at least {floor}{}",
                if tier == "dbproc" {
                    " (0 only with autoscaling.provider Keda)"
                } else {
                    ""
                }
            ));
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
    // Required by the schema too; a BrokerAuth stored before it was is not re-validated.
    if spec.secrets.mail_seal_key.is_none() {
        problems.push(
            "secrets.mailSealKey is required: the api seals sign-up codes into the mail topic \
             and dbproc opens them (MAIL_SEAL_KEY)"
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
    settings.retention = ba.spec.kafka.retention.to_retention();
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

async fn apply(ba: &BrokerAuth, namespace: &str, ctx: &Context) -> Result<Action> {
    let name = ba.name_any();
    let mut observed = Observed::default();

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

    match ensure_topics(ba, namespace, &topics, ctx).await {
        Ok(report) => observed.topics = Some(report),
        Err(error) => {
            ctx.metrics.record_failure(error.metric_label());
            observed.kafka_problem = Some(format!("ensuring topics failed: {error}"));
        }
    }

    let switch = autoscaler::clear_other_provider(ba, namespace, &ctx.client).await?;
    match &switch {
        Switch::Clear => {}
        Switch::Waiting(message) => observed.switching_autoscaler = Some(message.clone()),
        Switch::Conflict(message) => {
            observed.stalled = Some(("AutoscalerNotOwned".into(), message.clone()));
        }
    }
    let autoscaler_name = Tier::Dbproc.object_name(&name);
    for child in resources::desired_objects(ba, namespace, &topics, &secret_versions) {
        let is_autoscaler = child.name == autoscaler_name
            && matches!(
                child.resource.kind.as_str(),
                "HorizontalPodAutoscaler" | "ScaledObject"
            );
        if is_autoscaler && switch != Switch::Clear {
            continue;
        }
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
            Err(error) => match autoscaler::admission_refusal(&error) {
                // A webhook (KEDA's, a policy engine) said no: retrying at once says no again.
                Some(message) => {
                    observed.stalled.get_or_insert((
                        "AdmissionRefused".into(),
                        format!("{} {}: {message}", child.resource.kind, child.name),
                    ));
                    continue;
                }
                None => return Err(error.into()),
            },
        };
        if child.resource.kind == "Deployment" {
            let status = tier_status(&applied);
            observed.rolling_out |= rolling_out(&applied);
            if child.name == Tier::Api.object_name(&name) {
                observed.api = status;
            } else {
                observed.dbproc = status;
            }
        }
    }

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

    update_status(ba, namespace, ctx, &observed, Some(&topics)).await?;
    Ok(if observed.stalled.is_some() {
        // Stalled on something outside the spec (KEDA, a webhook, an autoscaler of someone
        // else's) that may change without a spec change; an invalid child waits for the spec.
        Action::requeue(STALLED_RECHECK)
    } else if observed.switching_autoscaler.is_some() {
        Action::requeue(SWITCH_POLL)
    } else {
        // Lag and status are refreshed on this timer; spec and children changes come sooner.
        Action::requeue(ctx.refresh)
    })
}

/// Creates the BrokerAuth's topics when its spec changed, and checks them every
/// [`TOPICS_RECHECK`]; in between the last report stands.
/// Each check also deletes the reply topics of api pods that are gone ([`reply_topics::sweep`]).
async fn ensure_topics(
    ba: &BrokerAuth,
    namespace: &str,
    topics: &Topics,
    ctx: &Context,
) -> Result<TopicReport> {
    let key = ObjectRef::from_obj(ba);
    let now = tokio::time::Instant::now();
    let remembered = ctx
        .topics
        .lock()
        .ok()
        .and_then(|ensured| ensured.get(&key).cloned());
    if let Some(ensured) = remembered
        && ensured.generation == ba.metadata.generation
        && now.duration_since(ensured.at) < TOPICS_RECHECK
    {
        return Ok(ensured.report);
    }
    let mut report = ctx
        .kafka
        .ensure_topics(
            &kafka_settings(ba),
            &topics.all(),
            ba.spec.dbproc.max_replicas,
        )
        .await?;
    // Only request topics are shared by dbproc's consumers; replies are read by
    // assignment, so their partition count does not limit scaling.
    let request_topics = topics.request_topics();
    report
        .under_partitioned
        .retain(|(topic, _)| request_topics.contains(topic));
    // Housekeeping, not worth failing the reconcile for: the next check tries again.
    if let Err(error) = reply_topics::sweep(ba, namespace, topics, ctx).await {
        ctx.metrics.record_failure(error.metric_label());
        warn!(%error, "could not delete the reply topics of api pods that are gone");
    }
    if let Ok(mut ensured) = ctx.topics.lock() {
        ensured.insert(
            key,
            EnsuredTopics {
                generation: ba.metadata.generation,
                at: now,
                report: report.clone(),
            },
        );
    }
    Ok(report)
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
