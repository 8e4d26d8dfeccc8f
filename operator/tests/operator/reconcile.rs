//! Reconcile against a mock API server: every request is recorded and answered, and the test
//! asserts the exact objects applied.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::Result;
use broker_auth_operator::crd::{BrokerAuth, UncommittedPartitionPolicy};
use broker_auth_operator::kafka::{KafkaAdmin, LeftInKafka, TopicReport};
use broker_auth_operator::lag::ConsumerLag;
use broker_auth_operator::metrics::Metrics;
use broker_auth_operator::reconcile::{self, Context};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};

use crate::support::{repo_root, sample_brokerauth};

/// Kafka as reconcile sees it, recording what it was asked.
#[derive(Default)]
struct FakeKafka {
    calls: Mutex<Vec<String>>,
    under_partitioned: Vec<(String, i32)>,
    /// How the broker answers deletions.
    deletions: Deletions,
}

#[derive(Default, Clone, Copy)]
enum Deletions {
    #[default]
    Done,
    /// A broker without DeleteGroups, as tansu is.
    GroupsUnsupported,
    /// A member still in the group.
    GroupNotEmpty,
}

#[async_trait]
impl KafkaAdmin for FakeKafka {
    async fn ensure_topics(
        &self,
        settings: &KafkaSettings,
        topics: &[String],
        min: i32,
    ) -> Result<TopicReport> {
        self.calls.lock().unwrap().push(format!(
            "ensure {} partitions={} min={min} on {}",
            topics.join(","),
            settings.topic_partitions,
            settings.brokers
        ));
        Ok(TopicReport {
            under_partitioned: self.under_partitioned.clone(),
        })
    }

    async fn consumer_lag(
        &self,
        _: &KafkaSettings,
        group: &str,
        topics: &[String],
        _: UncommittedPartitionPolicy,
    ) -> Result<ConsumerLag> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("lag {group} over {}", topics.join(",")));
        Ok(ConsumerLag {
            partitions: vec![(topics[0].clone(), 0, 7), (topics[1].clone(), 3, 5)],
        })
    }

    async fn delete_consumer_groups(
        &self,
        _: &KafkaSettings,
        groups: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete groups {}", groups.join(",")));
        match self.deletions {
            Deletions::Done => Ok(Vec::new()),
            Deletions::GroupsUnsupported => Ok(groups
                .iter()
                .map(|group| LeftInKafka {
                    kind: "consumer group",
                    name: group.clone(),
                    answer: "Broker: Unsupported version".into(),
                })
                .collect()),
            Deletions::GroupNotEmpty => Err(broker_auth_operator::Error::KafkaDelete {
                what: format!("consumer group {}", groups[0]),
                code: RDKafkaErrorCode::NonEmptyGroup,
            }),
        }
    }

    async fn delete_topics(
        &self,
        _: &KafkaSettings,
        topics: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete topics {}", topics.join(",")));
        Ok(Vec::new())
    }

    async fn list_topics(&self, _: &KafkaSettings, prefix: &str) -> Result<Vec<String>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("list topics {prefix}"));
        // The reply topic of the api pod that runs, and of one that is gone.
        Ok(["auth-api-5d8f9c7b6-live1", "auth-api-5d8f9c7b6-gone1"]
            .map(|pod| format!("{prefix}{pod}"))
            .to_vec())
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
}

