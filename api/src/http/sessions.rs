//! Sessions: starting one, finding the request's, and the endpoints that list and end them
//! (`GET /sessions`, `DELETE /sessions/{id}`, `POST /logout?scope=`).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, State};
use axum::http::header::{CACHE_CONTROL, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{AppendHeaders, IntoResponse, Response};
use broker_auth_contract::{AuthEventKind, User};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::openapi::{CrossSite, ErrorBody, Internal, RateLimited, Unavailable, ValidationFailed};
use crate::cookie::{clearing_cookies, session_cookie, session_token};
use crate::crypto::SessionClaims;
use crate::events::{EventContext, Subject};
use crate::store::{LAST_SEEN_RESOLUTION, Revocation, Session};

/// The headers `/check` answers a live session with.
const X_AUTH_USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
const X_AUTH_EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
const X_AUTH_SESSION_ID: HeaderName = HeaderName::from_static("x-auth-session-id");

/// The longest `User-Agent` kept with a session, in characters.
const MAX_USER_AGENT_CHARS: usize = 200;

/// The client's address (see [`super::extract::client_ip`]), worked out once per request by the
/// metrics middleware; the rate limits, sessions (`ip_prefix`) and events read it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for EventContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let address = parts
            .extensions
            .get::<ClientAddress>()
            .and_then(|address| address.0);
        Ok(event_context(
            &parts.headers,
            address,
            parts.extensions.get::<MatchedPath>(),
        ))
    }
}

/// The longest `X-Request-Id` taken from a request; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The details every auth event of one request carries.
pub fn event_context(
    headers: &HeaderMap,
    address: Option<IpAddr>,
    route: Option<&MatchedPath>,
) -> EventContext {
    let request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    let trace_id = broker_auth_telemetry::traceparent(&tracing::Span::current())
        .and_then(|parent| parent.split('-').nth(1).map(str::to_owned));
    EventContext {
        ip_prefix: address.map(ip_prefix),
        user_agent: user_agent(headers),
        request_id,
        trace_id,
        route: route.map(|route| route.as_str().to_owned()),
    }
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(|agent| {
            agent
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_USER_AGENT_CHARS)
                .collect::<String>()
        })
        .filter(|agent| !agent.trim().is_empty())
}

/// Now, as events and the sessions list write times.
pub fn now_rfc3339() -> String {
    rfc3339(now_ms())
}

/// The network of an address, never the address: its /24 for IPv4, its /48 for IPv6.
pub fn ip_prefix(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let [a, b, c, ..] = v6.segments();
            format!("{a:x}:{b:x}:{c:x}::/48")
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A Unix-milliseconds time from the directory, if it is one.
pub fn directory_time(ms: Option<i64>) -> Option<u64> {
    ms.and_then(|ms| u64::try_from(ms).ok())
}

/// A fresh session of `user`, not stored yet; the sessions list shows the request's user agent
/// and network (`origin`) to tell sessions apart.
pub fn new_session(user: User, origin: &EventContext) -> (Uuid, Session) {
    let now = now_ms();
    let session = Session {
        user,
        created_at_ms: now,
        last_seen_at_ms: now,
        user_agent: origin.user_agent.clone(),
        ip_prefix: origin.ip_prefix.clone(),
    };
    (Uuid::new_v4(), session)
}

/// A user and their session.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub(super) user: User,
}

/// The answer that hands a stored session to the client: its token in the cookie, the user in
/// the body.
pub fn session_response(
    state: &AppState,
    user: User,
    jti: Uuid,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let ttl = state.policy.session_ttl;
    let token = state
        .keys
        .issue_session_token(user.id, &user.email, jti, ttl)?;
    tracing::info!(user_id = %user.id, "session started");
    Ok((
        status,
        [(
            SET_COOKIE,
            session_cookie(&token, ttl, state.policy.cookie_secure),
        )],
        Json(UserBody { user }),
    )
        .into_response())
}

