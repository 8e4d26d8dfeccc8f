use async_trait::async_trait;
use broker_auth_contract::{
    Credentials, PasswordUpdate, PasswordUpdateResult, User, UserCreation, UserCreationResult,
};
use uuid::Uuid;

use crate::Result;

/// What a recorded (idempotent) request came to: user creations and password updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedOutcome<T> {
    /// The request was handled, now or by an earlier delivery of the same request id; the
    /// result is the one recorded then.
    Handled(T),
    /// The request id was already used by a request for another email: a client bug, never
    /// answered with someone else's outcome.
    RequestIdReused,
    /// The request id was already used for this email with other content (another request
    /// digest: a retry with another password or name). The first request's outcome stands and
    /// is not handed to the second.
    ContentConflict,
}

/// What a user-creation request came to.
pub type CreationOutcome = RecordedOutcome<UserCreationResult>;

/// What a password-update request came to.
pub type PasswordUpdateOutcome = RecordedOutcome<PasswordUpdateResult>;

/// Where the users live. Emails given to it are already normalized and validated.
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    /// Applies the schema migrations that are not applied yet.
    async fn migrate(&self) -> Result<()>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    async fn email_exists(&self, email: &str) -> Result<bool>;

    /// The user with this email and their password hash, if there is one.
    async fn find_credentials(&self, email: &str) -> Result<Option<Credentials>>;

    /// Creates the user unless the email is taken, and records the outcome under `request_id`
    /// in the same transaction. A request id seen before gets the recorded outcome back, so a
    /// redelivered request is answered exactly as the first delivery was.
    async fn create_user(&self, request_id: Uuid, user: &UserCreation) -> Result<CreationOutcome>;

    /// Sets the password of the account with `update.email` and its `password_changed_at`,
    /// and records the outcome under `request_id` in the same transaction. A request id seen
    /// before gets the recorded outcome back and changes nothing.
    async fn update_password(
        &self,
        request_id: Uuid,
        update: &PasswordUpdate,
    ) -> Result<PasswordUpdateOutcome>;
}

/// The shape both backends read a recorded password update into.
#[derive(sqlx::FromRow)]
pub(crate) struct RecordedUpdate {
    pub email: String,
    pub request_digest: String,
    pub outcome: String,
    pub changed_at_ms: Option<i64>,
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
}

pub(crate) const OUTCOME_UPDATED: &str = "updated";
pub(crate) const OUTCOME_UNKNOWN_USER: &str = "unknown_user";

impl RecordedUpdate {
    /// The answer a redelivery of the recorded update gets when it asks for `update`.
    pub(crate) fn into_outcome(self, update: &PasswordUpdate) -> Result<PasswordUpdateOutcome> {
        if self.email != update.email {
            return Ok(RecordedOutcome::RequestIdReused);
        }
        if self.request_digest != update.request_digest {
            return Ok(RecordedOutcome::ContentConflict);
        }
        let result = match (
            self.outcome.as_str(),
            self.user_id,
            self.user_email,
            self.user_name,
            self.changed_at_ms,
        ) {
            (OUTCOME_UPDATED, Some(id), Some(email), Some(name), Some(changed_at)) => {
                PasswordUpdateResult::Updated {
                    user: User { id, email, name },
                    password_changed_at_ms: changed_at,
                }
            }
            (OUTCOME_UNKNOWN_USER, ..) => PasswordUpdateResult::UnknownUser,
            _ => {
                return Err(crate::StoreError::Inconsistent(
                    "a recorded password update has no matching user",
                ));
            }
        };
        Ok(RecordedOutcome::Handled(result))
    }
}

/// The shape both backends read a recorded creation request into.
#[derive(sqlx::FromRow)]
pub(crate) struct RecordedCreation {
    pub email: String,
    pub request_digest: Option<String>,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
}

const OUTCOME_CREATED: &str = "created";
const OUTCOME_ALREADY_EXISTS: &str = "already_exists";

/// What a creation came to, given the row the user insert returned (none when the email was
/// taken): the outcome to record, the new user's id, and the reply.
pub(crate) fn creation_result(
    inserted: Option<(Uuid, String, String)>,
) -> (&'static str, Option<Uuid>, UserCreationResult) {
    match inserted {
        Some((id, email, name)) => (
            OUTCOME_CREATED,
            Some(id),
            UserCreationResult::Created {
                user: broker_auth_contract::User { id, email, name },
            },
        ),
        None => (
            OUTCOME_ALREADY_EXISTS,
            None,
            UserCreationResult::AlreadyExists,
        ),
    }
}

impl RecordedCreation {
    /// The answer a redelivery of the recorded request gets when it asks for `creation`.
    /// Digests are compared when both requests carry one; a request from a producer that
    /// predates digests is bound by its email only.
    pub(crate) fn into_outcome(self, creation: &UserCreation) -> Result<CreationOutcome> {
        if self.email != creation.email {
            return Ok(RecordedOutcome::RequestIdReused);
        }
        if let (Some(recorded), Some(asked)) = (&self.request_digest, &creation.request_digest)
            && recorded != asked
        {
            return Ok(RecordedOutcome::ContentConflict);
        }
        let result = match (
            self.outcome.as_str(),
            self.user_id,
            self.user_email,
            self.user_name,
        ) {
            (OUTCOME_CREATED, Some(id), Some(email), Some(name)) => UserCreationResult::Created {
                user: User { id, email, name },
            },
            (OUTCOME_ALREADY_EXISTS, _, _, _) => UserCreationResult::AlreadyExists,
            _ => {
                return Err(crate::StoreError::Inconsistent(
                    "a recorded user creation has no matching user",
                ));
            }
        };
        Ok(RecordedOutcome::Handled(result))
    }
}
