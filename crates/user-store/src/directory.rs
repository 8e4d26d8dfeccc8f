use std::sync::Arc;

use broker_auth_contract::{
    AuthenticationLookup, AuthenticationResult, DirectoryReply, DirectoryRequest, ExistenceCheck,
    ExistenceResult, PasswordUpdate, PasswordUpdateResult, Reply, UserCreation,
};
use uuid::Uuid;

use crate::validation::{self, Rejection, codes};
use crate::{RecordedOutcome, Result, UserRepository};

/// The one handler of user-directory requests, whatever transport brought them.
///
/// It validates what arrives (a [`Reply::Rejected`] for anything malformed), answers from the
/// repository, and makes user creation idempotent by request id. Errors are only what the
/// database could not do; see [`crate::StoreError::is_transient`].
#[derive(Clone)]
pub struct UserDirectory {
    repository: Arc<dyn UserRepository>,
}

impl std::fmt::Debug for UserDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDirectory").finish_non_exhaustive()
    }
}

impl UserDirectory {
    pub fn new(repository: Arc<dyn UserRepository>) -> Self {
        Self { repository }
    }

    /// Answers one request. `request_id` identifies the logical request; a redelivered
    /// creation request with the same id gets the same reply.
    pub async fn handle(
        &self,
        request_id: Uuid,
        request: DirectoryRequest,
    ) -> Result<DirectoryReply> {
        let kind = request.kind();
        let reply = match request {
            DirectoryRequest::ExistenceCheck(check) => {
                DirectoryReply::ExistenceCheck(self.check_existence(check).await?)
            }
            DirectoryRequest::UserCreation(creation) => {
                DirectoryReply::UserCreation(self.create_user(request_id, creation).await?)
            }
            DirectoryRequest::Authentication(lookup) => {
                DirectoryReply::Authentication(self.authenticate(lookup).await?)
            }
            DirectoryRequest::PasswordUpdate(update) => {
                DirectoryReply::PasswordUpdate(self.update_password(request_id, update).await?)
            }
        };
        if let Some((code, _)) = reply.rejection() {
            tracing::info!(%request_id, kind = kind.label(), code, "directory request rejected");
        }
        Ok(reply)
    }

    async fn check_existence(&self, check: ExistenceCheck) -> Result<Reply<ExistenceResult>> {
        if let Err(rejection) = validation::check_email(&check.email) {
            return Ok(rejected(rejection));
        }
        let exists = self.repository.email_exists(&check.email).await?;
        Ok(Reply::Ok {
            result: ExistenceResult { exists },
        })
    }

    async fn create_user(
        &self,
        request_id: Uuid,
        creation: UserCreation,
    ) -> Result<Reply<broker_auth_contract::UserCreationResult>> {
        let checks = validation::check_email(&creation.email)
            .and_then(|()| validation::check_name(&creation.name))
            .and_then(|()| validation::check_password_hash(&creation.password_hash))
            .and_then(|()| validation::check_request_digest(creation.request_digest.as_deref()));
        if let Err(rejection) = checks {
            return Ok(rejected(rejection));
        }
        Ok(answer(
            self.repository.create_user(request_id, &creation).await?,
            "this request id was already used with another name or password",
        ))
    }

    async fn update_password(
        &self,
        request_id: Uuid,
        update: PasswordUpdate,
    ) -> Result<Reply<PasswordUpdateResult>> {
        let checks = validation::check_email(&update.email)
            .and_then(|()| validation::check_password_hash(&update.password_hash))
            .and_then(|()| validation::check_request_digest(Some(&update.request_digest)));
        if let Err(rejection) = checks {
            return Ok(rejected(rejection));
        }
        Ok(answer(
            self.repository.update_password(request_id, &update).await?,
            "this request id was already used with another password",
        ))
    }

    async fn authenticate(
        &self,
        lookup: AuthenticationLookup,
    ) -> Result<Reply<AuthenticationResult>> {
        if let Err(rejection) = validation::check_email(&lookup.email) {
            return Ok(rejected(rejection));
        }
        let account = self.repository.find_credentials(&lookup.email).await?;
        Ok(Reply::Ok {
            result: AuthenticationResult { account },
        })
    }
}

/// The reply to a recorded request: its result, or why the request id cannot have one.
fn answer<T>(outcome: RecordedOutcome<T>, conflict: &'static str) -> Reply<T> {
    match outcome {
        RecordedOutcome::Handled(result) => Reply::Ok { result },
        RecordedOutcome::RequestIdReused => rejected(Rejection {
            code: codes::REQUEST_ID_REUSED,
            message: "this request id was already used for another email",
        }),
        RecordedOutcome::ContentConflict => rejected(Rejection {
            code: codes::REQUEST_CONFLICT,
            message: conflict,
        }),
    }
}

fn rejected<T>(rejection: Rejection) -> Reply<T> {
    Reply::Rejected {
        code: rejection.code.to_owned(),
        message: rejection.message.to_owned(),
    }
}