/// Stores a new session and answers with it. `revoke_before_ms` is the account's last
/// password change as the directory reported it (see [`crate::store::EphemeralStore::put_session`]).
pub async fn start_session(
    state: &AppState,
    user: User,
    origin: &EventContext,
    revoke_before_ms: Option<u64>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let (jti, session) = new_session(user, origin);
    state
        .store
        .put_session(
            &jti.to_string(),
            &session,
            state.policy.session_ttl,
            revoke_before_ms,
        )
        .await?;
    session_response(state, session.user, jti, status)
}

/// The request's live session.
pub struct CurrentSession {
    pub jti: String,
    pub user_id: Uuid,
    pub session: Session,
}

/// The session behind the request's token, if the token is valid and the session live. Its
/// `last_seen_at` is rewritten when older than [`LAST_SEEN_RESOLUTION`]: one store round trip
/// in the common case, two once a minute.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<CurrentSession>, ApiError> {
    let Some((claims, user_id)) = verified_claims(state, headers) else {
        return Ok(None);
    };
    let Some(mut session) = state.store.session(&claims.jti, user_id).await? else {
        return Ok(None);
    };
    let now = now_ms();
    let resolution = u64::try_from(LAST_SEEN_RESOLUTION.as_millis()).unwrap_or(u64::MAX);
    if now.saturating_sub(session.last_seen_at_ms) >= resolution {
        session.last_seen_at_ms = now;
        if let Err(error) = state.store.touch_session(&claims.jti, &session).await {
            // Only the list's "last seen" is late; the request itself is fine.
            tracing::warn!(%error, "could not record when a session was last seen");
        }
    }
    Ok(Some(CurrentSession {
        jti: claims.jti,
        user_id,
        session,
    }))
}

/// The claims of the request's token if its signature, issuer and expiry are valid.
fn verified_claims(state: &AppState, headers: &HeaderMap) -> Option<(SessionClaims, Uuid)> {
    let claims = session_token(headers, state.policy.cookie_secure)
        .and_then(|token| state.keys.verify_session_token(token))?;
    let user_id = claims.sub.parse().ok()?;
    Some((claims, user_id))
}

/// Forward auth for ingresses: is the request's session live?
///
/// 200 with `X-Auth-User-Id`, `X-Auth-Email` and `X-Auth-Session-Id` for a live session (cookie
/// or Bearer), else 401; no body either way, at the cost of `/me` (one Redis round trip).
/// Revocation is exact: a session logged out a moment ago is refused. Any method and any path
/// below `/api/v1/auth/check/` get the same answer, so the ingress-nginx `auth-url`, Traefik's
/// `ForwardAuth` and Envoy's `ext_authz` (HTTP, with a path prefix) can call it as they do.
/// It is not rate-limited per client address (behind an ingress every user has the ingress's
/// address), and a cross-site navigation to a protected service is answered by its cookie, not
/// refused: keep the endpoint reachable by the ingress only where that matters.
#[utoipa::path(
    method(get, head, post, put, patch, delete),
    path = "/api/v1/auth/check",
    tag = "forward-auth",
    security(("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A live session.", headers(
            ("X-Auth-User-Id" = String, description = "The user's id."),
            ("X-Auth-Email" = String, description = "The user's email address."),
            ("X-Auth-Session-Id" = String, description = "The session's id (`GET /sessions`)."),
        )),
        (status = 401, description = "No live session: no token, an invalid or expired one, or a revoked session.", body = ErrorBody),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "check", skip_all)]
