//! Account lifecycle: recovering a forgotten password with a mailed code, and changing the
//! password while signed in. Both end the user's other sessions and mail a notice.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_auth_contract::{
    AuthEventKind, MailRequest, MailTemplate, PasswordUpdate, PasswordUpdateResult, User,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{
    CODE_HOLD, FailureLimits, FieldErrors, code_minutes, store_code, within_cooldown,
};
use super::error::{ApiError, RateLimit};
use super::extract::{ApiJson, Text};
use super::openapi::{
    CrossSite, ErrorBody, Internal, MalformedJson, PayloadTooLarge, RateLimited, Unavailable,
    UnsupportedMediaType, ValidationFailed,
};
use super::sessions::{UserBody, current_session, directory_time, new_session, session_response};
use super::{AppState, ClientBucket};
use crate::crypto::otp_hashes_match;
use crate::domain::{EmailAddress, NewPassword, OtpCode, parse_offered_password};
use crate::events::{EventContext, Subject};
use crate::store::{CodeAttempt, CodePurpose, Revocation};

/// The address whose password is forgotten.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct RecoverRequest {
    /// Trimmed and lowercased by the API; an internationalized domain is converted to punycode.
    #[schema(default, value_type = String, format = Email, max_length = 254, required = true, example = "ada@example.com")]
    email: Text,
}

/// The same answer whether or not the address has an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverAccepted {
    message: &'static str,
}

/// Mails a recovery code to a registered address.
///
/// 202 for every valid address, the same body after the same work whether or not it has an
/// account; only a registered address gets a mail. A second request for one address within the
/// resend cooldown gets 429.
#[utoipa::path(
    post,
    path = "/recover",
    tag = "account",
    request_body(content = RecoverRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "If the address has an account, a recovery code is on its way.", body = RecoverAccepted),
        (status = 400, response = MalformedJson),
        (status = 403, response = CrossSite),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "recover", skip_all)]
pub async fn recover(
    State(state): State<AppState>,
    context: EventContext,
    ApiJson(body): ApiJson<RecoverRequest>,
) -> Result<Response, ApiError> {
    let email = body
        .email
        .as_str()
        .and_then(EmailAddress::parse)
        .map_err(|m| ApiError::field("email", m))?;
    let cooldown = format!("recover:{email}");
    within_cooldown(
        &state,
        &cooldown,
        RateLimit::RecoveryCooldown,
        store_recovery_code(&state, &email),
    )
    .await?;
    let subject = Subject::Address(state.keys.address_hash(&email));
    state.event(
        &context,
        AuthEventKind::RecoveryRequested,
        subject,
        None,
        None,
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(RecoverAccepted {
            message: "Check your inbox: if the address has an account, a recovery code is on its way.",
        }),
    )
        .into_response())
}

/// Stores a recovery code for every address, one no code matches for an unknown one, so both
/// do the same work; and hands the mail of a registered address to the outbox without waiting
/// for it, so the answer does not wait on a step only registered addresses take.
async fn store_recovery_code(state: &AppState, email: &EmailAddress) -> Result<(), ApiError> {
    let exists = state.directory.exists(email.as_str()).await?;
    let code = store_code(state, CodePurpose::Recovery, email, exists).await?;
    if exists {
        let mail = MailRequest {
            to: email.to_string(),
            template: MailTemplate::RecoveryCode {
                code: code.as_str().to_owned(),
                expires_in_minutes: code_minutes(state),
            },
        };
        let outbox = state.outbox.clone();
        tokio::spawn(async move {
            if let Err(error) = outbox.enqueue(mail).await {
                // The person asks again once the cooldown is over.
                tracing::warn!(%error, "could not hand a recovery mail to the outbox");
            }
        });
    }
    Ok(())
}

/// The recovery code from the mail and the new password.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct RecoverVerifyRequest {
    #[schema(default, value_type = String, format = Email, max_length = 254, required = true, example = "ada@example.com")]
    email: Text,
    /// The six digits from the recovery mail (surrounding spaces are ignored).
    #[schema(default, value_type = String, pattern = "^[0-9]{6}$", required = true, example = "012345")]
    otp: Text,
    /// The new password: 8 to 128 characters, used whole; one of the ~200,000 most common
    /// passwords is refused with 422.
    #[schema(default, value_type = String, min_length = 8, max_length = 128, format = Password, required = true, example = "plum kettle orbit 42")]
    password: Text,
}

/// Sets a new password with a recovery code.
///
/// The attempt is counted first and the code compared in constant time, as for verify. Then the
/// password is set, every session of the user ends, a new one starts (200 with the user and the
/// cookie), and a "your password was changed" mail goes out. A 503 gives the code back, so the
/// same request can be retried.
#[utoipa::path(
    post,
    path = "/recover/verify",
    tag = "account",
    request_body(content = RecoverVerifyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The password is set, the other sessions have ended and a new one has started.", body = UserBody, headers(("Set-Cookie" = String, description = "The session cookie."))),
        (status = 400, description = "`malformed_json`: the body is not a JSON object; or `invalid_code`: the code is wrong, expired or used up.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 409, description = "`request_conflict`: this code already set another password; send the first one again, or sign in with it.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "recover_verify", skip_all)]
