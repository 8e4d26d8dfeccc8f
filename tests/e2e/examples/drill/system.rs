//! The distributed system under drill: the real api and dbproc binaries against private
//! Postgres, Redis and tansu instances and an SMTP capture, with a TCP proxy on each link a
//! fault can cut.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_auth_testkit::private::{PrivatePostgres, PrivateRedis, PrivateTansu, TempDir};
use broker_auth_testkit::process::{ManagedProcess, Stop, free_port};
use broker_auth_testkit::smtp::SmtpCapture;
use broker_auth_testkit::tcp_proxy::TcpProxy;
use sqlx::Connection;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key api and dbproc share to seal and open the codes in the mail topic.
const MAIL_SEAL_KEY: &str = "drill-mail-seal-key-drill-mail-seal-key-0";
/// Topic partitions: more than one per dbproc replica, so both always hold some.
const PARTITIONS: u32 = 4;
/// The API's reply deadline; a request the worker tier does not answer in time gets 503.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
const DATABASE: &str = "drill";
const PREFIX: &str = "drill.";

/// Where the project's binaries are, and how dbproc's membership is set up.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub api: PathBuf,
    pub dbproc: PathBuf,
    /// Run dbproc without static membership (to compare).
    pub dynamic_membership: bool,
    /// dbproc's `KAFKA_ASSIGNMENT_STRATEGY`.
    pub assignment_strategy: String,
}

pub struct System {
    pub postgres: PrivatePostgres,
    pub redis: PrivateRedis,
    pub tansu: PrivateTansu,
    /// Every Kafka client (api and dbproc) reaches the broker through this: it is the address
    /// the broker advertises.
    pub kafka_link: TcpProxy,
    /// The API's link to Redis.
    pub redis_link: TcpProxy,
    /// dbproc's link to Postgres.
    pub postgres_link: TcpProxy,
    pub smtp: Arc<SmtpCapture>,
    pub api: ManagedProcess,
    pub api_addr: SocketAddr,
    pub dbprocs: Vec<Dbproc>,
    logs: TempDir,
}

pub struct Dbproc {
    pub process: ManagedProcess,
    pub metrics_addr: SocketAddr,
}

impl Dbproc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr)
    }
}

