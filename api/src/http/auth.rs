//! The five flows under `/api/v1/auth`.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_auth_contract::{MailRequest, MailTemplate, User, UserCreation, UserCreationResult};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Text};
use crate::cookie::{clearing_cookie, session_cookie, session_token};
use crate::crypto::{generate_otp, otp_hashes_match, random_unmatchable_hash};
use crate::domain::{DisplayName, EmailAddress, NewPassword, OtpCode, parse_offered_password};
use crate::store::{CodeAttempt, CodeRecord, Session};

/// Collects per-field messages so one response names every invalid field.
#[derive(Default)]
struct FieldErrors(BTreeMap<&'static str, &'static str>);

impl FieldErrors {
    fn check<T>(&mut self, field: &'static str, parsed: Result<T, &'static str>) -> Option<T> {
        parsed.map_err(|message| self.0.insert(field, message)).ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ApiError::Validation(self.0)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignupRequest {
    email: Text,
}

/// 202 for every valid address: a code to a new one, an "account exists" notice to a known one.
#[tracing::instrument(name = "signup", skip_all)]
pub async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignupRequest>,
) -> Result<Response, ApiError> {
    let email = body
        .email
        .as_str()
        .and_then(EmailAddress::parse)
        .map_err(|m| ApiError::field("email", m))?;
    let cooldown = format!("signup:{email}");
    if let Some(retry_after) = state
        .store
        .start_cooldown(&cooldown, state.policy.resend_cooldown)
        .await?
    {
        return Err(ApiError::RateLimited { retry_after });
    }
    if let Err(error) = send_signup_mail(&state, &email).await {
        // Nothing was sent: let the person try again at once.
        if let Err(e) = state.store.end_cooldown(&cooldown).await {
            tracing::warn!(error = %e, "could not end the signup cooldown");
        }
        return Err(error);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": "Check your inbox: if the address can receive mail, a message is on its way."
        })),
    )
        .into_response())
}

async fn send_signup_mail(state: &AppState, email: &EmailAddress) -> Result<(), ApiError> {
    let exists = state.directory.exists(email.as_str()).await?;
    let code = generate_otp();
    // A registered address gets a record too, with a random hash no code can match, so both
    // paths do the same work and verify behaves the same for them.
    let hash = if exists {
        random_unmatchable_hash()
    } else {
        state.keys.otp_hash(email, &code)
    };
    let record = CodeRecord {
        hash,
        request_id: Uuid::new_v4(),
        attempts: 0,
    };
    state
        .store
        .put_code(email.as_str(), &record, state.policy.otp_ttl)
        .await?;
    let template = if exists {
        MailTemplate::AccountExists
    } else {
        MailTemplate::SignupCode {
            code: code.as_str().to_owned(),
            expires_in_minutes: u32::try_from(state.policy.otp_ttl.as_secs().div_ceil(60))
                .unwrap_or(u32::MAX),
        }
    };
    state
        .outbox
        .enqueue(MailRequest {
            to: email.to_string(),
            template,
        })
        .await?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    email: Text,
    otp: Text,
    password: Text,
    name: Text,
}

