//! Reads of dbproc's consumer lag over 3 request topics × 12 partitions, as the operator does them
//! (its long-lived clients: the first read also connects), against a private tansu behind a
//! counting proxy: how many Kafka requests each read sends, of which kind, and its wall time.
//! Needs tansu (`cargo install tansu --locked --features dynostore,libsql`).
//!
//!   cargo bench -p broker-auth-operator --bench lag_read

use std::time::{Duration, Instant};

use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use broker_auth_kafka::rdkafka::producer::FutureRecord;
use broker_auth_kafka::rdkafka::{Offset, TopicPartitionList};
use broker_auth_operator::crd::UncommittedPartitionPolicy;
use broker_auth_operator::kafka::{KafkaAdmin, RdKafkaAdmin};
use broker_auth_testkit::counted_kafka::CountedKafka;

const TOPICS: usize = 3;
const PARTITIONS: i32 = 12;
const READS: usize = 5;
const GROUP: &str = "bench-dbproc";

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let kafka = CountedKafka::start().await?;
    let mut settings = KafkaSettings::new(kafka.bootstrap_servers());
    settings.topic_partitions = PARTITIONS;
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("bench-lag-{i}")).collect();
    broker_auth_kafka::ensure_topics(&settings, &topics).await?;
    fill(&settings, &topics).await?;

    println!(
        "lag read: {TOPICS} topics × {PARTITIONS} partitions, group with commits on half of them"
    );
    println!("| read | Kafka requests | by kind | wall time |");
    println!("|---|---|---|---|");
    let admin = RdKafkaAdmin::default();
    kafka.reset();
    let mut lag = 0;
    for read in 1..=READS {
        let started = Instant::now();
        lag = admin
            .consumer_lag(
                &settings,
                GROUP,
                &topics,
                UncommittedPartitionPolicy::Earliest,
            )
            .await?
            .total();
        let elapsed = started.elapsed();
        let requests = kafka.requests();
        kafka.reset();
        let total: u64 = requests.values().sum();
        let kinds: Vec<String> = requests.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "| {read} | {total} | {} | {:.1} ms |",
            kinds.join(", "),
            elapsed.as_secs_f64() * 1000.0
        );
    }
    println!("total lag read: {lag}");
    Ok(())
}

/// Three records on every partition, and the group's commit at 1 on the even partitions.
async fn fill(settings: &KafkaSettings, topics: &[String]) -> anyhow::Result<()> {
    let producer = settings.producer()?;
    for topic in topics {
        for partition in 0..PARTITIONS {
            for i in 0..3 {
                let body = format!("record {i}");
                producer
                    .send(
                        FutureRecord::<(), _>::to(topic)
                            .partition(partition)
                            .payload(&body),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(error, _)| error)?;
            }
        }
    }
    let mut config = settings.base_config();
    config
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut commits = TopicPartitionList::new();
    for topic in topics {
        for partition in (0..PARTITIONS).step_by(2) {
            commits.add_partition_offset(topic, partition, Offset::Offset(1))?;
        }
    }
    tokio::task::spawn_blocking(move || consumer.commit(&commits, CommitMode::Sync)).await??;
    Ok(())
}
