//! Short-lived state: signup codes, sessions, cooldowns and rate-limit windows.
//!
//! One trait, two implementations with the same semantics: Redis for deployments, memory for
//! embedded mode. Both run the same test suite (`tests/store_contract.rs`).

use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::User;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What is kept for an issued code: never the code itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Keyed hash of the code.
    pub hash: String,
    /// The id of the user-creation request this code leads to; a retried verify reuses it, so
    /// creating the account stays idempotent.
    pub request_id: Uuid,
    /// Attempts made so far.
    pub attempts: u32,
    /// The verify holding the code while it creates the account (see
    /// [`EphemeralStore::hold_code`]); only the memory store keeps it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<CodeHold>,
}

/// Who holds a code, and until when (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeHold {
    pub holder: String,
    pub until_unix_ms: u64,
}

/// The result of counting one attempt against a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeAttempt {
    /// No code for this address (never sent, expired or consumed).
    Missing,
    /// The attempt was past the limit: the code is burned and refuses every later attempt
    /// until it expires or a new code replaces it.
    Burned,
    /// The attempt was counted; compare against `record.hash`.
    Check {
        record: CodeRecord,
        remaining: Duration,
    },
}

/// A live session, as stored under `session:{jti}`. Sessions stored before the account
/// lifecycle flows have only `user`; the other fields default (a `created_at_ms` of 0 counts
/// as older than any revocation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: User,
    /// When it started (Unix milliseconds, the API's clock).
    #[serde(default)]
    pub created_at_ms: u64,
    /// When it was last used, updated at most once a minute ([`LAST_SEEN_RESOLUTION`]).
    #[serde(default)]
    pub last_seen_at_ms: u64,
    /// The browser's `User-Agent`, shortened, to tell sessions apart in the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client's network, never its address: a /24 for IPv4, a /48 for IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_prefix: Option<String>,
}

/// `last_seen_at_ms` is rewritten only when it is at least this old, so `/me` stays one store
/// round trip in the common case.
pub const LAST_SEEN_RESOLUTION: Duration = Duration::from_secs(60);

/// `sessions-before:{user}`: the user's sessions started before `at_ms` are refused, except
/// `keep` (the session that asked for the revocation). It backs up the session index: a
/// session the index missed (started by an older API version, or whose revocation failed) is
/// refused all the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedBefore {
    pub at_ms: u64,
    pub keep: Option<String>,
}

impl RevokedBefore {
    /// The stored form: `{at_ms}` or `{at_ms}:{keep}`.
    pub fn encode(&self) -> String {
        match &self.keep {
            Some(keep) => format!("{}:{keep}", self.at_ms),
            None => self.at_ms.to_string(),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (at, keep) = match text.split_once(':') {
            Some((at, keep)) => (at, Some(keep.to_owned())),
            None => (text, None),
        };
        Some(Self {
            at_ms: at.parse().ok()?,
            keep,
        })
    }

    /// Whether session `jti`, started at `created_at_ms`, survives this revocation.
    pub fn spares(&self, jti: &str, created_at_ms: u64) -> bool {
        created_at_ms >= self.at_ms || self.keep.as_deref() == Some(jti)
    }
}

/// Whether `session`, stored under `jti`, is a live session of `user_id` given the user's
/// revocation mark.
pub fn is_valid(
    session: &Session,
    jti: &str,
    user_id: Uuid,
    revoked: Option<&RevokedBefore>,
) -> bool {
    session.user.id == user_id && revoked.is_none_or(|r| r.spares(jti, session.created_at_ms))
}

/// Ending many of a user's sessions at once, atomically: a session started concurrently is
/// either ended with the others or started after the revocation.
#[derive(Debug, Clone, Default)]
pub struct Revocation<'a> {
    /// The session that stays (the one asking for `others`).
    pub keep: Option<&'a str>,
    /// Also refuse every session of the user started before this time (Unix ms), except
    /// `keep` and `start`; see [`RevokedBefore`].
    pub revoke_before_ms: Option<u64>,
    /// A session to start in the same step (after a password change): `(jti, session)`.
    pub start: Option<(&'a str, &'a Session)>,
}

/// Which store key a code lives under: sign-up and recovery codes of one address are separate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    Signup,
    Recovery,
}