pub async fn check(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let answer = async {
        let current = current_session(&state, &headers)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let header = |value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| ApiError::Internal("a session holds a value no header carries".into()))
        };
        Ok::<_, ApiError>(
            (
                StatusCode::OK,
                [
                    (X_AUTH_USER_ID, header(&current.user_id.to_string())?),
                    (X_AUTH_EMAIL, header(&current.session.user.email)?),
                    (X_AUTH_SESSION_ID, header(&current.jti)?),
                ],
            )
                .into_response(),
        )
    }
    .await;
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    // Outside the auth routes' layers (see `super::router`), so it sets its own.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One of the user's live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// The session's id, for `DELETE /sessions/{id}`.
    id: String,
    /// When it started (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When it was last used (RFC 3339), to the minute.
    #[schema(format = DateTime)]
    last_seen_at: String,
    /// The browser's `User-Agent`, shortened; null when it sent none.
    user_agent: Option<String>,
    /// The client's network, never its address: a /24 (IPv4) or /48 (IPv6); null if unknown.
    ip_prefix: Option<String>,
    /// Whether this is the session making the request.
    current: bool,
}

/// The user's live sessions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionInfo>,
}

/// RFC 3339 in UTC with milliseconds, always three digits, so the strings sort as the times do.
fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// Lists the signed-in user's live sessions.
///
/// Newest first; `current` marks the one making the request. Addresses are shown only as
/// their network.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    security(("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The user's live sessions.", body = SessionList),
        (status = 401, description = "`unauthenticated`: no live session.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "list_sessions", skip_all)]
pub async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let current = current_session(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let mut sessions = state.store.user_sessions(current.user_id).await?;
    sessions.sort_by(|(a_id, a), (b_id, b)| {
        (b.created_at_ms, b_id.as_str()).cmp(&(a.created_at_ms, a_id.as_str()))
    });
    let sessions = sessions
        .into_iter()
        .map(|(id, session)| SessionInfo {
            current: id == current.jti,
            // The request's own session was just seen, whatever the store says.
            last_seen_at: rfc3339(if id == current.jti {
                current.session.last_seen_at_ms
            } else {
                session.last_seen_at_ms
            }),
            created_at: rfc3339(session.created_at_ms),
            user_agent: session.user_agent,
            ip_prefix: session.ip_prefix,
            id,
        })
        .collect();
    Ok(Json(SessionList { sessions }).into_response())
}

/// Ends one of the signed-in user's sessions.
///
/// 204 when it ended; 404 for an id that is not one of the user's live sessions, whoever's it
/// is, so ids cannot be probed. Ending the current session also clears the cookie.
#[utoipa::path(
    delete,
    path = "/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "A session id from `GET /sessions`.")),
    security(("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended."),
        (status = 401, description = "`unauthenticated`: no live session.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 404, description = "`not_found`: not one of the user's live sessions.", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "end_session", skip_all)]
pub async fn end_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    context: EventContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let current = current_session(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if id.parse::<Uuid>().is_err() || !state.store.end_user_session(current.user_id, &id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(user_id = %current.user_id, "session ended from the sessions list");
    let subject = Subject::User(current.user_id);
    let reason = Some("sessions_list");
    state.event(
        &context,
        AuthEventKind::SessionsRevoked,
        subject,
        reason,
        Some(1),
    );
    if id == current.jti {
        return Ok(cleared(StatusCode::NO_CONTENT));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ToSchema, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutScope {
    /// This session (the default).
    #[default]
    Local,
    /// Every session of the user but this one.
    Others,
    /// Every session of the user, this one included.
    Global,
}

/// The query of `POST /logout`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutParams {
    /// `local` (default): this session; `others`: all the user's other sessions; `global`: all.
    #[allow(dead_code)]
    #[param(inline)]
    scope: Option<LogoutScope>,
}

/// Reads `scope` from the query, so a bad value gets the API's 422 rather than the framework's
/// plain-text 400.
fn logout_scope(uri: &Uri) -> Result<LogoutScope, ApiError> {
    #[derive(serde::Deserialize)]
    struct ScopeQuery {
        scope: Option<String>,
    }
    let invalid = || ApiError::field("scope", "must be one of local, others or global");
    let Query(query) = Query::<ScopeQuery>::try_from_uri(uri).map_err(|_| invalid())?;
    match query.scope.as_deref() {
        None | Some("local") => Ok(LogoutScope::Local),
        Some("others") => Ok(LogoutScope::Others),
        Some("global") => Ok(LogoutScope::Global),
        Some(_) => Err(invalid()),
    }
}

fn cleared(status: StatusCode) -> Response {
    let [secure, plain] = clearing_cookies();
    (
        status,
        AppendHeaders([(SET_COOKIE, secure), (SET_COOKIE, plain)]),
    )
        .into_response()
}

/// Ends this session, the others, or all.
///
/// `local` (the default) revokes this session and clears the cookie: 204, also when there was
/// nothing to revoke. `others` revokes every other session of the user and keeps this one;
/// `global` revokes all of them and clears the cookie. Both need a live session (else 401), and
/// both are atomic: a session started at the same moment is ended or starts after.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "auth",
    params(LogoutParams),
    security((), ("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "The sessions (if any) are revoked; the cookie is cleared unless the scope is `others`.", headers(("Set-Cookie" = String, description = "Clears the session cookie (scopes `local` and `global`)."))),
        (status = 401, description = "`unauthenticated`: scope `others` or `global` without a live session.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "logout", skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    context: EventContext,
) -> Result<Response, ApiError> {
    match logout_scope(&uri)? {
        LogoutScope::Local => {
            if let Some((claims, user_id)) = verified_claims(&state, &headers) {
                state.store.delete_session(user_id, &claims.jti).await?;
                let subject = Subject::User(user_id);
                state.event(&context, AuthEventKind::Logout, subject, None, None);
            }
            Ok(cleared(StatusCode::NO_CONTENT))
        }
        scope @ (LogoutScope::Others | LogoutScope::Global) => {
            let current = current_session(&state, &headers)
                .await?
                .ok_or(ApiError::Unauthenticated)?;
            let global = scope == LogoutScope::Global;
            let revocation = Revocation {
                keep: (!global).then_some(current.jti.as_str()),
                // Also refuses sessions the index missed (started by an older API version).
                revoke_before_ms: Some(now_ms()),
                start: None,
            };
            let ended = state
                .store
                .revoke_sessions(current.user_id, revocation, state.policy.session_ttl)
                .await?;
            tracing::info!(user_id = %current.user_id, ended, global, "sessions revoked by logout");
            let reason = Some(if global {
                "logout_global"
            } else {
                "logout_others"
            });
            let (kind, subject) = (
                AuthEventKind::SessionsRevoked,
                Subject::User(current.user_id),
            );
            state.event(&context, kind, subject, reason, Some(ended));
            if global {
                Ok(cleared(StatusCode::NO_CONTENT))
            } else {
                Ok(StatusCode::NO_CONTENT.into_response())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_shown_only_as_their_network() {
        assert_eq!(ip_prefix("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            ip_prefix("2001:db8:abcd:12:1::9".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
        assert_eq!(
            ip_prefix("::ffff:198.51.100.4".parse().unwrap()),
            "198.51.100.0/24"
        );
    }

    #[test]
    fn logout_scopes_are_read_from_the_query() {
        let scope = |uri: &str| logout_scope(&uri.parse().unwrap());
        assert_eq!(scope("/logout").unwrap(), LogoutScope::Local);
        assert_eq!(scope("/logout?scope=others").unwrap(), LogoutScope::Others);
        assert_eq!(
            scope("/logout?x=1&scope=global").unwrap(),
            LogoutScope::Global
        );
        assert_eq!(scope("/logout?scope=%6Cocal").unwrap(), LogoutScope::Local);
        assert!(scope("/logout?scope=everything").is_err());
        assert!(scope("/logout?scope=").is_err());
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_633_600_123), "2025-12-02T00:00:00.123Z");
        assert_eq!(rfc3339(1_764_633_600_120), "2025-12-02T00:00:00.120Z");
    }
}
