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
mod directory_worker;
mod http;
mod mail_worker;
mod metrics;
mod records;

use std::net::SocketAddr;
use std::sync::Arc;

use broker_auth_contract::Topics;
use broker_auth_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use broker_auth_kafka::rdkafka::error::KafkaError;
use broker_auth_mail::{MailError, Mailer, SmtpMailer};
use broker_auth_user_store::{PostgresUserRepository, StoreError, UserDirectory, UserRepository};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config, MigrateConfig};
pub use directory_worker::INTERNAL_ERROR;

use crate::backoff::Backoff;
use crate::directory_worker::DirectoryWorker;
use crate::mail_worker::MailWorker;
use crate::metrics::Metrics;
use crate::records::Outbox;

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
    directory_consumer: Arc<StreamConsumer>,
    mail_consumer: Arc<StreamConsumer>,
    outbox: Outbox,
    mailer: Arc<dyn Mailer>,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    mail_max_attempts: u32,
    mail_retry: Backoff,
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
        let topics = config.topics().clone();
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
        let directory_consumer = subscribed(
            kafka.group_consumer(&topics.dbproc_group())?,
            &topics.request_topics(),
        )?;
        let mail_consumer = subscribed(
            kafka.group_consumer(&topics.mailer_group())?,
            &[topics.mail()],
        )?;
        let outbox = Outbox::new(kafka.producer()?, directory_worker::store_retry());

        let mailer: Arc<dyn Mailer> = Arc::new(SmtpMailer::from_url(
            &config.smtp_url,
            config.mail_from.clone(),
        )?);

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
            mail_consumer: Arc::new(mail_consumer),
            outbox,
            mailer,
            metrics: Arc::new(Metrics::default()),
            listener,
            metrics_addr,
            mail_max_attempts: config.mail_max_attempts,
            mail_retry: config.mail_retry(),
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Runs both consumers and the metrics server until `shutdown` is cancelled, then finishes
    /// or abandons (uncommitted) the records in hand, commits, and leaves the consumer groups.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let health = http::HealthState {
            repository: self.repository.clone(),
            directory_consumer: self.directory_consumer.clone(),
            mail_consumer: self.mail_consumer.clone(),
            probe_topic: self.topics.dead_letter(),
            metrics: self.metrics.clone(),
        };
        let server = axum::serve(self.listener, http::router(health))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });

        let directory = DirectoryWorker {
            consumer: self.directory_consumer.clone(),
            outbox: self.outbox.clone(),
            directory: UserDirectory::new(self.repository.clone()),
            topics: self.topics.clone(),
            metrics: self.metrics.clone(),
            store_retry: directory_worker::store_retry(),
        };
        let mail = MailWorker {
            consumer: self.mail_consumer.clone(),
            outbox: self.outbox.clone(),
            mailer: self.mailer.clone(),
            topics: self.topics.clone(),
            metrics: self.metrics.clone(),
            max_attempts: self.mail_max_attempts,
            retry: self.mail_retry,
        };
        tracing::info!(
            metrics_addr = %self.metrics_addr,
            topic_prefix = self.topics.prefix(),
            "dbproc is consuming user-directory requests and mail"
        );
        let directory = tokio::spawn(directory.run(shutdown.clone()));
        let mail = tokio::spawn(mail.run(shutdown.clone()));
        let (directory, mail) = tokio::join!(directory, mail);
        for (name, joined) in [("directory", directory), ("mail", mail)] {
            if let Err(error) = joined {
                tracing::error!(consumer = name, %error, "a consumer task ended abnormally");
            }
        }

        let served = server.await;
        let directory_consumer = self.directory_consumer;
        let mail_consumer = self.mail_consumer;
        let closed = tokio::task::spawn_blocking(move || {
            records::close(directory_consumer);
            records::close(mail_consumer);
        })
        .await;
        if let Err(error) = closed {
            tracing::warn!(%error, "closing the consumers failed");
        }
        self.repository.pool().close().await;
        tracing::info!("dbproc stopped");
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Serve(error)),
            Err(join_error) => Err(Error::Serve(std::io::Error::other(join_error))),
        }
    }
}

fn subscribed(consumer: StreamConsumer, topics: &[String]) -> Result<StreamConsumer> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| Error::Subscribe {
            topics: topics.join(","),
            source,
        })?;
    Ok(consumer)
}
