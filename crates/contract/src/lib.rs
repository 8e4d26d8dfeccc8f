//! The Kafka wire contract between the broker-auth API and its worker tier.
//!
//! Everything that crosses Kafka is named here: topic names (behind a per-deployment prefix),
//! consumer-group names, header names, and the JSON bodies with their version field. The API,
//! dbproc and the operator all take their names from this crate, so the lag the operator
//! measures is the lag dbproc really has.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod events;
mod record_headers;
mod sealed;
mod topics;

pub use events::{AuthEvent, AuthEventKind};

pub use record_headers::{RawHeader, ReplyHeaders, RequestHeaders};
pub use sealed::{
    MIN_SEAL_SECRET_BYTES, MailSealKey, SealError, SealedMailRequest, SealedMailTemplate,
};
pub use topics::{InstanceId, MAX_INSTANCE_ID_LEN, RequestKind, TopicClass, Topics};

/// The version every message body carries. A consumer rejects (dead-letters) other versions.
pub const WIRE_VERSION: u16 = 1;

/// Header names carried by every request, reply and mail message.
pub mod headers {
    /// Matches a reply to the request that caused it (UUID text).
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The topic the requester reads replies from.
    pub const REPLY_TO: &str = "reply-to";
    /// W3C trace context of the requester, so one trace spans api and dbproc.
    pub const TRACEPARENT: &str = "traceparent";
    /// Why a message was dead-lettered (on dead-letter records only).
    pub const DEAD_LETTER_REASON: &str = "dead-letter-reason";
    /// Where a dead-lettered record came from: `topic/partition/offset`.
    pub const DEAD_LETTER_SOURCE: &str = "dead-letter-source";
}

/// Errors decoding or validating contract data.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("message body is not valid JSON for this message type: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("invalid topic prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("invalid instance id {id:?}: {reason}")]
    InvalidInstanceId { id: String, reason: &'static str },
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {name} is not valid: {reason}")]
    InvalidHeader {
        name: &'static str,
        reason: &'static str,
    },
}

/// A versioned message: the body flattened next to `version` and `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    /// Identifies the logical request. A redelivered or retried request keeps its id, which is
    /// what makes user creation idempotent.
    pub request_id: Uuid,
    #[serde(flatten)]
    pub body: T,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(request_id: Uuid, body: T) -> Self {
        Self {
            version: WIRE_VERSION,
            request_id,
            body,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings, numbers and UUIDs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Decodes a body and checks its version.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u16,
        }
        let VersionOnly { version } = serde_json::from_slice(bytes)?;
        if version != WIRE_VERSION {
            return Err(ContractError::UnsupportedVersion { found: version });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A user as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// The API answers with this type as it is; its OpenAPI schema is derived from it, not retyped.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
}

/// `user-existence-check`: is this (normalized) email registered?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistenceCheck {
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistenceResult {
    pub exists: bool,
}

/// `user-creation-request`: create a verified user. The password arrives already hashed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreation {
    pub email: String,
    pub name: String,
    pub password_hash: String,
    /// What the request asks for, as the API saw it: a keyed digest (64 hex digits) of the email,
    /// the name and the password. bcrypt hashes differ at every hashing, so a retry of the same
    /// request cannot be recognised by its hash; the digest can. The directory stores it with
    /// the request id and refuses a retry whose digest differs (`request_conflict`). Absent only
    /// from producers that predate it; such a request is not bound to its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
}

impl std::fmt::Debug for UserCreation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCreation")
            .field("email", &self.email)
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field(
                "request_digest",
                &self.request_digest.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UserCreationResult {
    Created { user: User },
    AlreadyExists,
}

/// `user-authentication-request`: fetch what is needed to check a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticationLookup {
    pub email: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// When the password was last changed (Unix milliseconds, the database's clock); `None`
    /// when it never was, or from a worker that predates password changes. The API refuses
    /// sessions started before it, even one whose revocation was missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_changed_at_ms: Option<i64>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password_hash", &"<redacted>")
            .field("password_changed_at_ms", &self.password_changed_at_ms)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticationResult {
    /// `None` when no account has this email.
    pub account: Option<Credentials>,
}

/// `user-password-update-request`: set a new password for the account with this email. The
/// password arrives already hashed. Idempotent by request id, bound to its content by
/// `request_digest` as creation requests are.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordUpdate {
    pub email: String,
    pub password_hash: String,
    /// A keyed digest (64 hex digits) of the email and the new password, computed by the API:
    /// a retry of the same change has the same digest although its bcrypt hash differs. The
    /// directory refuses a request id seen before with another digest (`request_conflict`).
    pub request_digest: String,
}

