//! A TCP proxy in front of a real service that a test can cut and restore, to see what a
//! client does while the service is unreachable (connections refused, open ones dropped).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut proxy = Self {
            addr: listener.local_addr()?,
            target,
            running: None,
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drops every forwarded connection, as if the service went away.
    pub async fn cut(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Accepts and forwards again, on the same port.
    pub async fn restore(&mut self) -> io::Result<()> {
        if self.running.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.serve(listener);
        }
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(forward(listener, self.target, stop.clone()));
        self.running = Some((stop, task));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, target: SocketAddr, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                if let Ok((mut client, _)) = accepted {
                    connections.spawn(async move {
                        let mut upstream = TcpStream::connect(target).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    });
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn echoes(addr: SocketAddr) -> bool {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return false;
        };
        let mut buffer = [0u8; 4];
        stream.write_all(b"ping").await.is_ok()
            && stream.read_exact(&mut buffer).await.is_ok()
            && &buffer == b"ping"
    }

    #[tokio::test]
    async fn a_cut_proxy_refuses_and_drops_connections_until_restored() {
        let mut proxy = TcpProxy::start(echo_server().await).await.unwrap();
        assert!(echoes(proxy.addr()).await);

        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.cut().await;
        let mut rest = Vec::new();
        assert_eq!(open.read_to_end(&mut rest).await.unwrap_or(0), 0);
        assert!(!echoes(proxy.addr()).await);

        proxy.restore().await.unwrap();
        assert!(echoes(proxy.addr()).await);
    }
}
