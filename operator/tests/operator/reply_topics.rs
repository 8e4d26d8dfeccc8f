//! The reply topics of api pods that are gone: the real `Controller` against the in-process API
//! server, over simulated minutes, with Kafka holding instance reply topics.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::Result;
use broker_auth_operator::crd::UncommittedPartitionPolicy;
use broker_auth_operator::kafka::{KafkaAdmin, LeftInKafka, TopicReport};
use broker_auth_operator::lag::ConsumerLag;
use broker_auth_operator::reconcile::TOPICS_RECHECK;
use broker_auth_operator::reply_topics::ORPHAN_GRACE;
use serde_json::json;
use tokio::time::Instant;

use crate::fake_api::{FakeApi, Key};
use crate::over_time::{seed, start_operator};

const PODS: &str = "v1/pods";
const PREFIX: &str = "default.auth.api-replies.";

/// Kafka holding topics; lists and deletes them as asked, noting when each was deleted.
#[derive(Default)]
struct TopicsKafka {
    topics: Mutex<BTreeSet<String>>,
    deleted: Mutex<Vec<(String, Instant)>>,
}

impl TopicsKafka {
    fn with(topics: &[&str]) -> Self {
        Self {
            topics: Mutex::new(topics.iter().map(|t| (*t).to_owned()).collect()),
            ..Self::default()
        }
    }

    fn has(&self, topic: &str) -> bool {
        self.topics.lock().unwrap().contains(topic)
    }

    fn deleted_at(&self, topic: &str) -> Option<Instant> {
        self.deleted
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, at)| *at)
    }
}

#[async_trait]
impl KafkaAdmin for TopicsKafka {
    async fn ensure_topics(
        &self,
        _: &KafkaSettings,
        topics: &[String],
        _: i32,
    ) -> Result<TopicReport> {
        self.topics.lock().unwrap().extend(topics.iter().cloned());
        Ok(TopicReport::default())
    }

    async fn consumer_lag(
        &self,
        _: &KafkaSettings,
        _: &str,
        topics: &[String],
        _: UncommittedPartitionPolicy,
    ) -> Result<ConsumerLag> {
        Ok(ConsumerLag {
            partitions: vec![(topics[0].clone(), 0, 0)],
        })
    }

    async fn delete_consumer_groups(
        &self,
        _: &KafkaSettings,
        _: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        Ok(Vec::new())
    }

    async fn delete_topics(
        &self,
        _: &KafkaSettings,
        topics: &[String],
    ) -> Result<Vec<LeftInKafka>> {
        let mut existing = self.topics.lock().unwrap();
        let mut deleted = self.deleted.lock().unwrap();
        for topic in topics {
            if existing.remove(topic) {
                deleted.push((topic.clone(), Instant::now()));
            }
        }
        Ok(Vec::new())
    }

    async fn list_topics(&self, _: &KafkaSettings, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .topics
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.starts_with(prefix))
            .cloned()
            .collect())
    }
}

/// A pod of the `auth` BrokerAuth's api tier.
fn api_pod(api: &FakeApi, name: &str) -> Key {
    api.insert(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default",
                            "labels": {"app.kubernetes.io/name": "broker-auth",
                                       "app.kubernetes.io/instance": "auth",
                                       "app.kubernetes.io/component": "api"}}}),
    );
    Key::new(PODS, "default", name)
}

#[tokio::test(start_paused = true)]
async fn the_reply_topics_of_api_pods_that_are_gone_are_deleted_and_only_those() {
    let api = FakeApi::default();
    seed(&api);
    let live = api_pod(&api, "auth-api-7c9d-live1");
    // Another BrokerAuth's pod of the same name pattern does not keep this one's topic.
    api.insert(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "auth-api-7c9d-gone1", "namespace": "default",
                            "labels": {"app.kubernetes.io/name": "broker-auth",
                                       "app.kubernetes.io/instance": "other",
                                       "app.kubernetes.io/component": "api"}}}),
    );
    let live_topic = format!("{PREFIX}auth-api-7c9d-live1");
    let gone_topic = format!("{PREFIX}auth-api-7c9d-gone1");
    // Another deployment's instance topic, and a topic under the prefix that is no instance's.
    let foreign = "staging.auth.api-replies.auth-api-7c9d-gone1";
    let not_an_instance = format!("{PREFIX}Not_An_Instance");
    let kafka = Arc::new(TopicsKafka::with(&[
        &live_topic,
        &gone_topic,
        foreign,
        &not_an_instance,
    ]));
    let started = Instant::now();
    let (_replica, shutdown) = start_operator(&api, kafka.clone()).await;

    // Two topic checks: the first sees the orphan, the next (a recheck later) deletes it.
    tokio::time::sleep(TOPICS_RECHECK * 2 + Duration::from_secs(30)).await;
    let deleted_at = kafka
        .deleted_at(&gone_topic)
        .expect("the gone pod's reply topic was deleted");
    assert!(
        deleted_at.duration_since(started) >= ORPHAN_GRACE,
        "deleted after {:?}, before the grace of {ORPHAN_GRACE:?}",
        deleted_at.duration_since(started)
    );
    assert!(kafka.has(&live_topic), "a running pod's topic was deleted");
    assert!(kafka.has(foreign), "another deployment's topic was deleted");
    assert!(kafka.has(&not_an_instance));

    // The pod goes (scaled down, its node lost): its topic follows, after the grace.
    api.delete(&live);
    let gone_since = Instant::now();
    tokio::time::sleep(TOPICS_RECHECK * 2 + Duration::from_secs(30)).await;
    let deleted_at = kafka
        .deleted_at(&live_topic)
        .expect("the reply topic of the pod that went was deleted");
    assert!(deleted_at.duration_since(gone_since) >= ORPHAN_GRACE);
    assert!(kafka.has(foreign));
    shutdown.cancel();
}
