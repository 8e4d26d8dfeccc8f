//! The objects a `BrokerAuth` turns into. Pure functions of the spec (plus the Secrets'
//! resource versions, so a rotated Secret rolls the pods), with deterministic names.

use std::collections::BTreeMap;

use broker_auth_contract::Topics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceRequirements, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::core::ApiResource;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{
    BrokerAuth, BrokerAuthSpec, LagMetricsProvider, SecretKeyRef, UncommittedPartitionPolicy,
};

/// The external metric the dbproc HPA reads; served by this operator.
pub const LAG_METRIC: &str = "brokerauth-dbproc-lag";
/// Label naming the BrokerAuth an object belongs to; the HPA's metric selector uses it.
pub const INSTANCE_LABEL: &str = "auth.cfdbroker.io/brokerauth";
/// Pod-template annotation whose change rolls the pods when settings or Secrets change.
pub const CONFIG_HASH_ANNOTATION: &str = "auth.cfdbroker.io/config-hash";
pub const MANAGER: &str = "broker-auth-operator";

pub const API_PORT: i32 = 8080;
/// `/metrics` of both tiers (`METRICS_LISTEN`); the API keeps it off its public port.
pub const METRICS_PORT: i32 = 9090;
pub const DBPROC_METRICS_PORT: i32 = METRICS_PORT;
/// Longest BrokerAuth name whose derived names (`{name}-dbproc-metrics`) still fit the
/// 63-character limit of Service names.
pub const MAX_NAME_LEN: usize = 63 - "-dbproc-metrics".len();

/// The two workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Api,
    Dbproc,
}

impl Tier {
    pub fn component(self) -> &'static str {
        match self {
            Tier::Api => "api",
            Tier::Dbproc => "dbproc",
        }
    }

    /// Name of the tier's Deployment, HPA and PDB.
    pub fn object_name(self, instance: &str) -> String {
        format!("{instance}-{}", self.component())
    }
}

/// An object to apply, already serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildObject {
    pub resource: ApiResource,
    pub name: String,
    pub body: Value,
}

pub fn keda_scaled_object_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

pub fn configmap_name(instance: &str) -> String {
    format!("{instance}-config")
}

pub fn dbproc_metrics_service_name(instance: &str) -> String {
    format!("{instance}-dbproc-metrics")
}

/// Partitions the operator creates topics with: never fewer than dbproc can use.
pub fn topic_partitions(spec: &BrokerAuthSpec) -> i32 {
    spec.kafka.topic_partitions.max(spec.dbproc.max_replicas)
}

/// Everything the operator applies for `ba`, in apply order. `secret_versions` maps each
/// referenced Secret's name to its `resourceVersion`.
pub fn desired_objects(
    ba: &BrokerAuth,
    namespace: &str,
    topics: &Topics,
    secret_versions: &BTreeMap<String, String>,
) -> Vec<ChildObject> {
    let name = ba.metadata.name.as_deref().unwrap_or_default();
    let spec = &ba.spec;
    let owner = owner_reference(ba);
    let settings = settings(spec, topics);
    let config_hash = config_hash(&settings, spec, secret_versions);

    let mut objects = vec![
        child::<ConfigMap>(
            configmap_name(name),
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata(&configmap_name(name), namespace, name, None, &owner),
                "data": &settings,
            }),
        ),
        deployment(ba, namespace, Tier::Api, &owner, &settings, &config_hash),
        child::<Service>(
            Tier::Api.object_name(name),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(&Tier::Api.object_name(name), namespace, name, Some(Tier::Api), &owner),
                "spec": {
                    "selector": selector_labels(name, Tier::Api),
                    "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
                },
            }),
        ),
        child::<HorizontalPodAutoscaler>(
            Tier::Api.object_name(name),
            json!({
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": metadata(&Tier::Api.object_name(name), namespace, name, Some(Tier::Api), &owner),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": Tier::Api.object_name(name)},
                    "minReplicas": spec.api.min_replicas,
                    "maxReplicas": spec.api.max_replicas,
                    "metrics": [{
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": spec.api.target_cpu_utilization},
                        },
                    }],
                },
            }),
        ),
        pod_disruption_budget(name, namespace, Tier::Api, &owner),
        deployment(ba, namespace, Tier::Dbproc, &owner, &settings, &config_hash),
        child::<Service>(
            dbproc_metrics_service_name(name),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(&dbproc_metrics_service_name(name), namespace, name, Some(Tier::Dbproc), &owner),
                "spec": {
                    "clusterIP": "None",
                    "selector": selector_labels(name, Tier::Dbproc),
                    "ports": [{"name": "metrics", "port": DBPROC_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
                },
            }),
        ),
        pod_disruption_budget(name, namespace, Tier::Dbproc, &owner),
    ];
    objects.push(match spec.autoscaling.provider {
        LagMetricsProvider::Operator => dbproc_hpa(ba, namespace, &owner),
        LagMetricsProvider::Keda => keda_scaled_object(ba, namespace, topics, &owner),
    });
    objects
}

