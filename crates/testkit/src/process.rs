//! A program run as a child process that a test can stop with a chosen signal and start again
//! with the same command line: a private service, or one of the project's own binaries.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How a process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    Term,
    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    Kill,
}

/// A child process, with what it takes to start it again.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
}

/// How long a stopped process gets to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(20);

impl ManagedProcess {
    /// A process called `name` (for messages) whose output goes to `log` (appended).
    pub fn new(name: &str, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            log: log.into(),
            child: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running process's id, to read its `/proc` entries.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// Starts the process (again). Its environment is this test's plus the settings given.
    pub fn start(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command.spawn().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "could not start {} ({}): {error}",
                    self.name,
                    self.program.display()
                ),
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process and waits until it accepts connections on `addr`. Fails, with the
    /// tail of its log, when it exits first or does not listen within `timeout`.
    pub async fn start_listening(&mut self, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
        self.start()?;
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before listening on {addr}; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not listen on {addr} within {timeout:?}; its log ends:\n{}",
                        self.name,
                        self.log_tail()
                    ),
                ));
            }
            // Waiting for a port to open: a short pause between attempts, bounded above.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the process and waits until it has exited.
    pub async fn stop(&mut self, how: Stop) -> io::Result<()> {
        self.stop_status(how).await.map(|_| ())
    }

    /// [`ManagedProcess::stop`], returning how the process exited: `None` when it was not
    /// running, or had to be killed after SIGTERM's grace period (or was killed by `Stop::Kill`).
    pub async fn stop_status(&mut self, how: Stop) -> io::Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let (Stop::Term, Some(pid)) = (how, child.id()) {
            signal(pid, "TERM").await?;
            if let Ok(status) = tokio::time::timeout(GRACE, child.wait()).await {
                return status.map(Some);
            }
        }
        child.kill().await.map(|()| None)
    }

    /// The end of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Sends `signal` (a name such as `TERM`) to process `pid`.
pub async fn signal(pid: u32, signal: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -{signal} {pid} failed: {status}"
        )))
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
