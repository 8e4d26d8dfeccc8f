//! The `BrokerAuth` custom resource: what a user asks for (spec) and what the operator reports
//! back (status). `k8s/crd.yaml` is generated from these types (`broker-auth-operator crd`).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

/// Registry host (optional port) and path, lower case, as OCI references allow.
pub const IMAGE_REPOSITORY_PATTERN: &str =
    r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$";
/// An OCI tag.
pub const IMAGE_TAG_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";
/// A Kubernetes object name (DNS-1123 subdomain).
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Secret data key.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// `host:port[,host:port…]`, each optionally `PROTOCOL://`-prefixed as librdkafka allows, the
/// host a name, an IPv4 address or a bracketed IPv6 address. (CEL uses RE2; this is plain enough
/// for any regex engine.) [`bootstrap_servers_problem`] says the same in Rust.
pub const BOOTSTRAP_SERVERS_RULE: &str = r"self.matches('^(([A-Za-z_]+://)?([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5})(,([A-Za-z_]+://)?([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5})*$')";

/// A broker-auth installation: the API tier, the dbproc worker tier, their autoscalers and
/// their Kafka topics.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "auth.cfdbroker.io",
    version = "v1alpha1",
    kind = "BrokerAuth",
    plural = "brokerauths",
    shortname = "ba",
    namespaced,
    status = "BrokerAuthStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"API","type":"integer","description":"ready api replicas","jsonPath":".status.api.readyReplicas"}"#,
    printcolumn = r#"{"name":"DBProc","type":"integer","description":"ready dbproc replicas","jsonPath":".status.dbproc.readyReplicas"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","description":"dbproc consumer lag","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_dbproc)]
#[x_kube(validation = Rule::new("self.dbproc.minReplicas >= 1 || (has(self.autoscaling) && has(self.autoscaling.provider) && self.autoscaling.provider == 'Keda')").message("dbproc.minReplicas 0 needs autoscaling.provider Keda: only KEDA scales a Deployment to and from zero"))]
pub struct BrokerAuthSpec {
    pub image: ImageSpec,
    pub kafka: KafkaSpec,
    /// Secrets holding the connection strings and the JWT key. Only references live here.
    pub secrets: SecretRefs,
    #[serde(default)]
    pub api: ApiSpec,
    // Required by the schema (for `mailFrom`), lenient here: see `require_property`.
    #[serde(default)]
    pub dbproc: DbprocSpec,
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    #[serde(default)]
    pub observability: ObservabilitySpec,
}

/// Images are `{repository}-api:{tag}` and `{repository}-dbproc:{tag}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository prefix; the tiers append `-api` and `-dbproc`.
    #[serde(default = "default_repository")]
    #[schemars(pattern(IMAGE_REPOSITORY_PATTERN), length(max = 255))]
    pub repository: String,
    /// Tag shared by both images (the release version).
    #[schemars(pattern(IMAGE_TAG_PATTERN))]
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Names of docker-registry Secrets in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

fn default_repository() -> String {
    "ghcr.io/cfdbroker/broker-auth".to_owned()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// `host:port[,host:port…]` of the Kafka cluster.
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new(BOOTSTRAP_SERVERS_RULE).message("bootstrapServers must be host:port[,host:port...]"))]
    pub bootstrap_servers: String,
    /// Partitions of topics the operator creates. Request topics get at least
    /// `dbproc.maxReplicas` partitions, since more consumers than partitions sit idle.
    #[serde(default = "default_topic_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub topic_partitions: i32,
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// Retention of the topics the operator creates (existing topics are left as they are).
    #[serde(default)]
    pub retention: RetentionSpec,
    /// When the BrokerAuth is deleted, delete its topics and its consumer groups' committed
    /// offsets too, after its pods have stopped, so nothing is left behind. Turn off to keep
    /// them (both: offsets without their topics would mislead a re-created BrokerAuth).
    #[serde(default = "yes")]
    pub delete_topics_on_delete: bool,
}

/// How long the deployment's topics keep records: codes (sealed) and replies briefly, requests
/// and dead letters for a bounded time, so nothing sits in Kafka under the broker's defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// `retention.ms` of `mail-outbox` and the reply topics.
    #[serde(default = "default_short_retention_ms")]
    #[schemars(range(min = 60000))]
    pub short_ms: i64,
    /// `retention.ms` of the request topics.
    #[serde(default = "default_request_retention_ms")]
    #[schemars(range(min = 60000))]
    pub request_ms: i64,
    /// `retention.ms` of the dead-letter topic.
    #[serde(default = "default_dead_letter_retention_ms")]
    #[schemars(range(min = 60000))]
    pub dead_letter_ms: i64,
    /// `retention.bytes` of each partition.
    #[serde(default = "default_retention_bytes")]
    #[schemars(range(min = 1048576))]
    pub bytes_per_partition: i64,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            short_ms: default_short_retention_ms(),
            request_ms: default_request_retention_ms(),
            dead_letter_ms: default_dead_letter_retention_ms(),
            bytes_per_partition: default_retention_bytes(),
        }
    }
}