/// The dbproc autoscaler of the provider *not* chosen, which reconcile deletes if present.
pub fn obsolete_dbproc_autoscaler(ba: &BrokerAuth) -> (ApiResource, String) {
    let name = Tier::Dbproc.object_name(ba.metadata.name.as_deref().unwrap_or_default());
    match ba.spec.autoscaling.provider {
        LagMetricsProvider::Operator => (keda_scaled_object_resource(), name),
        LagMetricsProvider::Keda => (ApiResource::erase::<HorizontalPodAutoscaler>(&()), name),
    }
}

fn child<K: Resource<DynamicType = ()>>(name: String, body: Value) -> ChildObject {
    ChildObject {
        resource: ApiResource::erase::<K>(&()),
        name,
        body,
    }
}

fn owner_reference(ba: &BrokerAuth) -> Value {
    json!({
        "apiVersion": "auth.cfdbroker.io/v1alpha1",
        "kind": "BrokerAuth",
        "name": ba.metadata.name,
        "uid": ba.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn common_labels(instance: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name", "broker-auth".to_owned()),
        ("app.kubernetes.io/instance", instance.to_owned()),
        ("app.kubernetes.io/part-of", "broker-auth".to_owned()),
        ("app.kubernetes.io/managed-by", MANAGER.to_owned()),
        (INSTANCE_LABEL, instance.to_owned()),
    ])
}

/// The label selector of `tier`'s pods of the BrokerAuth named `instance`, as a list request
/// takes it (`key=value,...`).
pub fn selector(instance: &str, tier: Tier) -> String {
    selector_labels(instance, tier)
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector_labels(instance: &str, tier: Tier) -> Value {
    json!({
        "app.kubernetes.io/name": "broker-auth",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": tier.component(),
    })
}

fn metadata(
    object_name: &str,
    namespace: &str,
    instance: &str,
    tier: Option<Tier>,
    owner: &Value,
) -> Value {
    let mut labels = common_labels(instance);
    if let Some(tier) = tier {
        labels.insert("app.kubernetes.io/component", tier.component().to_owned());
    }
    json!({
        "name": object_name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner],
    })
}

/// Non-secret settings, keyed by the environment variable that carries them.
fn settings(spec: &BrokerAuthSpec, topics: &Topics) -> BTreeMap<&'static str, String> {
    let mut settings = BTreeMap::from([
        ("API_LISTEN", format!("0.0.0.0:{API_PORT}")),
        ("METRICS_LISTEN", format!("0.0.0.0:{DBPROC_METRICS_PORT}")),
        ("KAFKA_BROKERS", spec.kafka.bootstrap_servers.clone()),
        ("KAFKA_TOPIC_PREFIX", topics.prefix().to_owned()),
        ("KAFKA_TOPIC_PARTITIONS", topic_partitions(spec).to_string()),
        (
            "KAFKA_REPLICATION_FACTOR",
            spec.kafka.replication_factor.to_string(),
        ),
        ("COOKIE_SECURE", spec.api.cookie_secure.to_string()),
        ("BCRYPT_COST", spec.api.bcrypt_cost.to_string()),
        ("RUST_LOG", spec.observability.log_level.clone()),
        // JSON lines, each with the trace_id and span_id of its span: what log collectors parse.
        ("LOG_FORMAT", "json".to_owned()),
        // Never empty here: reconcile stalls a spec without one before building any child.
        ("MAIL_FROM", spec.dbproc.mail_from.clone()),
    ]);
    if let Some(endpoint) = &spec.observability.otlp_endpoint {
        settings.insert("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone());
    }
    settings
}

/// Settings each tier reads from the ConfigMap, and the Secret-backed variables it gets.
fn tier_env(
    spec: &BrokerAuthSpec,
    tier: Tier,
) -> (Vec<&'static str>, Vec<(&'static str, &SecretKeyRef)>) {
    let secrets = &spec.secrets;
    match tier {
        Tier::Api => (
            vec![
                "API_LISTEN",
                "METRICS_LISTEN",
                "KAFKA_BROKERS",
                "KAFKA_TOPIC_PREFIX",
                "KAFKA_TOPIC_PARTITIONS",
                "KAFKA_REPLICATION_FACTOR",
                "COOKIE_SECURE",
                "BCRYPT_COST",
                "RUST_LOG",
                "LOG_FORMAT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
            [
                ("REDIS_URL", &secrets.redis_url),
                ("JWT_SECRET", &secrets.jwt_secret),
            ]
            .into_iter()
            .chain(
                secrets
                    .mail_seal_key
                    .iter()
                    .map(|key| ("MAIL_SEAL_KEY", key)),
            )
            .collect(),
        ),
        Tier::Dbproc => (
            vec![
                "KAFKA_BROKERS",
                "KAFKA_TOPIC_PREFIX",
                "KAFKA_TOPIC_PARTITIONS",
                "KAFKA_REPLICATION_FACTOR",
                "MAIL_FROM",
                "METRICS_LISTEN",
                "RUST_LOG",
                "LOG_FORMAT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
            [
                ("DATABASE_URL", &secrets.database_url),
                ("SMTP_URL", &secrets.smtp_url),
            ]
            .into_iter()
            .chain(
                secrets
                    .mail_seal_key
                    .iter()
                    .map(|key| ("MAIL_SEAL_KEY", key)),
            )
            .collect(),
        ),
    }
}

fn config_hash(
    settings: &BTreeMap<&'static str, String>,
    spec: &BrokerAuthSpec,
    secret_versions: &BTreeMap<String, String>,
) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in settings {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    for secret in spec.secrets.all() {
        hasher.update(secret.name.as_bytes());
        hasher.update([0]);
        hasher.update(secret.key.as_bytes());
        hasher.update([0]);
    }
    for (name, version) in secret_versions {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(version.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Requests the HPA's CPU target is computed against, and a memory limit.
pub fn default_resources() -> Value {
    json!({
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    })
}

fn resources(given: Option<&ResourceRequirements>) -> Value {
    given
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(default_resources)
}

fn deployment(
    ba: &BrokerAuth,
    namespace: &str,
    tier: Tier,
    owner: &Value,
    present: &BTreeMap<&'static str, String>,
    config_hash: &str,
) -> ChildObject {
    let instance = ba.metadata.name.as_deref().unwrap_or_default();
    let spec = &ba.spec;
    let object_name = tier.object_name(instance);
    let (settings, secrets) = tier_env(spec, tier);
    let mut env: Vec<Value> = settings
        .into_iter()
        // Optional settings (MAIL_FROM, the OTLP endpoint) are left out when unset.
        .filter(|key| present.contains_key(key))
        .map(|key| {
            json!({
                "name": key,
                "valueFrom": {"configMapKeyRef": {"name": configmap_name(instance), "key": key}},
            })
        })
        .collect();
    env.extend(secrets.into_iter().map(|(variable, secret)| {
        json!({
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
        })
    }));
    let pod_name = json!({"fieldRef": {"fieldPath": "metadata.name"}});
    match tier {
        // Static group membership keyed by the pod: a restarted container takes its partitions
        // back without a rebalance.
        Tier::Dbproc => env.push(json!({"name": "KAFKA_GROUP_INSTANCE_ID", "valueFrom": pod_name})),
        // The pod's own reply topic is named after it: a restarted container reads the same
        // one, and the operator deletes the topics of pods that are gone.
        Tier::Api => env.push(json!({"name": "INSTANCE_ID", "valueFrom": pod_name})),
    }
    let (image, port_name, port, given_resources) = match tier {
        Tier::Api => (
            format!("{}-api:{}", spec.image.repository, spec.image.tag),
            "http",
            API_PORT,
            spec.api.resources.as_ref(),
        ),
        Tier::Dbproc => (
            format!("{}-dbproc:{}", spec.image.repository, spec.image.tag),
            "metrics",
            DBPROC_METRICS_PORT,
            spec.dbproc.resources.as_ref(),
        ),
    };
    let mut ports = vec![json!({"name": port_name, "containerPort": port, "protocol": "TCP"})];
    if tier == Tier::Api {
        ports.push(json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}));
    }
    let mut container = json!({
        "name": tier.component(),
        "image": image,
        "env": env,
        "ports": ports,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port_name},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port_name},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "resources": resources(given_resources),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    });
    if let Some(policy) = spec.image.pull_policy {
        container["imagePullPolicy"] = json!(policy.as_str());
    }
    let mut pod_spec = json!({
        // The tiers never call the Kubernetes API.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    });
    if !spec.image.pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = spec
            .image
            .pull_secrets
            .iter()
            .map(|name| json!({"name": name}))
            .collect();
    }
    let mut pod_labels = common_labels(instance);
    pod_labels.insert("app.kubernetes.io/component", tier.component().to_owned());
    let strategy = match tier {
        // Never drop below the serving capacity during a rollout.
        Tier::Api => {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}})
        }
        Tier::Dbproc => {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        }
    };
    child::<Deployment>(
        object_name.clone(),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&object_name, namespace, instance, Some(tier), owner),
            // No `replicas`: the HPA (or KEDA) owns it, and applying it would fight them.
            "spec": {
                "selector": {"matchLabels": selector_labels(instance, tier)},
                "strategy": strategy,
                "revisionHistoryLimit": 5,
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {
                            CONFIG_HASH_ANNOTATION: config_hash,
                            // Prometheus' conventional pod discovery: scrape the metrics port.
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": METRICS_PORT.to_string(),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": pod_spec,
                },
            },
        }),
    )
}