/// What the fake API server knows.
#[derive(Clone)]
struct ApiServer {
    brokerauth: BrokerAuth,
    missing_secrets: bool,
    /// Kind whose apply the server refuses as invalid (422).
    rejected_kind: Option<&'static str>,
    /// The Deployments are being deleted in the foreground: their pods still run.
    deployments_terminating: bool,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

impl ApiServer {
    fn answer(&self, method: &str, path: &str, body: &Value) -> Response<Body> {
        let ba = serde_json::to_value(&self.brokerauth).unwrap();
        match method {
            "GET" if path.contains("/secrets/") => {
                if self.missing_secrets {
                    return not_found();
                }
                let name = path.rsplit('/').next().unwrap();
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                            "metadata": {"name": name, "namespace": "default", "resourceVersion": "42"}}),
                )
            }
            // No autoscaler of the other provider, and no HPA of KEDA's.
            "GET"
                if path.contains("/scaledobjects/")
                    || path.contains("/horizontalpodautoscalers/") =>
            {
                not_found()
            }
            "PATCH" if path.ends_with("/status") => {
                let mut merged = ba;
                merged["status"] = body["status"].clone();
                json_response(StatusCode::OK, &merged)
            }
            "PATCH" if path.contains("/brokerauths/") => json_response(StatusCode::OK, &ba),
            "PATCH" if self.rejected_kind.is_some_and(|kind| body["kind"] == kind) => {
                json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                            "message": "Deployment.apps \"auth-api\" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: Invalid value: \"lots\""}),
                )
            }
            "PATCH" => {
                let mut applied = body.clone();
                applied["metadata"]["generation"] = json!(1);
                if applied["kind"] == "Deployment" {
                    applied["status"] = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
                }
                json_response(StatusCode::OK, &applied)
            }
            "DELETE" if path.contains("/deployments/") && self.deployments_terminating => {
                let name = path.rsplit('/').next().unwrap();
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": name, "namespace": "default", "deletionTimestamp": "2026-01-01T00:00:00Z",
                                         "finalizers": ["foregroundDeletion"]}}),
                )
            }
            "DELETE" => not_found(),
            "POST" if path.contains("/events") => json_response(StatusCode::CREATED, body),
            // One api pod runs.
            "GET" if path.ends_with("/pods") => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
                        "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                   "metadata": {"name": "auth-api-5d8f9c7b6-live1", "namespace": "default"}}]}),
            ),
            _ => panic!("unexpected request {method} {path}"),
        }
    }
}

/// Runs one reconcile of `server.brokerauth` and returns the API requests and Kafka calls.
async fn reconcile_once(server: ApiServer, kafka: Arc<FakeKafka>) -> (Vec<Recorded>, Vec<String>) {
    let (action, requests, calls) = try_reconcile(server, kafka).await;
    action.unwrap();
    (requests, calls)
}

/// One reconcile, its outcome, the API requests and the Kafka calls.
async fn try_reconcile(
    server: ApiServer,
    kafka: Arc<FakeKafka>,
) -> (Result<Action>, Vec<Recorded>, Vec<String>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let log = recorded.clone();
    let responder = server.clone();
    let api = tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let response = responder.answer(&method, &path, &body);
            log.lock().unwrap().push(Recorded { method, path, body });
            respond.send_response(response);
        }
    });
    let context = Arc::new(Context::new(
        client,
        kafka.clone(),
        Arc::new(Metrics::default()),
        Some("test".into()),
        std::time::Duration::from_secs(15),
    ));
    let action = reconcile::reconcile(Arc::new(server.brokerauth), context).await;
    api.abort();
    let requests = recorded.lock().unwrap().clone();
    let calls = kafka.calls.lock().unwrap().clone();
    (action, requests, calls)
}

/// Transition times differ on every run.
fn mask_times(mut value: Value) -> Value {
    let conditions = value
        .get_mut("status")
        .and_then(|status| status.get_mut("conditions"))
        .and_then(Value::as_array_mut);
    if let Some(conditions) = conditions {
        for condition in conditions {
            condition["lastTransitionTime"] = json!("<time>");
        }
    }
    value
}

fn applied(requests: &[Recorded]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| json!({"path": r.path, "body": mask_times(r.body.clone())}))
        .collect()
}

