//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas never reconcile
//! at once. Only the leader runs the controller; every replica serves metrics.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    duration: Duration,
    /// The other holder's record as last seen, and when (on this replica's clock).
    observed: Mutex<Option<Observation>>,
}

/// Expiry is judged as client-go's leader election judges it: a lease held by someone else has
/// expired when its record has not changed for `leaseDurationSeconds` *as measured here*, so
/// clock skew between nodes cannot make a candidate take a lease its holder still renews.
#[derive(Debug, Clone)]
struct Observation {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    seen_at: Instant,
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl LeaseLock {
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        holder: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            holder: holder.into(),
            duration,
            observed: Mutex::new(None),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Whether `spec`, held by another replica, has gone unrenewed for its whole duration since
    /// this replica first saw it as it is now.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            spec.lease_duration_seconds,
        );
        let now = Instant::now();
        let Ok(mut observed) = self.observed.lock() else {
            return false;
        };
        let seen_at = match observed.as_ref() {
            Some(last) if last.record == record => last.seen_at,
            _ => {
                *observed = Some(Observation {
                    record,
                    seen_at: now,
                });
                now
            }
        };
        let valid_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs);
        now.duration_since(seen_at) >= valid_for
    }

    /// Takes the lease if it is free or expired, renews it if it is ours. `Ok(false)` when
    /// someone else holds it (or won a race for it).
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(error) if conflict(&error) => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !ours && !free && !self.expired(&spec) {
            return Ok(false);
        }
        let mut updated = lease.clone();
        updated.spec = Some(LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        // The resourceVersion in `updated` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if conflict(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the lease up so another replica takes over without waiting for it to expire.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if conflict(&error) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits until this replica holds the lease, or `shutdown`. Returns whether it leads.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let retry = self.duration / 3;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads"),
                Err(error) => tracing::warn!(%error, "leader election request failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Renews the lease until it cannot, then cancels `lost`. Renewal failures are tolerated
    /// for as long as the lease would still be valid.
    pub async fn keep_renewing(&self, lost: CancellationToken) {
        let every = self.duration / 3;
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %self.name, "lost the lease to another replica");
                    lost.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the lease");
                    // Step down before the lease can expire and another replica take it.
                    if last_renewed.elapsed() >= self.duration * 2 / 3 {
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }
}
