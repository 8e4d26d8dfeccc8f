//! The system under measurement: the real `broker-auth-api` (one or several) and
//! `broker-auth-dbproc` binaries, release builds, against the shared Postgres, Redis and tansu,
//! with a topic prefix, Redis key prefix and database of their own, and an SMTP capture.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use broker_auth_e2e::{Mode, Options, TestEnv, set_arg};
use broker_auth_testkit::process::{ManagedProcess, Stop, free_port};

use crate::Result;

/// How long a process gets to start listening and become ready.
const STARTUP: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub bcrypt_cost: u32,
    pub apis: usize,
    /// `KAFKA_FETCH_WAIT_MS` of the API's reply consumer and of dbproc.
    pub api_fetch_wait_ms: u32,
    pub dbproc_fetch_wait_ms: u32,
    pub partitions: u32,
}

/// One running binary.
pub struct Proc {
    pub process: ManagedProcess,
    /// The API's public address, or dbproc's metrics address.
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }
}

pub struct Deployment {
    pub env: TestEnv,
    pub apis: Vec<Proc>,
    pub dbproc: Option<Proc>,
}

/// A built binary of this workspace: next to the bench's own executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built; scripts/bench builds it (cargo build --release -p broker-auth-api -p broker-auth-dbproc)",
            path.display()
        )
        .into())
    }
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "broker-auth-bench-{}-{name}.log",
        std::process::id()
    ))
}

impl Deployment {
    pub async fn start(settings: &Settings) -> Result<Self> {
        let options = Options {
            bcrypt_cost: settings.bcrypt_cost,
            rate_limit_per_minute: 1_000_000,
            signin_rate_limit_per_minute: 1_000_000,
            verify_rate_limit_per_minute: 1_000_000,
            // The API's default: embedded mode sheds signups (503) when SMTP falls behind.
            mail_queue_capacity: 1_000,
            ..Options::default()
        };
        let env = TestEnv::services_only(settings.mode, options).await;
        let mut deployment = Self {
            env,
            apis: Vec::new(),
            dbproc: None,
        };
        if settings.mode == Mode::Distributed {
            deployment.dbproc = Some(deployment.start_dbproc(settings, "dbproc").await?);
        }
        for i in 0..settings.apis {
            let api = deployment.start_api(settings, i).await?;
            deployment.apis.push(api);
        }
        Ok(deployment)
    }

    pub async fn start_dbproc(&self, settings: &Settings, name: &str) -> Result<Proc> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args = self.env.dbproc_args();
        args.remove(0);
        set_arg(&mut args, "--metrics-listen", &metrics.to_string());
        set_arg(
            &mut args,
            "--kafka-fetch-wait-ms",
            &settings.dbproc_fetch_wait_ms.to_string(),
        );
        set_arg(
            &mut args,
            "--kafka-topic-partitions",
            &settings.partitions.to_string(),
        );
        let mut process = ManagedProcess::new(name, binary("broker-auth-dbproc")?, log_path(name))
            .args(args)
            .env("RUST_LOG", "warn");
        process.start_listening(metrics, STARTUP).await?;
        let dbproc = Proc {
            process,
            addr: metrics,
            metrics,
        };
        wait_ready(&format!("http://{metrics}/readyz"), &dbproc).await?;
        Ok(dbproc)
    }

    async fn start_api(&self, settings: &Settings, index: usize) -> Result<Proc> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args = self.env.api_args();
        args.remove(0);
        set_arg(&mut args, "--listen", &addr.to_string());
        set_arg(&mut args, "--metrics-listen", &metrics.to_string());
        if settings.mode == Mode::Distributed {
            set_arg(
                &mut args,
                "--kafka-fetch-wait-ms",
                &settings.api_fetch_wait_ms.to_string(),
            );
            set_arg(
                &mut args,
                "--kafka-topic-partitions",
                &settings.partitions.to_string(),
            );
            // The production reply deadline, not the tests' short one.
            set_arg(&mut args, "--kafka-reply-timeout-ms", "5000");
        }
        let name = format!("api-{index}");
        let mut process = ManagedProcess::new(&name, binary("broker-auth-api")?, log_path(&name))
            .args(args)
            .env("RUST_LOG", "warn");
        process.start_listening(addr, STARTUP).await?;
        let api = Proc {
            process,
            addr,
            metrics,
        };
        wait_ready(&format!("http://{addr}/readyz"), &api).await?;
        Ok(api)
    }

    pub fn api(&self) -> &Proc {
        &self.apis[0]
    }

    /// CPU seconds all API processes have used so far.
    pub fn apis_cpu_seconds(&self) -> f64 {
        self.apis
            .iter()
            .filter_map(usage_of)
            .map(|u| u.cpu_seconds)
            .sum()
    }

    pub async fn stop(mut self) {
        for api in &mut self.apis {
            let _ = api.process.stop(Stop::Term).await;
        }
        if let Some(dbproc) = &mut self.dbproc {
            let _ = dbproc.process.stop(Stop::Term).await;
        }
    }
}

async fn wait_ready(url: &str, process: &Proc) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + STARTUP;
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{} did not become ready at {url}; its log ends:\n{}",
                process.process.name(),
                process.process.log_tail()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's resource use, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident set (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident set now (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// CPU time used so far (user + system), seconds.
    pub cpu_seconds: f64,
}

/// `pid`'s resource use; `self` for the bench process.
pub fn usage(pid: &str) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|line| line.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let cpu_ticks = ticks(11)? + ticks(12)?;
    Some(Usage {
        peak_rss_mib: kib("VmHWM:")? / 1024.0,
        rss_mib: kib("VmRSS:")? / 1024.0,
        cpu_seconds: cpu_ticks / clock_ticks_per_second(),
    })
}

pub fn usage_of(process: &Proc) -> Option<Usage> {
    usage(&process.pid()?.to_string())
}

/// The cores a process used between two readings `wall` seconds apart.
pub fn cores_between(before: Option<Usage>, after: Option<Usage>, wall: f64) -> Option<f64> {
    Some((after?.cpu_seconds - before?.cpu_seconds) / wall)
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds used so far by the shared services (redis-server, postgres, tansu), all
/// processes of each.
pub fn services_cpu_seconds() -> f64 {
    ["redis-server", "postgres", "tansu"]
        .iter()
        .flat_map(|name| {
            std::process::Command::new("pgrep")
                .args(["-x", name])
                .output()
                .ok()
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|pid| usage(&pid))
        .map(|u| u.cpu_seconds)
        .sum()
}
