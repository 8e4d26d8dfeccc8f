//! Settings, from flags with environment fallbacks. The only place that reads the environment.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use broker_auth_contract::{MailSealKey, Topics};
use broker_auth_kafka::KafkaSettings;
use broker_auth_mail::Mailbox;
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

/// broker-auth's worker tier: answers user-directory requests from Kafka against Postgres and
/// sends the mail the API queues.
#[derive(Debug, Parser)]
#[command(
    name = "broker-auth-dbproc",
    version,
    after_help = "Without a subcommand, `serve` runs. `broker-auth-dbproc migrate` applies the \
                  database migrations and exits (it needs only DATABASE_URL)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and moved into the app: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations, then consume requests and mail until stopped (default).
    Serve(Config),
    /// Apply the database migrations and exit.
    Migrate(MigrateConfig),
}

impl Cli {
    /// Parses the process arguments (`serve` implied when no subcommand is named). On a missing
    /// or invalid setting, prints one line saying which and why and exits with status 2;
    /// `--help` and `--version` print and exit 0.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse_from(with_default_command(std::env::args_os())) {
            Ok(cli) => cli,
            Err(error) if !error.use_stderr() => error.exit(),
            Err(error) => {
                eprintln!("broker-auth-dbproc: {}", one_line(&error));
                std::process::exit(2);
            }
        }
    }
}

/// clap's message without the usage block, on one line.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim_start().starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    message.join(" ").trim_start_matches("error: ").to_owned()
}

fn with_default_command(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let names_command = args
        .get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|arg| matches!(arg, "serve" | "migrate" | "help" | "--version" | "-V"));
    if !names_command {
        args.insert(1.min(args.len()), OsString::from("serve"));
    }
    args
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,

    /// Prefix of every topic and consumer-group name, so several deployments can share one
    /// Kafka cluster (ASCII letters, digits, `.`, `_`, `-`). Empty: the seed's bare names.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "", value_parser = parse_topics)]
    pub kafka_topic_prefix: Topics,

    /// Partitions of the topics created at start when missing; the most dbproc replicas that
    /// can share the work.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_topic_partitions: i32,

    /// Replication factor of the topics created at start when missing.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_replication_factor: i32,

    #[command(flatten)]
    pub kafka_retention: broker_auth_kafka::RetentionArgs,

    #[command(flatten)]
    pub kafka_properties: broker_auth_kafka::PropertiesArgs,

    /// Longest a fetch waits at the broker for new records, in milliseconds
    /// (`fetch.wait.max.ms`). On tansu, which answers a fetch only when this wait is over, every
    /// request waits on it: keep it small (10). Apache Kafka answers as soon as a record arrives,
    /// so there a long wait (500) costs no latency and saves idle fetches. See docs/capacity.md.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub kafka_fetch_wait_ms: u32,

    /// This replica's static consumer-group membership (`group.instance.id`), unique per
    /// replica: restarted with the same id, a replica takes its partitions back without a
    /// rebalance. Unset: the pod name (POD_NAME, then HOSTNAME). Empty: dynamic membership.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub kafka_group_instance_id: Option<String>,

    /// How both consumer groups assign partitions (`partition.assignment.strategy`).
    /// `cooperative-sticky` moves only the partitions that change owner; `range` and
    /// `roundrobin` stop the whole group at every rebalance. tansu (0.6) does not start a new
    /// generation when a static member's subscription changes, which stalls cooperative
    /// rebalances: there, use `range` with static membership.
    #[arg(long, env = "KAFKA_ASSIGNMENT_STRATEGY", default_value = "cooperative-sticky",
          value_parser = ["cooperative-sticky", "range", "roundrobin"])]
    pub kafka_assignment_strategy: String,

    /// Postgres URL of the user directory, e.g. `postgres://user:pass@host/db` (secret).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: SecretString,

    /// Most connections in the Postgres pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// SMTP server as a lettre URL: `smtp://host:25`, `smtp://host:587?tls=required`,
    /// `smtps://user:pass@host` (secret).
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = parse_secret)]
    pub smtp_url: SecretString,

    /// Key that opens the sign-up codes the API seals into the mail topic: the API's
    /// `MAIL_SEAL_KEY`, at least 32 bytes (secret).
    #[arg(long, env = "MAIL_SEAL_KEY", hide_env_values = true, value_parser = parse_seal_key)]
    pub mail_seal_key: SecretString,

    /// Sender of every mail, e.g. `Broker Auth <no-reply@example.com>`.
    #[arg(long, env = "MAIL_FROM", value_parser = parse_mailbox)]
    pub mail_from: Mailbox,

    /// SMTP attempts per mail before it is dead-lettered (transient failures are retried with
    /// exponential backoff; permanent ones are dead-lettered at once).
    #[arg(long, env = "MAIL_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub mail_max_attempts: u32,

    /// Delay before the second SMTP attempt, in milliseconds; doubled per attempt.
    #[arg(long, env = "MAIL_RETRY_INITIAL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub mail_retry_initial_ms: u64,

    /// Longest delay between SMTP attempts, in milliseconds.
    #[arg(long, env = "MAIL_RETRY_MAX_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub mail_retry_max_ms: u64,

    /// How long the records that make redelivery harmless (handled user-creation requests,
    /// sent mail) are kept, in seconds; older ones are pruned. Must exceed how long a request
    /// can wait in Kafka. Default: 7 days.
    #[arg(long, env = "RECORD_RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub record_retention_secs: u64,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoints (port 0 picks a free one).
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
}

