use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use super::{
    CodeAttempt, CodeHold, CodeRecord, EphemeralStore, Result, Revocation, RevokedBefore, Session,
    is_valid,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Value {
    Code(CodeRecord),
    Session(Session),
    Flag,
    Counter(u64),
    /// A user's session ids (`sessions:{user}`).
    Index(BTreeSet<String>),
    /// A user's revocation mark (`sessions-before:{user}`).
    Revoked(RevokedBefore),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires: Instant,
}

/// The embedded-mode store: a map behind one mutex, entries expiring like Redis keys.
/// Every operation holds the lock for its whole read-modify-write, which makes attempt
/// counting and consumption atomic exactly as the Redis scripts are.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<String, Entry>,
    writes_since_sweep: usize,
}

impl Map {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    /// The live code record under `key` if it still has `hash` (the one a caller compared).
    fn code(&mut self, key: &str, hash: &str, now: Instant) -> Option<&mut CodeRecord> {
        match self.live(key, now) {
            Some(Entry {
                value: Value::Code(record),
                ..
            }) if record.hash == hash => Some(record),
            _ => None,
        }
    }

    fn insert(&mut self, key: String, value: Value, ttl: Duration, now: Instant) {
        self.writes_since_sweep += 1;
        // Expired entries nobody reads again are dropped in passing, so memory stays bounded.
        if self.writes_since_sweep >= 1024 {
            self.entries.retain(|_, e| e.expires > now);
            self.writes_since_sweep = 0;
        }
        self.entries.insert(
            key,
            Entry {
                value,
                expires: now + ttl,
            },
        );
    }
}

fn key(kind: &str, id: &str) -> String {
    format!("{kind}:{id}")
}

impl Map {
    fn session(&mut self, jti: &str, now: Instant) -> Option<Session> {
        match self.live(&key("session", jti), now) {
            Some(Entry {
                value: Value::Session(session),
                ..
            }) => Some(session.clone()),
            _ => None,
        }
    }

    fn revoked(&mut self, user: &str, now: Instant) -> Option<RevokedBefore> {
        match self.live(&key("sessions-before", user), now) {
            Some(Entry {
                value: Value::Revoked(revoked),
                ..
            }) => Some(revoked.clone()),
            _ => None,
        }
    }

    /// Adds `jti` to the user's index (created if missing), which then lives at least `ttl`.
    fn add_to_index(&mut self, user: &str, jti: &str, ttl: Duration, now: Instant) {
        let index_key = key("sessions", user);
        let taken = self.live(&index_key, now).map(|entry| {
            (
                std::mem::replace(&mut entry.value, Value::Flag),
                entry.expires,
            )
        });
        let (mut ids, expires) = match taken {
            Some((Value::Index(ids), expires)) => (ids, expires.max(now + ttl)),
            _ => (BTreeSet::new(), now + ttl),
        };
        ids.insert(jti.to_owned());
        self.entries.insert(
            index_key,
            Entry {
                value: Value::Index(ids),
                expires,
            },
        );
    }

    fn index_ids(&mut self, user: &str, now: Instant) -> Vec<String> {
        match self.live(&key("sessions", user), now) {
            Some(Entry {
                value: Value::Index(ids),
                ..
            }) => ids.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn unindex(&mut self, user: &str, jti: &str) -> bool {
        match self.entries.get_mut(&key("sessions", user)) {
            Some(Entry {
                value: Value::Index(ids),
                ..
            }) => ids.remove(jti),
            _ => false,
        }
    }

    /// Raises the user's revocation mark to `mark` unless a later one stands.
    fn raise_mark(
        &mut self,
        user: &str,
        mark: RevokedBefore,
        strictly: bool,
        ttl: Duration,
        now: Instant,
    ) {
        let current = self.revoked(user, now).map_or(0, |r| r.at_ms);
        if mark.at_ms > current || (!strictly && mark.at_ms == current) {
            self.insert(key("sessions-before", user), Value::Revoked(mark), ttl, now);
        }
    }
}

/// One entry of a snapshot file: the value and when it expires (Unix milliseconds), so time
/// spent stopped counts against it.
#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: String,
    value: Value,
    expires_at_unix_ms: u64,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a snapshot written by [`MemoryStore::save`], so sessions (and pending codes) survive
    /// a restart of embedded mode. A missing file is an empty store; an unreadable one is
    /// reported and ignored, since everything in it is short-lived.
    pub fn load(path: &Path) -> Self {
        let store = Self::new();
        let entries: Vec<SnapshotEntry> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable session snapshot");
                Vec::new()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable session snapshot");
                Vec::new()
            }
        };
        let wall_now = unix_ms(SystemTime::now());
        store.with(|map, now| {
            for entry in entries {
                if entry.expires_at_unix_ms > wall_now {
                    let ttl = Duration::from_millis(entry.expires_at_unix_ms - wall_now);
                    map.insert(entry.key, entry.value, ttl, now);
                }
            }
        });
        store
    }

    /// Writes the live entries with the time each has left (file mode 0600: it holds sessions).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let wall_now = SystemTime::now();
        let entries: Vec<SnapshotEntry> = self.with(|map, now| {
            map.entries
                .iter()
                .filter(|(_, entry)| entry.expires > now)
                .map(|(key, entry)| SnapshotEntry {
                    key: key.clone(),
                    value: entry.value.clone(),
                    expires_at_unix_ms: unix_ms(
                        wall_now + entry.expires.saturating_duration_since(now),
                    ),
                })
                .collect()
        });
        let json = serde_json::to_vec(&entries).map_err(std::io::Error::other)?;
        crate::app::write_private(path, &json)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Map, Instant) -> T) -> T {
        // A panic while holding the lock cannot leave a half-written entry: every write is one insert.
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut map, Instant::now())
    }
}