/// Checks the code (attempt counted first, constant-time compare, consumed once), creates the
/// user and starts a session: 201 with the user and the cookie.
#[tracing::instrument(name = "verify", skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", body.email.as_str().and_then(EmailAddress::parse));
    let otp = errors.check("otp", body.otp.as_str().and_then(OtpCode::parse));
    let password = errors.check(
        "password",
        body.password.as_str().and_then(NewPassword::parse),
    );
    let name = errors.check("name", body.name.as_str().and_then(DisplayName::parse));
    let (email, otp, password, name) = errors.finish(
        email
            .zip(otp)
            .zip(password.zip(name))
            .map(|((e, o), (p, n))| (e, o, p, n)),
    )?;

    // Counted before comparing and across codes, so fresh codes do not buy fresh guesses.
    let failures_key = format!("verify-failures:{email}");
    let (attempts, retry_after) = state
        .store
        .hit(&failures_key, state.policy.verify_failure_window)
        .await?;
    if attempts > state.policy.verify_max_failures {
        return Err(ApiError::RateLimited { retry_after });
    }
    let attempted_at = Instant::now();
    let (record, remaining) = match state
        .store
        .attempt_code(email.as_str(), state.policy.otp_max_attempts)
        .await?
    {
        CodeAttempt::Check { record, remaining } => (record, remaining),
        CodeAttempt::Missing | CodeAttempt::Burned => return Err(ApiError::InvalidCode),
    };
    let candidate = state.keys.otp_hash(&email, &otp);
    if !otp_hashes_match(&record.hash, &candidate) {
        return Err(ApiError::InvalidCode);
    }
    if !state
        .store
        .consume_code(email.as_str(), &record.hash)
        .await?
    {
        // A concurrent verify of the same code won.
        return Err(ApiError::InvalidCode);
    }
    state.store.reset(&failures_key).await?;

    let created = async {
        let password_hash = state.hasher.hash(password.expose()).await?;
        let creation = UserCreation {
            email: email.to_string(),
            name: name.into_inner(),
            password_hash,
        };
        Ok::<_, ApiError>(
            state
                .directory
                .create_user(record.request_id, creation)
                .await?,
        )
    }
    .await;
    match created {
        Ok(UserCreationResult::Created { user }) => {
            start_session(&state, user, StatusCode::CREATED).await
        }
        Ok(UserCreationResult::AlreadyExists) => Err(ApiError::AccountExists),
        Err(error) => {
            // The account may not exist yet: give the code back, for what is left of its life,
            // so the person can retry — unless a newer code was sent meanwhile. The retry
            // reuses the request id, so a creation that did land late is not repeated.
            let left = remaining.saturating_sub(attempted_at.elapsed());
            if !left.is_zero()
                && let Err(e) = state
                    .store
                    .restore_code(email.as_str(), &record, left)
                    .await
            {
                tracing::warn!(error = %e, "could not restore the code after a failed creation");
            }
            Err(error)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SigninRequest {
    email: Text,
    password: Text,
}

/// 200 with the user and the cookie; one 401 for an unknown address and a wrong password alike,
/// after the same bcrypt work.
#[tracing::instrument(name = "signin", skip_all)]
pub async fn signin(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SigninRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", body.email.as_str().and_then(EmailAddress::parse));
    let password = errors.check(
        "password",
        body.password.as_str().and_then(parse_offered_password),
    );
    let (email, password) = errors.finish(email.zip(password))?;

    // Counted before the password is checked, so parallel guesses cannot overrun the limit;
    // a successful signin clears the count.
    let failures_key = format!("signin-failures:{email}");
    let (attempts, retry_after) = state
        .store
        .hit(&failures_key, state.policy.signin_failure_window)
        .await?;
    if attempts > state.policy.signin_max_failures {
        return Err(ApiError::RateLimited { retry_after });
    }
    let credentials = state.directory.credentials(email.as_str()).await?;
    let matches = state
        .hasher
        .verify(
            password,
            credentials.as_ref().map(|c| c.password_hash.as_str()),
        )
        .await?;
    match credentials {
        Some(credentials) if matches => {
            state.store.reset(&failures_key).await?;
            start_session(&state, credentials.user, StatusCode::OK).await
        }
        _ => Err(ApiError::InvalidCredentials),
    }
}

async fn start_session(
    state: &AppState,
    user: User,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let ttl = state.policy.session_ttl;
    let jti = Uuid::new_v4();
    state
        .store
        .put_session(&jti.to_string(), &Session { user: user.clone() }, ttl)
        .await?;
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
        Json(json!({ "user": user })),
    )
        .into_response())
}

/// The session behind the request's token, if the token is valid and the session not revoked.
async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ApiError> {
    let Some(claims) = session_token(headers).and_then(|t| state.keys.verify_session_token(t))
    else {
        return Ok(None);
    };
    let session = state.store.session(&claims.jti).await?;
    Ok(session.filter(|session| session.user.id.to_string() == claims.sub))
}

/// 200 `{user}` for a live session, else 401.
#[tracing::instrument(name = "me", skip_all)]
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = current_session(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Json(json!({ "user": session.user })).into_response())
}

/// Revokes this session only and clears the cookie: 204, also when there was nothing to revoke.
#[tracing::instrument(name = "logout", skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(claims) = session_token(&headers).and_then(|t| state.keys.verify_session_token(t)) {
        state.store.delete_session(&claims.jti).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, clearing_cookie(state.policy.cookie_secure))],
    )
        .into_response())
}