/// What `migrate` needs.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// Postgres URL of the user directory (secret).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: SecretString,
}

impl Config {
    pub fn topics(&self) -> &Topics {
        &self.kafka_topic_prefix
    }

    pub fn kafka_settings(&self) -> KafkaSettings {
        let mut settings = KafkaSettings::new(self.kafka_brokers.clone());
        settings.fetch_wait_max_ms = self.kafka_fetch_wait_ms;
        settings.topic_partitions = self.kafka_topic_partitions;
        settings.replication_factor = self.kafka_replication_factor;
        settings.retention = self.kafka_retention.retention();
        // Checked by `validate` at start.
        settings.extra = self.kafka_properties.pairs().unwrap_or_default();
        settings
    }

    /// The `group.instance.id` of both consumers (they are in different groups), if any: the
    /// setting, else the pod name from `POD_NAME` or `HOSTNAME`; an empty setting turns static
    /// membership off.
    pub fn group_instance_id(&self) -> Option<String> {
        resolve_instance_id(self.kafka_group_instance_id.as_deref(), |name| {
            std::env::var(name).ok()
        })
    }

    /// The longest one mail can be held: every attempt timing out plus every backoff between
    /// attempts.
    pub fn mail_worst_case_hold(&self) -> Duration {
        let retry = self.mail_retry();
        let waits: Duration = (1..self.mail_max_attempts).map(|a| retry.delay(a)).sum();
        waits + broker_auth_mail::SMTP_TIMEOUT * self.mail_max_attempts
    }

    /// Checks what single settings cannot: a mail held longer than Kafka lets a consumer go
    /// without polling would cost the mail consumer its partitions and get the mail sent twice.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka_properties.pairs()?;
        if let Some(id) = self.group_instance_id() {
            check_instance_id(&id)?;
        }
        let hold = self.mail_worst_case_hold();
        let limit = Duration::from_millis(crate::consumer::MAX_POLL_INTERVAL_MS);
        if hold >= limit {
            return Err(format!(
                "MAIL_MAX_ATTEMPTS, MAIL_RETRY_INITIAL_MS and MAIL_RETRY_MAX_MS let one mail be \
                 retried for up to {} s (attempts x {} s SMTP timeout + backoff), at least the {} s \
                 a Kafka consumer may go without polling; lower the attempts or the delays",
                hold.as_secs(),
                broker_auth_mail::SMTP_TIMEOUT.as_secs(),
                limit.as_secs()
            ));
        }
        Ok(())
    }

    /// The key that opens the mail topic's codes (the secret's length was checked at parsing).
    pub fn mail_seal_key(&self) -> Result<MailSealKey, String> {
        use secrecy::ExposeSecret;
        MailSealKey::from_secret(self.mail_seal_key.expose_secret().as_bytes())
            .map_err(|e| format!("MAIL_SEAL_KEY: {e}"))
    }

    pub fn record_retention(&self) -> Duration {
        Duration::from_secs(self.record_retention_secs)
    }

    pub fn mail_retry(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::new(
            Duration::from_millis(self.mail_retry_initial_ms),
            Duration::from_millis(self.mail_retry_max_ms.max(self.mail_retry_initial_ms)),
        )
    }
}

