//! Building the API from its configuration, in either mode, and running it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use broker_auth_contract::{MailSealKey, Topics};
use broker_auth_kafka::KafkaSettings;
use broker_auth_mail::{LogMailer, Mailbox, Mailer, SmtpMailer};
use broker_auth_user_store::{
    RequestRecords, SqliteUserRepository, UserDirectory, UserRepository, prune_periodically,
};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::crypto::{HashBudget, HashError, Keys, PasswordHasher};
use crate::directory::{Directory, InProcessTransport, KafkaTransport, RpcTiming};
use crate::events::{EVENT_BUFFER, Events, KafkaEvents, LogEvents};
use crate::http::{AppState, Policy, ReadinessCache, Shared};
use crate::metrics::Metrics;
use crate::outbox::{InProcessOutbox, KafkaOutbox, MailOutbox};
use crate::store::{EphemeralStore, MemoryStore, RedisStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("could not bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not connect to Redis: {0}")]
    Redis(#[from] StoreError),
    #[error("could not set up Kafka: {0}")]
    Kafka(#[from] broker_auth_kafka::Error),
    #[error("could not open the embedded database: {0}")]
    Database(#[from] broker_auth_user_store::StoreError),
    #[error("invalid mail settings: {0}")]
    Mail(String),
    #[error("could not prepare password hashing: {0}")]
    Hashing(#[from] HashError),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0} did not answer within {STARTUP_DEADLINE:?}")]
    Timeout(&'static str),
}

/// How long start-up waits for each dependency before giving up (and letting the orchestrator
/// restart the process with backoff).
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long shutdown waits for Kafka to delete the instance's reply topic.
const REPLY_TOPIC_DELETION: Duration = Duration::from_secs(5);

/// A built API: bound to its port, connected to its dependencies, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
    metrics_listener: TcpListener,
    metrics_router: Router,
    background: CancellationToken,
    snapshot: Option<Snapshot>,
    reply_topic: Option<Arc<KafkaTransport>>,
}

/// Embedded mode's in-memory store and the file it is saved to at shutdown.
struct Snapshot {
    store: Arc<MemoryStore>,
    path: PathBuf,
}

struct Backends {
    store: Arc<dyn EphemeralStore>,
    events: Events,
    directory: Directory,
    outbox: Arc<dyn MailOutbox>,
    secret: SecretString,
    snapshot: Option<Snapshot>,
    /// Distributed mode: the transport whose reply topic is deleted at shutdown.
    reply_topic: Option<Arc<KafkaTransport>>,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        // Unpacked now, so no request pays for it.
        let common_passwords = broker_auth_common_passwords::CommonPasswords::get().len();
        tracing::debug!(common_passwords, "common-password list loaded");
        let background = CancellationToken::new();
        let metrics = Metrics::new();
        let backends = match &config.kafka_brokers {
            Some(brokers) => distributed(&config, brokers, background.clone(), &metrics).await?,
            None => embedded(&config, background.clone(), &metrics).await?,
        };
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })
        };
        let listener = bind(config.listen()).await?;
        let metrics_listener = bind(config.metrics_listen()).await?;
        let state = AppState::new(Shared {
            store: backends.store,
            events: backends.events,
            directory: backends.directory,
            outbox: backends.outbox,
            keys: Keys::new(&backends.secret),
            hasher: PasswordHasher::new(
                config.bcrypt_cost,
                HashBudget::new(config.hash_concurrency, config.hash_queue_length),
            )
            .await?
            .with_metrics(&metrics),
            policy: Policy {
                session_ttl: Duration::from_secs(config.session_ttl_secs),
                otp_ttl: Duration::from_secs(config.otp_ttl_secs),
                otp_max_attempts: config.otp_max_attempts,
                resend_cooldown: Duration::from_secs(config.signup_resend_cooldown_secs),
                signin_max_failures: config.signin_max_failures,
                signin_max_failures_per_address: config.signin_max_failures_per_address,
                signin_failure_window: Duration::from_secs(config.signin_failure_window_secs),
                verify_max_failures: config.verify_max_failures,
                verify_max_failures_per_address: config.verify_max_failures_per_address,
                verify_failure_window: Duration::from_secs(config.verify_failure_window_secs),
                rate_limit_per_minute: config.rate_limit_per_minute,
                signin_rate_limit_per_minute: config.signin_rate_limit_per_minute,
                verify_rate_limit_per_minute: config.verify_rate_limit_per_minute,
                trusted_proxies: config.trusted_proxy_cidrs.clone(),
                cookie_secure: config.cookie_secure(),
            },
            metrics,
            readiness: ReadinessCache::default(),
        });
        let app = Self {
            listener,
            router: crate::http::router(state.clone()),
            metrics_listener,
            metrics_router: crate::http::metrics_router(state),
            background,
            snapshot: backends.snapshot,
            reply_topic: backends.reply_topic,
        };
        if config.is_embedded() {
            print_embedded_banner(&config, app.local_addr());
        } else {
            tracing::info!(
                address = %app.local_addr(),
                metrics = %app.metrics_addr(),
                "broker-auth-api listening"
            );
        }
        Ok(app)
    }

    /// The bound address (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound address of the operational port (`/metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes, then drains in-flight requests and stops the
    /// background tasks (the Kafka reply reader).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let _stop_background = self.background.clone().drop_guard();
        // The operational port lives as long as the public one and stops with it.
        let metrics = axum::serve(self.metrics_listener, self.metrics_router)
            .with_graceful_shutdown(self.background.clone().cancelled_owned());
        let metrics = tokio::spawn(async move {
            if let Err(error) = metrics.await {
                tracing::error!(%error, "the metrics server failed");
            }
        });
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StartError::Serve);
        self.background.cancel();
        if let Err(error) = metrics.await {
            tracing::warn!(%error, "the metrics server task failed");
        }
        if let Some(transport) = &self.reply_topic {
            // Every request has been answered: nobody waits on this topic any more.
            match tokio::time::timeout(REPLY_TOPIC_DELETION, transport.delete_reply_topic()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(topic = transport.reply_topic(), %error, "could not delete the reply topic; the operator deletes it later")
                }
                Err(_) => {
                    tracing::warn!(
                        topic = transport.reply_topic(),
                        "deleting the reply topic took too long; the operator deletes it later"
                    )
                }
            }
        }
        if let Some(snapshot) = &self.snapshot {
            match snapshot.store.save(&snapshot.path) {
                Ok(()) => tracing::info!(path = %snapshot.path.display(), "sessions saved"),
                Err(error) => {
                    tracing::warn!(path = %snapshot.path.display(), %error, "could not save sessions")
                }
            }
        }
        served
    }
}

