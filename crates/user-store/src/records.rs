//! Records kept for idempotency besides the users themselves: which mail requests were handed to
//! SMTP (so a redelivered mail request is not sent twice), and — in the users' tables — which
//! creation requests were handled. Both only need to outlive redelivery, so they are pruned by
//! age, in small batches.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::Result;

/// How many rows one pruning statement deletes at most, per table.
pub const PRUNE_BATCH: u32 = 500;

/// How often [`prune_periodically`] prunes (and once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// What one pruning round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub creation_requests: u64,
    pub sent_mail: u64,
    pub password_updates: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.creation_requests + self.sent_mail + self.password_updates
    }
}

#[async_trait]
pub trait RequestRecords: Send + Sync + 'static {
    /// Whether mail request `request_id` was already handed to SMTP.
    async fn mail_was_sent(&self, request_id: Uuid) -> Result<bool>;

    /// Records that mail request `request_id` was handed to SMTP; recording it again is a no-op.
    async fn record_mail_sent(&self, request_id: Uuid) -> Result<()>;

    /// Deletes at most `batch` records older than `max_age` from each record table, oldest
    /// first.
    async fn prune_batch(&self, max_age: Duration, batch: u32) -> Result<Pruned>;
}

/// Deletes every record older than `max_age`, [`PRUNE_BATCH`] rows per table and statement, so
/// no statement runs long or locks much. Returns what was deleted.
pub async fn prune_expired(records: &dyn RequestRecords, max_age: Duration) -> Result<Pruned> {
    let mut total = Pruned::default();
    loop {
        let pruned = records.prune_batch(max_age, PRUNE_BATCH).await?;
        total.creation_requests += pruned.creation_requests;
        total.sent_mail += pruned.sent_mail;
        total.password_updates += pruned.password_updates;
        let batch = u64::from(PRUNE_BATCH);
        if pruned.creation_requests < batch
            && pruned.sent_mail < batch
            && pruned.password_updates < batch
        {
            return Ok(total);
        }
    }
}

/// Prunes records older than `retention` now and every [`PRUNE_INTERVAL`] until `stop`
/// completes. Several processes may prune one database at once: each statement skips rows
/// another one has locked.
pub async fn prune_periodically(
    records: Arc<dyn RequestRecords>,
    retention: Duration,
    stop: impl Future<Output = ()>,
) {
    let rounds = async {
        loop {
            match prune_expired(records.as_ref(), retention).await {
                Ok(pruned) if pruned.total() > 0 => tracing::info!(
                    creation_requests = pruned.creation_requests,
                    sent_mail = pruned.sent_mail,
                    password_updates = pruned.password_updates,
                    retention_secs = retention.as_secs(),
                    "pruned expired request records"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    %error,
                    "could not prune expired request records; trying again later"
                ),
            }
            tokio::time::sleep(PRUNE_INTERVAL).await;
        }
    };
    tokio::select! {
        () = stop => {}
        () = rounds => {}
    }
}
