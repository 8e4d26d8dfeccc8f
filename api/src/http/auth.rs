//! The five flows under `/api/v1/auth`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_auth_contract::{
    AuthEventKind, MailRequest, MailTemplate, UserCreation, UserCreationResult,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, RateLimit};
use super::extract::{ApiJson, Text};
use super::openapi::{
    CrossSite, ErrorBody, Internal, MalformedJson, PayloadTooLarge, RateLimited, Unavailable,
    UnsupportedMediaType, ValidationFailed,
};
use super::sessions::{UserBody, current_session, directory_time, start_session};
use super::{AppState, ClientBucket};
use crate::crypto::{generate_otp, otp_hashes_match, random_unmatchable_hash};
use crate::domain::{DisplayName, EmailAddress, NewPassword, OtpCode, parse_offered_password};
use crate::events::{EventContext, Subject};
use crate::store::{CodeAttempt, CodePurpose, CodeRecord};

/// How long a verify holds its code against verifies with other details: longer than a verify
/// takes (a bcrypt hash, a Kafka request within its reply timeout, a session write), so a hold
/// is not taken from a verify still running. The same details take it over at once.
pub(super) const CODE_HOLD: Duration = Duration::from_secs(30);

/// The two failure counters of one kind for an address: one per (address, client IP) with a low
/// limit, and one per address with a high one. A single source is stopped early, and it cannot
/// use up the allowance of the owner, who signs in from somewhere else.
pub(super) struct FailureLimits {
    per_client: String,
    per_address: String,
}

impl FailureLimits {
    pub(super) fn new(kind: &str, email: &EmailAddress, client: &ClientBucket) -> Self {
        Self {
            per_client: format!("{kind}-from:{}:{email}", client.0),
            per_address: format!("{kind}:{email}"),
        }
    }

    /// Counts one attempt before it is checked, so parallel attempts cannot overrun a limit.
    /// An attempt refused by the client's own limit is not added to the address's.
    pub(super) async fn count(
        &self,
        state: &AppState,
        window: std::time::Duration,
        per_client_max: u64,
        per_address_max: u64,
        limit: RateLimit,
    ) -> Result<(), ApiError> {
        for (key, max) in [
            (&self.per_client, per_client_max),
            (&self.per_address, per_address_max),
        ] {
            let (attempts, retry_after) = state.store.hit(key, window).await?;
            if attempts > max {
                return Err(ApiError::RateLimited { retry_after, limit });
            }
        }
        Ok(())
    }

    pub(super) async fn clear(&self, state: &AppState) -> Result<(), ApiError> {
        state.store.reset(&self.per_client).await?;
        state.store.reset(&self.per_address).await?;
        Ok(())
    }
}

/// Collects per-field messages so one response names every invalid field.
#[derive(Default)]
pub(super) struct FieldErrors(BTreeMap<&'static str, &'static str>);

impl FieldErrors {
    pub(super) fn check<T>(
        &mut self,
        field: &'static str,
        parsed: Result<T, &'static str>,
    ) -> Option<T> {
        parsed.map_err(|message| self.0.insert(field, message)).ok()
    }

    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ApiError::Validation(self.0)),
        }
    }
}

/// The address to send a code to.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SignupRequest {
    /// Trimmed and lowercased by the API; an internationalized domain is converted to punycode.
    #[schema(default, value_type = String, format = Email, max_length = 254, required = true, example = "ada@example.com")]
    email: Text,
}

/// The same answer whether or not the address has an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupAccepted {
    message: &'static str,
}

