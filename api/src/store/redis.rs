use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use uuid::Uuid;

use super::{
    CodeAttempt, CodeRecord, EphemeralStore, Result, Revocation, RevokedBefore, Session,
    StoreError, is_valid,
};

/// Counts the attempt before anything is compared. Past the limit the code is burned: every
/// later attempt is refused until it expires or a new code replaces it. The key is not deleted,
/// so an earlier attempt that was within the limit and correct can still consume it.
const ATTEMPT_CODE: &str = r"
local h = redis.call('HGET', KEYS[1], 'h')
if not h then return {0} end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n > tonumber(ARGV[1]) then return {1} end
return {2, h, redis.call('HGET', KEYS[1], 'rid'), n, redis.call('PTTL', KEYS[1])}
";

/// Deletes the code only if it is still the one that was compared: one winner among racers.
const CONSUME_CODE: &str = r"
if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Holds the code for a holder (ARGV[2]) for a lease (ARGV[3] ms) if it still has the compared
/// hash (ARGV[1]) and no other holder's lease is live; the same holder takes its hold over and
/// gets the attempt back. The time is the server's, so API replicas' clocks do not matter.
const HOLD_CODE: &str = r"
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local by = redis.call('HGET', KEYS[1], 'by')
if by == ARGV[2] then
  if tonumber(redis.call('HGET', KEYS[1], 'n')) > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end
elseif by and tonumber(redis.call('HGET', KEYS[1], 'till')) > now then
  return 0
end
redis.call('HSET', KEYS[1], 'by', ARGV[2], 'till', now + tonumber(ARGV[3]))
return 1
";

/// Ends a holder's hold and gives its attempt back, if the code is still the one it held.
const RELEASE_CODE: &str = r"
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'by') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'by', 'till')
if tonumber(redis.call('HGET', KEYS[1], 'n')) > 0 then redis.call('HINCRBY', KEYS[1], 'n', -1) end
return 1
";

const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
";

/// GCRA with the key's remaining lifetime as the "theoretical arrival time" minus now: each
/// allowed request pushes it `interval` further; past `interval * burst` ahead, refuse.
const THROTTLE: &str = r"
local ahead = redis.call('PTTL', KEYS[1])
if ahead < 0 then ahead = 0 end
local next = ahead + tonumber(ARGV[1])
local limit = tonumber(ARGV[1]) * tonumber(ARGV[2])
if next > limit then return next - limit end
redis.call('SET', KEYS[1], 1, 'PX', next)
return 0
";

/// Stores a session and indexes it under its user (KEYS: session, index, revocation mark;
/// ARGV: json, ttl ms, jti, revoke-before ms or 0). All of a user's sessions have the same
/// lifetime, so the index lives as long as the newest.
const PUT_SESSION: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
local before = tonumber(ARGV[4])
if before > 0 then
  local mark = redis.call('GET', KEYS[3])
  local at = mark and tonumber(string.match(mark, '^(%d+)')) or 0
  if before > at then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2]) end
end
return 1
";

/// Rewrites a session that still exists, keeping its expiry: a revoked one stays revoked.
const TOUCH_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
";

/// Ends a session only if it is in the user's index (KEYS: index, session; ARGV: jti).
const END_USER_SESSION: &str = r"
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then return redis.call('DEL', KEYS[2]) end
return 0
";

/// Ends every indexed session of a user but one (KEYS: index, revocation mark; ARGV: session
/// key prefix, kept jti or '', revoke-before ms or 0, ttl ms, new jti or '', new session json).
/// One script, so a session being started at the same moment is either ended here or started
/// after. The session keys are derived from the index, so this needs a single Redis (not a
/// cluster), as the rest of the store does.
const REVOKE_SESSIONS: &str = r"
local ended = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[2] then
    ended = ended + redis.call('DEL', ARGV[1] .. id)
    redis.call('SREM', KEYS[1], id)
  end
end
local before = tonumber(ARGV[3])
if before > 0 then
  local mark = redis.call('GET', KEYS[2])
  local at = mark and tonumber(string.match(mark, '^(%d+)')) or 0
  if before >= at then
    local value = ARGV[3]
    if ARGV[2] ~= '' then value = value .. ':' .. ARGV[2] end
    redis.call('SET', KEYS[2], value, 'PX', ARGV[4])
  end