pub async fn recover_verify(
    State(state): State<AppState>,
    Extension(client): Extension<ClientBucket>,
    context: EventContext,
    ApiJson(body): ApiJson<RecoverVerifyRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", body.email.as_str().and_then(EmailAddress::parse));
    let otp = errors.check("otp", body.otp.as_str().and_then(OtpCode::parse));
    let password = errors.check(
        "password",
        body.password.as_str().and_then(NewPassword::parse),
    );
    let (email, otp, password) =
        errors.finish(email.zip(otp).zip(password).map(|((e, o), p)| (e, o, p)))?;

    // The same limits as verify, counted in keys of their own.
    let failures = FailureLimits::new("recover-failures", &email, &client);
    failures
        .count(
            &state,
            state.policy.verify_failure_window,
            state.policy.verify_max_failures,
            state.policy.verify_max_failures_per_address,
            RateLimit::RecoveryFailures,
        )
        .await?;
    let code_key = CodePurpose::Recovery.key(email.as_str());
    let record = match state
        .store
        .attempt_code(&code_key, state.policy.otp_max_attempts)
        .await?
    {
        CodeAttempt::Check { record, .. } => record,
        CodeAttempt::Missing => return Err(ApiError::InvalidCode),
        CodeAttempt::Burned => {
            let subject = Subject::Address(state.keys.address_hash(&email));
            state.event(
                &context,
                AuthEventKind::CodeBurned,
                subject,
                Some("recovery"),
                None,
            );
            return Err(ApiError::InvalidCode);
        }
    };
    if !otp_hashes_match(&record.hash, &state.keys.otp_hash(&email, &otp)) {
        return Err(ApiError::InvalidCode);
    }
    // Held while the password is set, as verify holds its code (see there).
    let digest = state.keys.password_change_digest(&email, &password);
    if !state
        .store
        .hold_code(&code_key, &record.hash, &digest, CODE_HOLD)
        .await?
    {
        return Err(ApiError::InvalidCode);
    }
    if let Err(error) = failures.clear(&state).await {
        tracing::warn!(%error, "could not clear the recovery failure counts");
    }

    let answered = async {
        let update = PasswordUpdate {
            email: email.to_string(),
            password_hash: state.hasher.hash(password.expose(), &client.0).await?,
            request_digest: digest.clone(),
        };
        match state
            .directory
            .update_password(record.request_id, update)
            .await
        {
            Ok(PasswordUpdateResult::Updated {
                user,
                password_changed_at_ms,
            }) => {
                // Every session ends and the new one starts in the same step.
                let (jti, session) = new_session(user, &context);
                let jti_text = jti.to_string();
                let revocation = Revocation {
                    keep: Some(&jti_text),
                    revoke_before_ms: directory_time(Some(password_changed_at_ms)),
                    start: Some((&jti_text, &session)),
                };
                let ended = state
                    .store
                    .revoke_sessions(session.user.id, revocation, state.policy.session_ttl)
                    .await?;
                tracing::info!(user_id = %session.user.id, ended, "password recovered; other sessions revoked");
                let user_id = session.user.id;
                let subject = || Subject::UserAndAddress(user_id, state.keys.address_hash(&email));
                let reason = Some("recovery");
                state.event(&context, AuthEventKind::PasswordChanged, subject(), reason, None);
                let revoked = AuthEventKind::SessionsRevoked;
                state.event(&context, revoked, subject(), reason, Some(ended));
                Ok(Some((session.user, jti)))
            }
            // A code is stored for a registered address only, so the account went away since.
            Ok(PasswordUpdateResult::UnknownUser) => Ok(None),
            Err(error) => Err(ApiError::from(error)),
        }
    }
    .await;
    match answered {
        Ok(Some((user, jti))) => {
            consume(&state, &code_key, &record.hash).await;
            notify_password_changed(&state, &user).await;
            session_response(&state, user, jti, StatusCode::OK)
        }
        Ok(None) => {
            consume(&state, &code_key, &record.hash).await;
            Err(ApiError::InvalidCode)
        }
        Err(error) => {
            // Nothing may have changed, or the password may be set without the sessions
            // revoked: give the code back either way. The retry reuses the request id, so the
            // directory answers a landed change as before and does not apply it twice.
            if let Err(e) = state
                .store
                .release_code(&code_key, &record.hash, &digest)
                .await
            {
                tracing::warn!(error = %e, "could not release the recovery code after a failure");
            }
            Err(match error {
                ApiError::RequestConflict => ApiError::RecoveryConflict,
                other => other,
            })
        }
    }
}

