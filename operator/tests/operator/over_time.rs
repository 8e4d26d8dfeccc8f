//! The real `Controller`, wired as the operator wires it, against the in-process API server of
//! `fake_api`, over minutes of paused (simulated) time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::Result;
use broker_auth_operator::app::Replica;
use broker_auth_operator::config::Cli;
use broker_auth_operator::crd::UncommittedPartitionPolicy;
use broker_auth_operator::kafka::{KafkaAdmin, LeftInKafka, TopicReport};
use broker_auth_operator::lag::ConsumerLag;
use clap::Parser;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fake_api::{BROKERAUTHS, DEPLOYMENTS, FakeApi, HPAS, Key, SCALED_OBJECTS, SECRETS};
use crate::support::repo_root;

/// How often the lag changes under traffic.
pub const LAG_CHANGES_EVERY: Duration = Duration::from_secs(2);
/// How long one lag read takes. The operator before this fix paid two client bootstraps and 72
/// sequential requests for 3 topics × 12 partitions; 2.5 s is that against a broker ~30 ms away.
pub const LAG_READ_TIME: Duration = Duration::from_millis(2500);

/// Kafka under traffic: the lag grows every [`LAG_CHANGES_EVERY`], and reads take time.
pub struct BusyKafka {
    started: Instant,
    read_time: Duration,
    pub lag_reads: AtomicU32,
    /// Failures left for group deletion, a transient error each.
    pub failing_deletions: AtomicU32,
    /// When group deletion was tried.
    pub deletion_attempts: Mutex<Vec<Instant>>,
    pub calls: Mutex<Vec<String>>,
}

impl Default for BusyKafka {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            read_time: LAG_READ_TIME,
            lag_reads: AtomicU32::new(0),
            failing_deletions: AtomicU32::new(0),
            deletion_attempts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl BusyKafka {
    /// Reads answer at once (for tests in real time).
    pub fn quick() -> Self {
        Self {
            read_time: Duration::ZERO,
            ..Self::default()
        }
    }
}

#[async_trait]
impl KafkaAdmin for BusyKafka {
    async fn ensure_topics(&self, _: &KafkaSettings, _: &[String], _: i32) -> Result<TopicReport> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(TopicReport::default())
    }

    async fn consumer_lag(
        &self,
        _: &KafkaSettings,
        _: &str,
        topics: &[String],
        _: UncommittedPartitionPolicy,
    ) -> Result<ConsumerLag> {
        self.lag_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.read_time).await;
        let step =
            i64::try_from(self.started.elapsed().as_millis() / LAG_CHANGES_EVERY.as_millis())
                .unwrap();
        Ok(ConsumerLag {
            partitions: vec![(topics[0].clone(), 0, 10 + step)],
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
        self.deletion_attempts.lock().unwrap().push(Instant::now());
        let failing = self.failing_deletions.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_deletions.store(failing - 1, Ordering::SeqCst);
            return Err(broker_auth_operator::Error::KafkaDelete {
                what: format!("consumer group {}", groups[0]),
                code: rdkafka::types::RDKafkaErrorCode::NonEmptyGroup,
            });
        }
        Ok(Vec::new())
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

    async fn list_topics(&self, _: &KafkaSettings, _: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// The example BrokerAuth and its Secrets, stored as a user would apply them.
pub fn seed(api: &FakeApi) -> Key {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    let brokerauth: Value = serde_saphyr::from_str(&text).unwrap();
    for name in [
        "broker-auth-postgres",
        "broker-auth-redis",
        "broker-auth-smtp",
        "broker-auth-jwt",
        "broker-auth-mail-seal",
    ] {
        api.insert(
            SECRETS,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}}),
        );
    }
    api.insert(BROKERAUTHS, brokerauth);
    Key::new(BROKERAUTHS, "default", "auth")
}

