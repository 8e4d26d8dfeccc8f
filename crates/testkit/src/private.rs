//! Private instances of the services, for tests and drills that stop and restart them: a
//! PostgreSQL cluster, a redis-server and a tansu broker, each in a temporary directory of its
//! own on a free port. The shared services (5432, 6379, 9092) are never touched.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::process::{ManagedProcess, Stop, free_port};

/// How long a private service may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory removed, with everything in it, when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "broker-auth-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A PostgreSQL cluster of its own (`initdb` + `pg_ctl`), superuser `drill`, trust auth on
/// 127.0.0.1. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: TempDir,
    port: u16,
    run_as: Option<&'static str>,
}

impl PrivatePostgres {
    pub async fn start() -> io::Result<Self> {
        let dir = TempDir::new("postgres")?;
        let run_as = if is_root().await {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().to_string_lossy()])
                .status()
                .await?;
            if !status.success() {
                return Err(io::Error::other(
                    "running as root, PostgreSQL needs the `postgres` user to own its directory \
                     (install the postgresql package, which creates it)",
                ));
            }
            Some("postgres")
        } else {
            None
        };
        let postgres = Self {
            port: free_port()?,
            dir,
            run_as,
        };
        let data = postgres.data_dir();
        postgres
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "drill",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await?;
        postgres.start_server().await?;
        Ok(postgres)
    }

    /// `postgres://drill@127.0.0.1:<port>` (no database).
    pub fn server_url(&self) -> String {
        format!("postgres://drill@127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// Fast shutdown (open connections are dropped, nothing committed is lost).
    pub async fn stop(&self) -> io::Result<()> {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
            .await
    }

    pub async fn start_server(&self) -> io::Result<()> {
        let data = self.data_dir();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-w",
                "start",
            ],
        )
        .await
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    async fn run(&self, program: &str, args: &[&str]) -> io::Result<()> {
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", program]);
                command
            }
            None => Command::new(program),
        };
        let output = command.args(args).output().await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("could not run {program} (is PostgreSQL installed?): {error}"),
            )
        })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--", "pg_ctl"]);
                command
            }
            None => std::process::Command::new("pg_ctl"),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

async fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .await
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// A redis-server of its own that keeps its data across a restart (append-only file, fsync
/// on every write), as a production Redis would. Tests that must change its settings or fill
/// it up use one of these, never the shared Redis.
#[derive(Debug)]
pub struct PrivateRedis {
    _dir: TempDir,
    port: u16,
    process: ManagedProcess,
}

impl PrivateRedis {
    pub async fn start() -> io::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`PrivateRedis::start`], with `extra` settings (e.g. `["--maxmemory", "4mb"]`).
    pub async fn start_with(extra: &[&str]) -> io::Result<Self> {
        let dir = TempDir::new("redis")?;
        let port = free_port()?;
        let process =
            ManagedProcess::new("redis-server", "redis-server", dir.path().join("redis.log"))
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir.path().to_string_lossy(),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ])
                .args(extra.iter().copied());
        let mut redis = Self {
            _dir: dir,
            port,
            process,
        };
        redis.start_server().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub async fn stop(&mut self, how: Stop) -> io::Result<()> {
        self.process.stop(how).await
    }

    pub async fn start_server(&mut self) -> io::Result<()> {
        self.process
            .start_listening(self.addr(), START_TIMEOUT)
            .await
    }
}

/// A tansu broker of its own on tansu's SQLite storage engine, so a restarted broker still has
/// its topics, records and committed offsets (the `memory://` engine loses them). Needs tansu
/// built with the `libsql` feature; `TANSU_BIN` names the binary (default `~/.cargo/bin/tansu`).
#[derive(Debug)]
pub struct PrivateTansu {
    _dir: TempDir,
    port: u16,
    process: ManagedProcess,
}

impl PrivateTansu {
    /// Starts the broker on 127.0.0.1:`port`. Clients are told to reach it at `advertised`
    /// (e.g. a proxy in front of it).
    pub async fn start(port: u16, advertised: SocketAddr) -> io::Result<Self> {
        Self::start_with_storage(port, advertised, "sqlite://tansu.db").await
    }

    /// [`PrivateTansu::start`] on the `memory://` engine: for a test that cuts the link to the
    /// broker but never restarts it, with any tansu build.
    pub async fn start_in_memory(port: u16, advertised: SocketAddr) -> io::Result<Self> {
        Self::start_with_storage(port, advertised, "memory://tansu/").await
    }

    async fn start_with_storage(
        port: u16,
        advertised: SocketAddr,
        storage: &str,
    ) -> io::Result<Self> {
        let dir = TempDir::new("tansu")?;
        let process = ManagedProcess::new("tansu", tansu_bin(), dir.path().join("tansu.log"))
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                // A SQLite file is relative to the working directory: this broker's directory.
                "--storage-engine",
                storage,
            ])
            .current_dir(dir.path());
        let mut tansu = Self {
            _dir: dir,
            port,
            process,
        };
        tansu.start_server().await.map_err(|error| {
            io::Error::other(format!(
                "{error}\n(a private broker on {storage} needs tansu built with that engine: \
                 `cargo install tansu --locked --features dynostore,libsql`, or set TANSU_BIN)"
            ))
        })?;
        Ok(tansu)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub async fn stop(&mut self, how: Stop) -> io::Result<()> {
        self.process.stop(how).await
    }

    pub async fn start_server(&mut self) -> io::Result<()> {
        self.process
            .start_listening(self.addr(), START_TIMEOUT)
            .await
    }
}

fn tansu_bin() -> PathBuf {
    std::env::var_os("TANSU_BIN").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cargo/bin/tansu")
        },
        PathBuf::from,
    )
}
