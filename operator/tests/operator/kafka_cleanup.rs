//! Deleting a BrokerAuth's Kafka data (its consumer groups' offsets and its topics) against the
//! real broker. tansu and Apache Kafka both implement DeleteGroups and DeleteTopics; a broker that
//! refuses them is covered against the mock in `reconcile.rs`.

use std::time::Duration;

use crate::support::consumer_lag;
use broker_auth_contract::Topics;
use broker_auth_kafka::KafkaSettings;
use broker_auth_operator::crd::UncommittedPartitionPolicy::Earliest;
use broker_auth_operator::kafka::{KafkaAdmin, RdKafkaAdmin};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{eventually, kafka_settings, produce, unique};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Commits `offset` on partition 0 of `topic` for `group`, as dbproc does after its work.
async fn commit(settings: &KafkaSettings, group: &str, topic: &str, offset: i64) {
    let mut config = settings.base_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync).unwrap())
        .await
        .unwrap();
}

/// The offset `group` has committed on partition 0 of `topic`, if any.
async fn committed(settings: &KafkaSettings, group: &str, topic: &str) -> Option<i64> {
    let mut config = settings.base_config();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create().unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    tokio::task::spawn_blocking(move || {
        let offsets = consumer.committed_offsets(wanted, TIMEOUT).unwrap();
        match offsets.elements()[0].offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn deleting_kafka_data_removes_the_committed_offsets_and_the_topics_so_a_new_brokerauth_starts_clean()
 {
    let settings = kafka_settings();
    let topics = Topics::for_deployment(&unique("cleanup-"), "auth").unwrap();
    let request = topics.request_topics()[0].clone();
    broker_auth_kafka::ensure_topics(&settings, &topics.all())
        .await
        .unwrap();
    produce(&settings, &request, 0, 3).await;
    commit(&settings, &topics.dbproc_group(), &request, 3).await;
    commit(&settings, &topics.mailer_group(), &topics.mail(), 0).await;
    assert_eq!(
        committed(&settings, &topics.dbproc_group(), &request).await,
        Some(3)
    );

    let admin = RdKafkaAdmin::default();
    let groups = [topics.dbproc_group(), topics.mailer_group()];
    let groups_left = admin
        .delete_consumer_groups(&settings, &groups)
        .await
        .unwrap();
    assert!(
        groups_left.is_empty(),
        "the broker refused: {groups_left:?}"
    );
    assert_eq!(
        committed(&settings, &topics.dbproc_group(), &request).await,
        None,
        "the committed offset survived DeleteGroups"
    );
    // A retried cleanup finds the groups gone: that counts as done.
    let again = admin
        .delete_consumer_groups(&settings, &groups)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");

    let topics_left = admin.delete_topics(&settings, &topics.all()).await.unwrap();
    assert!(
        topics_left.is_empty(),
        "the broker refused: {topics_left:?}"
    );
    eventually(TIMEOUT, "the topics to disappear from metadata", || async {
        let mut gone = true;
        for topic in topics.all() {
            gone &= broker_auth_kafka::partition_counts(&settings, &[topic], TIMEOUT)
                .await
                .is_err();
        }
        gone.then_some(())
    })
    .await;
    let again = admin.delete_topics(&settings, &topics.all()).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    // The point of deleting both: a BrokerAuth re-created under the same name starts with empty
    // topics and no commits, so its lag counts the new records (2) rather than 0 behind the old
    // commit at offset 3.
    broker_auth_kafka::ensure_topics(&settings, &topics.all())
        .await
        .unwrap();
    produce(&settings, &request, 0, 2).await;
    eventually(TIMEOUT, "lag 2 on the re-created topics", || async {
        let lag = consumer_lag(
            &settings,
            &topics.dbproc_group(),
            &topics.request_topics(),
            Earliest,
            TIMEOUT,
        )
        .await
        .ok()?;
        (lag.total() == 2).then_some(())
    })
    .await;
    admin.delete_topics(&settings, &topics.all()).await.unwrap();
}
