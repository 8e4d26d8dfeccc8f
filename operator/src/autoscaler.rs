//! Switching dbproc's autoscaler between providers (an HPA of the operator's, or a KEDA
//! ScaledObject whose HPA KEDA makes). Two autoscalers must never scale the Deployment at once,
//! and KEDA's admission webhook refuses a ScaledObject while another HPA scales its workload, so
//! the old autoscaler goes first and the new one is applied only once it is gone. Only an
//! autoscaler this BrokerAuth owns is ever deleted.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{BrokerAuth, LagMetricsProvider};
use crate::error::Result;
use crate::resources::{self, Tier};

/// Where a switch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Nothing of the other provider scales the workload: apply ours.
    Clear,
    /// The other provider's autoscaler is going away; look again shortly.
    Waiting(String),
    /// An autoscaler this BrokerAuth does not own scales the workload.
    Conflict(String),
}

/// The HPA KEDA makes for a ScaledObject.
pub fn keda_hpa_name(scaled_object: &str) -> String {
    format!("keda-hpa-{scaled_object}")
}

/// Whether `object` names `ba` as an owner (by uid).
pub fn owned_by(object: &impl Resource, ba: &BrokerAuth) -> bool {
    let Some(uid) = ba.meta().uid.as_deref() else {
        return false;
    };
    object
        .owner_references()
        .iter()
        .any(|owner| owner.uid == uid)
}

fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Removes the autoscaler of the provider not chosen, if this BrokerAuth owns it, and tells
/// whether the chosen one may be applied now.
pub async fn clear_other_provider(
    ba: &BrokerAuth,
    namespace: &str,
    client: &Client,
) -> Result<Switch> {
    let name = Tier::Dbproc.object_name(&ba.name_any());
    let (resource, _) = resources::obsolete_dbproc_autoscaler(ba);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let existing = match api.get_opt(&name).await {
        Ok(existing) => existing,
        // The kind is not served: KEDA is not installed, so it has no ScaledObject either.
        Err(error) if not_found(&error) => None,
        Err(error) => return Err(error.into()),
    };
    if let Some(other) = existing {
        if !owned_by(&other, ba) {
            return Ok(match ba.spec.autoscaling.provider {
                // KEDA's webhook refuses our ScaledObject if it cares; otherwise two HPAs fight.
                LagMetricsProvider::Keda => Switch::Conflict(format!(
                    "HorizontalPodAutoscaler {name} scales the dbproc Deployment but this BrokerAuth does not own it; delete it to let KEDA scale dbproc"
                )),
                LagMetricsProvider::Operator => Switch::Conflict(format!(
                    "ScaledObject {name} scales the dbproc Deployment but this BrokerAuth does not own it; delete it or set autoscaling.provider: Keda"
                )),
            });
        }
        if other.metadata.deletion_timestamp.is_none() {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(kind = %resource.kind, %name, "deleted the autoscaler of the other provider");
                }
                Err(error) if not_found(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if resource.kind == "ScaledObject" {
            return Ok(Switch::Waiting(format!(
                "waiting for KEDA to remove ScaledObject {name} and its HPA before the operator's HPA takes over"
            )));
        }
    }
    if ba.spec.autoscaling.provider == LagMetricsProvider::Operator {
        // KEDA removes the HPA it made after the ScaledObject is gone; until then ours would be a
        // second HPA on the same Deployment, and the HPA controller stops both.
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
        let keda_hpa = keda_hpa_name(&name);
        if hpas.get_opt(&keda_hpa).await?.is_some() {
            return Ok(Switch::Waiting(format!(
                "waiting for KEDA to remove its HPA {keda_hpa} before the operator's HPA takes over"
            )));
        }
    }
    Ok(Switch::Clear)
}

/// An admission webhook's refusal: the API server says which webhook denied the request.
pub fn admission_refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code)
                && status.message.contains("admission webhook")
                && status.message.contains("denied the request") =>
        {
            Some(status.message.clone())
        }
        _ => None,
    }
}