impl RetentionSpec {
    pub fn to_retention(&self) -> broker_auth_kafka::TopicRetention {
        let millis = |ms: i64| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        broker_auth_kafka::TopicRetention {
            short: millis(self.short_ms),
            requests: millis(self.request_ms),
            dead_letters: millis(self.dead_letter_ms),
            bytes_per_partition: u64::try_from(self.bytes_per_partition).unwrap_or(0),
        }
    }
}

fn default_short_retention_ms() -> i64 {
    3_600_000
}
fn default_request_retention_ms() -> i64 {
    86_400_000
}
fn default_dead_letter_retention_ms() -> i64 {
    604_800_000
}
fn default_retention_bytes() -> i64 {
    1 << 30
}

fn default_topic_partitions() -> i32 {
    12
}

fn default_replication_factor() -> i32 {
    1
}

/// The Secrets the tiers read. Each names a Secret in the BrokerAuth's namespace and a key in it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_mail_seal_key)]
pub struct SecretRefs {
    /// `DATABASE_URL` of dbproc (PostgreSQL URL).
    pub database_url: SecretKeyRef,
    /// `REDIS_URL` of the api.
    pub redis_url: SecretKeyRef,
    /// `SMTP_URL` of dbproc's mailer (lettre URL).
    pub smtp_url: SecretKeyRef,
    /// `JWT_SECRET` of the api.
    pub jwt_secret: SecretKeyRef,
    /// `MAIL_SEAL_KEY` of the api and dbproc: the api seals sign-up codes into the mail topic
    /// with it, dbproc opens them (at least 32 random bytes).
    // Required by the schema, lenient here: see `require_property`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_seal_key: Option<SecretKeyRef>,
}

impl SecretRefs {
    /// Every reference, in a fixed order.
    pub fn all(&self) -> Vec<&SecretKeyRef> {
        let mut all = vec![
            &self.database_url,
            &self.redis_url,
            &self.smtp_url,
            &self.jwt_secret,
        ];
        all.extend(&self.mail_seal_key);
        all
    }
}

fn require_mail_seal_key(schema: &mut Schema) {
    require_property(schema, "mailSealKey");
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    #[schemars(pattern(OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(pattern(SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub key: String,
}

/// The HTTP tier, scaled on CPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("api.minReplicas must not exceed api.maxReplicas"))]
pub struct ApiSpec {
    #[serde(default = "default_api_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_api_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilization (percent of requests) the HPA aims for.
    #[serde(default = "default_cpu_utilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Defaults to requests of 100m CPU and 128Mi memory, and a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Mark the session cookie `Secure` (turn off only for plain-HTTP development).
    #[serde(default = "yes")]
    pub cookie_secure: bool,
    #[serde(default = "default_bcrypt_cost")]
    #[schemars(range(min = 4, max = 31))]
    pub bcrypt_cost: i32,
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_api_min_replicas(),
            max_replicas: default_api_max_replicas(),
            target_cpu_utilization: default_cpu_utilization(),
            resources: None,
            cookie_secure: true,
            bcrypt_cost: default_bcrypt_cost(),
        }
    }
}

fn default_api_min_replicas() -> i32 {
    2
}
fn default_api_max_replicas() -> i32 {
    6
}
fn default_cpu_utilization() -> i32 {
    70
}
fn default_bcrypt_cost() -> i32 {
    12
}
fn yes() -> bool {
    true
}

/// The Kafka worker tier, scaled on the consumer lag of its request topics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("dbproc.minReplicas must not exceed dbproc.maxReplicas"))]
#[schemars(transform = require_mail_from)]
pub struct DbprocSpec {
    /// 0 (scale to zero while no request waits) only with `autoscaling.provider: Keda`.
    #[serde(default = "default_dbproc_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_dbproc_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Queued requests one replica is expected to absorb: the HPA's `AverageValue` target. The
    /// default (1600) keeps a queued request's wait within half the API's 5 s reply timeout at
    /// the rate one replica was measured to answer (docs/scaling.md).
    #[serde(default = "default_lag_per_replica")]
    #[schemars(range(min = 1))]
    pub lag_per_replica: i64,
    /// Defaults to requests of 100m CPU and 128Mi memory, and a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `MAIL_FROM` of the mailer, e.g. `Broker <no-reply@example.com>` (required: dbproc has no default).
    // A String rather than an Option so the schema has no `nullable` to let `mailFrom: null` pass.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1))]
    pub mail_from: String,
}

impl Default for DbprocSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_dbproc_min_replicas(),
            max_replicas: default_dbproc_max_replicas(),
            lag_per_replica: default_lag_per_replica(),
            resources: None,
            mail_from: String::new(),
        }
    }
}

