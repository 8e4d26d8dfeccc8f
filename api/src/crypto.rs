//! Codes, password hashes and session tokens.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::atomic::{AtomicUsize, Ordering};
use subtle::ConstantTimeEq;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use uuid::Uuid;

use crate::domain::{DisplayName, EmailAddress, NewPassword, OtpCode};
use crate::metrics::{HashMetrics, Metrics, RunningHash};

type HmacSha256 = Hmac<Sha256>;

const ISSUER: &str = "broker-auth";
const OTP_KEY_LABEL: &[u8] = b"broker-auth/otp-hash/v1";
const CREATION_DIGEST_KEY_LABEL: &[u8] = b"broker-auth/creation-digest/v1";
const ADDRESS_HASH_KEY_LABEL: &[u8] = b"broker-auth/address-hash/v1";
/// Prefixes the digest of a password change, so it never equals a creation digest.
const PASSWORD_CHANGE_LABEL: &[u8] = b"broker-auth/password-change/v1";
/// Fixed key of the password pre-hash. Its job is to turn any password into 44 ASCII bytes
/// (under bcrypt's 72-byte limit, no NUL bytes); the secret part of the hash is bcrypt's.
const PASSWORD_PREHASH_KEY: &[u8] = b"broker-auth/password-prehash/v1";

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Keys derived from `JWT_SECRET`.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    otp_key: [u8; 32],
    creation_digest_key: [u8; 32],
    address_hash_key: [u8; 32],
}

impl Keys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            // A separate key for code hashes, so a leaked code hash says nothing about the JWT key.
            otp_key: hmac(bytes, &[OTP_KEY_LABEL]),
            creation_digest_key: hmac(bytes, &[CREATION_DIGEST_KEY_LABEL]),
            address_hash_key: hmac(bytes, &[ADDRESS_HASH_KEY_LABEL]),
        }
    }

    /// The digest of what a verify asks the directory to create, hex encoded: the same for an
    /// honest retry (unlike the bcrypt hash, which is salted anew each time), different when the
    /// name or password differs. Keyed, because it travels through Kafka and stays in the
    /// database: unkeyed, it would be a fast hash of the password, far cheaper to crack than
    /// bcrypt. Each field is length-prefixed so no two field splits give the same input.
    pub fn creation_digest(
        &self,
        email: &EmailAddress,
        name: &DisplayName,
        password: &NewPassword,
    ) -> String {
        let fields = [
            email.as_str().as_bytes(),
            name.as_str().as_bytes(),
            password.expose().as_bytes(),
        ];
        let lengths = fields.map(|field| (field.len() as u64).to_be_bytes());
        hex::encode(hmac(
            &self.creation_digest_key,
            &[
                &lengths[0],
                fields[0],
                &lengths[1],
                fields[1],
                &lengths[2],
                fields[2],
            ],
        ))
    }

    /// The digest of a password change (the address and the new password), keyed and
    /// length-prefixed like [`Keys::creation_digest`], under its own label so no change digest
    /// equals a creation digest.
    pub fn password_change_digest(&self, email: &EmailAddress, password: &NewPassword) -> String {
        let fields = [email.as_str().as_bytes(), password.expose().as_bytes()];
        let lengths = fields.map(|field| (field.len() as u64).to_be_bytes());
        hex::encode(hmac(
            &self.creation_digest_key,
            &[
                PASSWORD_CHANGE_LABEL,
                &lengths[0],
                fields[0],
                &lengths[1],
                fields[1],
            ],
        ))
    }

    /// The keyed hash of an address that auth events carry instead of the address: stable for
    /// one address, useless for finding it without the key.
    pub fn address_hash(&self, email: &EmailAddress) -> String {
        hex::encode(hmac(&self.address_hash_key, &[email.as_str().as_bytes()]))
    }

    /// The keyed hash of a code for one address, hex encoded: what Redis keeps instead of the code.
    pub fn otp_hash(&self, email: &EmailAddress, code: &OtpCode) -> String {
        hex::encode(hmac(
            &self.otp_key,
            &[email.as_str().as_bytes(), b"\0", code.as_str().as_bytes()],
        ))
    }

    pub fn issue_session_token(
        &self,
        user_id: Uuid,
        email: &str,
        jti: Uuid,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_secs();
        let claims = SessionClaims {
            sub: user_id.to_string(),
            email: email.to_owned(),
            jti: jti.to_string(),
            iss: ISSUER.to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Verifies signature (HS256 only), issuer and expiry.
    pub fn verify_session_token(&self, token: &str) -> Option<SessionClaims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// Claims of a session token. The token alone is not enough: `session:{jti}` must exist in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: String,
    pub email: String,
    pub jti: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh six-digit code, uniformly from 000000 to 999999, from a CSPRNG
/// (rand's thread RNG: ChaCha seeded from the OS).
pub fn generate_otp() -> OtpCode {
    let n: u32 = rand::rng().random_range(0..1_000_000);
    // Always six ASCII digits, so parsing cannot fail.
    OtpCode::parse(&format!("{n:06}")).unwrap_or_else(|_| unreachable!())
}

/// A value of the same shape as a code hash that no code hashes to (it is not derived from one).
pub fn random_unmatchable_hash() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// Compares two code hashes in constant time.
pub fn otp_hashes_match(stored: &str, candidate: &str) -> bool {
    stored.as_bytes().ct_eq(candidate.as_bytes()).into()
}

/// bcrypt hashing off the async runtime under an admission limit that bounds its CPU share:
/// at most `concurrency` hashes run at once and at most `queue` requests wait for a slot; past
/// that the request is refused at once ([`HashError::Busy`], a 503 with Retry-After) instead of
/// piling up behind a flood. Each client (IP, or IPv6 /64) holds at most one place, running or
/// waiting ([`HashError::ClientBusy`], a 429), so a few flooding addresses cannot take every
/// place from everybody else.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    dummy_hash: Arc<str>,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    clients: Arc<Mutex<HashSet<String>>>,
    metrics: Option<HashMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("hashing limiter closed")]
    Closed,
    #[error("too many passwords waiting to be hashed")]
    Busy,
    #[error("this client already has a password being hashed")]
    ClientBusy,
}

