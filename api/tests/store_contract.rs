//! One suite, both stores: the Redis store of deployments and the memory store of embedded mode
//! must behave the same, so embedded mode never hides a bug the real one would show.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::sync::Arc;
use std::time::Duration;

use broker_auth_api::store::{
    CodeAttempt, CodeRecord, EphemeralStore, MemoryStore, RedisStore, Session,
};
use broker_auth_contract::User;
use broker_auth_testkit::services;
use uuid::Uuid;

async fn redis() -> Arc<dyn EphemeralStore> {
    services::require_redis().await;
    let prefix = services::unique_prefix("store");
    Arc::new(
        RedisStore::connect(&services::redis_url(), &prefix)
            .await
            .expect("connect to Redis"),
    )
}

fn memory() -> Arc<dyn EphemeralStore> {
    Arc::new(MemoryStore::new())
}

macro_rules! for_both_stores {
    ($($name:ident),* $(,)?) => {
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::redis().await).await })*
        }
        mod memory_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::memory()).await })*
        }
    };
}

for_both_stores!(
    a_code_is_checked_then_consumed_exactly_once,
    attempts_are_counted_and_the_code_burns_past_the_limit,
    a_new_code_replaces_the_old_one_and_resets_attempts,
    codes_expire,
    concurrent_consumers_of_one_code_have_one_winner,
    concurrent_attempts_are_counted_exactly,
    a_held_code_stays_until_consumed_and_only_its_holder_takes_it_over,
    a_hold_lapses_after_its_lease,
    concurrent_holders_of_one_code_have_one_winner,
    a_release_leaves_a_newer_code_alone,
    a_cooldown_blocks_until_it_ends,
    window_counters_count_and_reset,
    a_throttle_allows_its_burst_then_refuses_with_the_wait,
    a_throttle_lets_the_next_request_through_once_the_interval_passed,
    concurrent_requests_cannot_overrun_a_throttle,
    sessions_live_until_deleted_or_expired,
);

fn record(hash: &str) -> CodeRecord {
    CodeRecord {
        hash: hash.to_owned(),
        request_id: Uuid::new_v4(),
        attempts: 0,
        hold: None,
    }
}

/// How many of the spawned racers got `true`.
async fn wins(racers: impl Iterator<Item = tokio::task::JoinHandle<bool>>) -> usize {
    futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|won| *won.as_ref().unwrap())
        .count()
}

fn email() -> String {
    format!("{}@example.com", Uuid::new_v4())
}

async fn a_code_is_checked_then_consumed_exactly_once(store: Arc<dyn EphemeralStore>) {
    let email = email();
    let code = record("hash-1");
    store
        .put_code(&email, &code, Duration::from_secs(60))
        .await
        .unwrap();
    match store.attempt_code(&email, 5).await.unwrap() {
        CodeAttempt::Check { record, remaining } => {
            assert_eq!(record.hash, "hash-1");
            assert_eq!(record.request_id, code.request_id);
            assert_eq!(record.attempts, 1);
            assert!(remaining > Duration::from_secs(50) && remaining <= Duration::from_secs(60));
        }
        other => panic!("expected a code to check, got {other:?}"),
    }
    assert!(!store.consume_code(&email, "other-hash").await.unwrap());
    assert!(store.consume_code(&email, "hash-1").await.unwrap());
    assert!(!store.consume_code(&email, "hash-1").await.unwrap());
    assert_eq!(
        store.attempt_code(&email, 5).await.unwrap(),
        CodeAttempt::Missing
    );
}

