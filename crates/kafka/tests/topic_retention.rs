//! Topics created by `ensure_topics` carry their retention on the broker (tansu here), read back
//! with DescribeConfigs.

// Helpers here are test code too; clippy only recognises #[test] functions as such.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use broker_auth_contract::Topics;
use broker_auth_kafka::rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use broker_auth_kafka::rdkafka::client::DefaultClientContext;
use broker_auth_kafka::{KafkaSettings, TopicRetention, ensure_topics};
use broker_auth_testkit::services::{kafka_brokers, require_kafka, unique_prefix};

async fn described_configs(settings: &KafkaSettings, topic: &str) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> = settings.base_config().create().unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .unwrap();
    let resource = results
        .into_iter()
        .next()
        .expect("one result per resource")
        .unwrap_or_else(|code| panic!("DescribeConfigs of {topic} failed: {code}"));
    resource
        .entries
        .into_iter()
        .filter_map(|entry| Some((entry.name, entry.value?)))
        .collect()
}

#[tokio::test]
async fn created_topics_carry_their_retention_on_the_broker() {
    require_kafka().await;
    let topics = Topics::new(unique_prefix("retention")).unwrap();
    let mut settings = KafkaSettings::new(kafka_brokers());
    settings.topic_partitions = 1;
    settings.retention = TopicRetention {
        short: Duration::from_secs(15 * 60),
        requests: Duration::from_secs(6 * 60 * 60),
        dead_letters: Duration::from_secs(3 * 24 * 60 * 60),
        bytes_per_partition: 256 << 20,
    };
    ensure_topics(&settings, &topics.all()).await.unwrap();

    let expected = |topic: &str| -> &str {
        if topic == topics.mail() || topics.reply_topics().iter().any(|t| t == topic) {
            "900000"
        } else if topic == topics.dead_letter() || topic == topics.auth_events() {
            "259200000"
        } else {
            "21600000"
        }
    };
    for topic in topics.all() {
        let configs = described_configs(&settings, &topic).await;
        assert_eq!(
            configs.get("retention.ms").map(String::as_str),
            Some(expected(&topic)),
            "{topic}: {configs:?}"
        );
        assert_eq!(
            configs.get("retention.bytes").map(String::as_str),
            Some("268435456"),
            "{topic}: {configs:?}"
        );
        assert_eq!(
            configs.get("cleanup.policy").map(String::as_str),
            Some("delete"),
            "{topic}: {configs:?}"
        );
    }
}
