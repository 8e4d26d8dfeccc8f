//! broker-auth's worker tier.
//!
//! Two consumers run side by side: the user-directory consumer (group
//! `Topics::dbproc_group()`) answers requests from the API against Postgres with the one
//! [`UserDirectory`] handler, and the mail consumer (group `Topics::mailer_group()`) sends the
//! mail the API queued. Both commit a record's offset only after its effect is durable — the
//! Postgres transaction committed and the reply acknowledged, or the mail accepted by SMTP — and
//! both dead-letter what they cannot process instead of stopping.

pub mod backoff;
pub mod config;
mod consumer;
mod directory_worker;
mod http;
mod mail_worker;
mod metrics;
mod outbox;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use broker_auth_contract::{MailSealKey, Topics};
use broker_auth_kafka::rdkafka::consumer::Consumer;
use broker_auth_kafka::rdkafka::error::KafkaError;
use broker_auth_mail::{MailError, Mailer, SmtpMailer};
use broker_auth_user_store::{
    PostgresUserRepository, RequestRecords, StoreError, UserDirectory, UserRepository,
};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config, MigrateConfig};
pub use directory_worker::INTERNAL_ERROR;

use crate::backoff::Backoff;
use crate::consumer::{ConsumerName, GroupConsumer};
use crate::directory_worker::DirectoryWorker;
use crate::mail_worker::MailWorker;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// How long the producer waits for a topic it does not know to appear before failing its
/// records (librdkafka's `topic.metadata.propagation.max.ms`, 30 s by default). Replies go to
/// each API instance's own topic, which exists before the instance sends a request; one that
/// is missing went with its instance, and waiting 30 s for it would hold up the partition.
const UNKNOWN_TOPIC_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user database: {0}")]
    Database(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] broker_auth_kafka::Error),
    #[error("kafka: could not subscribe to {topics}: {source}")]
    Subscribe {
        topics: String,
        #[source]
        source: KafkaError,
    },
    #[error("mail: {0}")]
    Mail(#[from] MailError),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("the {consumer} consumer stopped before shutdown was asked for: {reason}")]
    ConsumerStopped {
        consumer: &'static str,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Applies the user database's migrations (what `broker-auth-dbproc migrate` does).
pub async fn migrate(config: &MigrateConfig) -> Result<()> {
    let repository =
        PostgresUserRepository::connect(config.database_url.expose_secret(), 2).await?;
    repository.migrate().await?;
    repository.pool().close().await;
    Ok(())
}

/// A worker ready to run: database migrated, topics ensured, consumers subscribed, metrics
/// port bound.
pub struct App {
    topics: Topics,
    repository: Arc<PostgresUserRepository>,
    directory_consumer: Arc<GroupConsumer>,
    directory_joined: Arc<AtomicBool>,
    mail_consumer: Arc<GroupConsumer>,
    mail_joined: Arc<AtomicBool>,
    outbox: Outbox,
    mailer: Arc<dyn Mailer>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    mail_max_attempts: u32,
    mail_retry: Backoff,
    mail_seal_key: MailSealKey,
    record_retention: std::time::Duration,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("topic_prefix", &self.topics.prefix())
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(config: Config) -> Result<Self> {
        config.validate().map_err(Error::Settings)?;
        let topics = config.topics().clone();
        // No I/O yet: a malformed SMTP_URL stops the start before anything is touched.
        let mailer: Arc<dyn Mailer> = Arc::new(SmtpMailer::from_url(
            &config.smtp_url,
            config.mail_from.clone(),
        )?);
        let metrics = Arc::new(Metrics::default());
        let repository = Arc::new(
            PostgresUserRepository::connect(
                config.database_url.expose_secret(),
                config.database_max_connections,
            )
            .await?,
        );
        repository.migrate().await?;

        let kafka = config.kafka_settings();
        broker_auth_kafka::ensure_topics(&kafka, &topics.all()).await?;
        let membership = consumer::Membership {
            instance_id: config.group_instance_id(),
            assignment_strategy: config.kafka_assignment_strategy.clone(),
        };
        tracing::info!(
            group_instance_id = membership
                .instance_id
                .as_deref()
                .unwrap_or("(none: dynamic membership)"),
            assignment_strategy = %membership.assignment_strategy,
            "consumer group membership"
        );
        let (directory_consumer, directory_joined) = consumer::group_consumer(
            &kafka,
            &topics.dbproc_group(),
            &membership,
            ConsumerName::Directory,
            metrics.clone(),
        )
        .map_err(broker_auth_kafka::Error::from)?;
        let directory_consumer = subscribed(directory_consumer, &topics.request_topics())?;
        let (mail_consumer, mail_joined) = consumer::group_consumer(
            &kafka,
            &topics.mailer_group(),
            &membership,
            ConsumerName::Mail,
            metrics.clone(),
        )
        .map_err(broker_auth_kafka::Error::from)?;
        let mail_consumer = subscribed(mail_consumer, &[topics.mail()])?;
        let outbox = Outbox::new(
            kafka.producer_with(&[(
                "topic.metadata.propagation.max.ms",
                &UNKNOWN_TOPIC_AFTER.as_millis().to_string(),
            )])?,
            directory_worker::store_retry(),
        );

        let listener = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.metrics_listen,
                source,
            })?;
        let metrics_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.metrics_listen,
            source,
        })?;

        Ok(Self {
            topics,
            repository,
            directory_consumer: Arc::new(directory_consumer),
            directory_joined,
            mail_consumer: Arc::new(mail_consumer),
            mail_joined,
            outbox,
            mailer,
            metrics,
            listener,
            metrics_addr,
            mail_max_attempts: config.mail_max_attempts,
            mail_retry: config.mail_retry(),
            mail_seal_key: config.mail_seal_key().map_err(Error::Settings)?,
            record_retention: config.record_retention(),
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs both consumers and the metrics server until `shutdown` is cancelled, then abandons
    /// (uncommitted) the record in hand — except a mail already being sent, which is finished
    /// and recorded — commits, and leaves the consumer groups.
    ///
    /// A consumer that ends on its own (a panic) stops everything and returns an error, so the
    /// process exits and Kubernetes restarts it instead of keeping a live pod that consumes
    /// nothing.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let stop = shutdown.child_token();
        let health = http::HealthState {
            repository: self.repository.clone(),
            directory: http::ConsumerHealth {
                consumer: self.directory_consumer.clone(),
                joined: self.directory_joined.clone(),
            },
            mail: http::ConsumerHealth {
                consumer: self.mail_consumer.clone(),
                joined: self.mail_joined.clone(),
            },
            probe_topic: self.topics.dead_letter(),
            metrics: self.metrics.clone(),
        };
        let server = axum::serve(self.listener, http::router(health))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });

        let directory = DirectoryWorker {
            consumer: self.directory_consumer.clone(),
            outbox: self.outbox.clone(),
            directory: UserDirectory::new(self.repository.clone()),
            topics: self.topics.clone(),
            metrics: self.metrics.clone(),
            store_retry: directory_worker::store_retry(),
        };
        let records: Arc<dyn RequestRecords> = self.repository.clone();
        let pruner = tokio::spawn(broker_auth_user_store::prune_periodically(
            records.clone(),
            self.record_retention,
            stop.clone().cancelled_owned(),
        ));
        let mail = MailWorker {
            consumer: self.mail_consumer.clone(),
            outbox: self.outbox.clone(),
            mailer: self.mailer.clone(),
            records,
            store_retry: directory_worker::store_retry(),
            topics: self.topics.clone(),
            metrics: self.metrics.clone(),
            max_attempts: self.mail_max_attempts,
            retry: self.mail_retry,
            seal: self.mail_seal_key.clone(),
        };
        tracing::info!(
            metrics_addr = %self.metrics_addr,
            topic_prefix = self.topics.prefix(),
            "dbproc is consuming user-directory requests and mail"
        );
        let mut workers = JoinSet::new();
        let mut names = Vec::new();
        let directory_stop = stop.clone();
        let task = workers.spawn(async move { directory.run(directory_stop).await });
        names.push((task.id(), ConsumerName::Directory));
        let mail_stop = stop.clone();
        let task = workers.spawn(async move { mail.run(mail_stop).await });
        names.push((task.id(), ConsumerName::Mail));
        let mut failure = None;
        while let Some(joined) = workers.join_next_with_id().await {
            let (id, reason) = match joined {
                Ok((_, ())) if stop.is_cancelled() => continue,
                Ok((id, ())) => (id, "it returned".to_owned()),
                Err(error) => (error.id(), error.to_string()),
            };
            let consumer = names
                .iter()
                .find(|(task, _)| *task == id)
                .map_or("unknown", |(_, name)| name.label());
            tracing::error!(consumer, %reason, "a consumer ended abnormally; stopping dbproc");
            failure.get_or_insert(Error::ConsumerStopped { consumer, reason });
            stop.cancel();
        }

        let served = server.await;
        if let Err(error) = pruner.await {
            tracing::warn!(%error, "the record pruner failed");
        }
        let directory_consumer = self.directory_consumer;
        let mail_consumer = self.mail_consumer;
        let closed = tokio::task::spawn_blocking(move || {
            consumer::close(ConsumerName::Directory, directory_consumer);
            consumer::close(ConsumerName::Mail, mail_consumer);
        })
        .await;
        if let Err(error) = closed {
            tracing::warn!(%error, "closing the consumers failed");
        }
        self.repository.pool().close().await;
        tracing::info!("dbproc stopped");
        if let Some(failure) = failure {
            return Err(failure);
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Serve(error)),
            Err(join_error) => Err(Error::Serve(std::io::Error::other(join_error))),
        }
    }
}

fn subscribed(consumer: GroupConsumer, topics: &[String]) -> Result<GroupConsumer> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| Error::Subscribe {
            topics: topics.join(","),
            source,
        })?;
    Ok(consumer)
}