impl System {
    pub async fn start(binaries: &Binaries, dbproc_replicas: usize) -> Result<Self> {
        let logs = TempDir::new("drill-logs")?;
        let postgres = PrivatePostgres::start().await?;
        create_database(&postgres).await?;
        let redis = PrivateRedis::start().await?;
        let tansu_port = free_port()?;
        let kafka_link = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], tansu_port))).await?;
        let tansu = PrivateTansu::start(tansu_port, kafka_link.addr()).await?;
        let redis_link = TcpProxy::start(redis.addr()).await?;
        let postgres_link = TcpProxy::start(postgres.addr()).await?;
        let smtp = Arc::new(SmtpCapture::start().await?);

        let mut dbprocs = Vec::new();
        for replica in 0..dbproc_replicas {
            let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let instance_id = if binaries.dynamic_membership {
                String::new()
            } else {
                format!("drill-dbproc-{replica}")
            };
            let database_url = format!("postgres://drill@{}/{DATABASE}", postgres_link.addr());
            let process = ManagedProcess::new(
                &format!("dbproc-{replica}"),
                &binaries.dbproc,
                logs.path().join(format!("dbproc-{replica}.log")),
            )
            .env("KAFKA_BROKERS", kafka_link.addr().to_string())
            .env("KAFKA_TOPIC_PREFIX", PREFIX)
            .env("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env("KAFKA_FETCH_WAIT_MS", "10")
            .env("KAFKA_GROUP_INSTANCE_ID", instance_id)
            .env(
                "KAFKA_ASSIGNMENT_STRATEGY",
                binaries.assignment_strategy.clone(),
            )
            .env("DATABASE_URL", database_url)
            .env("SMTP_URL", smtp.url())
            .env("MAIL_FROM", "Broker Auth <no-reply@drill.test>")
            .env("MAIL_SEAL_KEY", MAIL_SEAL_KEY)
            .env("METRICS_LISTEN", metrics_addr.to_string())
            .env("RUST_LOG", child_log_filter());
            dbprocs.push(Dbproc {
                process,
                metrics_addr,
            });
        }
        let api_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let api = ManagedProcess::new("api", &binaries.api, logs.path().join("api.log"))
            .env("API_LISTEN", api_addr.to_string())
            .env("KAFKA_BROKERS", kafka_link.addr().to_string())
            .env("KAFKA_TOPIC_PREFIX", PREFIX)
            .env("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env(
                "KAFKA_REPLY_TIMEOUT_MS",
                REPLY_TIMEOUT.as_millis().to_string(),
            )
            .env("REDIS_URL", format!("redis://{}", redis_link.addr()))
            .env("REDIS_KEY_PREFIX", "drill:")
            .env("JWT_SECRET", "drill-secret-drill-secret-drill-secret-0")
            .env("COOKIE_SECURE", "false")
            .env("BCRYPT_COST", "4")
            .env("RATE_LIMIT_PER_MINUTE", "1000000")
            .env("SIGNUP_RESEND_COOLDOWN_SECS", "0")
            .env("SIGNIN_MAX_FAILURES", "1000")
            .env("VERIFY_MAX_FAILURES", "1000")
            .env("SIGNIN_MAX_FAILURES_PER_ADDRESS", "1000")
            .env("VERIFY_MAX_FAILURES_PER_ADDRESS", "1000")
            // Out of the drill's way, like the failure limits above: it measures faults, not
            // limits (each walk and probe round has its own client address besides).
            .env("SIGNIN_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("VERIFY_RATE_LIMIT_PER_MINUTE", "1000000")
            // A probe round signs 24 users in at once, on top of the load: with the default
            // queue (four per core) the hasher would refuse some of them on a small machine,
            // and a round with a refusal does not count as recovered.
            .env("HASH_QUEUE_LENGTH", "256")
            .env("MAIL_SEAL_KEY", MAIL_SEAL_KEY)
            .env("RUST_LOG", child_log_filter());
        let mut system = Self {
            postgres,
            redis,
            tansu,
            kafka_link,
            redis_link,
            postgres_link,
            smtp,
            api,
            api_addr,
            dbprocs,
            logs,
        };
        for replica in 0..system.dbprocs.len() {
            system.start_dbproc(replica).await?;
        }
        system.api.start_listening(api_addr, START).await?;
        wait_ready(&system.api_url("/readyz"), START).await?;
        Ok(system)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api_addr)
    }

    /// The database the users are in, reached directly (not through dbproc's link).
    pub fn database_url(&self) -> String {
        format!("{}/{DATABASE}", self.postgres.server_url())
    }

    /// Starts dbproc replica `replica` and waits until it is ready.
    pub async fn start_dbproc(&mut self, replica: usize) -> Result<()> {
        let dbproc = &mut self.dbprocs[replica];
        dbproc
            .process
            .start_listening(dbproc.metrics_addr, START)
            .await?;
        wait_ready(&dbproc.url("/readyz"), START).await
    }

    pub async fn stop_dbproc(&mut self, replica: usize, how: Stop) -> Result<()> {
        Ok(self.dbprocs[replica].process.stop(how).await?)
    }

    /// Keeps the log directory (printed) instead of deleting it with the system.
    /// Per process log, its most frequent warnings and errors (ids and numbers masked), so a
    /// failed drill says why even where the kept logs cannot be read (CI).
    pub fn log_summary(&self) -> String {
        let mut summary = String::new();
        let Ok(entries) = std::fs::read_dir(self.logs.path()) else {
            return summary;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut counts: std::collections::HashMap<String, usize> = Default::default();
            for line in text.lines().map(strip_ansi) {
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    // Without the timestamp, and with ids and numbers masked, so repeats group.
                    let message = line.split_once(' ').map_or(line.as_str(), |(_, m)| m);
                    *counts.entry(mask_numbers(message.trim())).or_default() += 1;
                }
            }
            let mut counts: Vec<_> = counts.into_iter().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            for (message, count) in counts.into_iter().take(8) {
                let message: String = message.chars().take(240).collect();
                summary.push_str(&format!("{name}: x{count} {message}\n"));
            }
        }
        summary
    }

    pub fn keep_logs(self) -> PathBuf {
        let path = self.logs.path().to_owned();
        let copy = std::env::temp_dir().join(format!(
            "broker-auth-drill-logs-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let _ = copy_dir(&path, &copy);
        copy
    }
}

/// How long a process may take to start and become ready.
const START: Duration = Duration::from_secs(60);

async fn create_database(postgres: &PrivatePostgres) -> Result<()> {
    let mut admin =
        sqlx::PgConnection::connect(&format!("{}/postgres", postgres.server_url())).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {DATABASE}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}

/// Polls `url` until it answers 200.
pub async fn wait_ready(url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client.get(url).timeout(Duration::from_secs(5)).send().await;
        match answer {
            Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
            answer if Instant::now() > deadline => {
                let detail = match answer {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                return Err(format!("{url} not ready within {timeout:?}: {detail}").into());
            }
            // Polling an HTTP endpoint: a short pause between polls, bounded by the deadline.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The api's and dbproc's log filter: `DRILL_RUST_LOG`, else `info`. With
/// `KAFKA_PROPERTIES=debug=cgrp` (inherited by both) and `DRILL_RUST_LOG=info,librdkafka=debug`,
/// the logs kept after a missed target show librdkafka's consumer-group protocol.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: ESC [ parameters, up to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs of three or more digits or hex characters (ids, ports, durations) become `#`.
fn mask_numbers(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let numeric = run.chars().any(|c| c.is_ascii_digit());
        if run.len() >= 3 && numeric {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn child_log_filter() -> String {
    std::env::var("DRILL_RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}
