//! Settings of the API binary. Only this module reads the environment (through clap's `env`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use broker_auth_contract::InstanceId;
use clap::Parser;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// broker-auth HTTP API: signup with an emailed one-time code, verify, signin, me, logout.
///
/// Without KAFKA_BROKERS it runs in embedded mode (SQLite, in-memory store, mail in the log):
/// for trying and developing, not for production.
#[derive(Debug, Clone, Parser)]
#[command(name = "broker-auth-api", version, about, long_about = None)]
pub struct Config {
    /// Address the public HTTP server binds (API, web UI, /healthz, /readyz).
    /// Default 0.0.0.0:8080; 127.0.0.1:8080 in embedded mode, which is for one machine.
    #[arg(long, env = "API_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address of the operational HTTP server: /metrics (and /healthz, /readyz), kept off the
    /// public port. Default 0.0.0.0:9090; 127.0.0.1:9090 in embedded mode.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Kafka bootstrap servers (host:port,...). Unset: embedded mode.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Prefix of every topic name, so several deployments can share one Kafka.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,

    /// Partitions of topics created when missing.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub kafka_topic_partitions: i32,

    /// Replication factor of topics created when missing.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub kafka_replication_factor: i32,

    #[command(flatten)]
    pub kafka_retention: broker_auth_kafka::RetentionArgs,

    #[command(flatten)]
    pub kafka_properties: broker_auth_kafka::PropertiesArgs,

    /// fetch.wait.max.ms of the reply consumer; the request round trip waits on it, keep it small.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub kafka_fetch_wait_ms: u32,

    /// How long to wait for the worker tier's reply before answering 503.
    #[arg(long, env = "KAFKA_REPLY_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub kafka_reply_timeout_ms: u64,

    /// This process's id among the API instances, naming its own reply topic
    /// (`{KAFKA_TOPIC_PREFIX}api-replies.{id}`): 1 to 63 of a-z, 0-9 and '-', unique per running
    /// process. The operator gives each pod its name. Default: the host name and a random suffix.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// How often the reply reader checks its reply topic (created again if deleted, added
    /// partitions followed).
    #[arg(long, env = "KAFKA_METADATA_REFRESH_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub kafka_metadata_refresh_ms: u64,

    /// Redis for codes, sessions and rate limits (redis:// or rediss://). Required with Kafka.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,

