//! Where the real services are, and a loud failure when one is not there.

use std::time::Duration;

use tokio::net::TcpStream;

/// Kafka bootstrap servers for tests: `KAFKA_BROKERS`, default the local tansu broker.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Redis for tests: `REDIS_URL`, default the local server.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Postgres server for tests (without a database name): `TEST_POSTGRES_URL`, default local trust auth.
pub fn postgres_server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
}

/// A prefix no other test uses, for topics, consumer groups, Redis keys and database names.
pub fn unique_prefix(test: &str) -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}-{test}.", &short[..12])
}

fn host_port(url_or_addr: &str) -> String {
    let without_scheme = url_or_addr
        .split_once("://")
        .map_or(url_or_addr, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or(without_scheme);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port.split(',').next().unwrap_or(host_port).to_owned()
}

async fn require(what: &str, address: &str, how_to_start: &str) {
    let target = host_port(address);
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&target)).await {
        Ok(Ok(_)) => {}
        _ => panic!(
            "{what} is not reachable at {target}. This test needs the real service: {how_to_start}"
        ),
    }
}

/// Fails the test with instructions when Kafka (tansu) is not listening.
pub async fn require_kafka() {
    require(
        "Kafka",
        &kafka_brokers(),
        "run `scripts/dev-services` (starts the tansu broker on 127.0.0.1:9092) or set KAFKA_BROKERS",
    )
    .await;
}

/// Fails the test with instructions when Redis is not listening.
pub async fn require_redis() {
    require(
        "Redis",
        &redis_url(),
        "run `scripts/dev-services` (starts redis-server on 127.0.0.1:6379) or set REDIS_URL",
    )
    .await;
}

/// Fails the test with instructions when Postgres is not listening.
pub async fn require_postgres() {
    require(
        "PostgreSQL",
        &postgres_server_url(),
        "run `scripts/dev-services` (starts the local PostgreSQL cluster) or set TEST_POSTGRES_URL",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_found_in_urls_and_broker_lists() {
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(
            host_port("postgres://root@127.0.0.1:5432/db"),
            "127.0.0.1:5432"
        );
        assert_eq!(host_port("127.0.0.1:9092,127.0.0.1:9093"), "127.0.0.1:9092");
    }

    #[test]
    fn prefixes_are_unique_and_legal_topic_names() {
        let a = unique_prefix("signup");
        assert_ne!(a, unique_prefix("signup"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        );
    }
}