fn pod_disruption_budget(
    instance: &str,
    namespace: &str,
    tier: Tier,
    owner: &Value,
) -> ChildObject {
    let object_name = tier.object_name(instance);
    child::<PodDisruptionBudget>(
        object_name.clone(),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(&object_name, namespace, instance, Some(tier), owner),
            // maxUnavailable (not minAvailable) keeps node drains possible at one replica.
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(instance, tier)},
            },
        }),
    )
}

fn dbproc_hpa(ba: &BrokerAuth, namespace: &str, owner: &Value) -> ChildObject {
    let instance = ba.metadata.name.as_deref().unwrap_or_default();
    let object_name = Tier::Dbproc.object_name(instance);
    let dbproc = &ba.spec.dbproc;
    child::<HorizontalPodAutoscaler>(
        object_name.clone(),
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(&object_name, namespace, instance, Some(Tier::Dbproc), owner),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name},
                "minReplicas": dbproc.min_replicas,
                "maxReplicas": dbproc.max_replicas,
                "metrics": [{
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": LAG_METRIC,
                            "selector": {"matchLabels": {INSTANCE_LABEL: instance}},
                        },
                        "target": {"type": "AverageValue", "averageValue": dbproc.lag_per_replica.to_string()},
                    },
                }],
            },
        }),
    )
}