async fn attempts_are_counted_and_the_code_burns_past_the_limit(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    for attempt in 1..=5 {
        match store.attempt_code(&email, 5).await.unwrap() {
            CodeAttempt::Check { record, .. } => assert_eq!(record.attempts, attempt),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(
        store.attempt_code(&email, 5).await.unwrap(),
        CodeAttempt::Burned
    );
    assert_eq!(
        store.attempt_code(&email, 5).await.unwrap(),
        CodeAttempt::Burned,
        "a burned code stays burned"
    );
    // An attempt that was within the limit may still use it.
    assert!(store.consume_code(&email, "h").await.unwrap());
    assert_eq!(
        store.attempt_code(&email, 5).await.unwrap(),
        CodeAttempt::Missing
    );
}

async fn a_new_code_replaces_the_old_one_and_resets_attempts(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("old"), Duration::from_secs(60))
        .await
        .unwrap();
    store.attempt_code(&email, 5).await.unwrap();
    store
        .put_code(&email, &record("new"), Duration::from_secs(60))
        .await
        .unwrap();
    match store.attempt_code(&email, 5).await.unwrap() {
        CodeAttempt::Check { record, .. } => {
            assert_eq!(record.hash, "new");
            assert_eq!(record.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
}

async fn codes_expire(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_millis(50))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if store.attempt_code(&email, 100).await.unwrap() == CodeAttempt::Missing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "code never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn concurrent_consumers_of_one_code_have_one_winner(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    let racers = (0..16).map(|_| {
        let (store, email) = (store.clone(), email.clone());
        tokio::spawn(async move { store.consume_code(&email, "h").await.unwrap() })
    });
    assert_eq!(wins(racers).await, 1);
}

async fn a_cooldown_blocks_until_it_ends(store: Arc<dyn EphemeralStore>) {
    let key = Uuid::new_v4().to_string();
    assert_eq!(
        store
            .start_cooldown(&key, Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    let left = store
        .start_cooldown(&key, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a running cooldown");
    assert!(left > Duration::from_secs(50));
    store.end_cooldown(&key).await.unwrap();
    assert_eq!(
        store
            .start_cooldown(&key, Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
}

async fn window_counters_count_and_reset(store: Arc<dyn EphemeralStore>) {
    let key = Uuid::new_v4().to_string();
    assert_eq!(store.count(&key).await.unwrap().0, 0);
    for expected in 1..=3 {
        let (count, left) = store.hit(&key, Duration::from_secs(900)).await.unwrap();
        assert_eq!(count, expected);
        assert!(left > Duration::from_secs(890));
    }
    assert_eq!(store.count(&key).await.unwrap().0, 3);
    store.reset(&key).await.unwrap();
    assert_eq!(store.count(&key).await.unwrap().0, 0);
}

async fn a_throttle_allows_its_burst_then_refuses_with_the_wait(store: Arc<dyn EphemeralStore>) {
    let key = Uuid::new_v4().to_string();
    let interval = Duration::from_secs(3);
    for _ in 0..5 {
        assert_eq!(store.throttle(&key, interval, 5).await.unwrap(), None);
    }
    let wait = store.throttle(&key, interval, 5).await.unwrap();
    let wait = wait.expect("the sixth request in a row is refused");
    assert!(wait > Duration::ZERO && wait <= interval, "{wait:?}");
    // A refusal is not counted: waiting it out is enough.
    let again = store.throttle(&key, interval, 5).await.unwrap().unwrap();
    assert!(again <= wait, "{again:?} > {wait:?}");
    // Other keys are untouched.
    let other = Uuid::new_v4().to_string();
    assert_eq!(store.throttle(&other, interval, 5).await.unwrap(), None);
}

async fn a_throttle_lets_the_next_request_through_once_the_interval_passed(
    store: Arc<dyn EphemeralStore>,
) {
    let key = Uuid::new_v4().to_string();
    let interval = Duration::from_millis(100);
    assert_eq!(store.throttle(&key, interval, 1).await.unwrap(), None);
    assert!(store.throttle(&key, interval, 1).await.unwrap().is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some(wait) = store.throttle(&key, interval, 1).await.unwrap() {
        assert!(wait <= interval, "{wait:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the throttle never opened"
        );
        tokio::time::sleep(wait).await;
    }
}

async fn concurrent_requests_cannot_overrun_a_throttle(store: Arc<dyn EphemeralStore>) {
    let key = Uuid::new_v4().to_string();
    let attempts = (0..40).map(|_| {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move { store.throttle(&key, Duration::from_secs(60), 7).await })
    });
    let allowed = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|result| matches!(result, Ok(Ok(None))))
        .count();
    assert_eq!(allowed, 7);
}

async fn sessions_live_until_deleted_or_expired(store: Arc<dyn EphemeralStore>) {
    let session = Session {
        user: User {
            id: Uuid::new_v4(),
            email: email(),
            name: "Ada".into(),
        },
    };
    let (kept, deleted, expiring) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    for jti in [&kept, &deleted] {
        store
            .put_session(jti, &session, Duration::from_secs(60))
            .await
            .unwrap();
    }
    store
        .put_session(&expiring, &session, Duration::from_millis(30))
        .await
        .unwrap();
    store.delete_session(&deleted).await.unwrap();
    assert_eq!(store.session(&kept).await.unwrap(), Some(session));
    assert_eq!(store.session(&deleted).await.unwrap(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.session(&expiring).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired"
        );
        tokio::task::yield_now().await;
    }
}

async fn concurrent_attempts_are_counted_exactly(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    let racers = (0..20).map(|_| {
        let (store, email) = (store.clone(), email.clone());
        tokio::spawn(async move { store.attempt_code(&email, 5).await.unwrap() })
    });
    let outcomes: Vec<CodeAttempt> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let checks = outcomes
        .iter()
        .filter(|o| matches!(o, CodeAttempt::Check { .. }))
        .count();
    let burned = outcomes
        .iter()
        .filter(|o| matches!(o, CodeAttempt::Burned))
        .count();
    assert_eq!((checks, burned), (5, 15), "{outcomes:?}");
}

/// The attempt count a fresh attempt sees, minus the one it adds.
async fn attempts_so_far(store: &dyn EphemeralStore, email: &str) -> u32 {
    match store.attempt_code(email, 100).await.unwrap() {
        CodeAttempt::Check { record, .. } => record.attempts - 1,
        other => panic!("expected a code, got {other:?}"),
    }
}

async fn a_held_code_stays_until_consumed_and_only_its_holder_takes_it_over(
    store: Arc<dyn EphemeralStore>,
) {
    let email = email();
    let lease = Duration::from_secs(60);
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(attempts_so_far(&*store, &email).await, 0);
    assert!(!store.hold_code(&email, "other", "a", lease).await.unwrap());
    assert!(store.hold_code(&email, "h", "a", lease).await.unwrap());
    // Held, the code is still there to check; another holder cannot take it.
    assert_eq!(attempts_so_far(&*store, &email).await, 1);
    assert!(!store.hold_code(&email, "h", "b", lease).await.unwrap());
    // The same holder takes it over, and gets the attempt back: the two attempts so far (one
    // per check above) become one.
    assert!(store.hold_code(&email, "h", "a", lease).await.unwrap());
    assert_eq!(attempts_so_far(&*store, &email).await, 1);
    // Only the holder releases it; that gives an attempt back and frees it for anyone.
    assert!(!store.release_code(&email, "h", "b").await.unwrap());
    assert!(store.release_code(&email, "h", "a").await.unwrap());
    assert_eq!(attempts_so_far(&*store, &email).await, 1);
    assert!(store.hold_code(&email, "h", "b", lease).await.unwrap());
    assert!(store.consume_code(&email, "h").await.unwrap());
    assert_eq!(
        store.attempt_code(&email, 5).await.unwrap(),
        CodeAttempt::Missing
    );
    assert!(!store.hold_code(&email, "h", "b", lease).await.unwrap());
}

async fn a_hold_lapses_after_its_lease(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        store
            .hold_code(&email, "h", "a", Duration::from_millis(50))
            .await
            .unwrap()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store
        .hold_code(&email, "h", "b", Duration::from_secs(60))
        .await
        .unwrap()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn concurrent_holders_of_one_code_have_one_winner(store: Arc<dyn EphemeralStore>) {
    let email = email();
    store
        .put_code(&email, &record("h"), Duration::from_secs(60))
        .await
        .unwrap();
    let racers = (0..16).map(|n| {
        let (store, email) = (store.clone(), email.clone());
        tokio::spawn(async move {
            store
                .hold_code(&email, "h", &format!("holder-{n}"), Duration::from_secs(60))
                .await
                .unwrap()
        })
    });
    assert_eq!(wins(racers).await, 1);
}

async fn a_release_leaves_a_newer_code_alone(store: Arc<dyn EphemeralStore>) {
    let email = email();
    let lease = Duration::from_secs(60);
    store
        .put_code(&email, &record("old"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store.hold_code(&email, "old", "a", lease).await.unwrap());
    // A new code replaces the held one, hold and all.
    store
        .put_code(&email, &record("new"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!store.release_code(&email, "old", "a").await.unwrap());
    assert!(store.hold_code(&email, "new", "b", lease).await.unwrap());
    assert!(!store.consume_code(&email, "old").await.unwrap());
    assert!(store.consume_code(&email, "new").await.unwrap());
}
