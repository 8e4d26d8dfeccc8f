//! `broker-auth-operator delete-brokerauths`: the Helm chart's pre-delete hook. It deletes the
//! release's BrokerAuths while the operator still runs, and waits until the operator has cleaned
//! up after them (workloads stopped, Kafka data deleted, finalizer released). Without it Helm
//! deletes the operator together with the BrokerAuth, nothing removes the finalizer, and the
//! BrokerAuth (and its namespace) stay Terminating.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::BrokerAuth;
use crate::error::{Error, Result};

/// Deletes the BrokerAuths in `namespace` that match `selector` and polls every `poll` until
/// none is left. Fails after `timeout`, naming the ones still there.
pub async fn delete_brokerauths(
    client: Client,
    namespace: &str,
    selector: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Vec<String>> {
    let api: Api<BrokerAuth> = Api::namespaced(client, namespace);
    let selected = ListParams::default().labels(selector);
    let deleted = names(&api, &selected).await?;
    for name in &deleted {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(%namespace, %name, "deleting BrokerAuth"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = names(&api, &selected).await?;
        if left.is_empty() {
            return Ok(deleted);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Uninstall(format!(
                "BrokerAuth(s) {} in namespace {namespace} still exist after {} s; see their Events and the operator's log",
                left.join(", "),
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The names of the BrokerAuths `selected` lists.
async fn names(api: &Api<BrokerAuth>, selected: &ListParams) -> Result<Vec<String>> {
    Ok(api
        .list(selected)
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}