#[tokio::test]
async fn a_sample_brokerauth_applies_exactly_the_golden_objects_and_status() {
    let kafka = Arc::new(FakeKafka::default());
    let server = ApiServer {
        brokerauth: sample_brokerauth(),
        missing_secrets: false,
        rejected_kind: None,
        deployments_terminating: false,
    };
    let (requests, calls) = reconcile_once(server, kafka).await;

    let golden_path = repo_root().join("operator/tests/golden/sample-reconcile.json");
    let actual = Value::Array(applied(&requests));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&actual).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    assert_eq!(
        actual,
        golden,
        "applied objects differ from {}; UPDATE_GOLDEN=1 rewrites it",
        golden_path.display()
    );

    // Secrets are checked by metadata only, each once.
    let secret_gets: Vec<&str> = requests
        .iter()
        .filter(|r| r.path.contains("/secrets/"))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(secret_gets.len(), 5);
    // The KEDA ScaledObject of the other provider is looked for (to be removed if this
    // BrokerAuth owns one); there is none, so nothing is deleted.
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/scaledobjects/auth-dbproc"))
    );
    assert!(!requests.iter().any(|r| r.method == "DELETE"));
    // Becoming Ready is an event.
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.body["reason"] == "TiersReady")
    );
    assert_eq!(
        calls,
        vec![
            "ensure default.auth.user-existence-check,default.auth.user-creation-request,default.auth.user-authentication-request,default.auth.user-password-update-request,default.auth.user-existence-response,default.auth.user-creation-response,default.auth.user-authentication-response,default.auth.user-password-update-response,default.auth.mail-outbox,default.auth.dead-letter,default.auth.auth-events partitions=12 min=6 on kafka.default.svc:9092".to_owned(),
            // The api pods' reply topics are listed; the one whose pod is gone is only noted
            // (deleted at a later check, once it has been gone for the grace period).
            "list topics default.auth.api-replies.".to_owned(),
            "lag default.auth.broker-auth-dbproc over default.auth.user-existence-check,default.auth.user-creation-request,default.auth.user-authentication-request,default.auth.user-password-update-request".to_owned(),
        ]
    );

    let status = &requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["lag"], 12);
    assert_eq!(status["api"], json!({"replicas": 2, "readyReplicas": 2}));
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(condition("Ready")["status"], "True");
    assert_eq!(condition("Stalled")["status"], "False");
    assert_eq!(condition("Reconciling")["status"], "False");
    assert_eq!(condition("PartitionsSufficient")["status"], "True");
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_with_a_message_and_nothing_is_applied() {
    let mut brokerauth = sample_brokerauth();
    brokerauth.spec.dbproc.min_replicas = 8;
    brokerauth.spec.dbproc.max_replicas = 2;
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth,
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    assert!(calls.is_empty(), "Kafka was touched: {calls:?}");
    let patches: Vec<&Recorded> = requests.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "only the status is written");
    let status = &patches[0].body["status"];
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert_eq!(
        stalled["message"],
        "dbproc.minReplicas (8) must not exceed dbproc.maxReplicas (2)"
    );
    assert!(requests.iter().any(|r| r.method == "POST"
        && r.body["reason"] == "InvalidSpec"
        && r.body["type"] == "Warning"));
}

#[tokio::test]
async fn a_brokerauth_stored_without_mail_from_is_stalled_instead_of_crash_looping_dbproc() {
    // The schema requires mailFrom, but the API server does not re-validate objects stored before it did.
    let mut brokerauth = sample_brokerauth();
    brokerauth.spec.dbproc.mail_from = String::new();
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth,
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        Arc::new(FakeKafka::default()),
    )
    .await;
    assert!(calls.is_empty(), "Kafka was touched: {calls:?}");
    let patches: Vec<&Recorded> = requests.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "only the status is written");
    let stalled = patches[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()
        .clone();
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert_eq!(
        stalled["message"],
        "dbproc.mailFrom is required: dbproc does not start without a sender address (MAIL_FROM)"
    );
}