async fn consume(state: &AppState, code_key: &str, hash: &str) {
    if let Err(error) = state.store.consume_code(code_key, hash).await {
        // It expires on its own; until then a reuse with the same password changes nothing.
        tracing::warn!(%error, "could not delete a used recovery code");
    }
}

/// Mails the "your password was changed" notice. The change stands either way, so a failure is
/// logged, not answered.
async fn notify_password_changed(state: &AppState, user: &User) {
    let mail = MailRequest {
        to: user.email.clone(),
        template: MailTemplate::PasswordChanged,
    };
    if let Err(error) = state.outbox.enqueue(mail).await {
        tracing::warn!(user_id = %user.id, %error, "could not send the password-changed notice");
    }
}

/// The current password and the new one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct ChangePasswordRequest {
    #[schema(default, value_type = String, min_length = 1, max_length = 128, format = Password, required = true)]
    current_password: Text,
    /// The new password: 8 to 128 characters, used whole; one of the ~200,000 most common
    /// passwords is refused with 422.
    #[schema(default, value_type = String, min_length = 8, max_length = 128, format = Password, required = true, example = "plum kettle orbit 42")]
    password: Text,
}

/// Changes the signed-in user's password.
///
/// The current password is checked with signin's failure limits (403 when wrong). Then the new
/// one is set, every other session of the user ends (this one stays), and a notice is mailed.
#[utoipa::path(
    post,
    path = "/password",
    tag = "account",
    request_body(content = ChangePasswordRequest, content_type = "application/json"),
    security(("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The password is changed and the other sessions have ended.", body = UserBody),
        (status = 400, response = MalformedJson),
        (status = 401, description = "`unauthenticated`: no live session.", body = ErrorBody),
        (status = 403, description = "`invalid_credentials`: the current password is wrong; or `cross_site_request`.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "change_password", skip_all)]
pub async fn change_password(
    State(state): State<AppState>,
    Extension(client): Extension<ClientBucket>,
    headers: HeaderMap,
    context: EventContext,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> Result<Response, ApiError> {
    let current = current_session(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let mut errors = FieldErrors::default();
    let offered = errors.check(
        "current_password",
        body.current_password
            .as_str()
            .and_then(parse_offered_password),
    );
    let password = errors.check(
        "password",
        body.password.as_str().and_then(NewPassword::parse),
    );
    let (offered, password) = errors.finish(offered.zip(password))?;
    let email = EmailAddress::parse(&current.session.user.email)
        .map_err(|_| ApiError::Internal("a session's email does not parse".into()))?;

    // Signin's limits, in signin's keys: a wrong current password is a failed signin.
    let failures = FailureLimits::new("signin-failures", &email, &client);
    failures
        .count(
            &state,
            state.policy.signin_failure_window,
            state.policy.signin_max_failures,
            state.policy.signin_max_failures_per_address,
            RateLimit::SigninFailures,
        )
        .await?;
    let credentials = state
        .directory
        .credentials(email.as_str())
        .await?
        .filter(|credentials| credentials.user.id == current.user_id)
        .ok_or(ApiError::Unauthenticated)?;
    let matches = state
        .hasher
        .verify(offered, Some(&credentials.password_hash), &client.0)
        .await?;
    if !matches {
        let subject = Subject::UserAndAddress(current.user_id, state.keys.address_hash(&email));
        let reason = Some("wrong_password");
        state.event(&context, AuthEventKind::SigninFailed, subject, reason, None);
        return Err(ApiError::WrongPassword);
    }
    failures.clear(&state).await?;

    let update = PasswordUpdate {
        email: email.to_string(),
        password_hash: state.hasher.hash(password.expose(), &client.0).await?,
        request_digest: state.keys.password_change_digest(&email, &password),
    };
    let (user, changed_at) = match state
        .directory
        .update_password(Uuid::new_v4(), update)
        .await?
    {
        PasswordUpdateResult::Updated {
            user,
            password_changed_at_ms,
        } => (user, password_changed_at_ms),
        PasswordUpdateResult::UnknownUser => return Err(ApiError::Unauthenticated),
    };
    let revocation = Revocation {
        keep: Some(&current.jti),
        revoke_before_ms: directory_time(Some(changed_at)),
        start: None,
    };
    let ended = state
        .store
        .revoke_sessions(user.id, revocation, state.policy.session_ttl)
        .await?;
    tracing::info!(user_id = %user.id, ended, "password changed; other sessions revoked");
    let subject = || Subject::UserAndAddress(user.id, state.keys.address_hash(&email));
    state.event(
        &context,
        AuthEventKind::PasswordChanged,
        subject(),
        Some("change"),
        None,
    );
    let (revoked, reason) = (AuthEventKind::SessionsRevoked, Some("password_change"));
    state.event(&context, revoked, subject(), reason, Some(ended));
    notify_password_changed(&state, &user).await;
    Ok(Json(UserBody { user }).into_response())
}
