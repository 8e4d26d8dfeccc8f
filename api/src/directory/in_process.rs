use async_trait::async_trait;
use broker_auth_contract::{DirectoryRequest, RequestKind};
use broker_auth_user_store::UserDirectory;
use uuid::Uuid;

use super::{DirectoryError, DirectoryTransport};

/// Embedded mode: the request goes through the same decode → handle → encode path dbproc runs,
/// as a function call instead of two Kafka hops.
pub struct InProcessTransport {
    directory: UserDirectory,
}

impl InProcessTransport {
    pub fn new(directory: UserDirectory) -> Self {
        Self { directory }
    }
}

#[async_trait]
impl DirectoryTransport for InProcessTransport {
    async fn round_trip(
        &self,
        kind: RequestKind,
        _key: &str,
        request_id: Uuid,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, DirectoryError> {
        let envelope = DirectoryRequest::decode(kind, &body)
            .map_err(|e| DirectoryError::BadReply(format!("request did not encode: {e}")))?;
        let reply = self
            .directory
            .handle(request_id, envelope.body)
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        Ok(reply.encode(request_id))
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