/// Status writes of `key` (versions whose status differs from the previous one).
pub fn status_writes(api: &FakeApi, key: &Key) -> usize {
    let history = api.history(key);
    history
        .windows(2)
        .filter(|pair| pair[0].1["status"] != pair[1].1["status"])
        .count()
}

/// The operator as it runs in a pod (one replica, no election, no external metrics API), against
/// `api`, until the returned token is cancelled.
pub async fn start_operator(
    api: &FakeApi,
    kafka: Arc<dyn KafkaAdmin>,
) -> (Replica, CancellationToken) {
    start_operator_with(api, kafka, &[]).await
}

/// [`start_operator`] with more command-line flags.
pub async fn start_operator_with(
    api: &FakeApi,
    kafka: Arc<dyn KafkaAdmin>,
    flags: &[&str],
) -> (Replica, CancellationToken) {
    let mut args = vec![
        "broker-auth-operator",
        "--metrics-listen",
        "127.0.0.1:0",
        "--external-metrics-enabled",
        "false",
        "--leader-election",
        "false",
    ];
    args.extend_from_slice(flags);
    let config = Cli::parse_from(args).config;
    let shutdown = CancellationToken::new();
    let replica = Replica::start(config, api.client(), kafka, shutdown.clone())
        .await
        .unwrap();
    (replica, shutdown)
}

async fn stop(replica: Replica, shutdown: CancellationToken) {
    shutdown.cancel();
    replica.stopped().await.unwrap();
}