#[async_trait]
impl EphemeralStore for MemoryStore {
    async fn put_code(&self, email: &str, record: &CodeRecord, ttl: Duration) -> Result<()> {
        self.with(|map, now| map.insert(key("otp", email), Value::Code(record.clone()), ttl, now));
        Ok(())
    }

    async fn attempt_code(&self, email: &str, max_attempts: u32) -> Result<CodeAttempt> {
        let key = key("otp", email);
        Ok(self.with(|map, now| {
            let Some(entry) = map.live(&key, now) else {
                return CodeAttempt::Missing;
            };
            let expires = entry.expires;
            let Value::Code(record) = &mut entry.value else {
                return CodeAttempt::Missing;
            };
            record.attempts = record.attempts.saturating_add(1);
            // Burned, but kept until it expires, exactly like the Redis script.
            if record.attempts > max_attempts {
                return CodeAttempt::Burned;
            }
            CodeAttempt::Check {
                record: record.clone(),
                remaining: expires.saturating_duration_since(now),
            }
        }))
    }

    async fn hold_code(
        &self,
        email: &str,
        hash: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        let key = key("otp", email);
        let now_unix_ms = unix_ms(SystemTime::now());
        Ok(self.with(|map, now| {
            let Some(record) = map.code(&key, hash, now) else {
                return false;
            };
            match &record.hold {
                Some(hold) if hold.holder == holder => {
                    record.attempts = record.attempts.saturating_sub(1);
                }
                Some(hold) if hold.until_unix_ms > now_unix_ms => return false,
                _ => {}
            }
            record.hold = Some(CodeHold {
                holder: holder.to_owned(),
                until_unix_ms: now_unix_ms
                    .saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)),
            });
            true
        }))
    }

    async fn release_code(&self, email: &str, hash: &str, holder: &str) -> Result<bool> {
        let key = key("otp", email);
        Ok(self.with(|map, now| {
            let Some(record) = map.code(&key, hash, now) else {
                return false;
            };
            if record.hold.as_ref().is_none_or(|h| h.holder != holder) {
                return false;
            }
            record.hold = None;
            record.attempts = record.attempts.saturating_sub(1);
            true
        }))
    }

    async fn consume_code(&self, email: &str, hash: &str) -> Result<bool> {
        let key = key("otp", email);
        Ok(self.with(|map, now| {
            let matches = map.code(&key, hash, now).is_some();
            if matches {
                map.entries.remove(&key);
            }
            matches
        }))
    }

    async fn start_cooldown(&self, id: &str, ttl: Duration) -> Result<Option<Duration>> {
        let key = key("cooldown", id);
        Ok(self.with(|map, now| {
            if let Some(entry) = map.live(&key, now) {
                return Some(entry.expires.saturating_duration_since(now));
            }
            map.insert(key, Value::Flag, ttl, now);
            None
        }))
    }

    async fn end_cooldown(&self, id: &str) -> Result<()> {
        self.with(|map, _| map.entries.remove(&key("cooldown", id)));
        Ok(())
    }

    async fn hit(&self, id: &str, window: Duration) -> Result<(u64, Duration)> {
        let key = key("rate", id);
        Ok(self.with(|map, now| {
            if let Some(Entry {
                value: Value::Counter(n),
                expires,
            }) = map.live(&key, now)
            {
                *n += 1;
                return (*n, expires.saturating_duration_since(now));
            }
            map.insert(key, Value::Counter(1), window, now);
            (1, window)
        }))
    }

    async fn throttle(&self, id: &str, interval: Duration, burst: u32) -> Result<Option<Duration>> {
        // The entry's expiry is the theoretical arrival time, exactly as the key's TTL in Redis.
        let key = key("throttle", id);
        let interval = Duration::from_millis(
            u64::try_from(interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        Ok(self.with(|map, now| {
            let ahead = map.live(&key, now).map_or(Duration::ZERO, |entry| {
                entry.expires.saturating_duration_since(now)
            });
            let next = ahead.saturating_add(interval);
            let limit = interval.saturating_mul(burst.max(1));
            if next > limit {
                return Some(next - limit);
            }
            map.insert(key, Value::Flag, next, now);
            None
        }))
    }

    async fn count(&self, id: &str) -> Result<(u64, Duration)> {
        let key = key("rate", id);
        Ok(self.with(|map, now| match map.live(&key, now) {
            Some(Entry {
                value: Value::Counter(n),
                expires,
            }) => (*n, expires.saturating_duration_since(now)),
            _ => (0, Duration::ZERO),
        }))
    }

    async fn reset(&self, id: &str) -> Result<()> {
        self.with(|map, _| map.entries.remove(&key("rate", id)));
        Ok(())
    }

    async fn put_session(
        &self,
        jti: &str,
        session: &Session,
        ttl: Duration,
        revoke_before_ms: Option<u64>,
    ) -> Result<()> {
        let user = session.user.id.to_string();
        self.with(|map, now| {
            map.insert(
                key("session", jti),
                Value::Session(session.clone()),
                ttl,
                now,
            );
            map.add_to_index(&user, jti, ttl, now);
            if let Some(at_ms) = revoke_before_ms {
                let mark = RevokedBefore { at_ms, keep: None };
                map.raise_mark(&user, mark, true, ttl, now);
            }
        });
        Ok(())
    }

    async fn session(&self, jti: &str, user_id: Uuid) -> Result<Option<Session>> {
        Ok(self.with(|map, now| {
            let session = map.session(jti, now)?;
            let revoked = map.revoked(&user_id.to_string(), now);
            is_valid(&session, jti, user_id, revoked.as_ref()).then_some(session)
        }))
    }

    async fn touch_session(&self, jti: &str, session: &Session) -> Result<()> {
        self.with(|map, now| {
            if let Some(entry) = map.live(&key("session", jti), now) {
                entry.value = Value::Session(session.clone());
            }
        });
        Ok(())
    }

    async fn delete_session(&self, user_id: Uuid, jti: &str) -> Result<()> {
        self.with(|map, _| {
            map.entries.remove(&key("session", jti));
            map.unindex(&user_id.to_string(), jti);
        });
        Ok(())
    }

    async fn end_user_session(&self, user_id: Uuid, jti: &str) -> Result<bool> {
        Ok(self.with(|map, now| {
            if !map.unindex(&user_id.to_string(), jti) {
                return false;
            }
            map.live(&key("session", jti), now).is_some()
                && map.entries.remove(&key("session", jti)).is_some()
        }))
    }

    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<(String, Session)>> {
        let user = user_id.to_string();
        Ok(self.with(|map, now| {
            let revoked = map.revoked(&user, now);
            let mut live = Vec::new();
            for jti in map.index_ids(&user, now) {
                match map.session(&jti, now) {
                    Some(session) => {
                        if is_valid(&session, &jti, user_id, revoked.as_ref()) {
                            live.push((jti, session));
                        }
                    }
                    None => {
                        map.unindex(&user, &jti);
                    }
                }
            }
            live
        }))
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        revocation: Revocation<'_>,
        ttl: Duration,
    ) -> Result<u64> {
        let user = user_id.to_string();
        Ok(self.with(|map, now| {
            let mut ended = 0;
            for jti in map.index_ids(&user, now) {
                if revocation.keep == Some(jti.as_str()) {
                    continue;
                }
                map.unindex(&user, &jti);
                if map.live(&key("session", &jti), now).is_some() {
                    map.entries.remove(&key("session", &jti));
                    ended += 1;
                }
            }
            if let Some(at_ms) = revocation.revoke_before_ms {
                let mark = RevokedBefore {
                    at_ms,
                    keep: revocation.keep.map(str::to_owned),
                };
                map.raise_mark(&user, mark, false, ttl, now);
            }
            if let Some((jti, session)) = revocation.start {
                map.insert(
                    key("session", jti),
                    Value::Session(session.clone()),
                    ttl,
                    now,
                );
                map.add_to_index(&user, jti, ttl, now);
            }
            ended
        }))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