#[tokio::test]
async fn a_brokerauth_stored_without_a_mail_seal_key_is_stalled_instead_of_crash_looping_both_tiers()
 {
    // The schema requires mailSealKey, but objects stored before it did are not re-validated.
    let mut brokerauth = sample_brokerauth();
    brokerauth.spec.secrets.mail_seal_key = None;
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth,
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        Arc::new(FakeKafka::default()),
    )
    .await;
    assert!(calls.is_empty(), "Kafka was touched: {calls:?}");
    let patches: Vec<&Recorded> = requests.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "only the status is written");
    let stalled = patches[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap()
        .clone();
    assert_eq!(stalled["reason"], "InvalidSpec");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("secrets.mailSealKey is required"),
        "{stalled}"
    );
}

#[test]
fn topics_are_created_with_the_retention_of_the_spec() {
    let mut brokerauth = sample_brokerauth();
    let defaults = reconcile::kafka_settings(&brokerauth).retention;
    assert_eq!(defaults, broker_auth_kafka::TopicRetention::default());
    brokerauth.spec.kafka.retention.short_ms = 600_000;
    brokerauth.spec.kafka.retention.bytes_per_partition = 64 << 20;
    let retention = reconcile::kafka_settings(&brokerauth).retention;
    assert_eq!(retention.short, std::time::Duration::from_secs(600));
    assert_eq!(retention.bytes_per_partition, 64 << 20);
    assert_eq!(retention.requests, defaults.requests);
    assert_eq!(retention.dead_letters, defaults.dead_letters);
}

#[tokio::test]
async fn missing_secrets_stall_the_brokerauth_until_they_exist() {
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth: sample_brokerauth(),
            missing_secrets: true,
            rejected_kind: None,
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    assert!(calls.is_empty());
    let status = &requests
        .iter()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(stalled["reason"], "SecretNotFound");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("broker-auth-jwt")
    );
}

#[tokio::test]
async fn too_few_partitions_on_an_existing_topic_is_a_warning_condition() {
    let kafka = Arc::new(FakeKafka {
        under_partitioned: vec![("default.auth.user-creation-request".into(), 2)],
        ..FakeKafka::default()
    });
    let (requests, _) = reconcile_once(
        ApiServer {
            brokerauth: sample_brokerauth(),
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    let status = &requests
        .iter()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    let partitions = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PartitionsSufficient")
        .unwrap();
    assert_eq!(partitions["status"], "False");
    assert_eq!(partitions["reason"], "TooFewPartitions");
    assert!(
        partitions["message"]
            .as_str()
            .unwrap()
            .contains("default.auth.user-creation-request (2)")
    );
}

#[tokio::test]
async fn a_new_brokerauth_first_gets_the_cleanup_finalizer() {
    let mut brokerauth = sample_brokerauth();
    brokerauth.metadata.finalizers = None;
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth,
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    assert!(calls.is_empty());
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PATCH");
    assert!(
        requests[0]
            .body
            .to_string()
            .contains("auth.cfdbroker.io/cleanup")
    );
}

fn being_deleted(since: std::time::Duration) -> BrokerAuth {
    let mut brokerauth = sample_brokerauth();
    let now = k8s_openapi::jiff::Timestamp::now();
    let since = k8s_openapi::jiff::SignedDuration::try_from(since).unwrap();
    brokerauth.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now.checked_sub(since).unwrap()),
    );
    brokerauth
}

fn deletion_server(brokerauth: BrokerAuth, deployments_terminating: bool) -> ApiServer {
    ApiServer {
        brokerauth,
        missing_secrets: false,
        rejected_kind: None,
        deployments_terminating,
    }
}

/// (method, path) of each request, for asserting the exact sequence.
fn calls_made(requests: &[Recorded]) -> Vec<(&str, &str)> {
    requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect()
}