async fn distributed(
    config: &Config,
    brokers: &str,
    background: CancellationToken,
    metrics: &Metrics,
) -> Result<Backends, StartError> {
    let topics = Topics::new(config.kafka_topic_prefix.clone()).map_err(ConfigError::from)?;
    let mut settings = KafkaSettings::new(brokers);
    settings.fetch_wait_max_ms = config.kafka_fetch_wait_ms;
    settings.topic_partitions = config.kafka_topic_partitions;
    settings.replication_factor = config.kafka_replication_factor;
    settings.retention = config.kafka_retention.retention();
    settings.extra = config
        .kafka_properties
        .pairs()
        .map_err(ConfigError::KafkaProperties)?;

    let redis_url = config
        .redis_url
        .as_ref()
        .ok_or(ConfigError::MissingRedisUrl)?;
    tracing::info!("connecting to Redis");
    let store = tokio::time::timeout(
        STARTUP_DEADLINE,
        RedisStore::connect(redis_url.expose_secret(), &config.redis_key_prefix),
    )
    .await
    .map_err(|_| StartError::Timeout("Redis (REDIS_URL)"))??;
    // One producer for requests and mail; a record not delivered within the reply deadline is
    // dropped rather than delivered after the client was told 503.
    settings.delivery_timeout = config.reply_timeout();
    let producer = settings.producer()?;
    tracing::info!(brokers, "connecting to Kafka");
    let instance = config.instance_id()?;
    let transport = tokio::time::timeout(
        STARTUP_DEADLINE,
        KafkaTransport::start(
            &settings,
            producer.clone(),
            topics.clone(),
            &instance,
            RpcTiming {
                reply_timeout: config.reply_timeout(),
                partition_check: Duration::from_millis(config.kafka_metadata_refresh_ms),
            },
            background.clone(),
        ),
    )
    .await
    .map_err(|_| StartError::Timeout("Kafka (KAFKA_BROKERS)"))??
    .with_metrics(metrics.clone());
    let transport = Arc::new(transport);
    let seal = config
        .mail_seal_key
        .as_ref()
        .ok_or(ConfigError::MissingMailSealKey)
        .and_then(|key| {
            MailSealKey::from_secret(key.expose_secret().as_bytes())
                .map_err(|_| ConfigError::ShortMailSealKey(key.expose_secret().len()))
        })?;
    let events = KafkaEvents::start(
        producer.clone(),
        topics.auth_events(),
        config.reply_timeout(),
        EVENT_BUFFER,
        metrics.clone(),
        background.clone(),
    );
    let outbox = KafkaOutbox::new(producer, topics.mail(), config.reply_timeout(), seal);
    let secret = config
        .jwt_secret
        .clone()
        .ok_or(ConfigError::MissingJwtSecret)?;
    tracing::info!(
        brokers,
        topic_prefix = topics.prefix(),
        "distributed mode: user directory over Kafka, sessions in Redis"
    );
    Ok(Backends {
        events: Arc::new(events),
        store: Arc::new(store),
        directory: Directory::new(transport.clone()),
        outbox: Arc::new(outbox),
        secret,
        snapshot: None,
        reply_topic: Some(transport),
    })
}