/// The longest a request that got a place in the queue waits for a slot. The queue is short,
/// so this is a backstop, not the usual path to a 503.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// How many hashes may run at once and how many requests may wait for one.
#[derive(Debug, Clone, Copy)]
pub struct HashBudget {
    pub concurrency: usize,
    pub queue: usize,
}

impl HashBudget {
    /// `0` means "the default": one slot per CPU this process may use, a queue four times that
    /// (with one place per client, that many flooding addresses still leave room).
    pub fn new(concurrency: u32, queue: u32) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let concurrency = match usize::try_from(concurrency) {
            Ok(0) | Err(_) => cpus,
            Ok(n) => n,
        };
        let queue = match usize::try_from(queue) {
            Ok(0) | Err(_) => concurrency * 4,
            Ok(n) => n,
        };
        Self { concurrency, queue }
    }
}

fn prehash(password: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(hmac(PASSWORD_PREHASH_KEY, &[password.as_bytes()]))
}

/// A client's one place in the hashing budget, released when dropped.
struct ClientPlace {
    clients: Arc<Mutex<HashSet<String>>>,
    client: String,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.client);
    }
}

/// A running hash's hold on the budget: its slot and its client's place, both released only
/// when the hashing work itself ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _place: ClientPlace,
    _running: Option<RunningHash>,
}

