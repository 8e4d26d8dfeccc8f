//! The real `Controller`, wired as the operator wires it, against the in-process API server of
//! `fake_api`, over minutes of paused (simulated) time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::Result;
use broker_auth_operator::crd::UncommittedPartitionPolicy;
use broker_auth_operator::kafka::{KafkaAdmin, LeftInKafka, TopicReport};
use broker_auth_operator::lag::ConsumerLag;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::fake_api::{FakeApi, Key, BROKERAUTHS, SECRETS};
use crate::support::repo_root;

/// How often the lag changes under traffic.
pub const LAG_CHANGES_EVERY: Duration = Duration::from_secs(2);
/// How long one lag read takes. The operator before this fix paid two client bootstraps and 72
/// sequential requests for 3 topics × 12 partitions; 2.5 s is that against a broker ~30 ms away.
pub const LAG_READ_TIME: Duration = Duration::from_millis(2500);

/// Kafka under traffic: the lag grows every [`LAG_CHANGES_EVERY`], and reads take time.
pub struct BusyKafka {
    started: Instant,
    pub lag_reads: AtomicU32,
    /// Failures left for group deletion, a transient error each.
    pub failing_deletions: AtomicU32,
    pub calls: Mutex<Vec<String>>,
}

impl Default for BusyKafka {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            lag_reads: AtomicU32::new(0),
            failing_deletions: AtomicU32::new(0),
            calls: Mutex::new(Vec::new()),
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
        tokio::time::sleep(LAG_READ_TIME).await;
        let step = i64::try_from(self.started.elapsed().as_millis() / LAG_CHANGES_EVERY.as_millis())
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

    async fn delete_topics(&self, _: &KafkaSettings, topics: &[String]) -> Result<Vec<LeftInKafka>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete topics {}", topics.join(",")));
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

mod reconcile_budget {
    use std::sync::Arc;
    use std::time::Duration;

    use broker_auth_operator::app;
    use broker_auth_operator::config::Cli;
    use broker_auth_operator::metrics::Metrics;
    use broker_auth_operator::reconcile::{self, Context};
    use clap::Parser;
    use futures::StreamExt;
    use kube::Api;
    use kube::runtime::events::{Recorder, Reporter};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn two_minutes_of_changing_lag_cost_no_more_reconciles_than_the_refresh_timer_allows() {
        let api = FakeApi::default();
        let key = seed(&api);
        let kafka = Arc::new(BusyKafka::default());
        let client = api.client();
        let metrics = Arc::new(Metrics::default());
        let config = Cli::parse_from(["broker-auth-operator"]).config;
        let context = Arc::new(Context {
            client: client.clone(),
            kafka: kafka.clone(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "broker-auth-operator".into(),
                    instance: None,
                },
            ),
            metrics: metrics.clone(),
        });
        let controller = app::controller(&config, client.clone(), Api::all(client))
            .await
            .run(reconcile::reconcile, reconcile::error_policy, context)
            .for_each(|_| futures::future::ready(()));
        let running = tokio::spawn(controller);
        tokio::time::sleep(Duration::from_secs(120)).await;
        running.abort();

        let reconciles = metrics.reconciles.get();
        let writes = status_writes(&api, &key);
        println!(
            "over 120 simulated seconds: {reconciles} reconciles, {} lag reads, {writes} status writes",
            kafka.lag_reads.load(Ordering::SeqCst)
        );
        assert!(reconciles <= 14, "{reconciles} reconciles in 2 minutes");
    }
}
