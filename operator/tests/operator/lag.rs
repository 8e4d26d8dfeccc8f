//! Consumer lag measured against the real broker.

use std::time::Duration;

use crate::support::consumer_lag;
use broker_auth_operator::crd::UncommittedPartitionPolicy::{Earliest, Latest};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::support::{eventually, kafka_settings, produce, unique};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `count` records of `topic`/`partition` as `group` and commits after them, the way
/// dbproc commits after its work is durable.
async fn consume_and_commit(
    settings: &broker_auth_kafka::KafkaSettings,
    group: &str,
    topic: &str,
    partition: i32,
    count: usize,
) {
    let mut config = settings.base_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer = config.create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut next = 0;
        let mut read = 0;
        while read < count {
            assert!(std::time::Instant::now() < deadline, "timed out consuming");
            if let Some(message) = consumer.poll(Duration::from_millis(50)) {
                next = message.unwrap().offset() + 1;
                read += 1;
            }
        }
        let mut commit = TopicPartitionList::new();
        commit
            .add_partition_offset(&topic, partition, Offset::Offset(next))
            .unwrap();
        consumer.commit(&commit, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn lag_counts_produced_records_and_drops_by_what_the_group_commits() {
    let settings = kafka_settings();
    let prefix = unique("lag-test-");
    let (busy, idle) = (format!("{prefix}.busy"), format!("{prefix}.idle"));
    let topics = vec![busy.clone(), idle.clone()];
    broker_auth_kafka::ensure_topics(&settings, &topics)
        .await
        .unwrap();
    let group = format!("{prefix}.dbproc");
    let other_group = format!("{prefix}.other");

    produce(&settings, &busy, 0, 4).await;
    produce(&settings, &busy, 1, 3).await;

    // Produced N = 7 with no consumer: every record waits (dbproc starts from the earliest).
    let lag = eventually(TIMEOUT, "lag 7", || async {
        let lag = consumer_lag(&settings, &group, &topics, Earliest, TIMEOUT)
            .await
            .ok()?;
        (lag.total() == 7).then_some(lag)
    })
    .await;
    assert_eq!(lag.partitions.len(), 4, "two partitions per topic");
    // Under the `Latest` policy a never-committed partition counts nothing.
    assert_eq!(
        consumer_lag(&settings, &group, &topics, Latest, TIMEOUT)
            .await
            .unwrap()
            .total(),
        0
    );

    // Consume and commit k = 3: N − k remain.
    consume_and_commit(&settings, &group, &busy, 0, 3).await;
    let total = eventually(TIMEOUT, "lag 4", || async {
        let total = consumer_lag(&settings, &group, &topics, Earliest, TIMEOUT)
            .await
            .ok()?
            .total();
        (total == 4).then_some(total)
    })
    .await;
    assert_eq!(total, 4);
    // With a commit on partition 0, `Latest` counts partition 0's remainder only.
    assert_eq!(
        consumer_lag(&settings, &group, &topics, Latest, TIMEOUT)
            .await
            .unwrap()
            .total(),
        1
    );

    // Another group's commits and another topic are kept apart.
    assert_eq!(
        consumer_lag(&settings, &other_group, &topics, Earliest, TIMEOUT)
            .await
            .unwrap()
            .total(),
        7
    );
    assert_eq!(
        consumer_lag(
            &settings,
            &group,
            std::slice::from_ref(&idle),
            Earliest,
            TIMEOUT
        )
        .await
        .unwrap()
        .total(),
        0
    );
    let lag = consumer_lag(
        &settings,
        &group,
        std::slice::from_ref(&busy),
        Earliest,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        lag.partitions,
        vec![(busy.clone(), 0, 1), (busy.clone(), 1, 3)]
    );
    // Capped at partitions × target: 2 partitions × 1 per replica.
    assert_eq!(lag.metric_value(1, true), 2);
    assert_eq!(lag.metric_value(1, false), 4);
}

#[tokio::test]
async fn lag_of_a_missing_topic_is_an_error_not_zero() {
    let settings = kafka_settings();
    let missing = unique("lag-missing-");
    let result = consumer_lag(&settings, "g", &[missing], Earliest, Duration::from_secs(3)).await;
    assert!(result.is_err());
}