/// Counts a request as waiting for as long as it lives.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordHasher {
    /// Computes the dummy hash used for unknown users once, at the configured cost, so signin
    /// for an unknown address costs the same as for a known one.
    pub async fn new(cost: u32, budget: HashBudget) -> Result<Self, HashError> {
        let random: [u8; 16] = rand::rng().random();
        let dummy =
            tokio::task::spawn_blocking(move || bcrypt::hash(prehash(&hex::encode(random)), cost))
                .await??;
        Ok(Self {
            cost,
            dummy_hash: dummy.into(),
            slots: Arc::new(Semaphore::new(budget.concurrency.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue: budget.queue,
            clients: Arc::default(),
            metrics: None,
        })
    }

    /// Reports queue waits, running hashes and refusals to `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.hashing(self.slots.available_permits()));
        self
    }

    fn refused(&self, error: HashError) -> HashError {
        if let Some(metrics) = &self.metrics {
            match error {
                HashError::Busy => metrics.refused("busy"),
                HashError::ClientBusy => metrics.refused("client_busy"),
                _ => {}
            }
        }
        error
    }

    fn granted(&self, permit: OwnedSemaphorePermit, place: ClientPlace, waited: Duration) -> Slot {
        let running = self.metrics.as_ref().map(|metrics| {
            metrics.waited(waited);
            metrics.running()
        });
        Slot {
            _permit: permit,
            _place: place,
            _running: running,
        }
    }

    /// Hashing slots free right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// A slot, at once if one is free, else after a short wait in a bounded queue. The permit is
    /// owned so the hashing task itself can hold it: a cancelled request (the client went away)
    /// does not free the slot while its bcrypt still runs.
    async fn slot(&self, client: &str) -> Result<Slot, HashError> {
        let place = {
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !clients.insert(client.to_owned()) {
                return Err(self.refused(HashError::ClientBusy));
            }
            ClientPlace {
                clients: self.clients.clone(),
                client: client.to_owned(),
            }
        };
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(self.granted(permit, place, Duration::ZERO)),
            Err(TryAcquireError::Closed) => return Err(HashError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refused(HashError::Busy));
        }
        let _waiting = Waiting(self.waiting.clone());
        let queued = Instant::now();
        let permit = tokio::time::timeout(HASH_QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| self.refused(HashError::Busy))?
            .map_err(|_| HashError::Closed)?;
        Ok(self.granted(permit, place, queued.elapsed()))
    }

    /// Runs `work` on the blocking pool holding `slot` until the work itself ends.
    async fn run<T: Send + 'static>(
        slot: Slot,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        Ok(tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            result
        })
        .await?)
    }

    /// Hashes `password` for `client` (its rate-limit bucket).
    pub async fn hash(&self, password: &str, client: &str) -> Result<String, HashError> {
        let slot = self.slot(client).await?;
        let prehashed = prehash(password);
        let cost = self.cost;
        Ok(Self::run(slot, move || bcrypt::hash(prehashed, cost)).await??)
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no user, doing
    /// the same work either way. A malformed stored hash counts as a mismatch.
    pub async fn verify(
        &self,
        password: &str,
        hash: Option<&str>,
        client: &str,
    ) -> Result<bool, HashError> {
        let slot = self.slot(client).await?;
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let prehashed = prehash(password);
        let matches = Self::run(slot, move || {
            bcrypt::verify(prehashed, &hash).unwrap_or(false)
        })
        .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&SecretString::from("k".repeat(32)))
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..200)
            .map(|_| generate_otp().as_str().to_owned())
            .collect();
        assert!(codes.iter().all(|c| c.len() == 6));
        assert!(codes.len() > 190, "codes repeat too often: {}", codes.len());
    }

    #[test]
    fn code_hashes_are_keyed_by_secret_and_address() {
        let code = OtpCode::parse("123456").unwrap();
        let a = EmailAddress::parse("a@example.com").unwrap();
        let b = EmailAddress::parse("b@example.com").unwrap();
        let other_keys = Keys::new(&SecretString::from("z".repeat(32)));
        assert_ne!(keys().otp_hash(&a, &code), keys().otp_hash(&b, &code));
        assert_ne!(keys().otp_hash(&a, &code), other_keys.otp_hash(&a, &code));
        assert!(otp_hashes_match(
            &keys().otp_hash(&a, &code),
            &keys().otp_hash(&a, &code)
        ));
        assert!(!keys().otp_hash(&a, &code).contains("123456"));
    }

    #[test]
    fn creation_digests_bind_email_name_and_password() {
        let email = EmailAddress::parse("a@example.com").unwrap();
        let name = DisplayName::parse("Ada").unwrap();
        let password = NewPassword::parse("correct horse battery").unwrap();
        let digest = keys().creation_digest(&email, &name, &password);
        assert_eq!(digest, keys().creation_digest(&email, &name, &password));
        assert_eq!(digest.len(), 64);
        let others = [
            keys().creation_digest(
                &EmailAddress::parse("b@example.com").unwrap(),
                &name,
                &password,
            ),
            keys().creation_digest(&email, &DisplayName::parse("Grace").unwrap(), &password),
            keys().creation_digest(
                &email,
                &name,
                &NewPassword::parse("correct horse battery!").unwrap(),
            ),
            Keys::new(&SecretString::from("z".repeat(32)))
                .creation_digest(&email, &name, &password),
        ];
        for other in others {
            assert_ne!(digest, other);
        }
    }

    #[test]
    fn password_change_digests_bind_email_and_password_and_are_no_creation_digest() {
        let email = EmailAddress::parse("a@example.com").unwrap();
        let password = NewPassword::parse("correct horse battery").unwrap();
        let digest = keys().password_change_digest(&email, &password);
        assert_eq!(digest, keys().password_change_digest(&email, &password));
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let others = [
            keys()
                .password_change_digest(&EmailAddress::parse("b@example.com").unwrap(), &password),
            keys().password_change_digest(
                &email,
                &NewPassword::parse("correct horse battery!").unwrap(),
            ),
            keys().creation_digest(&email, &DisplayName::parse("Ada").unwrap(), &password),
        ];
        for other in others {
            assert_ne!(digest, other);
        }
    }

    #[test]
    fn a_session_token_round_trips() {
        let (user, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys()
            .issue_session_token(user, "a@example.com", jti, Duration::from_secs(60))
            .unwrap();
        let claims = keys().verify_session_token(&token).unwrap();
        assert_eq!(claims.sub, user.to_string());
        assert_eq!(claims.jti, jti.to_string());
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn tokens_signed_with_another_key_or_algorithm_are_refused() {
        let claims = SessionClaims {
            sub: Uuid::new_v4().to_string(),
            email: "a@example.com".into(),
            jti: Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            iat: now_secs(),
            exp: now_secs() + 60,
        };
        let other = EncodingKey::from_secret(&[b'z'; 32]);
        let forged = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &other).unwrap();
        assert!(keys().verify_session_token(&forged).is_none());

        let same_key = EncodingKey::from_secret(&[b'k'; 32]);
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &same_key).unwrap();
        assert!(
            keys().verify_session_token(&hs512).is_none(),
            "algorithm must be pinned"
        );

        // alg=none: header {"alg":"none"} with no signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert!(keys().verify_session_token(&none).is_none());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let claims = SessionClaims {
            sub: Uuid::new_v4().to_string(),
            email: "a@example.com".into(),
            jti: Uuid::new_v4().to_string(),
            iss: ISSUER.into(),
            iat: now_secs() - 3600,
            exp: now_secs() - 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[b'k'; 32]),
        )
        .unwrap();
        assert!(keys().verify_session_token(&token).is_none());
    }

    #[tokio::test]
    async fn long_passwords_are_not_truncated() {
        let hasher = PasswordHasher::new(4, HashBudget::new(0, 0)).await.unwrap();
        let base = "x".repeat(80);
        let hash = hasher.hash(&format!("{base}A"), "c").await.unwrap();
        assert!(
            hasher
                .verify(&format!("{base}A"), Some(&hash), "c")
                .await
                .unwrap()
        );
        // Differs only after byte 72: plain bcrypt would accept it.
        assert!(
            !hasher
                .verify(&format!("{base}B"), Some(&hash), "c")
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let hasher = PasswordHasher::new(4, HashBudget::new(0, 0)).await.unwrap();
        assert!(!hasher.verify("anything", None, "c").await.unwrap());
        assert!(
            !hasher
                .verify("anything", Some("not-a-hash"), "c")
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_request_keeps_its_slot_until_bcrypt_really_ends() {
        // Cost 14 takes about a second here: far longer than the checks below.
        let hasher = PasswordHasher::new(
            14,
            HashBudget {
                concurrency: 1,
                queue: 0,
            },
        )
        .await
        .unwrap();
        let running = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.verify("password", None, "gone").await })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while hasher.free_slots() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the hash never started"
            );
            tokio::task::yield_now().await;
        }
        // The client goes away: its request future is dropped mid-hash.
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        // bcrypt still runs, so the slot is still taken and a new request is refused at once.
        assert_eq!(hasher.free_slots(), 0);
        assert!(matches!(
            hasher.verify("password", None, "other").await,
            Err(HashError::Busy)
        ));
        // Once the work ends, the slot comes back.
        while hasher.free_slots() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!hasher.verify("password", None, "other").await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_queue_requests_are_refused_at_once() {
        let metrics = Metrics::new();
        let hasher = PasswordHasher::new(
            13,
            HashBudget {
                concurrency: 1,
                queue: 1,
            },
        )
        .await
        .unwrap()
        .with_metrics(&metrics);
        let attempts = (0..6).map(|i| {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                hasher
                    .verify("password", None, &format!("client {i}"))
                    .await
            })
        });
        let results = futures::future::join_all(attempts).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(HashError::Busy))))
            .count();
        let done = results
            .iter()
            .filter(|r| matches!(r, Ok(Ok(false))))
            .count();
        // One runs, one waits; the other four are turned away without waiting.
        assert_eq!((done, busy), (2, 4), "{results:?}");
        let exposition = metrics.render().unwrap();
        for line in [
            "broker_auth_api_password_hash_refused_total{reason=\"busy\"} 4",
            "broker_auth_api_password_hash_refused_total{reason=\"client_busy\"} 0",
            "broker_auth_api_password_hash_queue_wait_seconds_count 2",
            "broker_auth_api_password_hashes_running 0",
            "broker_auth_api_password_hash_slots 1",
        ] {
            assert!(exposition.contains(line), "no {line:?} in\n{exposition}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_holds_at_most_one_place_so_others_still_get_in() {
        let hasher = PasswordHasher::new(
            8,
            HashBudget {
                concurrency: 1,
                queue: 4,
            },
        )
        .await
        .unwrap();
        let flood = (0..6).map(|_| {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.verify("password", None, "flooder").await })
        });
        let others = (0..3).map(|i| {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.verify("password", None, &format!("user {i}")).await })
        });
        let flood = futures::future::join_all(flood).await;
        let others = futures::future::join_all(others).await;
        let flood_refused = flood
            .iter()
            .filter(|r| matches!(r, Ok(Err(HashError::ClientBusy))))
            .count();
        assert!(flood_refused >= 1, "{flood:?}");
        assert!(
            others.iter().all(|r| matches!(r, Ok(Ok(false)))),
            "the flooder took the others' places: {others:?}"
        );
    }
}