end
if ARGV[5] ~= '' then
  redis.call('SET', ARGV[1] .. ARGV[5], ARGV[6], 'PX', ARGV[4])
  redis.call('SADD', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return ended
";

/// The Redis-backed store. Keys: `{prefix}otp:{email}` (and `otp:recovery:{email}`),
/// `{prefix}session:{jti}`, `{prefix}sessions:{user id}` (the user's index: a set of jtis),
/// `{prefix}sessions-before:{user id}` ([`RevokedBefore`]), `{prefix}cooldown:{key}`,
/// `{prefix}rate:{key}`, `{prefix}throttle:{key}`.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    attempt_code: Script,
    consume_code: Script,
    hold_code: Script,
    release_code: Script,
    hit: Script,
    throttle: Script,
    put_session: Script,
    touch_session: Script,
    end_user_session: Script,
    revoke_sessions: Script,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn to_json(session: &Session) -> Result<String> {
    serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json(json: &str) -> Result<Session> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_pttl(pttl: i64) -> Duration {
    Duration::from_millis(u64::try_from(pttl).unwrap_or(0))
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        // A lost connection is re-established in the background and the calls meanwhile wait
        // for it, so the reconnect must be short: one retry, at most half a second apart.
        // (redis 0.32 hands `factor` to backon as the growth factor, after a first delay of
        // one second capped at 60 s: its default of 100 made the second retry wait up to a
        // minute, and every request with it.)
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1)
            .set_factor(2)
            .set_max_delay(500);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            attempt_code: Script::new(ATTEMPT_CODE),
            consume_code: Script::new(CONSUME_CODE),
            hold_code: Script::new(HOLD_CODE),
            release_code: Script::new(RELEASE_CODE),
            hit: Script::new(HIT),
            throttle: Script::new(THROTTLE),
            put_session: Script::new(PUT_SESSION),
            touch_session: Script::new(TOUCH_SESSION),
            end_user_session: Script::new(END_USER_SESSION),
            revoke_sessions: Script::new(REVOKE_SESSIONS),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }
}

#[async_trait]
impl EphemeralStore for RedisStore {
    async fn put_code(&self, email: &str, record: &CodeRecord, ttl: Duration) -> Result<()> {
        let key = self.key("otp", email);
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .del(&key)
            .hset_multiple(
                &key,
                &[
                    ("h", record.hash.clone()),
                    ("rid", record.request_id.to_string()),
                    ("n", record.attempts.to_string()),
                ],
            )
            .pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    async fn attempt_code(&self, email: &str, max_attempts: u32) -> Result<CodeAttempt> {
        let mut connection = self.connection.clone();
        let reply: Vec<redis::Value> = self
            .attempt_code
            .key(self.key("otp", email))
            .arg(max_attempts)
            .invoke_async(&mut connection)
            .await?;
        let int = |v: Option<&redis::Value>| -> Result<i64> {
            redis::from_redis_value(v.ok_or_else(|| StoreError::Corrupt("short reply".into()))?)
                .map_err(StoreError::from)
        };
        let string = |v: Option<&redis::Value>| -> Result<String> {
            redis::from_redis_value(v.ok_or_else(|| StoreError::Corrupt("short reply".into()))?)
                .map_err(StoreError::from)
        };
        match int(reply.first())? {
            0 => Ok(CodeAttempt::Missing),
            1 => Ok(CodeAttempt::Burned),
            _ => {
                let request_id = string(reply.get(2))?
                    .parse()
                    .map_err(|_| StoreError::Corrupt("otp request id".into()))?;
                Ok(CodeAttempt::Check {
                    record: CodeRecord {
                        hash: string(reply.get(1))?,
                        request_id,
                        attempts: u32::try_from(int(reply.get(3))?).unwrap_or(u32::MAX),
                        hold: None,
                    },
                    remaining: from_pttl(int(reply.get(4))?),
                })
            }
        }
    }

    async fn hold_code(
        &self,
        email: &str,
        hash: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection.clone();
        let held: i64 = self
            .hold_code
            .key(self.key("otp", email))
            .arg(hash)
            .arg(holder)
            .arg(millis(lease))
            .invoke_async(&mut connection)
            .await?;
        Ok(held == 1)
    }

    async fn release_code(&self, email: &str, hash: &str, holder: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let released: i64 = self
            .release_code
            .key(self.key("otp", email))
            .arg(hash)
            .arg(holder)
            .invoke_async(&mut connection)
            .await?;
        Ok(released == 1)
    }

    async fn consume_code(&self, email: &str, hash: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let deleted: i64 = self
            .consume_code
            .key(self.key("otp", email))
            .arg(hash)
            .invoke_async(&mut connection)
            .await?;
        Ok(deleted == 1)
    }

    async fn start_cooldown(&self, key: &str, ttl: Duration) -> Result<Option<Duration>> {
        let key = self.key("cooldown", key);
        let mut connection = self.connection.clone();
        let started: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut connection)
            .await?;
        if started.is_some() {
            return Ok(None);
        }
        let pttl: i64 = connection.pttl(&key).await?;
        Ok(Some(from_pttl(pttl)))
    }