fn keda_scaled_object(
    ba: &BrokerAuth,
    namespace: &str,
    topics: &Topics,
    owner: &Value,
) -> ChildObject {
    let instance = ba.metadata.name.as_deref().unwrap_or_default();
    let object_name = Tier::Dbproc.object_name(instance);
    let spec = &ba.spec;
    let offset_reset = match spec.autoscaling.uncommitted_partitions {
        UncommittedPartitionPolicy::Earliest => "earliest",
        UncommittedPartitionPolicy::Latest => "latest",
    };
    ChildObject {
        resource: keda_scaled_object_resource(),
        name: object_name.clone(),
        body: json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": metadata(&object_name, namespace, instance, Some(Tier::Dbproc), owner),
            "spec": {
                "scaleTargetRef": {"name": object_name},
                "minReplicaCount": spec.dbproc.min_replicas,
                "maxReplicaCount": spec.dbproc.max_replicas,
                // KEDA's `kafka` scaler reads one topic per trigger. Leaving `topic` out is not a
                // way to cover several: KEDA then looks at every topic the group has committed
                // on, which misses a request topic dbproc has not committed on yet and, for a
                // group with no commit at all, counts every topic in the cluster
                // (kedacore/keda#8104). So: one trigger per request topic, each capped at that
                // topic's partitions. The HPA scales to the largest trigger, not the sum, so KEDA
                // mode reacts to the busiest request topic where the operator's own metric sums
                // all three (see README).
                "triggers": topics.request_topics().into_iter().map(|topic| json!({
                    "type": "kafka",
                    "metadata": {
                        "bootstrapServers": spec.kafka.bootstrap_servers,
                        "consumerGroup": topics.dbproc_group(),
                        "topic": topic,
                        "lagThreshold": spec.dbproc.lag_per_replica.to_string(),
                        "offsetResetPolicy": offset_reset,
                        "allowIdleConsumers": (!spec.autoscaling.cap_lag_at_partitions).to_string(),
                    },
                })).collect::<Vec<_>>(),
            },
        }),
    }
}
