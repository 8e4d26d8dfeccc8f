use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::crd::BrokerAuth;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const KAFKA: &str = "127.0.0.1:9092";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example BrokerAuth from k8s/examples, as the API server would hand it to the operator.
pub fn sample_brokerauth() -> BrokerAuth {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    let mut ba: BrokerAuth = serde_saphyr::from_str(&text).unwrap();
    ba.metadata.uid = Some("5f0c6d2e-7a3b-4c1d-9e8f-0a1b2c3d4e5f".into());
    ba.metadata.generation = Some(1);
    ba.metadata.resource_version = Some("100".into());
    ba.metadata.finalizers = Some(vec![broker_auth_operator::reconcile::FINALIZER.into()]);
    ba
}

/// Fails with a message naming what to start when the broker is not there.
pub fn kafka_settings() -> KafkaSettings {
    if std::net::TcpStream::connect_timeout(&KAFKA.parse().unwrap(), Duration::from_secs(2))
        .is_err()
    {
        panic!("no Kafka broker on {KAFKA}: start it with scripts/dev-services (tansu)");
    }
    let mut settings = KafkaSettings::new(KAFKA);
    settings.topic_partitions = 2;
    settings
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

pub async fn produce(settings: &KafkaSettings, topic: &str, partition: i32, count: usize) {
    let producer: FutureProducer = settings.producer().unwrap();
    for i in 0..count {
        let body = format!("message {i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One lag read through the operator's Kafka clients, made for this read.
pub async fn consumer_lag(
    settings: &KafkaSettings,
    group: &str,
    topics: &[String],
    policy: broker_auth_operator::crd::UncommittedPartitionPolicy,
    _timeout: Duration,
) -> broker_auth_operator::Result<broker_auth_operator::lag::ConsumerLag> {
    use broker_auth_operator::kafka::KafkaAdmin;
    broker_auth_operator::kafka::RdKafkaAdmin::default()
        .consumer_lag(settings, group, topics, policy)
        .await
}
