//! One suite, both stores: the Redis store of deployments and the memory store of embedded mode
//! must behave the same, so embedded mode never hides a bug the real one would show.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::sync::Arc;
use std::time::Duration;

use broker_auth_api::store::{
    CodeAttempt, CodeRecord, EphemeralStore, MemoryStore, RedisStore, Revocation, Session,
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
    a_user_lists_and_ends_only_their_own_live_sessions,
    revoking_ends_all_but_the_kept_session_and_refuses_older_unindexed_ones,
    a_signin_raises_the_revocation_mark_but_never_lowers_it,
    a_revocation_can_start_the_next_session_in_the_same_step,
    sessions_started_during_a_global_revocation_do_not_outlive_it,
    touching_a_revoked_session_does_not_bring_it_back,
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

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn session_of(user: &User, created_at_ms: u64) -> Session {
    Session {
        user: user.clone(),
        created_at_ms,
        last_seen_at_ms: created_at_ms,
        user_agent: Some("test agent".into()),
        ip_prefix: Some("192.0.2.0/24".into()),
    }
}

fn user() -> User {
    User {
        id: Uuid::new_v4(),
        email: email(),
        name: "Ada".into(),
    }
}

fn jti() -> String {
    Uuid::new_v4().to_string()
}

const TTL: Duration = Duration::from_secs(60);

/// The ids of the user's live sessions, sorted.
async fn listed(store: &Arc<dyn EphemeralStore>, user: &User) -> Vec<String> {
    let mut ids: Vec<String> = store
        .user_sessions(user.id)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

async fn sessions_live_until_deleted_or_expired(store: Arc<dyn EphemeralStore>) {
    let user = user();
    let session = session_of(&user, now_ms());
    let (kept, deleted, expiring) = (jti(), jti(), jti());
    for jti in [&kept, &deleted] {
        store.put_session(jti, &session, TTL, None).await.unwrap();
    }
    store
        .put_session(&expiring, &session, Duration::from_millis(30), None)
        .await
        .unwrap();
    store.delete_session(user.id, &deleted).await.unwrap();
    assert_eq!(
        store.session(&kept, user.id).await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(store.session(&deleted, user.id).await.unwrap(), None);
    // A session is only ever another user's by mistake: it is not found under them.
    assert_eq!(store.session(&kept, Uuid::new_v4()).await.unwrap(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.session(&expiring, user.id).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(listed(&store, &user).await, vec![kept]);
}

async fn a_user_lists_and_ends_only_their_own_live_sessions(store: Arc<dyn EphemeralStore>) {
    let (ada, eve) = (user(), user());
    let ada_sessions = [jti(), jti(), jti()];
    for jti in &ada_sessions {
        store
            .put_session(jti, &session_of(&ada, now_ms()), TTL, None)
            .await
            .unwrap();
    }
    let eve_session = jti();
    store
        .put_session(&eve_session, &session_of(&eve, now_ms()), TTL, None)
        .await
        .unwrap();
    assert_eq!(listed(&store, &ada).await, sorted(ada_sessions.to_vec()));
    assert_eq!(listed(&store, &eve).await, vec![eve_session.clone()]);

    // Eve's id under Ada's name ends nothing, and looks like an id that never existed.
    assert!(!store.end_user_session(ada.id, &eve_session).await.unwrap());
    assert!(!store.end_user_session(ada.id, &jti()).await.unwrap());
    assert!(store.session(&eve_session, eve.id).await.unwrap().is_some());

    assert!(
        store
            .end_user_session(ada.id, &ada_sessions[0])
            .await
            .unwrap()
    );
    assert!(
        !store
            .end_user_session(ada.id, &ada_sessions[0])
            .await
            .unwrap()
    );
    assert_eq!(store.session(&ada_sessions[0], ada.id).await.unwrap(), None);
    assert_eq!(
        listed(&store, &ada).await,
        sorted(ada_sessions[1..].to_vec())
    );
}

async fn revoking_ends_all_but_the_kept_session_and_refuses_older_unindexed_ones(
    store: Arc<dyn EphemeralStore>,
) {
    let ada = user();
    let started = now_ms();
    let sessions = [jti(), jti(), jti()];
    for jti in &sessions {
        store
            .put_session(jti, &session_of(&ada, started), TTL, None)
            .await
            .unwrap();
    }
    let others = Revocation {
        keep: Some(&sessions[0]),
        revoke_before_ms: None,
        start: None,
    };
    assert_eq!(store.revoke_sessions(ada.id, others, TTL).await.unwrap(), 2);
    assert_eq!(listed(&store, &ada).await, vec![sessions[0].clone()]);
    assert!(store.session(&sessions[1], ada.id).await.unwrap().is_none());

    // Global, with a mark: the index empties, and a session the index never had (an older API
    // version's, or one whose indexing was lost) is refused if it started before the mark.
    let mark = now_ms() + 1;
    let global = Revocation {
        keep: None,
        revoke_before_ms: Some(mark),
        start: None,
    };
    assert_eq!(store.revoke_sessions(ada.id, global, TTL).await.unwrap(), 1);
    assert!(listed(&store, &ada).await.is_empty());
    let stale = jti();
    store
        .put_session(&stale, &session_of(&ada, mark - 1), TTL, None)
        .await
        .unwrap();
    assert_eq!(store.session(&stale, ada.id).await.unwrap(), None);
    assert!(listed(&store, &ada).await.is_empty());
    let fresh = jti();
    store
        .put_session(&fresh, &session_of(&ada, mark), TTL, None)
        .await
        .unwrap();
    assert!(store.session(&fresh, ada.id).await.unwrap().is_some());
    assert_eq!(listed(&store, &ada).await, vec![fresh]);
}

async fn a_signin_raises_the_revocation_mark_but_never_lowers_it(store: Arc<dyn EphemeralStore>) {
    let ada = user();
    let changed_at = now_ms() - 10_000;
    let (kept, older) = (jti(), jti());
    store
        .put_session(&kept, &session_of(&ada, changed_at - 5_000), TTL, None)
        .await
        .unwrap();
    store
        .put_session(&older, &session_of(&ada, changed_at - 5_000), TTL, None)
        .await
        .unwrap();
    // A password change kept `kept` (the session that made it) and revoked the rest.
    let change = Revocation {
        keep: Some(&kept),
        revoke_before_ms: Some(changed_at),
        start: None,
    };
    store.revoke_sessions(ada.id, change, TTL).await.unwrap();
    assert!(store.session(&kept, ada.id).await.unwrap().is_some());

    // A signin reporting the same change leaves the mark, and the kept session, alone.
    let signin = jti();
    store
        .put_session(&signin, &session_of(&ada, now_ms()), TTL, Some(changed_at))
        .await
        .unwrap();
    assert!(store.session(&kept, ada.id).await.unwrap().is_some());
    // One reporting an older change does not lower it.
    let late = jti();
    store
        .put_session(
            &late,
            &session_of(&ada, changed_at - 1_000),
            TTL,
            Some(changed_at - 2_000),
        )
        .await
        .unwrap();
    assert_eq!(store.session(&late, ada.id).await.unwrap(), None);
    // One reporting a later change (whose revocation was missed) refuses everything before it.
    store
        .put_session(
            &jti(),
            &session_of(&ada, now_ms()),
            TTL,
            Some(changed_at + 1_000),
        )
        .await
        .unwrap();
    assert_eq!(store.session(&kept, ada.id).await.unwrap(), None);
    assert!(store.session(&signin, ada.id).await.unwrap().is_some());
}

async fn a_revocation_can_start_the_next_session_in_the_same_step(store: Arc<dyn EphemeralStore>) {
    let ada = user();
    let old = jti();
    store
        .put_session(&old, &session_of(&ada, now_ms()), TTL, None)
        .await
        .unwrap();
    // The directory's clock may run ahead of this one: the new session is kept by id.
    let changed_at = now_ms() + 60_000;
    let next = jti();
    let next_session = session_of(&ada, now_ms());
    let recovery = Revocation {
        keep: Some(&next),
        revoke_before_ms: Some(changed_at),
        start: Some((&next, &next_session)),
    };
    assert_eq!(
        store.revoke_sessions(ada.id, recovery, TTL).await.unwrap(),
        1
    );
    assert_eq!(store.session(&old, ada.id).await.unwrap(), None);
    assert_eq!(
        store.session(&next, ada.id).await.unwrap(),
        Some(next_session)
    );
    assert_eq!(listed(&store, &ada).await, vec![next]);
}

async fn sessions_started_during_a_global_revocation_do_not_outlive_it(
    store: Arc<dyn EphemeralStore>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};

    let ada = user();
    let revoking = Arc::new(AtomicBool::new(false));
    let starts: Vec<_> = (0..200)
        .map(|i| {
            let (store, ada, revoking) = (store.clone(), ada.clone(), revoking.clone());
            tokio::spawn(async move {
                for _ in 0..i % 7 {
                    tokio::task::yield_now().await;
                }
                let id = jti();
                store
                    .put_session(&id, &session_of(&ada, now_ms()), TTL, None)
                    .await
                    .unwrap();
                // Finished before the revocation began: it must not survive it.
                (id, !revoking.load(Ordering::SeqCst))
            })
        })
        .collect();
    // Revoke while the starts are still landing.
    tokio::task::yield_now().await;
    revoking.store(true, Ordering::SeqCst);
    let global = Revocation {
        keep: None,
        revoke_before_ms: Some(now_ms()),
        start: None,
    };
    store.revoke_sessions(ada.id, global, TTL).await.unwrap();
    let results: Vec<(String, bool)> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut live = Vec::new();
    for (id, finished_before) in &results {
        if store.session(id, ada.id).await.unwrap().is_some() {
            assert!(!finished_before, "session {id} outlived the revocation");
            live.push(id.clone());
        }
    }
    // The index and the sessions agree on what is left.
    assert_eq!(listed(&store, &ada).await, sorted(live));
}

async fn touching_a_revoked_session_does_not_bring_it_back(store: Arc<dyn EphemeralStore>) {
    let ada = user();
    let id = jti();
    let mut session = session_of(&ada, now_ms());
    store.put_session(&id, &session, TTL, None).await.unwrap();
    session.last_seen_at_ms += 90_000;
    store.touch_session(&id, &session).await.unwrap();
    assert_eq!(
        store
            .session(&id, ada.id)
            .await
            .unwrap()
            .map(|s| s.last_seen_at_ms),
        Some(session.last_seen_at_ms)
    );
    store.delete_session(ada.id, &id).await.unwrap();
    store.touch_session(&id, &session).await.unwrap();
    assert_eq!(store.session(&id, ada.id).await.unwrap(), None);
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