impl std::fmt::Debug for PasswordUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordUpdate")
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("request_digest", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PasswordUpdateResult {
    /// The password is set; sessions started before `password_changed_at_ms` (Unix
    /// milliseconds, the database's clock) are no longer valid.
    Updated {
        user: User,
        password_changed_at_ms: i64,
    },
    /// No account has this email.
    UnknownUser,
}

/// The reply body: the result, or a rejection of a request the worker could decode but not accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply<T> {
    Ok { result: T },
    Rejected { code: String, message: String },
}

/// A request/reply pair of the user directory, tying the body types to their topics.
pub trait DirectoryRpc {
    const KIND: RequestKind;
    type Request: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static;
}

pub struct CheckExistence;
impl DirectoryRpc for CheckExistence {
    const KIND: RequestKind = RequestKind::ExistenceCheck;
    type Request = ExistenceCheck;
    type Response = ExistenceResult;
}

pub struct CreateUser;
impl DirectoryRpc for CreateUser {
    const KIND: RequestKind = RequestKind::UserCreation;
    type Request = UserCreation;
    type Response = UserCreationResult;
}

pub struct Authenticate;
impl DirectoryRpc for Authenticate {
    const KIND: RequestKind = RequestKind::Authentication;
    type Request = AuthenticationLookup;
    type Response = AuthenticationResult;
}

pub struct UpdatePassword;
impl DirectoryRpc for UpdatePassword {
    const KIND: RequestKind = RequestKind::PasswordUpdate;
    type Request = PasswordUpdate;
    type Response = PasswordUpdateResult;
}

/// Any request of the user directory, as the worker sees it after decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryRequest {
    ExistenceCheck(ExistenceCheck),
    UserCreation(UserCreation),
    Authentication(AuthenticationLookup),
    PasswordUpdate(PasswordUpdate),
}

impl DirectoryRequest {
    /// Decodes the body of a record read from the request topic of `kind`.
    pub fn decode(kind: RequestKind, bytes: &[u8]) -> Result<Envelope<Self>, ContractError> {
        fn map<T: DeserializeOwned>(
            bytes: &[u8],
            wrap: fn(T) -> DirectoryRequest,
        ) -> Result<Envelope<DirectoryRequest>, ContractError> {
            let envelope = Envelope::<T>::from_json(bytes)?;
            Ok(Envelope {
                version: envelope.version,
                request_id: envelope.request_id,
                body: wrap(envelope.body),
            })
        }
        match kind {
            RequestKind::ExistenceCheck => map(bytes, DirectoryRequest::ExistenceCheck),
            RequestKind::UserCreation => map(bytes, DirectoryRequest::UserCreation),
            RequestKind::Authentication => map(bytes, DirectoryRequest::Authentication),
            RequestKind::PasswordUpdate => map(bytes, DirectoryRequest::PasswordUpdate),
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            DirectoryRequest::ExistenceCheck(_) => RequestKind::ExistenceCheck,
            DirectoryRequest::UserCreation(_) => RequestKind::UserCreation,
            DirectoryRequest::Authentication(_) => RequestKind::Authentication,
            DirectoryRequest::PasswordUpdate(_) => RequestKind::PasswordUpdate,
        }
    }

    /// The normalized email the request is about; also the record key.
    pub fn email(&self) -> &str {
        match self {
            DirectoryRequest::ExistenceCheck(r) => &r.email,
            DirectoryRequest::UserCreation(r) => &r.email,
            DirectoryRequest::Authentication(r) => &r.email,
            DirectoryRequest::PasswordUpdate(r) => &r.email,
        }
    }
}

/// The answer to a [`DirectoryRequest`], one variant per request kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryReply {
    ExistenceCheck(Reply<ExistenceResult>),
    UserCreation(Reply<UserCreationResult>),
    Authentication(Reply<AuthenticationResult>),
    PasswordUpdate(Reply<PasswordUpdateResult>),
}

impl DirectoryReply {
    /// A rejection of the right shape for `kind`.
    pub fn rejected(kind: RequestKind, code: &str, message: impl Into<String>) -> Self {
        let (code, message) = (code.to_owned(), message.into());
        match kind {
            RequestKind::ExistenceCheck => Self::ExistenceCheck(Reply::Rejected { code, message }),
            RequestKind::UserCreation => Self::UserCreation(Reply::Rejected { code, message }),
            RequestKind::Authentication => Self::Authentication(Reply::Rejected { code, message }),
            RequestKind::PasswordUpdate => Self::PasswordUpdate(Reply::Rejected { code, message }),
        }
    }