async fn embedded(
    config: &Config,
    background: CancellationToken,
    metrics: &Metrics,
) -> Result<Backends, StartError> {
    let database_url = sqlite_url(config.database_url.expose_secret());
    let repository = Arc::new(SqliteUserRepository::connect(&database_url).await?);
    repository.migrate().await?;
    let records: Arc<dyn RequestRecords> = repository.clone();
    tokio::spawn(prune_periodically(
        records.clone(),
        Duration::from_secs(config.record_retention_secs),
        background.clone().cancelled_owned(),
    ));
    let directory = UserDirectory::new(repository);

    let mailer: Arc<dyn Mailer> = match &config.smtp_url {
        Some(url) => {
            let from: Mailbox = config
                .mail_from
                .parse()
                .map_err(|e| StartError::Mail(format!("MAIL_FROM: {e}")))?;
            Arc::new(SmtpMailer::from_url(url, from).map_err(|e| StartError::Mail(e.to_string()))?)
        }
        None => Arc::new(LogMailer),
    };

    let database = config.database_url.expose_secret();
    let secret = match &config.jwt_secret {
        Some(secret) => secret.clone(),
        None => embedded_secret(database)?,
    };
    // Sessions survive a restart along with the database; an in-memory database keeps nothing.
    let (store, snapshot) = match database_file(database) {
        Some(file) => {
            let path = PathBuf::from(format!("{file}.sessions.json"));
            let store = Arc::new(MemoryStore::load(&path));
            let snapshot = Snapshot {
                store: store.clone(),
                path,
            };
            (store, Some(snapshot))
        }
        None => (Arc::new(MemoryStore::new()), None),
    };
    Ok(Backends {
        store,
        events: Arc::new(LogEvents::new(metrics.clone())),
        directory: Directory::new(Arc::new(InProcessTransport::new(directory))),
        outbox: Arc::new(InProcessOutbox::start(
            mailer,
            records,
            usize::try_from(config.mail_queue_capacity).unwrap_or(usize::MAX),
            background,
        )),
        secret,
        snapshot,
        reply_topic: None,
    })
}

