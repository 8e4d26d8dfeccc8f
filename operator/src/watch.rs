//! What triggers a reconcile. One BrokerAuth watch per replica feeds both the external metrics
//! API (every replica) and the controller (the leader only); a change reaches the controller only
//! when it is one reconcile must act on: the spec (generation), the finalizers, deletion. The
//! operator's own status writes change none of these, so they never trigger the next reconcile.
//! Children trigger on what their owner shows or repairs, not on every status write of theirs
//! (an HPA rewrites its status on every sync).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::crd::BrokerAuth;
use crate::resources;

/// How many BrokerAuth changes wait for a slow controller before the oldest are dropped (the
/// refresh timer reconciles every object again soon anyway).
const CHANGE_BUFFER: usize = 1024;

fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What a reconcile of a BrokerAuth acts on. Status is not part of it.
pub fn brokerauth_fingerprint(ba: &BrokerAuth) -> u64 {
    hash(&(
        ba.metadata.generation,
        ba.finalizers(),
        ba.metadata.deletion_timestamp.is_some(),
    ))
}

/// What the owner shows of a Deployment: its spec and how far its rollout got.
pub fn deployment_fingerprint(deployment: &Deployment) -> u64 {
    let status = deployment.status.clone().unwrap_or_default();
    hash(&(
        deployment.metadata.generation,
        status.observed_generation,
        status.replicas,
        status.ready_replicas,
        status.updated_replicas,
    ))
}

/// A child's spec: its generation where the kind has one, else any change.
pub fn spec_fingerprint<K: Resource>(child: &K) -> u64 {
    let meta = child.meta();
    match meta.generation {
        Some(generation) => hash(&generation),
        None => hash(&meta.resource_version),
    }
}

/// The BrokerAuths as this replica sees them.
#[derive(Clone)]
pub struct BrokerAuthWatch {
    pub store: Store<BrokerAuth>,
    changes: broadcast::Sender<BrokerAuth>,
}

impl BrokerAuthWatch {
    /// Starts watching; stops with `shutdown`.
    pub fn start(api: Api<BrokerAuth>, shutdown: CancellationToken) -> Self {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let sender = changes.clone();
        let mut seen: HashMap<(Option<String>, String, Option<String>), u64> = HashMap::new();
        let watch = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(ba) | watcher::Event::InitApply(ba)) => {
                        let key = (ba.namespace(), ba.name_any(), ba.uid());
                        let fingerprint = brokerauth_fingerprint(&ba);
                        if seen.insert(key, fingerprint) != Some(fingerprint) {
                            // No receiver (a follower) is fine.
                            let _ = sender.send(ba);
                        }
                    }
                    Ok(watcher::Event::Delete(ba)) => {
                        seen.remove(&(ba.namespace(), ba.name_any(), ba.uid()));
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(error) => tracing::warn!(%error, "BrokerAuth watch failed; retrying"),
                }
                futures::future::ready(())
            });
        tokio::spawn(async move {
            tokio::select! {
                () = watch => {}
                () = shutdown.cancelled() => {}
            }
        });
        Self { store, changes }
    }

    /// The changes a reconcile acts on, from now on. Every BrokerAuth already known should be
    /// reconciled once besides (see [`crate::app::controller`]).
    pub fn changes(
        &self,
    ) -> impl Stream<Item = Result<BrokerAuth, watcher::Error>> + Send + 'static {
        let receiver = self.changes.subscribe();
        stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(ba) => return Some((Ok(ba), receiver)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "controller fell behind BrokerAuth changes");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

/// Watch events of a child kind that change its fingerprint, and every deletion.
pub fn child_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    fingerprint: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut seen: HashMap<(Option<String>, String, Option<String>), u64> = HashMap::new();
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let passed = match event {
                Ok(watcher::Event::Apply(child) | watcher::Event::InitApply(child)) => {
                    let key = (child.namespace(), child.name_any(), child.uid());
                    let value = fingerprint(&child);
                    (seen.insert(key, value) != Some(value)).then_some(Ok(child))
                }
                Ok(watcher::Event::Delete(child)) => {
                    seen.remove(&(child.namespace(), child.name_any(), child.uid()));
                    Some(Ok(child))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(error) => Some(Err(error)),
            };
            futures::future::ready(passed)
        })
}

/// Whether the cluster serves KEDA's `keda.sh` API group.
pub async fn keda_installed(client: &Client) -> bool {
    client
        .list_api_groups()
        .await
        .map(|groups| groups.groups.iter().any(|g| g.name == "keda.sh"))
        .unwrap_or(false)
}

/// Changes of ScaledObjects, from the moment KEDA is installed: until then the cluster has no
/// such kind to watch, so this looks for it every `check_every`.
pub fn scaled_object_changes(
    client: Client,
    namespace: Option<String>,
    config: watcher::Config,
    check_every: Duration,
) -> impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static {
    let installed = stream::once(async move {
        while !keda_installed(&client).await {
            tokio::time::sleep(check_every).await;
        }
        tracing::info!("KEDA is installed; watching ScaledObjects");
        client
    });
    installed
        .map(move |client| {
            let resource = resources::keda_scaled_object_resource();
            let api = match &namespace {
                Some(ns) => Api::<DynamicObject>::namespaced_with(client, ns, &resource),
                None => Api::<DynamicObject>::all_with(client, &resource),
            };
            child_changes(api, config.clone(), spec_fingerprint::<DynamicObject>)
        })
        .flatten()
}