/// Sends a code (or an "account exists" notice to a registered address).
///
/// 202 for every valid address, the same whether or not it has an account.
#[utoipa::path(
    post,
    path = "/signup",
    tag = "auth",
    request_body(content = SignupRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "A mail is on its way (a code, or a notice that the address has an account).", body = SignupAccepted),
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
#[tracing::instrument(name = "signup", skip_all)]
pub async fn signup(
    State(state): State<AppState>,
    context: EventContext,
    ApiJson(body): ApiJson<SignupRequest>,
) -> Result<Response, ApiError> {
    let email = body
        .email
        .as_str()
        .and_then(EmailAddress::parse)
        .map_err(|m| ApiError::field("email", m))?;
    let cooldown = format!("signup:{email}");
    within_cooldown(
        &state,
        &cooldown,
        RateLimit::SignupCooldown,
        send_signup_mail(&state, &email),
    )
    .await?;
    state.event(
        &context,
        AuthEventKind::SignupRequested,
        Subject::Address(state.keys.address_hash(&email)),
        None,
        None,
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(SignupAccepted {
            message: "Check your inbox: if the address can receive mail, a message is on its way.",
        }),
    )
        .into_response())
}

/// Runs `send` unless a resend cooldown `key` is running (then 429 with `limit`). When `send`
/// fails nothing went out, so the cooldown is ended: the person may try again at once.
pub(super) async fn within_cooldown(
    state: &AppState,
    key: &str,
    limit: RateLimit,
    send: impl Future<Output = Result<(), ApiError>>,
) -> Result<(), ApiError> {
    if let Some(retry_after) = state
        .store
        .start_cooldown(key, state.policy.resend_cooldown)
        .await?
    {
        return Err(ApiError::RateLimited { retry_after, limit });
    }
    if let Err(error) = send.await {
        if let Err(e) = state.store.end_cooldown(key).await {
            tracing::warn!(error = %e, "could not end a resend cooldown");
        }
        return Err(error);
    }
    Ok(())
}

/// Stores a fresh code for `email` under `purpose` and returns it. Only a `usable` record holds
/// the code's keyed hash; the other gets a random hash no code matches, so both paths do the
/// same work and a verify behaves the same for them.
pub(super) async fn store_code(
    state: &AppState,
    purpose: CodePurpose,
    email: &EmailAddress,
    usable: bool,
) -> Result<OtpCode, ApiError> {
    let code = generate_otp();
    let hash = if usable {
        state.keys.otp_hash(email, &code)
    } else {
        random_unmatchable_hash()
    };
    let record = CodeRecord {
        hash,
        request_id: Uuid::new_v4(),
        attempts: 0,
        hold: None,
    };
    state
        .store
        .put_code(&purpose.key(email.as_str()), &record, state.policy.otp_ttl)
        .await?;
    Ok(code)
}

/// How long a code lives, in whole minutes, as the mail says it.
pub(super) fn code_minutes(state: &AppState) -> u32 {
    u32::try_from(state.policy.otp_ttl.as_secs().div_ceil(60)).unwrap_or(u32::MAX)
}