const API_DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/auth-api";
const DBPROC_DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/auth-dbproc";
const BROKERAUTH: &str = "/apis/auth.cfdbroker.io/v1alpha1/namespaces/default/brokerauths/auth";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn deleting_a_brokerauth_waits_while_its_pods_run_and_leaves_kafka_alone() {
    let kafka = Arc::new(FakeKafka::default());
    let (action, requests, calls) = try_reconcile(
        deletion_server(being_deleted(std::time::Duration::ZERO), true),
        kafka,
    )
    .await;
    assert_eq!(
        action.unwrap(),
        Action::requeue(broker_auth_operator::deletion::WORKLOADS_GONE_POLL)
    );
    assert_eq!(
        calls_made(&requests),
        [("DELETE", API_DEPLOYMENT), ("DELETE", DBPROC_DEPLOYMENT)],
        "no finalizer removal while the Deployments exist"
    );
    for delete in &requests {
        assert_eq!(delete.body["propagationPolicy"], "Foreground", "{delete:?}");
    }
    assert!(
        calls.is_empty(),
        "Kafka touched while pods may run: {calls:?}"
    );
}

#[tokio::test]
async fn once_its_pods_are_gone_a_deleted_brokerauth_drops_its_groups_and_topics_and_releases_the_finalizer()
 {
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(
        deletion_server(being_deleted(std::time::Duration::ZERO), false),
        kafka,
    )
    .await;
    let topics = broker_auth_contract::Topics::for_deployment("default", "auth").unwrap();
    assert_eq!(
        topics.all().len(),
        11,
        "requests, replies, mail, dead letters and auth events"
    );
    // The instance reply topics go too, whether their pods shut down cleanly or not.
    let mut all = topics.all();
    all.extend([
        "default.auth.api-replies.auth-api-5d8f9c7b6-live1".to_owned(),
        "default.auth.api-replies.auth-api-5d8f9c7b6-gone1".to_owned(),
    ]);
    assert_eq!(
        calls,
        [
            "delete groups default.auth.broker-auth-dbproc,default.auth.broker-auth-mailer"
                .to_owned(),
            "list topics default.auth.api-replies.".to_owned(),
            format!("delete topics {}", all.join(",")),
        ]
    );
    // The other children go by garbage collection (owner references) once the finalizer is removed.
    assert_eq!(
        calls_made(&requests),
        [
            ("DELETE", API_DEPLOYMENT),
            ("DELETE", DBPROC_DEPLOYMENT),
            ("PATCH", BROKERAUTH)
        ]
    );
    assert!(
        requests[2]
            .body
            .to_string()
            .contains("auth.cfdbroker.io/cleanup")
    );
}

#[tokio::test]
async fn kafka_data_is_deleted_by_default_and_kept_together_when_switched_off() {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    let without_switch = text.replace("    deleteTopicsOnDelete: true\n", "");
    assert_ne!(text, without_switch);
    let defaulted: BrokerAuth = serde_saphyr::from_str(&without_switch).unwrap();
    assert!(defaulted.spec.kafka.delete_topics_on_delete);

    let mut keep = being_deleted(std::time::Duration::ZERO);
    keep.spec.kafka.delete_topics_on_delete = false;
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(deletion_server(keep, false), kafka).await;
    assert!(
        calls.is_empty(),
        "neither topics nor offsets deleted: {calls:?}"
    );
    assert_eq!(
        calls_made(&requests),
        [
            ("DELETE", API_DEPLOYMENT),
            ("DELETE", DBPROC_DEPLOYMENT),
            ("PATCH", BROKERAUTH)
        ]
    );
}

