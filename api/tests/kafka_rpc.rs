//! The Kafka transport against the real broker, with nobody answering.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::time::{Duration, Instant};

use broker_auth_api::directory::{DirectoryError, DirectoryTransport, KafkaTransport, RpcTiming};
use broker_auth_contract::{InstanceId, RequestKind, Topics};
use broker_auth_kafka::KafkaSettings;
use broker_auth_testkit::services;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn transport(topics: &Topics, reply_timeout: Duration) -> KafkaTransport {
    services::require_kafka().await;
    let mut settings = KafkaSettings::new(services::kafka_brokers());
    settings.topic_partitions = 1;
    KafkaTransport::start(
        &settings,
        settings.producer().unwrap(),
        topics.clone(),
        &InstanceId::parse("rpc-test").unwrap(),
        RpcTiming {
            reply_timeout,
            partition_check: Duration::from_millis(100),
        },
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn existence_check(email: &str) -> Vec<u8> {
    format!(
        r#"{{"version":1,"request_id":"{}","email":"{email}"}}"#,
        Uuid::new_v4()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_reply_times_out_instead_of_hanging() {
    let topics = Topics::new(services::unique_prefix("rpc-timeout")).unwrap();
    let transport = transport(&topics, Duration::from_millis(500)).await;
    // The instance's own reply topic, with its three partitions.
    assert_eq!(transport.reply_partitions(), 3);
    assert_eq!(
        transport.reply_topic(),
        format!("{}api-replies.rpc-test", topics.prefix())
    );
    let started = Instant::now();
    let result = transport
        .round_trip(
            RequestKind::ExistenceCheck,
            "a@example.com",
            Uuid::new_v4(),
            existence_check("a@example.com"),
        )
        .await;
    assert!(
        matches!(result, Err(DirectoryError::Timeout(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