async fn send_signup_mail(state: &AppState, email: &EmailAddress) -> Result<(), ApiError> {
    let exists = state.directory.exists(email.as_str()).await?;
    // A registered address gets a record too, one no code matches.
    let code = store_code(state, CodePurpose::Signup, email, !exists).await?;
    let template = if exists {
        MailTemplate::AccountExists
    } else {
        MailTemplate::SignupCode {
            code: code.as_str().to_owned(),
            expires_in_minutes: code_minutes(state),
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

/// The code from the mail, and the new account's password and name.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct VerifyRequest {
    #[schema(default, value_type = String, format = Email, max_length = 254, required = true, example = "ada@example.com")]
    email: Text,
    /// The six digits from the mail (surrounding spaces are ignored).
    #[schema(default, value_type = String, pattern = "^[0-9]{6}$", required = true, example = "012345")]
    otp: Text,
    /// 8 to 128 characters, counted as characters; used whole (never truncated). One of the
    /// ~200,000 most common passwords is refused with 422 (a list no schema can carry).
    #[schema(default, value_type = String, min_length = 8, max_length = 128, format = Password, required = true, example = "plum kettle orbit 42")]
    password: Text,
    /// Shown to the user; trimmed, not blank, at most 200 characters, no control characters (the
    /// pattern: some character that is neither a space nor a control, and no control at all).
    /// Unicode format characters (bidi controls, zero-width characters) and unassigned code
    /// points are refused with 422 too; the pattern cannot name those classes portably.
    #[schema(default, value_type = String, min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$", required = true, example = "Ada Lovelace")]
    name: Text,
}

/// Checks the code and creates the account.
///
/// The attempt is counted first, the code compared in constant time and consumed once; then the
/// user is created and a session started: 201 with the user and the cookie. A 503 gives the code
/// back, so the same request can be retried.
#[utoipa::path(
    post,
    path = "/verify",
    tag = "auth",
    request_body(content = VerifyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The account exists and the session has started.", body = UserBody, headers(("Set-Cookie" = String, description = "The session cookie."))),
        (status = 400, description = "`malformed_json`: the body is not a JSON object; or `invalid_code`: the code is wrong, expired or used up.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 409, description = "`account_exists`: the address already has an account. `request_conflict`: this code already created the account with another name or password; send the first ones again, or sign in.", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "verify", skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    Extension(client): Extension<ClientBucket>,
    context: EventContext,
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
    let failures = FailureLimits::new("verify-failures", &email, &client);
    failures
        .count(
            &state,
            state.policy.verify_failure_window,
            state.policy.verify_max_failures,
            state.policy.verify_max_failures_per_address,
            RateLimit::VerifyFailures,
        )
        .await?;
    let code_key = CodePurpose::Signup.key(email.as_str());
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
                Some("signup"),
                None,
            );
            return Err(ApiError::InvalidCode);
        }
    };
    let candidate = state.keys.otp_hash(&email, &otp);
    if !otp_hashes_match(&record.hash, &candidate) {
        return Err(ApiError::InvalidCode);
    }
    // The code is held, not deleted, while the account is created, and deleted only once the
    // session exists: a failure from here on, even one that leaves the store unreachable,
    // cannot use it up. The holder is the digest of this verify's details, so the person's
    // retry takes the hold over at once, while a verify with other details cannot.
    let digest = state.keys.creation_digest(&email, &name, &password);
    if !state
        .store
        .hold_code(&code_key, &record.hash, &digest, CODE_HOLD)
        .await?
    {
        // A concurrent verify of the same code, with other details, holds it.
        return Err(ApiError::InvalidCode);
    }
    // Clearing the failure counts is a courtesy, not worth failing the verify for.
    if let Err(error) = failures.clear(&state).await {
        tracing::warn!(%error, "could not clear the verify failure counts");
    }

    let created = async {
        let password_hash = state.hasher.hash(password.expose(), &client.0).await?;
        let creation = UserCreation {
            email: email.to_string(),
            request_digest: Some(digest.clone()),
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
    let answered = match created {
        Ok(UserCreationResult::Created { user }) => {
            let subject = Subject::UserAndAddress(user.id, state.keys.address_hash(&email));
            state.event(&context, AuthEventKind::AccountCreated, subject, None, None);
            start_session(&state, user, &context, None, StatusCode::CREATED).await
        }
        Ok(UserCreationResult::AlreadyExists) => Err(ApiError::AccountExists),
        Err(error) => Err(error),
    };
    match answered {
        Ok(response) => {
            if let Err(error) = state.store.consume_code(&code_key, &record.hash).await {
                // It expires on its own. Until then a reuse with these details gets another
                // session on the same account (the creation request is answered as before), and
                // one with other details is refused: no second account either way.
                tracing::warn!(%error, "could not delete a used code");
            }
            Ok(response)
        }
        Err(error @ ApiError::AccountExists) => {
            // Settled: the code has nothing left to do.
            if let Err(e) = state.store.consume_code(&code_key, &record.hash).await {
                tracing::warn!(error = %e, "could not delete a code whose account exists");
            }
            Err(error)
        }
        Err(error) => {
            // The account may not exist yet, or exist without a session: release the code so
            // the person can retry. The retry reuses the request id, so a creation that did
            // land is not repeated (the worker answers it as before, and the retry gets its
            // session), and a retry with another name or password is refused (409
            // request_conflict) rather than answered with the first one's account. The attempt
            // is given back: the code was right, and a dependency that does not answer must
            // not burn it however often the person retries. If the release fails too, the
            // retry takes the hold over (same details) or waits out its lease (others).
            if let Err(e) = state
                .store
                .release_code(&code_key, &record.hash, &digest)
                .await
            {
                tracing::warn!(error = %e, "could not release the code after a failed creation");
            }
            Err(error)
        }
    }
}

/// An address and its password.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SigninRequest {
    #[schema(default, value_type = String, format = Email, max_length = 254, required = true, example = "ada@example.com")]
    email: Text,
    #[schema(default, value_type = String, min_length = 1, max_length = 128, format = Password, required = true)]
    password: Text,
}

/// Starts a session.
///
/// 200 with the user and the cookie; one 401 for an unknown address and a wrong password alike,
/// after the same bcrypt work.
#[utoipa::path(
    post,
    path = "/signin",
    tag = "auth",
    request_body(content = SigninRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The session has started.", body = UserBody, headers(("Set-Cookie" = String, description = "The session cookie."))),
        (status = 400, response = MalformedJson),
        (status = 401, description = "`invalid_credentials`: unknown address or wrong password (one answer for both).", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "signin", skip_all)]
pub async fn signin(
    State(state): State<AppState>,
    Extension(client): Extension<ClientBucket>,
    context: EventContext,
    ApiJson(body): ApiJson<SigninRequest>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let email = errors.check("email", body.email.as_str().and_then(EmailAddress::parse));
    let password = errors.check(
        "password",
        body.password.as_str().and_then(parse_offered_password),
    );
    let (email, password) = errors.finish(email.zip(password))?;

    // Counted before the password is checked, so parallel guesses cannot overrun the limits;
    // a successful signin clears the counts.
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
    let credentials = state.directory.credentials(email.as_str()).await?;
    let matches = state
        .hasher
        .verify(
            password,
            credentials.as_ref().map(|c| c.password_hash.as_str()),
            &client.0,
        )
        .await?;
    let address = state.keys.address_hash(&email);
    match credentials {
        Some(credentials) if matches => {
            let subject = Subject::UserAndAddress(credentials.user.id, address);
            state.event(
                &context,
                AuthEventKind::SigninSucceeded,
                subject,
                None,
                None,
            );
            failures.clear(&state).await?;
            // The last password change re-asserts the revocation of older sessions, in case it
            // was missed when the password changed.
            let changed = directory_time(credentials.password_changed_at_ms);
            start_session(&state, credentials.user, &context, changed, StatusCode::OK).await
        }
        Some(credentials) => {
            let subject = Subject::UserAndAddress(credentials.user.id, address);
            let reason = Some("wrong_password");
            state.event(&context, AuthEventKind::SigninFailed, subject, reason, None);
            Err(ApiError::InvalidCredentials)
        }
        None => {
            let reason = Some("unknown_address");
            let subject = Subject::Address(address);
            state.event(&context, AuthEventKind::SigninFailed, subject, reason, None);
            Err(ApiError::InvalidCredentials)
        }
    }
}

/// The signed-in user.
///
/// 200 `{user}` for a live session (token valid and not revoked), else 401.
#[utoipa::path(
    get,
    path = "/me",
    tag = "auth",
    security(("session_cookie" = []), ("session_cookie_plain" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The session's user.", body = UserBody),
        (status = 401, description = "`unauthenticated`: no token, an invalid or expired one, or a revoked session.", body = ErrorBody),
        (status = 403, response = CrossSite),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(name = "me", skip_all)]
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let current = current_session(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Json(UserBody {
        user: current.session.user,
    })
    .into_response())
}