fn resolve_instance_id(
    setting: Option<&str>,
    environment: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    match setting.map(str::trim) {
        Some("") => None,
        Some(id) => Some(id.to_owned()),
        None => ["POD_NAME", "HOSTNAME"]
            .into_iter()
            .filter_map(environment)
            .map(|name| name.trim().to_owned())
            .find(|name| !name.is_empty()),
    }
}

/// Kafka takes what it takes for topic names: ASCII letters, digits, `.`, `_`, `-`, at most 249.
fn check_instance_id(id: &str) -> Result<(), String> {
    let legal = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !legal || id.len() > 249 {
        return Err(format!(
            "KAFKA_GROUP_INSTANCE_ID (or the POD_NAME/HOSTNAME it defaults to) {id:?} is not a valid \
             group.instance.id: use at most 249 ASCII letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

fn parse_topics(prefix: &str) -> Result<Topics, String> {
    Topics::new(prefix).map_err(|e| e.to_string())
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(value))
}

fn parse_seal_key(value: &str) -> Result<SecretString, String> {
    MailSealKey::from_secret(value.as_bytes()).map_err(|e| e.to_string())?;
    Ok(SecretString::from(value))
}

fn parse_mailbox(value: &str) -> Result<Mailbox, String> {
    value
        .parse::<Mailbox>()
        .map_err(|e| format!("not a mailbox like `Name <user@example.com>`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use secrecy::ExposeSecret;

    const SEAL_KEY: &str = "--mail-seal-key=seal-seal-seal-seal-seal-seal-seal-seal";

    const REQUIRED: [&str; 10] = [
        "broker-auth-dbproc",
        "--kafka-brokers=127.0.0.1:9092",
        "--database-url=postgres://u:p@h/db",
        "--smtp-url=smtp://127.0.0.1:2525",
        "--mail-from=Broker Auth <no-reply@example.com>",
        "--kafka-topic-prefix=prod.auth.",
        "--metrics-listen=127.0.0.1:0",
        "--mail-max-attempts=3",
        "--kafka-fetch-wait-ms=10",
        SEAL_KEY,
    ];

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(with_default_command(args.iter().map(OsString::from)))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_command() {
        let cli = parse(&REQUIRED).unwrap();
        let Command::Serve(config) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(
            config.topics().dbproc_group(),
            "prod.auth.broker-auth-dbproc"
        );
        assert_eq!(config.mail_from.email.to_string(), "no-reply@example.com");
        assert_eq!(config.database_url.expose_secret(), "postgres://u:p@h/db");
        assert_eq!(config.kafka_topic_partitions, 3);
        assert_eq!(config.kafka_settings().fetch_wait_max_ms, 10);
    }

    #[test]
    fn migrate_needs_only_the_database() {
        let cli = parse(&[
            "broker-auth-dbproc",
            "migrate",
            "--database-url=postgres://h/db",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Migrate(_)));
    }

    #[test]
    fn a_missing_or_invalid_setting_is_named() {
        let error = parse(&REQUIRED[..3]).unwrap_err().to_string();
        assert!(error.contains("--smtp-url"), "{error}");

        let mut args = REQUIRED.to_vec();
        args[4] = "--mail-from=not a mailbox";
        let error = parse(&args).unwrap_err().to_string();
        assert!(error.contains("--mail-from"), "{error}");

        let mut args = REQUIRED.to_vec();
        args[5] = "--kafka-topic-prefix=has space";
        let error = parse(&args).unwrap_err().to_string();
        assert!(error.contains("--kafka-topic-prefix"), "{error}");
    }

    #[test]
    fn errors_fit_on_one_line() {
        let error = parse(&REQUIRED[..2]).unwrap_err();
        let line = one_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("the following required arguments"),
            "{line}"
        );
        assert!(line.contains("--database-url"), "{line}");
    }

    #[test]
    fn the_default_mail_retry_schedule_fits_between_polls() {
        let args = [&REQUIRED[..5], &[SEAL_KEY]].concat();
        let Command::Serve(config) = parse(&args).unwrap().command else {
            panic!("expected serve");
        };
        assert_eq!(config.mail_max_attempts, 8);
        assert_eq!(config.validate(), Ok(()));
        assert!(config.mail_worst_case_hold() < Duration::from_secs(150));
    }

    #[test]
    fn a_mail_retry_schedule_longer_than_the_poll_interval_is_refused() {
        let mut args = REQUIRED.to_vec();
        args[7] = "--mail-max-attempts=20";
        let Command::Serve(config) = parse(&args).unwrap().command else {
            panic!("expected serve");
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("MAIL_MAX_ATTEMPTS"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn the_instance_id_comes_from_the_setting_then_the_pod_name() {
        let pod = |name: &str| match name {
            "POD_NAME" => Some("dbproc-7d9f-abcde".to_owned()),
            "HOSTNAME" => Some("host".to_owned()),
            _ => None,
        };
        assert_eq!(
            resolve_instance_id(Some("dbproc-0"), pod).as_deref(),
            Some("dbproc-0")
        );
        assert_eq!(
            resolve_instance_id(None, pod).as_deref(),
            Some("dbproc-7d9f-abcde")
        );
        let host_only = |name: &str| (name == "HOSTNAME").then(|| "host".to_owned());
        assert_eq!(
            resolve_instance_id(None, host_only).as_deref(),
            Some("host")
        );
        assert_eq!(resolve_instance_id(Some(""), pod), None);
        assert_eq!(resolve_instance_id(None, |_| None), None);
    }

    #[test]
    fn an_illegal_instance_id_is_refused_at_start() {
        let mut args = REQUIRED.to_vec();
        args.push("--kafka-group-instance-id=has space");
        let Command::Serve(config) = parse(&args).unwrap().command else {
            panic!("expected serve");
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("KAFKA_GROUP_INSTANCE_ID"), "{error}");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let Command::Serve(config) = parse(&REQUIRED).unwrap().command else {
            panic!("expected serve");
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("u:p@h"), "{debug}");
        assert!(!debug.contains("seal-seal"), "{debug}");
    }

    #[test]
    fn a_short_mail_seal_key_is_refused_by_name() {
        let mut args = REQUIRED.to_vec();
        args[9] = "--mail-seal-key=short";
        let error = parse(&args).unwrap_err().to_string();
        assert!(error.contains("--mail-seal-key"), "{error}");
        assert!(error.contains("at least 32 bytes"), "{error}");
    }

    #[test]
    fn help_documents_every_setting() {
        let mut command = Cli::command();
        let serve = command.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        for env in [
            "KAFKA_BROKERS",
            "KAFKA_TOPIC_PREFIX",
            "KAFKA_TOPIC_PARTITIONS",
            "KAFKA_REPLICATION_FACTOR",
            "KAFKA_FETCH_WAIT_MS",
            "KAFKA_GROUP_INSTANCE_ID",
            "KAFKA_ASSIGNMENT_STRATEGY",
            "DATABASE_URL",
            "DATABASE_MAX_CONNECTIONS",
            "SMTP_URL",
            "MAIL_FROM",
            "MAIL_SEAL_KEY",
            "MAIL_MAX_ATTEMPTS",
            "RECORD_RETENTION_SECS",
            "METRICS_LISTEN",
        ] {
            assert!(help.contains(env), "{env} missing from --help");
        }
    }
}
