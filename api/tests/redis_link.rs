//! The Redis store when the network to Redis fails: while the link is cut every call ends in an
//! error within its timeouts (the API answers 503, never hangs), and once the link is back the
//! store works again without a restart.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_auth_api::store::{EphemeralStore, RedisStore};
use broker_auth_testkit::services;
use broker_auth_testkit::tcp_proxy::TcpProxy;
use tokio::net::lookup_host;

/// Longer than any one store call may take: connection and response timeouts and retries.
const CALL_LIMIT: Duration = Duration::from_secs(8);

async fn redis_addr() -> SocketAddr {
    services::require_redis().await;
    let url = services::redis_url();
    let authority = url.split("://").nth(1).unwrap_or(&url);
    let host_port = authority.split('/').next().unwrap();
    lookup_host(host_port).await.unwrap().next().unwrap()
}

/// One store call, bounded: `None` if it did not end within [`CALL_LIMIT`].
async fn call(store: &RedisStore, n: u32) -> Option<Result<(), String>> {
    tokio::time::timeout(
        CALL_LIMIT,
        store.hit(&format!("link-{n}"), Duration::from_secs(60)),
    )
    .await
    .ok()
    .map(|result| result.map(drop).map_err(|e| e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_the_link_is_cut_and_work_again_once_it_is_back() {
    let mut proxy = TcpProxy::start(redis_addr().await).await.unwrap();
    let store = RedisStore::connect(
        &format!("redis://{}", proxy.addr()),
        &services::unique_prefix("link"),
    )
    .await
    .unwrap();
    assert_eq!(call(&store, 0).await, Some(Ok(())));

    proxy.cut().await;
    for n in 1..=4 {
        let outcome = call(&store, n).await;
        assert!(
            matches!(outcome, Some(Err(_))),
            "call {n} while Redis is cut: {outcome:?} (None: it hung)"
        );
    }

    proxy.restore().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 10;
    loop {
        n += 1;
        match call(&store, n).await {
            Some(Ok(())) => break,
            outcome => assert!(
                Instant::now() < deadline,
                "the store never worked again after the link came back; last call: {outcome:?}"
            ),
        }
        // Polling: a short pause between calls, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
