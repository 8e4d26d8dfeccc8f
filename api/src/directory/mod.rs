//! The API's client of the user directory: typed calls over a transport.
//!
//! Distributed mode sends requests over Kafka to dbproc ([`KafkaTransport`]); embedded mode hands
//! the same encoded request to the same handler in-process ([`InProcessTransport`]). Both paths
//! encode, decode and map errors here, once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_auth_contract::{
    Authenticate, AuthenticationLookup, CheckExistence, CreateUser, Credentials, DirectoryRpc,
    Envelope, ExistenceCheck, PasswordUpdate, PasswordUpdateResult, Reply, RequestKind,
    UpdatePassword, UserCreation, UserCreationResult,
};
use uuid::Uuid;

mod in_process;
mod kafka;

pub use in_process::InProcessTransport;
pub use kafka::{KafkaTransport, RpcTiming};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the user directory did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the user directory is unreachable: {0}")]
    Unavailable(String),
    #[error("the user directory rejected the request ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("the user directory's reply could not be decoded: {0}")]
    BadReply(String),
}

/// Moves one encoded request to the directory and its encoded reply back.
#[async_trait]
pub trait DirectoryTransport: Send + Sync + 'static {
    /// `body` is an encoded [`Envelope`] of the request type of `kind`; the result is the encoded
    /// [`Envelope`] of its [`Reply`]. `key` (the normalized email) orders requests per user.
    async fn round_trip(
        &self,
        kind: RequestKind,
        key: &str,
        request_id: Uuid,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, DirectoryError>;

    /// `Ok` when requests can be sent and replies will be read; otherwise why not.
    async fn ready(&self) -> Result<(), String>;
}

#[derive(Clone)]
pub struct Directory {
    transport: Arc<dyn DirectoryTransport>,
}

impl Directory {
    pub fn new(transport: Arc<dyn DirectoryTransport>) -> Self {
        Self { transport }
    }

    async fn call<R: DirectoryRpc>(
        &self,
        key: &str,
        request_id: Uuid,
        request: R::Request,
    ) -> Result<R::Response, DirectoryError> {
        let body = Envelope::new(request_id, request).to_json();
        let reply = self
            .transport
            .round_trip(R::KIND, key, request_id, body)
            .await?;
        let envelope = Envelope::<Reply<R::Response>>::from_json(&reply)
            .map_err(|e| DirectoryError::BadReply(e.to_string()))?;
        match envelope.body {
            Reply::Ok { result } => Ok(result),
            Reply::Rejected { code, message } => Err(DirectoryError::Rejected { code, message }),
        }
    }

    pub async fn exists(&self, email: &str) -> Result<bool, DirectoryError> {
        let request = ExistenceCheck {
            email: email.to_owned(),
        };
        Ok(self
            .call::<CheckExistence>(email, Uuid::new_v4(), request)
            .await?
            .exists)
    }

    /// Creates a user; idempotent by `request_id`.
    pub async fn create_user(
        &self,
        request_id: Uuid,
        creation: UserCreation,
    ) -> Result<UserCreationResult, DirectoryError> {
        let key = creation.email.clone();
        self.call::<CreateUser>(&key, request_id, creation).await
    }

    pub async fn credentials(&self, email: &str) -> Result<Option<Credentials>, DirectoryError> {
        let request = AuthenticationLookup {
            email: email.to_owned(),
        };
        Ok(self
            .call::<Authenticate>(email, Uuid::new_v4(), request)
            .await?
            .account)
    }

    /// Sets a new password; idempotent by `request_id`.
    pub async fn update_password(
        &self,
        request_id: Uuid,
        update: PasswordUpdate,
    ) -> Result<PasswordUpdateResult, DirectoryError> {
        let key = update.email.clone();
        self.call::<UpdatePassword>(&key, request_id, update).await
    }

    pub async fn ready(&self) -> Result<(), String> {
        self.transport.ready().await
    }
}