/// Accepts a plain path as well as a `sqlite:` URL.
fn sqlite_url(database: &str) -> String {
    if database.starts_with("sqlite:") {
        database.to_owned()
    } else {
        format!("sqlite://{database}")
    }
}

fn is_in_memory(database: &str) -> bool {
    database.contains(":memory:") || database.contains("mode=memory")
}

/// The file path of a SQLite database setting, or `None` for an in-memory database.
fn database_file(database: &str) -> Option<&str> {
    if is_in_memory(database) {
        return None;
    }
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
        .unwrap_or(database);
    Some(path.split('?').next().unwrap_or(path))
}

/// Where the generated secret of a database file is kept: beside it.
fn secret_path(database: &str) -> Option<PathBuf> {
    database_file(database).map(|file| PathBuf::from(format!("{file}.jwt-secret")))
}

/// Embedded mode without JWT_SECRET: a random secret kept beside the database (mode 0600), so
/// sessions survive a restart; for an in-memory database, one for this run only.
fn embedded_secret(database: &str) -> Result<SecretString, StartError> {
    let generate = || {
        let bytes: [u8; 32] = rand::rng().random();
        hex::encode(bytes)
    };
    let Some(path) = secret_path(database) else {
        return Ok(SecretString::from(generate()));
    };
    let io_error = |source| ConfigError::SecretFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing.trim().len() >= crate::config::MIN_JWT_SECRET_BYTES => {
            return Ok(SecretString::from(existing.trim().to_owned()));
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error).into()),
    }
    let secret = generate();
    write_private(&path, secret.as_bytes()).map_err(io_error)?;
    Ok(SecretString::from(secret))
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // `mode` applies only to a file this call creates; tighten an existing one too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)
}

fn print_embedded_banner(config: &Config, address: SocketAddr) {
    let database = config.database_url.expose_secret();
    let data = if is_in_memory(database) {
        "in memory (gone when the process stops)".to_owned()
    } else {
        format!("{database} (SQLite)")
    };
    let mail = if config.smtp_url.is_some() {
        "sent over SMTP_URL"
    } else {
        "printed to this log (look for the code below)"
    };
    let host = if address.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        address.ip().to_string()
    };
    tracing::warn!(
        "\n==================== broker-auth: EMBEDDED MODE ====================\n\
         Not for production: one process, SQLite, codes and sessions in memory.\n\
         Open:  http://{host}:{port}/\n\
         Data:  {data}\n\
         Mail:  {mail}\n\
         Set KAFKA_BROKERS, REDIS_URL and JWT_SECRET to run the distributed service.\n\
         ====================================================================",
        port = address.port(),
    );
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_sqlite_urls() {
        assert_eq!(sqlite_url("broker-auth.db"), "sqlite://broker-auth.db");
        assert_eq!(sqlite_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn the_generated_secret_lives_beside_the_database() {
        assert_eq!(
            secret_path("data/auth.db"),
            Some(PathBuf::from("data/auth.db.jwt-secret"))
        );
        assert_eq!(
            secret_path("sqlite://data/auth.db?mode=rwc"),
            Some(PathBuf::from("data/auth.db.jwt-secret"))
        );
        assert_eq!(secret_path("sqlite::memory:"), None);
    }

    #[test]
    fn a_generated_secret_is_reused_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("ba-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("auth.db");
        let db = db.to_str().unwrap();
        let first = embedded_secret(db).unwrap();
        let second = embedded_secret(db).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert!(first.expose_secret().len() >= 32);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
