//! The one error type of the HTTP layer and its JSON shape:
//! `{"error":{"code":"…","message":"…","fields":{…}}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use broker_auth_user_store::validation::codes;

use super::openapi::{ErrorBody, ErrorDetail};
use crate::directory::DirectoryError;
use crate::outbox::OutboxError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(BTreeMap<&'static str, &'static str>),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("rate limited ({})", limit.label())]
    RateLimited {
        retry_after: Duration,
        limit: RateLimit,
    },
    #[error("invalid or expired code")]
    InvalidCode,
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A signed-in request offered the wrong current password.
    #[error("wrong current password")]
    WrongPassword,
    #[error("not signed in")]
    Unauthenticated,
    #[error("account already exists")]
    AccountExists,
    #[error("the code was already used with another name or password")]
    RequestConflict,
    #[error("the recovery code was already used with another password")]
    RecoveryConflict,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("cross-site request refused")]
    CrossSite,
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How long clients are asked to wait after a 503.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl ApiError {
    pub fn field(field: &'static str, message: &'static str) -> Self {
        Self::Validation(BTreeMap::from([(field, message)]))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Some fields are not valid.",
            ),
            Self::MalformedJson(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "The request body must be a JSON object.",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is larger than 64 KiB.",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with Content-Type: application/json.",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many attempts. Wait a moment and try again.",
            ),
            Self::InvalidCode => (
                StatusCode::BAD_REQUEST,
                "invalid_code",
                "That code is wrong or has expired. Check the email or request a new code.",
            ),
            Self::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "The email or password is not correct.",
            ),
            Self::WrongPassword => (
                StatusCode::FORBIDDEN,
                "invalid_credentials",
                "The current password is not correct.",
            ),
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "You are not signed in.",
            ),
            Self::AccountExists => (
                StatusCode::CONFLICT,
                "account_exists",
                "This address already has an account. Sign in instead.",
            ),
            Self::RequestConflict => (
                StatusCode::CONFLICT,
                "request_conflict",
                "This code was already used to create the account with another name or \
                 password. Send the name and password you gave first, or sign in.",
            ),
            Self::RecoveryConflict => (
                StatusCode::CONFLICT,
                "request_conflict",
                "This code was already used to set another password. Send the password you \
                 gave first, or sign in with it.",
            ),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "No such resource."),
            Self::CrossSite => (
                StatusCode::FORBIDDEN,
                "cross_site_request",
                "Requests from other sites are not accepted.",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This resource does not accept that method.",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The service is busy or partly unavailable. Try again shortly.",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong on our side.",
            ),
        }
    }
}

/// Which limit refused a request (the `limit` label of `broker_auth_api_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Requests per client IP and endpoint per minute.
    PerIp,
    /// The smooth per-IP limit of the endpoints that cost a bcrypt (signin, verify).
    HashingPerIp,
    /// Failed signins for an address (from one client, or in all).
    SigninFailures,
    /// Failed verifies for an address (from one client, or in all).
    VerifyFailures,
    /// A new signup code for the same address before the resend cooldown ended.
    SignupCooldown,
    /// A client's second password hash while its first one runs or waits.
    HashPerClient,
    /// A new recovery code for the same address before the resend cooldown ended.
    RecoveryCooldown,
    /// Wrong recovery codes for an address (from one client, or in all).
    RecoveryFailures,
}

impl RateLimit {
    pub const ALL: [RateLimit; 8] = [
        RateLimit::PerIp,
        RateLimit::HashingPerIp,
        RateLimit::SigninFailures,
        RateLimit::VerifyFailures,
        RateLimit::SignupCooldown,
        RateLimit::HashPerClient,
        RateLimit::RecoveryCooldown,
        RateLimit::RecoveryFailures,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RateLimit::PerIp => "per_ip",
            RateLimit::HashingPerIp => "hashing_per_ip",
            RateLimit::SigninFailures => "signin_failures",
            RateLimit::VerifyFailures => "verify_failures",
            RateLimit::SignupCooldown => "signup_cooldown",
            RateLimit::HashPerClient => "hash_per_client",
            RateLimit::RecoveryCooldown => "recovery_cooldown",
            RateLimit::RecoveryFailures => "recovery_failures",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        match &self {
            // Details of server-side failures go to the log, never to the client.
            Self::Internal(detail) => tracing::error!(detail, "request failed"),
            Self::Unavailable(detail) => tracing::warn!(detail, "dependency unavailable"),
            Self::MalformedJson(detail) => tracing::debug!(detail, "malformed request body"),
            _ => {}
        }
        let fields = match &self {
            Self::Validation(fields) => Some(fields.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                fields,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Whatever cookie came with the request did not make a session: drop it, under both
            // names, so a planted or stale one does not linger.
            for cookie in crate::cookie::clearing_cookies() {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        if let Self::RateLimited { limit, .. } = &self {
            // For the metrics middleware, which counts refusals by limit.
            response.extensions_mut().insert(*limit);
        }
        let retry_after = match &self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            // Round up: "Retry-After: 0" would invite an immediate retry.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Redis(e) => Self::Unavailable(format!("redis: {e}")),
            StoreError::Corrupt(e) => Self::Internal(format!("store: {e}")),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(error: DirectoryError) -> Self {
        match error {
            DirectoryError::Timeout(_) | DirectoryError::Unavailable(_) => {
                Self::Unavailable(error.to_string())
            }
            DirectoryError::Rejected { code, .. } if code == codes::REQUEST_CONFLICT => {
                Self::RequestConflict
            }
            DirectoryError::Rejected { .. } | DirectoryError::BadReply(_) => {
                Self::Internal(error.to_string())
            }
        }
    }
}

impl From<OutboxError> for ApiError {
    fn from(error: OutboxError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<crate::crypto::HashError> for ApiError {
    fn from(error: crate::crypto::HashError) -> Self {
        match error {
            crate::crypto::HashError::Busy => Self::Unavailable(error.to_string()),
            // This client's own previous password is still being hashed: its problem, not ours.
            crate::crypto::HashError::ClientBusy => Self::RateLimited {
                retry_after: Duration::from_secs(1),
                limit: RateLimit::HashPerClient,
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<jsonwebtoken::errors::Error> for ApiError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        Self::Internal(format!("jwt: {error}"))
    }
}
