//! The reply topics of API instances that are gone.
//!
//! Every API instance reads its replies from a topic of its own, `{prefix}api-replies.{pod}`
//! (`broker_auth_contract::Topics::instance_replies`), and deletes it when it shuts down. A pod
//! that never shut down (killed, its node lost) leaves its topic behind; the operator deletes
//! such a topic once no pod of that name has existed for [`ORPHAN_GRACE`] (a new pod may create
//! its topic a moment before the operator's pod list shows it; a live instance whose topic was
//! deleted anyway creates it again).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use broker_auth_contract::Topics;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::time::Instant;

use crate::crd::BrokerAuth;
use crate::error::Result;
use crate::reconcile::{Context, kafka_settings};
use crate::resources::{Tier, selector};

/// How long a reply topic must have had no pod before it is deleted.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Per BrokerAuth: reply topics without a pod, and since when the operator has known.
#[derive(Debug, Default)]
pub struct Orphans(HashMap<ObjectRef<BrokerAuth>, HashMap<String, Instant>>);

impl Orphans {
    /// Records what a sweep found (`orphans`, at `now`) and returns those orphaned for at least
    /// [`ORPHAN_GRACE`]. A topic that has a pod again is forgotten.
    pub fn settle(
        &mut self,
        ba: &BrokerAuth,
        orphans: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<String> {
        let seen = self.0.entry(ObjectRef::from_obj(ba)).or_default();
        seen.retain(|topic, _| orphans.contains(topic));
        let mut due = Vec::new();
        for topic in orphans {
            let since = *seen.entry(topic.clone()).or_insert(now);
            if now.duration_since(since) >= ORPHAN_GRACE {
                due.push(topic.clone());
            }
        }
        due
    }

    pub fn forget(&mut self, ba: &BrokerAuth) {
        self.0.remove(&ObjectRef::from_obj(ba));
    }
}

/// The BrokerAuth's instance reply topics, whatever pods there are.
pub async fn instance_reply_topics(
    ba: &BrokerAuth,
    topics: &Topics,
    ctx: &Context,
) -> Result<Vec<String>> {
    let mut names = ctx
        .kafka
        .list_topics(&kafka_settings(ba), &topics.instance_replies_prefix())
        .await?;
    names.retain(|name| topics.instance_of(name).is_some());
    Ok(names)
}

/// Deletes the reply topics whose API pod has been gone for [`ORPHAN_GRACE`]; returns the
/// topics deleted.
pub async fn sweep(
    ba: &BrokerAuth,
    namespace: &str,
    topics: &Topics,
    ctx: &Context,
) -> Result<Vec<String>> {
    let existing = instance_reply_topics(ba, topics, ctx).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let live: BTreeSet<String> = pods
        .list_metadata(&ListParams::default().labels(&selector(&ba.name_any(), Tier::Api)))
        .await?
        .items
        .iter()
        .map(|pod| pod.name_any())
        .collect();
    let orphans: BTreeSet<String> = existing
        .into_iter()
        .filter(|topic| {
            topics
                .instance_of(topic)
                .is_some_and(|instance| !live.contains(instance.as_str()))
        })
        .collect();
    let due = ctx.orphans(|orphans_seen| orphans_seen.settle(ba, &orphans, Instant::now()));
    if due.is_empty() {
        return Ok(due);
    }
    let left = ctx.kafka.delete_topics(&kafka_settings(ba), &due).await?;
    for left in &left {
        tracing::warn!(%left, "kafka refused to delete a gone instance's reply topic");
    }
    let deleted: Vec<String> = due
        .into_iter()
        .filter(|topic| !left.iter().any(|l| &l.name == topic))
        .collect();
    if !deleted.is_empty() {
        tracing::info!(topics = ?deleted, uid = ?ba.meta().uid, "deleted the reply topics of api pods that are gone");
    }
    Ok(deleted)
}
