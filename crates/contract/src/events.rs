//! Security events on the `auth-events` topic: who signed in, from where, what failed.
//!
//! Versioned JSON ([`crate::WIRE_VERSION`]), keyed by the user's id, or by `address:{hash}` (a
//! keyed hash of the address) when no account is known, or by `network:{ip prefix}` when not even
//! an address is. An event never carries a secret, a code, a password or its hash, nor the
//! address itself.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthEventKind {
    /// A sign-up code (or an "account exists" notice) was sent to an address.
    SignupRequested,
    /// A verified code created an account.
    AccountCreated,
    SigninSucceeded,
    /// `reason`: `unknown_address`, `wrong_password`.
    SigninFailed,
    /// A limit refused a request; `reason` names the limit (the metrics' `limit` label).
    RateLimited,
    /// An attempt reached a code past its attempt limit: the code is burned.
    CodeBurned,
    /// One session ended by its own logout.
    Logout,
    /// A recovery code was asked for an address.
    RecoveryRequested,
    /// `reason`: `change` (signed in, with the current password) or `recovery` (with a code).
    PasswordChanged,
    /// Sessions ended at once; `reason`: `logout_others`, `logout_global`, `sessions_list`,
    /// `password_change`, `recovery`; `sessions_revoked` says how many.
    SessionsRevoked,
}

impl AuthEventKind {
    pub const ALL: [AuthEventKind; 10] = [
        AuthEventKind::SignupRequested,
        AuthEventKind::AccountCreated,
        AuthEventKind::SigninSucceeded,
        AuthEventKind::SigninFailed,
        AuthEventKind::RateLimited,
        AuthEventKind::CodeBurned,
        AuthEventKind::Logout,
        AuthEventKind::RecoveryRequested,
        AuthEventKind::PasswordChanged,
        AuthEventKind::SessionsRevoked,
    ];

    /// The snake_case name, as in the JSON and the metrics' `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            AuthEventKind::SignupRequested => "signup_requested",
            AuthEventKind::AccountCreated => "account_created",
            AuthEventKind::SigninSucceeded => "signin_succeeded",
            AuthEventKind::SigninFailed => "signin_failed",
            AuthEventKind::RateLimited => "rate_limited",
            AuthEventKind::CodeBurned => "code_burned",
            AuthEventKind::Logout => "logout",
            AuthEventKind::RecoveryRequested => "recovery_requested",
            AuthEventKind::PasswordChanged => "password_changed",
            AuthEventKind::SessionsRevoked => "sessions_revoked",
        }
    }
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthEvent {
    pub version: u16,
    /// Unique per event: a consumer that sees one twice (Kafka delivers at least once) drops it.
    pub event_id: Uuid,
    pub kind: AuthEventKind,
    /// When it happened: RFC 3339, UTC, milliseconds.
    pub at: String,
    /// The record key: the user's id, `address:{hash}` or `network:{ip prefix}`.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// A keyed hash (HMAC-SHA-256, hex) of the normalized address, when the event is about one:
    /// the same address always hashes the same, and the hash does not give the address back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_hash: Option<String>,
    /// Why, for the kinds that say (see [`AuthEventKind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_revoked: Option<u64>,
    /// The client's network (a /24, or /48 for IPv6), never its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The request's `X-Request-Id`, or one the API made up.
    pub request_id: String,
    /// The W3C trace id of the request, to find its trace and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The route of the request (`/api/v1/auth/signin`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_and_leaves_out_what_it_does_not_have() {
        let event = AuthEvent {
            version: crate::WIRE_VERSION,
            event_id: Uuid::nil(),
            kind: AuthEventKind::SigninFailed,
            at: "2026-12-02T10:00:00.000Z".into(),
            subject: "address:ab".into(),
            user_id: None,
            address_hash: Some("ab".into()),
            reason: Some("unknown_address".into()),
            sessions_revoked: None,
            ip_prefix: Some("192.0.2.0/24".into()),
            user_agent: None,
            request_id: "r1".into(),
            trace_id: None,
            route: Some("/api/v1/auth/signin".into()),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "signin_failed");
        assert!(json.get("user_id").is_none());
        let back: AuthEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        for kind in AuthEventKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.label().to_owned())
            );
        }
    }
}
