//! The floors: what one bcrypt hash, one Redis, Postgres and Kafka round trip and one HTTP round
//! trip cost on this machine, measured in the same run as the flows they bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_auth_kafka::KafkaSettings;
use broker_auth_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use broker_auth_kafka::rdkafka::message::Message;
use broker_auth_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker_auth_kafka::rdkafka::util::Timeout;
use broker_auth_kafka::rdkafka::{Offset, TopicPartitionList};
use broker_auth_testkit::services;
use sqlx::Connection;

use crate::Result;
use crate::stats::median;

/// The floors, each the median of many round trips.
#[derive(Debug, Clone, Copy)]
pub struct Floors {
    pub cores: usize,
    pub bcrypt_cost: u32,
    pub bcrypt: Duration,
    pub redis: Duration,
    pub postgres: Duration,
    /// A request produced and answered through Kafka by an echo with the API's and dbproc's
    /// client settings: two hops, each waiting on its consumer's fetch.
    pub kafka_rpc: Duration,
    /// One record produced and acknowledged (acks=all), as the API hands a mail off.
    pub kafka_produce: Duration,
    pub http: Duration,
}

impl Floors {
    /// Signins per second the cores can hash: cores ÷ one hash.
    pub fn signin_ceiling(&self) -> f64 {
        self.cores as f64 / self.bcrypt.as_secs_f64()
    }

    /// The floor called `name` (`http`, `redis`, `postgres`, `kafka_rpc`, `kafka_produce`,
    /// `bcrypt`).
    pub fn part(&self, name: &str) -> Duration {
        match name {
            "http" => self.http,
            "redis" => self.redis,
            "postgres" => self.postgres,
            "kafka_rpc" => self.kafka_rpc,
            "kafka_produce" => self.kafka_produce,
            "bcrypt" => self.bcrypt,
            _ => Duration::ZERO,
        }
    }

    /// The sum of the floors called `names`.
    pub fn sum(&self, names: &[&str]) -> Duration {
        names.iter().map(|name| self.part(name)).sum()
    }
}

/// How many round trips each floor's median is taken over.
pub struct Repetitions {
    pub bcrypt: usize,
    pub round_trips: usize,
    pub kafka: usize,
}

pub async fn measure(
    bcrypt_cost: u32,
    api_fetch_wait_ms: u32,
    dbproc_fetch_wait_ms: u32,
    repetitions: &Repetitions,
) -> Result<Floors> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (kafka_rpc, kafka_produce) =
        kafka_round_trip(api_fetch_wait_ms, dbproc_fetch_wait_ms, repetitions.kafka).await?;
    Ok(Floors {
        cores,
        bcrypt_cost,
        bcrypt: bcrypt_hash(bcrypt_cost, repetitions.bcrypt).await?,
        redis: redis_round_trip(repetitions.round_trips).await?,
        postgres: postgres_round_trip(repetitions.round_trips).await?,
        kafka_rpc,
        kafka_produce,
        http: http_round_trip(repetitions.round_trips).await?,
    })
}

async fn bcrypt_hash(cost: u32, repetitions: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..repetitions.max(1) {
        let took = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            bcrypt::hash("correct horse battery", cost).map(|_| started.elapsed())
        })
        .await??;
        times.push(took);
    }
    Ok(median(times))
}

async fn redis_round_trip(repetitions: usize) -> Result<Duration> {
    services::require_redis().await;
    let client = redis::Client::open(services::redis_url())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut times = Vec::new();
    for i in 0..repetitions + repetitions / 10 {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        if i >= repetitions / 10 {
            times.push(started.elapsed());
        }
    }
    Ok(median(times))
}

async fn postgres_round_trip(repetitions: usize) -> Result<Duration> {
    services::require_postgres().await;
    let url = format!(
        "{}/postgres",
        services::postgres_server_url().trim_end_matches('/')
    );
    let mut connection = sqlx::PgConnection::connect(&url).await?;
    let mut times = Vec::new();
    for i in 0..repetitions + repetitions / 10 {
        let started = Instant::now();
        let _: (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&mut connection)
            .await?;
        if i >= repetitions / 10 {
            times.push(started.elapsed());
        }
    }
    connection.close().await?;
    Ok(median(times))
}