    /// The code and message, when the reply is a rejection.
    pub fn rejection(&self) -> Option<(&str, &str)> {
        match self {
            Self::ExistenceCheck(Reply::Rejected { code, message })
            | Self::UserCreation(Reply::Rejected { code, message })
            | Self::Authentication(Reply::Rejected { code, message })
            | Self::PasswordUpdate(Reply::Rejected { code, message }) => Some((code, message)),
            _ => None,
        }
    }

    /// The JSON body of the reply record.
    pub fn encode(&self, request_id: Uuid) -> Vec<u8> {
        match self {
            DirectoryReply::ExistenceCheck(r) => Envelope::new(request_id, r).to_json(),
            DirectoryReply::UserCreation(r) => Envelope::new(request_id, r).to_json(),
            DirectoryReply::Authentication(r) => Envelope::new(request_id, r).to_json(),
            DirectoryReply::PasswordUpdate(r) => Envelope::new(request_id, r).to_json(),
        }
    }
}

/// A mail to send. The worker tier renders and sends it; the API never talks SMTP. It crosses
/// Kafka only as a [`SealedMailRequest`], so it has no wire form of its own.
#[derive(Clone, PartialEq, Eq)]
pub struct MailRequest {
    pub to: String,
    pub template: MailTemplate,
}

impl std::fmt::Debug for MailRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailRequest")
            .field("to", &self.to)
            .field("template", &self.template.name())
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum MailTemplate {
    /// The one-time code for a new address.
    SignupCode {
        code: String,
        expires_in_minutes: u32,
    },
    /// Sent instead of a code when the address already has an account.
    AccountExists,
    /// The one-time code that lets a registered address set a new password.
    RecoveryCode {
        code: String,
        expires_in_minutes: u32,
    },
    /// The notice that the account's password was changed and its other sessions ended.
    PasswordChanged,
}

impl MailTemplate {
    pub fn name(&self) -> &'static str {
        match self {
            MailTemplate::SignupCode { .. } => "signup_code",
            MailTemplate::AccountExists => "account_exists",
            MailTemplate::RecoveryCode { .. } => "recovery_code",
            MailTemplate::PasswordChanged => "password_changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_with_its_version() {
        let id = Uuid::new_v4();
        let bytes = Envelope::new(
            id,
            ExistenceCheck {
                email: "a@example.com".into(),
            },
        )
        .to_json();
        let decoded = DirectoryRequest::decode(RequestKind::ExistenceCheck, &bytes).unwrap();
        assert_eq!(decoded.request_id, id);
        assert_eq!(decoded.body.email(), "a@example.com");
    }

    #[test]
    fn an_unknown_version_is_rejected() {
        let bytes =
            br#"{"version":7,"request_id":"6f1c1d43-6b6c-4f0e-8b7e-1d1d7d8f4c11","email":"a@b.c"}"#;
        let err = DirectoryRequest::decode(RequestKind::ExistenceCheck, bytes).unwrap_err();
        assert!(matches!(
            err,
            ContractError::UnsupportedVersion { found: 7 }
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&b"not json"[..], b"{}", b"{\"version\":1}", b"\xff\xfe"] {
            assert!(DirectoryRequest::decode(RequestKind::UserCreation, bytes).is_err());
        }
    }

    #[test]
    fn replies_carry_a_status_tag() {
        let reply = DirectoryReply::UserCreation(Reply::Ok {
            result: UserCreationResult::AlreadyExists,
        });
        let json: serde_json::Value = serde_json::from_slice(&reply.encode(Uuid::nil())).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["result"]["outcome"], "already_exists");
        assert_eq!(json["version"], 1);
    }

    #[test]
    fn debug_output_never_shows_password_hashes() {
        let creation = UserCreation {
            email: "a@b.c".into(),
            name: "A".into(),
            password_hash: "$2b$12$secret".into(),
            request_digest: Some("ab".repeat(32)),
        };
        assert!(!format!("{creation:?}").contains("secret"));
        assert!(!format!("{creation:?}").contains("abab"));
    }

    #[test]
    fn a_creation_without_a_digest_still_decodes() {
        let bytes = br#"{"version":1,"request_id":"6f1c1d43-6b6c-4f0e-8b7e-1d1d7d8f4c11","email":"a@b.c","name":"A","password_hash":"h"}"#;
        let decoded = DirectoryRequest::decode(RequestKind::UserCreation, bytes).unwrap();
        let DirectoryRequest::UserCreation(creation) = decoded.body else {
            panic!("decoded as another kind");
        };
        assert_eq!(creation.request_digest, None);
    }

    #[test]
    fn mail_debug_output_never_shows_the_code() {
        let mail = MailRequest {
            to: "a@b.c".into(),
            template: MailTemplate::SignupCode {
                code: "012345".into(),
                expires_in_minutes: 5,
            },
        };
        assert!(!format!("{mail:?}").contains("012345"));
    }
}