impl CodePurpose {
    /// The id of the code record of `email` (the `{email}` of `otp:{email}`). An address
    /// cannot contain `:`, so no address is another's recovery key.
    pub fn key(self, email: &str) -> String {
        match self {
            CodePurpose::Signup => email.to_owned(),
            CodePurpose::Recovery => format!("recovery:{email}"),
        }
    }
}

#[async_trait]
pub trait EphemeralStore: Send + Sync + 'static {
    /// Stores a code record under `otp:{email}`, replacing any earlier one.
    async fn put_code(&self, email: &str, record: &CodeRecord, ttl: Duration) -> Result<()>;

    /// Atomically counts an attempt, burning the code once attempts exceed `max_attempts`,
    /// and returns the record to compare against. An attempt within the limit that compared
    /// correctly can still consume the code after later attempts burned it.
    async fn attempt_code(&self, email: &str, max_attempts: u32) -> Result<CodeAttempt>;

    /// Holds the code for `holder` (a verify's digest of its details) while the account is
    /// created, if it still has `hash` and no other holder's hold is younger than `lease`.
    /// The code stays stored until [`EphemeralStore::consume_code`], so a verify that fails
    /// after this, even with the store unreachable, has not used it up. A hold by the same
    /// holder is taken over at once — that is the same verify retried — and its attempt is
    /// given back, since the earlier one was right. Of several concurrent callers with
    /// different holders exactly one gets `true`.
    async fn hold_code(
        &self,
        email: &str,
        hash: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool>;

    /// Ends `holder`'s hold after a failed creation and gives its attempt back, if the code
    /// still has `hash`; `true` when released.
    async fn release_code(&self, email: &str, hash: &str, holder: &str) -> Result<bool>;

    /// Deletes the code if it still has `hash`, once it has served. Exactly one of several
    /// concurrent callers gets `true`.
    async fn consume_code(&self, email: &str, hash: &str) -> Result<bool>;

    /// Starts a cooldown unless one is running; returns the time left of a running one.
    async fn start_cooldown(&self, key: &str, ttl: Duration) -> Result<Option<Duration>>;

    async fn end_cooldown(&self, key: &str) -> Result<()>;

    /// Adds one to a fixed-window counter (the window starts with the first hit) and returns
    /// the count and the time left in the window.
    async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration)>;

    /// A smooth rate limit (GCRA, a token bucket without a timer): one request per `interval`
    /// on average, at most `burst` at once. Returns `None` when the request may go ahead (and
    /// counts it), or how long to wait when it may not (and counts nothing). Unlike a fixed
    /// window it has no edge at which a whole minute's allowance can be spent at once.
    async fn throttle(&self, key: &str, interval: Duration, burst: u32)
    -> Result<Option<Duration>>;

    /// Reads a fixed-window counter without adding to it.
    async fn count(&self, key: &str) -> Result<(u64, Duration)>;

    async fn reset(&self, key: &str) -> Result<()>;

    /// Stores a session and adds it to its user's index, in one step. With `revoke_before_ms`
    /// (the password change the directory reported), the user's revocation mark is raised to
    /// it unless it is already later: the defence in depth against a missed revocation.
    async fn put_session(
        &self,
        jti: &str,
        session: &Session,
        ttl: Duration,
        revoke_before_ms: Option<u64>,
    ) -> Result<()>;

    /// The session under `jti` if it is a live session of `user_id` (see [`is_valid`]): one
    /// round trip.
    async fn session(&self, jti: &str, user_id: Uuid) -> Result<Option<Session>>;

    /// Rewrites a session's `last_seen_at_ms` (keeping its expiry) if it still exists.
    async fn touch_session(&self, jti: &str, session: &Session) -> Result<()>;

    /// Deletes a session and takes it out of the user's index (logout).
    async fn delete_session(&self, user_id: Uuid, jti: &str) -> Result<()>;

    /// Ends session `jti` only if it is in `user_id`'s index; `true` when it ended a live
    /// session. Another user's session id is indistinguishable from one that never existed.
    async fn end_user_session(&self, user_id: Uuid, jti: &str) -> Result<bool>;

    /// The user's live sessions with their ids, in no particular order. Ids of sessions that
    /// expired are dropped from the index on the way.
    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<(String, Session)>>;

    /// Ends the user's sessions as `revocation` says, atomically; returns how many ended.
    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        revocation: Revocation<'_>,
        ttl: Duration,
    ) -> Result<u64>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<()>;
}