/// The condition `type_` of the stored BrokerAuth.
pub fn condition(api: &FakeApi, key: &Key, type_: &str) -> Value {
    let ba = api.get(key).unwrap();
    ba["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Every reason the BrokerAuth's Stalled condition ever had.
fn stalled_reasons(api: &FakeApi, key: &Key) -> Vec<String> {
    let mut reasons: Vec<String> = api
        .history(key)
        .iter()
        .flat_map(|(_, ba)| {
            ba["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["type"] == "Stalled" && c["status"] == "True")
        .map(|c| c["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.dedup();
    reasons
}

fn set_provider(api: &FakeApi, key: &Key, provider: &str) {
    api.update(key, |ba| {
        ba["spec"]["autoscaling"]["provider"] = provider.into()
    });
}

const DBPROC_HPA: &str = "auth-dbproc";

fn hpa(name: &str) -> Key {
    Key::new(HPAS, "default", name)
}

fn scaled_object() -> Key {
    Key::new(SCALED_OBJECTS, "default", "auth-dbproc")
}

/// A user's own HPA on the dbproc Deployment, owned by nothing.
fn foreign_hpa(name: &str) -> Value {
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auth-dbproc"},
                    "minReplicas": 1, "maxReplicas": 3}})
}

#[tokio::test(start_paused = true)]
async fn two_minutes_of_changing_lag_cost_no_more_reconciles_than_the_refresh_timer_allows() {
    let api = FakeApi::default();
    let key = seed(&api);
    // The HPA controller rewrites its status every sync, as it does under traffic.
    let hpa_controller = api.start_hpa_controller(Duration::from_secs(15));
    let kafka = Arc::new(BusyKafka::default());
    let (replica, shutdown) = start_operator(&api, kafka.clone()).await;
    tokio::time::sleep(Duration::from_secs(120)).await;

    let reconciles = replica.metrics.reconciles.get();
    let writes = status_writes(&api, &key);
    println!(
        "over 120 simulated seconds: {reconciles} reconciles, {} lag reads, {writes} status writes",
        kafka.lag_reads.load(Ordering::SeqCst)
    );
    // The timer's budget (one per 15 s refresh) and the start: adding the finalizer, the first
    // apply, the children it created appearing.
    assert!(
        reconciles <= 120 / 15 + 4,
        "{reconciles} reconciles in 2 minutes"
    );
    // The lag shown in status follows the traffic: refreshed on the timer, written when changed.
    assert!(writes >= 5, "only {writes} status writes");
    assert!(api.get(&key).unwrap()["status"]["lag"].as_i64().unwrap() > 10 + 30);
    hpa_controller.abort();
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn switching_to_keda_and_back_never_runs_two_autoscalers_and_passes_kedas_webhook() {
    let api = FakeApi::default();
    api.install_keda();
    let key = seed(&api);
    let (replica, shutdown) = start_operator(&api, Arc::new(BusyKafka::default())).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(api.exists(&hpa(DBPROC_HPA)));
    assert!(!api.exists(&scaled_object()));

    set_provider(&api, &key, "Keda");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        api.exists(&scaled_object()),
        "no ScaledObject: {:?}",
        condition(&api, &key, "Stalled")
    );
    assert!(!api.exists(&hpa(DBPROC_HPA)));
    assert!(api.exists(&hpa("keda-hpa-auth-dbproc")));
    assert_eq!(condition(&api, &key, "Stalled")["status"], "False");

    set_provider(&api, &key, "Operator");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(api.exists(&hpa(DBPROC_HPA)));
    assert!(!api.exists(&scaled_object()));
    assert!(!api.exists(&hpa("keda-hpa-auth-dbproc")));
    assert_eq!(condition(&api, &key, "Stalled")["status"], "False");
    assert_eq!(condition(&api, &key, "Reconciling")["status"], "False");

    // At no moment did two HPAs scale the dbproc Deployment.
    let mut scaling = std::collections::BTreeSet::new();
    for (kind, hpa, object) in api.events(HPAS) {
        if object["spec"]["scaleTargetRef"]["name"] != "auth-dbproc" {
            continue;
        }
        if kind == "DELETED" {
            scaling.remove(&hpa.name);
        } else {
            scaling.insert(hpa.name.clone());
        }
        assert!(scaling.len() <= 1, "two HPAs at once: {scaling:?}");
    }
    assert_eq!(stalled_reasons(&api, &key), Vec::<String>::new());
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_an_admission_webhook_stalls_with_its_message_until_the_cause_goes() {
    let api = FakeApi::default();
    api.install_keda();
    // Someone scales dbproc by hand with an HPA of their own.
    api.insert(HPAS, foreign_hpa("dbproc-by-hand"));
    let key = seed(&api);
    set_provider(&api, &key, "Keda");
    let (replica, shutdown) = start_operator(&api, Arc::new(BusyKafka::default())).await;
    tokio::time::sleep(Duration::from_secs(120)).await;

    let stalled = condition(&api, &key, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "AdmissionRefused");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("is already managed by the hpa 'dbproc-by-hand'"),
        "{message}"
    );
    assert!(api.exists(&hpa("dbproc-by-hand")), "not ours to delete");
    // Looked at again now and then, not retried in a loop.
    let reconciles = replica.metrics.reconciles.get();
    assert!(reconciles <= 120 / 60 + 4, "{reconciles} reconciles");

    api.delete(&hpa("dbproc-by-hand"));
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(api.exists(&scaled_object()));
    assert_eq!(condition(&api, &key, "Stalled")["status"], "False");
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn an_autoscaler_with_the_operators_name_that_this_brokerauth_does_not_own_is_left_alone() {
    let api = FakeApi::default();
    api.install_keda();
    api.insert(HPAS, foreign_hpa(DBPROC_HPA));
    let key = seed(&api);
    set_provider(&api, &key, "Keda");
    let (replica, shutdown) = start_operator(&api, Arc::new(BusyKafka::default())).await;
    tokio::time::sleep(Duration::from_secs(60)).await;

    assert!(
        api.exists(&hpa(DBPROC_HPA)),
        "deleted an HPA it does not own"
    );
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.method == "DELETE"
                && r.path.ends_with("/horizontalpodautoscalers/auth-dbproc"))
    );
    let stalled = condition(&api, &key, "Stalled");
    assert_eq!(stalled["reason"], "AutoscalerNotOwned");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("does not own it")
    );
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn keda_installed_after_the_operator_started_is_noticed_and_its_scaled_objects_watched() {
    let api = FakeApi::default();
    let key = seed(&api);
    set_provider(&api, &key, "Keda");
    // A refresh timer this slow cannot be what notices anything below.
    let (replica, shutdown) = start_operator_with(
        &api,
        Arc::new(BusyKafka::default()),
        &["--lag-refresh-seconds", "300"],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        condition(&api, &key, "Stalled")["reason"],
        "KedaNotInstalled"
    );

    api.install_keda();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(api.exists(&scaled_object()));
    assert_eq!(condition(&api, &key, "Stalled")["status"], "False");

    // ScaledObjects are watched now: one deleted by hand comes back on the watch event, well
    // before the next lag refresh would bring it back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.delete(&scaled_object());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let recreated = api
        .events(SCALED_OBJECTS)
        .iter()
        .filter(|(kind, _, _)| kind == "ADDED")
        .count();
    assert_eq!(
        recreated, 2,
        "the deleted ScaledObject was not re-applied at once"
    );
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn a_deletion_whose_kafka_cleanup_fails_backs_off_and_finishes_when_kafka_recovers() {
    let api = FakeApi::default();
    let key = seed(&api);
    let kafka = Arc::new(BusyKafka::default());
    kafka.failing_deletions.store(3, Ordering::SeqCst);
    let (replica, shutdown) = start_operator(&api, kafka.clone()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    api.delete(&key);
    let deadline = Instant::now() + Duration::from_secs(180);
    while api.exists(&key) {
        assert!(
            Instant::now() < deadline,
            "the BrokerAuth was never released"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let attempts = kafka.deletion_attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 4, "three failures, then success");
    // Each retry waited longer than the one before (exponential backoff per BrokerAuth).
    let pauses: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(pauses.windows(2).all(|p| p[1] > p[0]), "{pauses:?}");
    // Workloads went before the Kafka data; children went with their owner.
    assert!(api.keys(DEPLOYMENTS).is_empty());
    assert!(
        kafka
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("delete topics"))
    );
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn the_uninstall_hook_deletes_the_chart_brokerauth_and_returns_once_the_operator_released_it()
{
    let api = FakeApi::default();
    let key = seed(&api);
    api.update(&key, |ba| {
        ba["metadata"]["labels"] =
            json!({"app.kubernetes.io/instance": "release", "app.kubernetes.io/component": "brokerauth"});
    });
    // Someone else's BrokerAuth in the same namespace stays.
    let mut other: Value = api.get(&key).unwrap();
    other["metadata"] = json!({"name": "other", "namespace": "default"});
    api.insert(BROKERAUTHS, other);
    let kafka = Arc::new(BusyKafka::default());
    let (replica, shutdown) = start_operator(&api, kafka.clone()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    let deleted = broker_auth_operator::uninstall::delete_brokerauths(
        api.client(),
        "default",
        "app.kubernetes.io/instance=release,app.kubernetes.io/component=brokerauth",
        Duration::from_secs(600),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(deleted, ["auth"]);
    assert!(!api.exists(&key));
    // The operator ran the finalizer before the BrokerAuth went: its Kafka data is gone too.
    assert!(
        kafka
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("delete topics default.auth."))
    );
    assert!(api.exists(&Key::new(BROKERAUTHS, "default", "other")));
    stop(replica, shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn the_uninstall_hook_fails_naming_what_is_left_when_no_operator_cleans_up() {
    let api = FakeApi::default();
    let key = seed(&api);
    api.update(&key, |ba| {
        ba["metadata"]["labels"] = json!({"app.kubernetes.io/instance": "release"});
        ba["metadata"]["finalizers"] = json!(["auth.cfdbroker.io/cleanup"]);
    });
    let error = broker_auth_operator::uninstall::delete_brokerauths(
        api.client(),
        "default",
        "app.kubernetes.io/instance=release",
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("BrokerAuth(s) auth in namespace default still exist"),
        "{error}"
    );
}