#[tokio::test]
async fn a_broker_without_delete_groups_gets_a_warning_event_and_does_not_block_deletion() {
    let kafka = Arc::new(FakeKafka {
        deletions: Deletions::GroupsUnsupported,
        ..FakeKafka::default()
    });
    let (requests, calls) = reconcile_once(
        deletion_server(being_deleted(std::time::Duration::ZERO), false),
        kafka,
    )
    .await;
    assert_eq!(
        calls,
        ["delete groups default.auth.broker-auth-dbproc,default.auth.broker-auth-mailer"],
        "the topics stay with the offsets that could not be deleted"
    );
    assert_eq!(
        calls_made(&requests),
        [
            ("DELETE", API_DEPLOYMENT),
            ("DELETE", DBPROC_DEPLOYMENT),
            ("POST", EVENTS),
            ("PATCH", BROKERAUTH)
        ]
    );
    let event = &requests[2].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "KafkaDataLeft");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "Kafka refused to delete, so these remain: \
             consumer group default.auth.broker-auth-dbproc (Broker: Unsupported version), \
             consumer group default.auth.broker-auth-mailer (Broker: Unsupported version), \
             topic default.auth.user-existence-check (kept with its consumer groups' offsets), "
        ),
        "{note}"
    );
}

#[tokio::test]
async fn a_transient_kafka_failure_keeps_the_finalizer_until_the_grace_period_ends() {
    let kafka = Arc::new(FakeKafka {
        deletions: Deletions::GroupNotEmpty,
        ..FakeKafka::default()
    });
    let (action, requests, _) = try_reconcile(
        deletion_server(being_deleted(std::time::Duration::from_secs(10)), false),
        kafka,
    )
    .await;
    assert!(action.is_err(), "retried through error_policy");
    assert_eq!(
        calls_made(&requests),
        [("DELETE", API_DEPLOYMENT), ("DELETE", DBPROC_DEPLOYMENT)],
        "the finalizer stays"
    );

    let kafka = Arc::new(FakeKafka {
        deletions: Deletions::GroupNotEmpty,
        ..FakeKafka::default()
    });
    let late =
        broker_auth_operator::deletion::KAFKA_CLEANUP_GRACE + std::time::Duration::from_secs(1);
    let (requests, _) = reconcile_once(deletion_server(being_deleted(late), false), kafka).await;
    assert_eq!(
        calls_made(&requests),
        [
            ("DELETE", API_DEPLOYMENT),
            ("DELETE", DBPROC_DEPLOYMENT),
            ("POST", EVENTS),
            ("PATCH", BROKERAUTH)
        ]
    );
    assert_eq!(requests[2].body["reason"], "KafkaDataLeft");
    let note = requests[2].body["note"].as_str().unwrap();
    assert!(
        note.starts_with("topics and consumer groups with prefix default.auth. may remain; still failing after 300 s:"),
        "{note}"
    );
}

#[tokio::test]
async fn a_child_the_api_server_rejects_stalls_the_brokerauth_instead_of_retrying() {
    let kafka = Arc::new(FakeKafka::default());
    let (requests, _) = reconcile_once(
        ApiServer {
            brokerauth: sample_brokerauth(),
            missing_secrets: false,
            rejected_kind: Some("Deployment"),
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    let status = &requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    let stalled = condition("Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "ChildRejected");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.starts_with("the API server rejected Deployment auth-api: ")
            && message.contains("requests[cpu]"),
        "{message}"
    );
    assert_eq!(condition("Ready")["status"], "False");
}

#[tokio::test]
async fn deleting_a_brokerauth_whose_name_never_had_topics_still_releases_the_finalizer() {
    // Longer than a topic prefix may be; the BrokerAuth was Stalled and never had topics.
    let name = "a".repeat(240);
    let mut brokerauth = sample_brokerauth();
    brokerauth.metadata.name = Some(name.clone());
    brokerauth.spec.kafka.delete_topics_on_delete = true;
    brokerauth.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    assert!(
        broker_auth_contract::Topics::for_deployment("default", &name).is_err(),
        "the test needs a name the contract refuses"
    );
    let kafka = Arc::new(FakeKafka::default());
    let (requests, calls) = reconcile_once(
        ApiServer {
            brokerauth,
            missing_secrets: false,
            rejected_kind: None,
            deployments_terminating: false,
        },
        kafka,
    )
    .await;
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[2].path.ends_with(&format!("/brokerauths/{name}")));
}
