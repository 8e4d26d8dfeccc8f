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

/// A live session, as stored under `session:{jti}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: User,
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

    async fn put_session(&self, jti: &str, session: &Session, ttl: Duration) -> Result<()>;

    async fn session(&self, jti: &str) -> Result<Option<Session>>;

    async fn delete_session(&self, jti: &str) -> Result<()>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<()>;
}
