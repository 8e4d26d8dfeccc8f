//! A private Kafka broker (tansu, in memory) whose advertised address is a counting proxy: every
//! request a client sends, the bootstrap ones and those to the broker it learns from metadata,
//! passes the proxy and is counted by API key. For benchmarks that report request counts.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Counts = Arc<Mutex<BTreeMap<i16, u64>>>;

pub struct CountedKafka {
    broker: Child,
    proxy: SocketAddr,
    counts: Counts,
    accept: tokio::task::JoinHandle<()>,
}

/// The name of a Kafka API key, for the ones a client of this project sends.
pub fn api_name(key: i16) -> String {
    match key {
        0 => "Produce",
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        8 => "OffsetCommit",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        11 => "JoinGroup",
        12 => "Heartbeat",
        13 => "LeaveGroup",
        14 => "SyncGroup",
        15 => "DescribeGroups",
        16 => "ListGroups",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        19 => "CreateTopics",
        20 => "DeleteTopics",
        22 => "InitProducerId",
        32 => "DescribeConfigs",
        42 => "DeleteGroups",
        60 => "DescribeCluster",
        71 => "GetTelemetrySubscriptions",
        _ => return format!("ApiKey{key}"),
    }
    .to_owned()
}

fn tansu_binary() -> PathBuf {
    std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
        })
}

impl CountedKafka {
    /// Starts tansu on a free port, advertising the proxy's address. Fails with what to install
    /// when tansu is missing.
    pub async fn start() -> io::Result<Self> {
        let binary = tansu_binary();
        if !binary.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no tansu at {}: cargo install tansu --locked --features dynostore,libsql (or set TANSU_BIN)",
                    binary.display()
                ),
            ));
        }
        let broker_port = crate::process::free_port()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = listener.local_addr()?;
        let broker = Command::new(binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{broker_port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{proxy}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let upstream: SocketAddr = ([127, 0, 0, 1], broker_port).into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(upstream).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tansu did not start listening",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let counts = Counts::default();
        let accept = tokio::spawn(accept(listener, upstream, counts.clone()));
        Ok(Self {
            broker,
            proxy,
            counts,
            accept,
        })
    }

    /// Bootstrap servers for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.proxy.to_string()
    }

    /// Requests seen since the last reset, by API name.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(key, n)| (api_name(*key), *n)).collect()
    }

    pub fn reset(&self) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for CountedKafka {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, counts: Counts) {
    while let Ok((client, _)) = listener.accept().await {
        let counts = counts.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let replies = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let _ = count_requests(&mut client_read, &mut server_write, &counts).await;
            replies.abort();
        });
    }
}

/// Forwards Kafka request frames (`i32` length, then `i16` API key, …), counting each.
async fn count_requests(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    counts: &Counts,
) -> io::Result<()> {
    loop {
        let mut length = [0u8; 4];
        from.read_exact(&mut length).await?;
        let size = usize::try_from(i32::from_be_bytes(length).max(0)).unwrap_or(0);
        let mut frame = vec![0u8; size];
        from.read_exact(&mut frame).await?;
        if frame.len() >= 2 {
            let key = i16::from_be_bytes([frame[0], frame[1]]);
            *counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default() += 1;
        }
        to.write_all(&length).await?;
        to.write_all(&frame).await?;
    }
}