/// A bare request/reply through the broker: the request read by a group consumer with dbproc's
/// settings, echoed by a producer with the shared settings, the reply read by an assigned
/// consumer with the API's settings, as the API's reply reader does.
async fn kafka_round_trip(
    api_fetch_wait_ms: u32,
    dbproc_fetch_wait_ms: u32,
    repetitions: usize,
) -> Result<(Duration, Duration)> {
    services::require_kafka().await;
    let prefix = services::unique_prefix("bench-floor");
    let (requests, replies) = (format!("{prefix}requests"), format!("{prefix}replies"));
    let mut settings = KafkaSettings::new(services::kafka_brokers());
    settings.topic_partitions = 1;
    broker_auth_kafka::ensure_topics(&settings, &[requests.clone(), replies.clone()]).await?;

    let mut worker_settings = settings.clone();
    worker_settings.fetch_wait_max_ms = dbproc_fetch_wait_ms;
    let worker: StreamConsumer = worker_settings.group_consumer(&format!("{prefix}echo"))?;
    worker.subscribe(&[&requests])?;
    let echo_producer = settings.producer()?;
    let echo_replies = replies.clone();
    let echo = tokio::spawn(async move {
        while let Ok(message) = worker.recv().await {
            let payload = message.payload().unwrap_or_default().to_vec();
            let record = FutureRecord::<(), _>::to(&echo_replies).payload(&payload);
            let _ = echo_producer.send(record, Timeout::Never).await;
        }
    });

    let mut client_settings = settings.clone();
    client_settings.fetch_wait_max_ms = api_fetch_wait_ms;
    let reader = client_settings.assigned_consumer(&format!("{prefix}reader"))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&replies, 0, Offset::End)?;
    reader.assign(&assignment)?;
    let producer = settings.producer()?;

    // Until the echo's group has formed, requests go unanswered: send until one comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ask(&producer, &reader, &requests, Duration::from_secs(2))
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            echo.abort();
            return Err(
                "the Kafka echo never answered: is tansu running (scripts/dev-services)?".into(),
            );
        }
    }
    // Requests in the flows arrive at any moment of the consumers' fetch cycles; back-to-back
    // requests would all arrive just after a fetch began (tansu answers a fetch only when its
    // wait is over) and each wait a whole cycle. A pause of a random part of the cycles before
    // each request gives the floor the flows' arrival pattern.
    let cycle = u64::from(api_fetch_wait_ms + dbproc_fetch_wait_ms);
    let mut times = Vec::new();
    for _ in 0..repetitions {
        let pause = u64::from(uuid::Uuid::new_v4().as_fields().0) % (cycle * 1000).max(1);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        times.push(ask(&producer, &reader, &requests, Duration::from_secs(10)).await?);
    }
    echo.abort();
    let mut produce_times = Vec::new();
    for _ in 0..repetitions {
        let started = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&replies).payload("produce floor"),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(error, _)| error)?;
        produce_times.push(started.elapsed());
    }
    Ok((median(times), median(produce_times)))
}

/// Sends one request and waits for the reply that carries its payload.
async fn ask(
    producer: &FutureProducer,
    reader: &StreamConsumer,
    requests: &str,
    timeout: Duration,
) -> Result<Duration> {
    let id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    producer
        .send(
            FutureRecord::<(), _>::to(requests).payload(id.as_bytes()),
            Timeout::After(timeout),
        )
        .await
        .map_err(|(error, _)| error)?;
    let wait = async {
        loop {
            let message = reader.recv().await?;
            if message.payload() == Some(id.as_bytes()) {
                return Ok::<_, broker_auth_kafka::rdkafka::error::KafkaError>(started.elapsed());
            }
        }
    };
    Ok(tokio::time::timeout(timeout, wait).await??)
}

/// An HTTP round trip to an axum handler that does nothing, over a kept-alive connection.
async fn http_round_trip(repetitions: usize) -> Result<Duration> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/");
    let mut times = Vec::new();
    for i in 0..repetitions + repetitions / 10 {
        let started = Instant::now();
        client.get(&url).send().await?.error_for_status()?;
        if i >= repetitions / 10 {
            times.push(started.elapsed());
        }
    }
    server.abort();
    Ok(median(times))
}
