//! The five flows under `/api/v1/auth`.

use std::collections::BTreeMap;

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
use super::extract::ApiJson;
use crate::cookie::{clearing_cookie, session_cookie, session_token};
use crate::crypto::{generate_otp, otp_hashes_match};
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
    email: String,
}

/// 202 for every valid address: a code to a new one, an "account exists" notice to a known one.
#[tracing::instrument(name = "signup", skip_all)]
pub async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignupRequest>,
) -> Result<Response, ApiError> {
    let email = EmailAddress::parse(&body.email).map_err(|m| ApiError::field("email", m))?;
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
    let template = if state.directory.exists(email.as_str()).await? {
        MailTemplate::AccountExists
    } else {
        let code = generate_otp();
        let record = CodeRecord {
            hash: state.keys.otp_hash(email, &code),
            request_id: Uuid::new_v4(),
            attempts: 0,
        };
        state
            .store
            .put_code(email.as_str(), &record, state.policy.otp_ttl)
            .await?;
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
    email: String,
    otp: String,
    password: String,
    name: String,
}

/// Checks the code (attempt counted first, constant-time compare, consumed once), creates the
/// user and starts a session: 201 with the user and the cookie.
#[tracing::instrument(name = "verify", skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", EmailAddress::parse(&body.email));
    let otp = errors.check("otp", OtpCode::parse(&body.otp));
    let password = errors.check("password", NewPassword::parse(&body.password));
    let name = errors.check("name", DisplayName::parse(&body.name));
    let (email, otp, password, name) = errors.finish(
        email
            .zip(otp)
            .zip(password.zip(name))
            .map(|((e, o), (p, n))| (e, o, p, n)),
    )?;

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
            // The account may not exist yet: give the code back so the person can retry. The
            // retry reuses the request id, so a creation that did land late is not repeated.
            if let Err(e) = state
                .store
                .put_code(email.as_str(), &record, remaining)
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
    email: String,
    password: String,
}

/// 200 with the user and the cookie; one 401 for an unknown address and a wrong password alike,
/// after the same bcrypt work.
#[tracing::instrument(name = "signin", skip_all)]
pub async fn signin(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SigninRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", EmailAddress::parse(&body.email));
    let password = errors.check("password", parse_offered_password(&body.password));
    let (email, password) = errors.finish(email.zip(password))?;

    let failures_key = format!("signin-failures:{email}");
    let (failures, retry_after) = state.store.count(&failures_key).await?;
    if failures >= state.policy.signin_max_failures {
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
        _ => {
            state
                .store
                .hit(&failures_key, state.policy.signin_failure_window)
                .await?;
            Err(ApiError::InvalidCredentials)
        }
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
