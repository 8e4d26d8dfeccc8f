//! Deleting a BrokerAuth: its workloads stop first, then its Kafka data goes, then the finalizer
//! is released (by kube's finalizer helper, once [`cleanup`] succeeds).

use std::time::Duration;

use broker_auth_contract::Topics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::crd::BrokerAuth;
use crate::error::Result;
use crate::kafka::LeftInKafka;
use crate::metrics::InstanceLabels;
use crate::reconcile::{Context, kafka_settings};
use crate::reply_topics;
use crate::resources::Tier;
use crate::status::publish;

/// How often a BrokerAuth being deleted looks again whether its workloads are gone (their
/// deletion also triggers a reconcile, through `Controller::owns`).
pub const WORKLOADS_GONE_POLL: Duration = Duration::from_secs(5);

/// For how long after deletion was requested a transient Kafka failure (a consumer still in a
/// group until its session times out, a coordinator moving, the broker unreachable) is retried.
/// After that the BrokerAuth goes anyway and a warning Event names what was left: a Kafka that
/// is gone for good must not keep it forever.
pub const KAFKA_CLEANUP_GRACE: Duration = Duration::from_secs(300);

/// First stage of deletion: the api and dbproc Deployments are deleted with foreground
/// propagation, so they exist until their pods are gone. Returns the requeue to wait with while
/// either still exists. Only then may Kafka data go: a dbproc still running would recreate the
/// group's offsets, and an api still running would produce into deleted topics.
pub async fn stop_workloads(
    ba: &BrokerAuth,
    namespace: &str,
    ctx: &Context,
) -> Result<Option<Action>> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let name = ba.name_any();
    let mut running = Vec::new();
    for tier in [Tier::Api, Tier::Dbproc] {
        let deployment = tier.object_name(&name);
        // Deleting again while a foreground deletion runs is harmless and answers whether the
        // object is still there (the object) or gone (404, or a Status when deleted at once).
        match api.delete(&deployment, &DeleteParams::foreground()).await {
            // Left: the object, still there; Right: a Status, deleted.
            Ok(answer) if answer.is_left() => running.push(deployment),
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    if running.is_empty() {
        Ok(None)
    } else {
        tracing::info!(deployments = ?running, "waiting for the workloads to stop before deleting kafka data");
        Ok(Some(Action::requeue(WORKLOADS_GONE_POLL)))
    }
}

/// Last stage of deletion, once no pod of the BrokerAuth runs: its topics and its consumer
/// groups' committed offsets, unless `kafka.deleteTopicsOnDelete` is off. The offsets go too:
/// a BrokerAuth re-created under the same name would otherwise find its new, empty topics
/// behind old commits (lag read as 0, records skipped). Kept, they stay together.
pub async fn cleanup(ba: &BrokerAuth, namespace: &str, ctx: &Context) -> Result<Action> {
    // Other child objects go with the BrokerAuth through their owner references.
    // A name no topics can be derived from never had topics; failing here would keep the
    // finalizer, and the BrokerAuth, forever.
    let topics = Topics::for_deployment(namespace, &ba.name_any()).ok();
    if let (true, Some(topics)) = (ba.spec.kafka.delete_topics_on_delete, topics) {
        match delete_kafka_data(ba, &topics, ctx).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                let left: Vec<String> = left.iter().map(ToString::to_string).collect();
                warn!(left = ?left, "kafka refused to delete some of the BrokerAuth's data");
                publish(
                    ctx,
                    ba,
                    EventType::Warning,
                    "KafkaDataLeft",
                    &format!(
                        "Kafka refused to delete, so these remain: {}",
                        left.join(", ")
                    ),
                )
                .await;
            }
            Err(error) if !grace_expired(ba) => {
                // Keeps the finalizer; error_policy tries again.
                return Err(error);
            }
            Err(error) => {
                warn!(%error, "giving up on deleting kafka data");
                publish(
                    ctx,
                    ba,
                    EventType::Warning,
                    "KafkaDataLeft",
                    &format!(
                        "topics and consumer groups with prefix {} may remain; still failing after {} s: {error}",
                        topics.prefix(),
                        KAFKA_CLEANUP_GRACE.as_secs()
                    ),
                )
                .await;
            }
        }
    }
    let instance = InstanceLabels {
        namespace: namespace.to_owned(),
        name: ba.name_any(),
    };
    ctx.metrics.forget(&instance);
    ctx.forget(ba);
    Ok(Action::await_change())
}

/// The consumer groups first, and the topics only when they went: offsets left behind without
/// their topics are the one state worse than keeping both (a re-created BrokerAuth would read its
/// new topics' lag as 0 behind them), so a broker that refuses DeleteGroups keeps the topics too.
async fn delete_kafka_data(
    ba: &BrokerAuth,
    topics: &Topics,
    ctx: &Context,
) -> Result<Vec<LeftInKafka>> {
    let settings = kafka_settings(ba);
    let mut left = ctx
        .kafka
        .delete_consumer_groups(&settings, &[topics.dbproc_group(), topics.mailer_group()])
        .await?;
    if left.is_empty() {
        // With the reply topics of api instances that never shut down cleanly.
        let mut all = topics.all();
        all.extend(reply_topics::instance_reply_topics(ba, topics, ctx).await?);
        left = ctx.kafka.delete_topics(&settings, &all).await?;
    } else {
        left.extend(topics.all().into_iter().map(|topic| LeftInKafka {
            kind: "topic",
            name: topic,
            answer: "kept with its consumer groups' offsets".into(),
        }));
    }
    Ok(left)
}

fn grace_expired(ba: &BrokerAuth) -> bool {
    ba.meta().deletion_timestamp.as_ref().is_some_and(|since| {
        let waited = Timestamp::now().duration_since(since.0);
        waited.as_secs() >= i64::try_from(KAFKA_CLEANUP_GRACE.as_secs()).unwrap_or(i64::MAX)
    })
}
