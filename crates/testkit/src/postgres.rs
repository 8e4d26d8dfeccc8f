//! A fresh Postgres database per test, dropped when the test is done.

use sqlx::{Connection, PgConnection};

use crate::services::{postgres_server_url, require_postgres};

/// A database of its own for one test (`ba_test_<uuid>`), created through the `postgres`
/// maintenance database and dropped (with its connections) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database. Fails the test, naming what to start, when Postgres is down.
    pub async fn create() -> Self {
        require_postgres().await;
        let name = format!("ba_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = maintenance_connection().await;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("could not create test database {name}: {e}"));
        let _ = admin.close().await;
        let url = format!("{}/{name}", postgres_server_url().trim_end_matches('/'));
        Self { name, url }
    }

    /// `postgres://…/ba_test_<uuid>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address, e.g. to put a [`crate::tcp_proxy::TcpProxy`] in front of it.
    pub async fn server_addr(&self) -> std::net::SocketAddr {
        let (_, host_port, _) = split_authority(&self.url);
        tokio::net::lookup_host(host_port)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the postgres server {host_port}"))
    }

    /// This database's URL with the server's `host:port` replaced by `addr`.
    pub fn url_through(&self, addr: std::net::SocketAddr) -> String {
        let (before, _, after) = split_authority(&self.url);
        format!("{before}{addr}{after}")
    }
}

/// `postgres://user@host:port/db` → (`postgres://user@`, `host:port`, `/db`).
fn split_authority(url: &str) -> (&str, &str, &str) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let host_start = url[scheme_end..authority_end]
        .rfind('@')
        .map_or(scheme_end, |i| scheme_end + i + 1);
    (
        &url[..host_start],
        &url[host_start..authority_end],
        &url[authority_end..],
    )
}

async fn maintenance_connection() -> PgConnection {
    let url = format!("{}/postgres", postgres_server_url().trim_end_matches('/'));
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("could not connect to the postgres maintenance database at {url}: {e}")
    })
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop cannot await, and the test's runtime may be shutting down; a thread with a
        // runtime of its own finishes the job either way.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let mut admin = maintenance_connection().await;
                if let Err(e) = sqlx::raw_sql(&statement).execute(&mut admin).await {
                    eprintln!("could not drop test database: {e}");
                }
                let _ = admin.close().await;
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_part_of_a_url_is_found() {
        assert_eq!(
            split_authority("postgres://root@127.0.0.1:5432/ba_test_x"),
            ("postgres://root@", "127.0.0.1:5432", "/ba_test_x")
        );
        assert_eq!(
            split_authority("postgres://localhost:5432"),
            ("postgres://", "localhost:5432", "")
        );
    }
}