/// Marks `property` required in an object schema and drops the `default` that its lenient Rust
/// type produced. The schema is where the requirement is enforced; the Rust types
/// stay lenient because a BrokerAuth stored before the requirement existed is not re-validated by
/// the API server, and one object that failed to deserialize would fail the operator's whole
/// list. Reconcile reports such an object as `Stalled` (`InvalidSpec`) instead.
fn require_property(schema: &mut Schema, property: &str) {
    let object = schema.ensure_object();
    if let Some(definition) = object
        .get_mut("properties")
        .and_then(|properties| properties.get_mut(property))
        .and_then(|definition| definition.as_object_mut())
    {
        definition.remove("default");
    }
    let required = object
        .entry("required")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(required) = required.as_array_mut()
        && !required.iter().any(|name| name == property)
    {
        required.push(property.into());
    }
}

fn require_dbproc(schema: &mut Schema) {
    require_property(schema, "dbproc");
}

fn require_mail_from(schema: &mut Schema) {
    require_property(schema, "mailFrom");
}

fn default_dbproc_min_replicas() -> i32 {
    1
}
fn default_dbproc_max_replicas() -> i32 {
    6
}
/// Measured by `scripts/bench` (worker tier): one replica answered about 670 directory requests
/// a second, so a request queued behind 1,600 others waits about 2.4 s, half the API's default
/// 5 s reply timeout. See docs/scaling.md for how to derive it for other hardware.
fn default_lag_per_replica() -> i64 {
    1600
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Who feeds dbproc's lag to the autoscaler.
    #[serde(default)]
    pub provider: LagMetricsProvider,
    /// How a partition the dbproc group has never committed on counts.
    #[serde(default)]
    pub uncommitted_partitions: UncommittedPartitionPolicy,
    /// Cap the reported lag at partitions × lagPerReplica, so the HPA never asks for more
    /// consumers than there are partitions (KEDA's default; turn off to allow idle consumers).
    #[serde(default = "yes")]
    pub cap_lag_at_partitions: bool,
}

// Written out rather than derived: a derived Default would leave `capLagAtPartitions` false
// whenever `autoscaling` is omitted, and the generated schema's default for the block with it.
impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            provider: LagMetricsProvider::default(),
            uncommitted_partitions: UncommittedPartitionPolicy::default(),
            cap_lag_at_partitions: true,
        }
    }
}

/// Why `servers` is not a bootstrap list (the CRD's CEL rule, for objects stored before it or
/// clusters without CEL), or `None`.
pub fn bootstrap_servers_problem(servers: &str) -> Option<String> {
    let valid_host = |host: &str| {
        let ipv6 = host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        let name = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['-', '.'])
            && !host.ends_with(['-', '.']);
        ipv6 || name
    };
    for server in servers.split(',') {
        let address = match server.split_once("://") {
            Some((protocol, rest))
                if !protocol.is_empty()
                    && protocol
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '_') =>
            {
                rest
            }
            Some(_) => return Some(format!("{server:?} has a malformed protocol prefix")),
            None => server,
        };
        let Some((host, port)) = address.rsplit_once(':') else {
            return Some(format!("{server:?} is not host:port"));
        };
        if !valid_host(host) {
            return Some(format!("{server:?} has no valid host"));
        }
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Some(format!("{server:?} has no valid port"));
        }
    }
    None
}

/// Only one provider of `external.metrics.k8s.io` fits in a cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LagMetricsProvider {
    /// The operator serves the lag through the external metrics API and owns an HPA.
    #[default]
    Operator,
    /// The cluster runs KEDA: the operator owns a KEDA `ScaledObject` instead of the HPA.
    Keda,
}

/// Lag of a partition without a committed offset for the group.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UncommittedPartitionPolicy {
    /// Every retained record counts (latest − log start): dbproc starts from the earliest
    /// offset (`auto.offset.reset=earliest`), so that is the work waiting for it.
    #[default]
    Earliest,
    /// Nothing counts, as with `auto.offset.reset=latest`.
    Latest,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// `RUST_LOG` of both tiers.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` of both tiers; tracing export is off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for ObservabilitySpec {
    fn default() -> Self {
        Self {
            log_level: default_log_level(),
            otlp_endpoint: None,
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// What the operator last saw and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerAuthStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`, keyed by type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub api: TierStatus,
    #[serde(default)]
    pub dbproc: TierStatus,
    /// dbproc's consumer lag over its request topics at the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Topic prefix and consumer group the installation uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    pub message: String,
    pub last_transition_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRD as YAML, exactly what `k8s/crd.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let crd = BrokerAuth::crd();
    let body = serde_saphyr::to_string(&crd)?;
    Ok(format!(
        "# Generated by `cargo run -p broker-auth-operator -- crd > k8s/crd.yaml`; do not edit.\n{body}"
    ))
}