    /// Embedded mode only: the SQLite database (a path or sqlite: URL; `sqlite::memory:` keeps nothing).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "broker-auth.db"
    )]
    pub database_url: SecretString,

    /// Embedded mode only: send mail over SMTP (lettre URL) instead of printing it to the log.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<SecretString>,

    /// Embedded mode only: sender of mail sent over SMTP_URL.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "broker-auth <no-reply@localhost>"
    )]
    pub mail_from: String,

    /// Embedded mode only: most mails waiting to be sent. When SMTP is slower than signups
    /// arrive, signup answers 503 with Retry-After instead of queueing more.
    #[arg(long, env = "MAIL_QUEUE_CAPACITY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub mail_queue_capacity: u32,

    /// Embedded mode only: how long request records (handled user creations, sent mail) are
    /// kept in SQLite, in seconds; older ones are pruned. Default: 7 days.
    #[arg(long, env = "RECORD_RETENTION_SECS", default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u64).range(60..))]
    pub record_retention_secs: u64,

    /// HMAC key for session tokens and code hashes, at least 32 bytes. Required with Kafka;
    /// in embedded mode one is generated and kept beside the database.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Key that seals sign-up codes in the mail topic, at least 32 bytes; dbproc needs the same
    /// one to open them. Required with Kafka; unused in embedded mode (mail never leaves the
    /// process).
    #[arg(long, env = "MAIL_SEAL_KEY", hide_env_values = true)]
    pub mail_seal_key: Option<SecretString>,

    /// Mark the session cookie Secure (HTTPS only). Default true; false by default in embedded mode.
    #[arg(long, env = "COOKIE_SECURE")]
    pub cookie_secure: Option<bool>,

    /// bcrypt cost factor for password hashes (4..=31).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Lifetime of a session (token, cookie and Redis entry), in seconds.
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub session_ttl_secs: u64,

    /// Lifetime of a signup code, in seconds.
    #[arg(long, env = "OTP_TTL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(30..=3600))]
    pub otp_ttl_secs: u64,

    /// Wrong guesses allowed per code before it is burned.
    #[arg(long, env = "OTP_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub otp_max_attempts: u32,

    /// Seconds before another code can be sent to the same address.
    #[arg(long, env = "SIGNUP_RESEND_COOLDOWN_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub signup_resend_cooldown_secs: u64,

    /// Failed signins allowed per address from one client IP (IPv6: one /64) within
    /// SIGNIN_FAILURE_WINDOW_SECS. Low, so one source cannot guess much.
    #[arg(long, env = "SIGNIN_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub signin_max_failures: u64,

    /// Failed signins allowed per address from all client IPs together within
    /// SIGNIN_FAILURE_WINDOW_SECS. High (NIST SP 800-63B allows up to 100), so one source cannot
    /// lock the owner out.
    #[arg(long, env = "SIGNIN_MAX_FAILURES_PER_ADDRESS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub signin_max_failures_per_address: u64,

    /// Window of the failed-signin limits, in seconds.
    #[arg(long, env = "SIGNIN_FAILURE_WINDOW_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub signin_failure_window_secs: u64,

    /// Wrong codes allowed per address from one client IP within VERIFY_FAILURE_WINDOW_SECS,
    /// across all its codes, so requesting new codes does not buy unlimited guesses.
    #[arg(long, env = "VERIFY_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub verify_max_failures: u64,

    /// Wrong codes allowed per address from all client IPs together within
    /// VERIFY_FAILURE_WINDOW_SECS.
    #[arg(long, env = "VERIFY_MAX_FAILURES_PER_ADDRESS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub verify_max_failures_per_address: u64,

    /// Window of the wrong-code limits, in seconds.
    #[arg(long, env = "VERIFY_FAILURE_WINDOW_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub verify_failure_window_secs: u64,

    /// Requests per minute allowed per client IP on each auth endpoint (offices share addresses).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate_limit_per_minute: u64,

    /// Signins per minute allowed per client IP (IPv6: per /64), smoothed (bursts of a quarter
    /// of it). Each costs a bcrypt, so this is far below RATE_LIMIT_PER_MINUTE.
    #[arg(long, env = "SIGNIN_RATE_LIMIT_PER_MINUTE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub signin_rate_limit_per_minute: u32,

    /// Verifies per minute allowed per client IP (IPv6: per /64), smoothed like signins.
    #[arg(long, env = "VERIFY_RATE_LIMIT_PER_MINUTE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub verify_rate_limit_per_minute: u32,

    /// Passwords hashed at once, at most. 0: one per CPU the process may use. Bounds the share
    /// of the pod's CPU that bcrypt can take.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub hash_concurrency: u32,

    /// Requests allowed to wait for a hashing slot; past that the API answers 503 with
    /// Retry-After at once instead of queueing. 0: four times HASH_CONCURRENCY.
    #[arg(long, env = "HASH_QUEUE_LENGTH", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub hash_queue_length: u32,

    /// Addresses of the reverse proxies in front of the API, as comma-separated CIDRs or single
    /// addresses (e.g. `10.0.0.0/8,fd00::/8`). X-Forwarded-For is read only when the socket peer
    /// is inside these ranges, and only up to the first entry outside them. Empty: the client
    /// IP is always the socket's.
    #[arg(long, env = "TRUSTED_PROXY_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxy_cidrs: Vec<IpNet>,

    /// Replaced by TRUSTED_PROXY_CIDRS: a hop count trusts X-Forwarded-For from any peer.
    /// Refused at start when set, so an upgrade cannot silently change the client IP.
    #[arg(long, env = "TRUSTED_PROXY_HOPS", hide = true)]
    pub trusted_proxy_hops: Option<String>,
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.7`, taken as /32 or /128).
fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{value:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET is required when KAFKA_BROKERS is set")]
    MissingJwtSecret,
    #[error("JWT_SECRET must be at least 32 bytes (it has {0})")]
    ShortJwtSecret(usize),
    #[error("MAIL_SEAL_KEY is required when KAFKA_BROKERS is set (the same value dbproc has)")]
    MissingMailSealKey,
    #[error("MAIL_SEAL_KEY must be at least 32 bytes (it has {0})")]
    ShortMailSealKey(usize),
    #[error("REDIS_URL is required when KAFKA_BROKERS is set")]
    MissingRedisUrl,
    #[error("REDIS_URL must start with redis://, rediss:// or unix://")]
    InvalidRedisUrl,
    #[error("KAFKA_BROKERS is empty")]
    EmptyBrokers,
    #[error("{0}")]
    KafkaProperties(String),
    #[error(
        "REDIS_URL is set but KAFKA_BROKERS is not: refusing to start in embedded mode by accident (set KAFKA_BROKERS, or unset REDIS_URL to try embedded mode)"
    )]
    EmbeddedWithRedis,
    #[error("INSTANCE_ID: {0}")]
    InstanceId(broker_auth_contract::ContractError),
    #[error("KAFKA_TOPIC_PREFIX: {0}")]
    TopicPrefix(#[from] broker_auth_contract::ContractError),
    #[error(
        "TRUSTED_PROXY_HOPS is no longer read: list your proxies' addresses in TRUSTED_PROXY_CIDRS instead (X-Forwarded-For is then read only from them)"
    )]
    ProxyHopsReplaced,
    #[error("could not read or create the embedded-mode JWT secret at {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The minimum HMAC key length (RFC 7518 §3.2 asks for a key as long as the hash output).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl Config {
    pub fn is_embedded(&self) -> bool {
        self.kafka_brokers.is_none()
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            if self.is_embedded() {
                SocketAddr::from(([127, 0, 0, 1], 8080))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 8080))
            }
        })
    }

    pub fn metrics_listen(&self) -> SocketAddr {
        self.metrics_listen.unwrap_or_else(|| {
            if self.is_embedded() {
                SocketAddr::from(([127, 0, 0, 1], 9090))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 9090))
            }
        })
    }

    pub fn cookie_secure(&self) -> bool {
        self.cookie_secure.unwrap_or(!self.is_embedded())
    }

    pub fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_reply_timeout_ms)
    }

    /// This process's instance id: `INSTANCE_ID`, or the host name with a random suffix.
    pub fn instance_id(&self) -> Result<InstanceId, ConfigError> {
        match &self.instance_id {
            Some(id) => InstanceId::parse(id).map_err(ConfigError::InstanceId),
            None => {
                let host = std::env::var("HOSTNAME").unwrap_or_default();
                let suffix = format!("{:08x}", rand::random::<u32>());
                InstanceId::sanitized(&host, &suffix).map_err(ConfigError::InstanceId)
            }
        }
    }

    /// Checks what clap cannot: cross-setting requirements and secret lengths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        broker_auth_contract::Topics::new(self.kafka_topic_prefix.clone())?;
        self.instance_id()?;
        self.kafka_properties
            .pairs()
            .map_err(ConfigError::KafkaProperties)?;
        if self.trusted_proxy_hops.is_some() {
            return Err(ConfigError::ProxyHopsReplaced);
        }
        if let Some(secret) = &self.jwt_secret {
            let len = secret.expose_secret().len();
            if len < MIN_JWT_SECRET_BYTES {
                return Err(ConfigError::ShortJwtSecret(len));
            }
        }
        if let Some(key) = &self.mail_seal_key {
            let len = key.expose_secret().len();
            if len < broker_auth_contract::MIN_SEAL_SECRET_BYTES {
                return Err(ConfigError::ShortMailSealKey(len));
            }
        }
        if self.kafka_brokers.is_none() && self.redis_url.is_some() {
            return Err(ConfigError::EmbeddedWithRedis);
        }
        if let Some(brokers) = &self.kafka_brokers {
            if brokers.trim().is_empty() {
                return Err(ConfigError::EmptyBrokers);
            }
            if self.jwt_secret.is_none() {
                return Err(ConfigError::MissingJwtSecret);
            }
            if self.mail_seal_key.is_none() {
                return Err(ConfigError::MissingMailSealKey);
            }
            match &self.redis_url {
                None => return Err(ConfigError::MissingRedisUrl),
                Some(url) => {
                    let url = url.expose_secret();
                    if !["redis://", "rediss://", "unix://"]
                        .iter()
                        .any(|scheme| url.starts_with(scheme))
                    {
                        return Err(ConfigError::InvalidRedisUrl);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distributed(extra: &[&str]) -> Config {
        let mut args = vec![
            "broker-auth-api",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn distributed_mode_requires_a_jwt_secret() {
        assert!(matches!(
            distributed(&[]).validate(),
            Err(ConfigError::MissingJwtSecret)
        ));
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let config = distributed(&["--jwt-secret", "too-short"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ShortJwtSecret(9))
        ));
    }

    #[test]
    fn distributed_mode_requires_a_long_enough_mail_seal_key() {
        let config = distributed(&["--jwt-secret", &"k".repeat(32)]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MissingMailSealKey)
        ));
        let config = distributed(&[
            "--jwt-secret",
            &"k".repeat(32),
            "--mail-seal-key",
            &"m".repeat(31),
        ]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ShortMailSealKey(31))
        ));
    }

    #[test]
    fn a_full_distributed_config_is_accepted_with_secure_cookies() {
        let config = distributed(&[
            "--jwt-secret",
            &"k".repeat(32),
            "--mail-seal-key",
            &"m".repeat(32),
        ]);
        config.validate().unwrap();
        assert!(config.cookie_secure());
        assert!(!config.is_embedded());
    }

    #[test]
    fn embedded_mode_defaults_to_insecure_cookies_only_there() {
        let config = Config::parse_from(["broker-auth-api", "--database-url", "sqlite::memory:"]);
        assert!(config.is_embedded());
        assert!(!config.cookie_secure());
        config.validate().unwrap();
    }

    #[test]
    fn a_redis_url_without_kafka_is_refused_rather_than_running_embedded() {
        let config =
            Config::try_parse_from(["broker-auth-api", "--redis-url", "redis://r:6379"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::EmbeddedWithRedis)
        ));
    }

    #[test]
    fn bcrypt_cost_out_of_range_is_a_parse_error() {
        assert!(Config::try_parse_from(["broker-auth-api", "--bcrypt-cost", "3"]).is_err());
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_single_addresses() {
        let config = Config::try_parse_from([
            "broker-auth-api",
            "--trusted-proxy-cidrs",
            "10.0.0.0/8, 192.168.1.7,fd00::/8",
        ])
        .unwrap();
        let nets: Vec<String> = config
            .trusted_proxy_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert!(
            Config::try_parse_from(["broker-auth-api", "--trusted-proxy-cidrs", "10.0.0.0/33"])
                .is_err()
        );
        assert!(
            Config::parse_from(["broker-auth-api"])
                .trusted_proxy_cidrs
                .is_empty()
        );
    }

    #[test]
    fn the_old_hop_count_is_refused_with_a_pointer_to_its_replacement() {
        let config = Config::parse_from(["broker-auth-api", "--trusted-proxy-hops", "1"]);
        let error = config.validate().unwrap_err();
        assert!(matches!(error, ConfigError::ProxyHopsReplaced));
        assert!(error.to_string().contains("TRUSTED_PROXY_CIDRS"));
    }

    #[test]
    fn a_bad_redis_scheme_is_refused() {
        let mut config = distributed(&[
            "--jwt-secret",
            &"k".repeat(32),
            "--mail-seal-key",
            &"m".repeat(32),
        ]);
        config.redis_url = Some("http://x".into());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InvalidRedisUrl)
        ));
    }
}