    async fn end_cooldown(&self, key: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        connection.del::<_, ()>(self.key("cooldown", key)).await?;
        Ok(())
    }

    async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration)> {
        let mut connection = self.connection.clone();
        let (count, pttl): (u64, i64) = self
            .hit
            .key(self.key("rate", key))
            .arg(millis(window))
            .invoke_async(&mut connection)
            .await?;
        Ok((count, from_pttl(pttl)))
    }

    async fn throttle(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>> {
        let mut connection = self.connection.clone();
        let wait: u64 = self
            .throttle
            .key(self.key("throttle", key))
            .arg(millis(interval))
            .arg(burst.max(1))
            .invoke_async(&mut connection)
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    async fn count(&self, key: &str) -> Result<(u64, Duration)> {
        let key = self.key("rate", key);
        let mut connection = self.connection.clone();
        let (count, pttl): (Option<u64>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut connection)
            .await?;
        Ok((count.unwrap_or(0), from_pttl(pttl)))
    }

    async fn reset(&self, key: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        connection.del::<_, ()>(self.key("rate", key)).await?;
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
        let mut connection = self.connection.clone();
        self.put_session
            .key(self.key("session", jti))
            .key(self.key("sessions", &user))
            .key(self.key("sessions-before", &user))
            .arg(to_json(session)?)
            .arg(millis(ttl))
            .arg(jti)
            .arg(revoke_before_ms.unwrap_or(0))
            .invoke_async::<i64>(&mut connection)
            .await?;
        Ok(())
    }

    async fn session(&self, jti: &str, user_id: Uuid) -> Result<Option<Session>> {
        let mut connection = self.connection.clone();
        let (json, mark): (Option<String>, Option<String>) = redis::cmd("MGET")
            .arg(self.key("session", jti))
            .arg(self.key("sessions-before", &user_id.to_string()))
            .query_async(&mut connection)
            .await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let session = from_json(&json)?;
        let revoked = mark.as_deref().and_then(RevokedBefore::decode);
        Ok(is_valid(&session, jti, user_id, revoked.as_ref()).then_some(session))
    }

    async fn touch_session(&self, jti: &str, session: &Session) -> Result<()> {
        let mut connection = self.connection.clone();
        self.touch_session
            .key(self.key("session", jti))
            .arg(to_json(session)?)
            .invoke_async::<i64>(&mut connection)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, user_id: Uuid, jti: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .del(self.key("session", jti))
            .srem(self.key("sessions", &user_id.to_string()), jti)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    async fn end_user_session(&self, user_id: Uuid, jti: &str) -> Result<bool> {
        let mut connection = self.connection.clone();
        let ended: i64 = self
            .end_user_session
            .key(self.key("sessions", &user_id.to_string()))
            .key(self.key("session", jti))
            .arg(jti)
            .invoke_async(&mut connection)
            .await?;
        Ok(ended == 1)
    }

    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<(String, Session)>> {
        let user = user_id.to_string();
        let index = self.key("sessions", &user);
        let mut connection = self.connection.clone();
        let jtis: Vec<String> = connection.smembers(&index).await?;
        if jtis.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        get.arg(self.key("sessions-before", &user));
        for jti in &jtis {
            get.arg(self.key("session", jti));
        }
        let mut values: Vec<Option<String>> = get.query_async(&mut connection).await?;
        let mark = values.remove(0);
        let revoked = mark.as_deref().and_then(RevokedBefore::decode);
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (jti, json) in jtis.into_iter().zip(values) {
            match json {
                Some(json) => {
                    let session = from_json(&json)?;
                    if is_valid(&session, &jti, user_id, revoked.as_ref()) {
                        live.push((jti, session));
                    }
                }
                None => gone.push(jti),
            }
        }
        if !gone.is_empty() {
            // Expired sessions leave their ids behind; drop them so the index stays small.
            connection.srem::<_, _, ()>(&index, gone).await?;
        }
        Ok(live)
    }

    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        revocation: Revocation<'_>,
        ttl: Duration,
    ) -> Result<u64> {
        let user = user_id.to_string();
        let (new_jti, new_json) = match revocation.start {
            Some((jti, session)) => (jti, to_json(session)?),
            None => ("", String::new()),
        };
        let mut connection = self.connection.clone();
        let ended: u64 = self
            .revoke_sessions
            .key(self.key("sessions", &user))
            .key(self.key("sessions-before", &user))
            .arg(format!("{}session:", self.prefix))
            .arg(revocation.keep.unwrap_or(""))
            .arg(revocation.revoke_before_ms.unwrap_or(0))
            .arg(millis(ttl))
            .arg(new_jti)
            .arg(new_json)
            .invoke_async(&mut connection)
            .await?;
        Ok(ended)
    }

    async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }
}
