//! Wiring: the Kubernetes client, the HTTP servers, leader election and the controller.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_review::SubjectAccessReviewer;
use crate::config::Config;
use crate::crd::BrokerAuth;
use crate::error::{Error, Result};
use crate::external_metrics::{self, ExternalMetricsState};
use crate::front_proxy::{self, FrontProxyTrust};
use crate::kafka::{KafkaAdmin, RdKafkaAdmin};
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::resources::{self, MANAGER};
use crate::tls::{self, CertSource, ReloadableCert};

/// Runs until SIGTERM/SIGINT, or returns an error when leadership is lost (the pod restarts and
/// rejoins as a follower, as client-go's controllers do).
pub async fn run(config: Config) -> Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let kafka: Arc<dyn KafkaAdmin> = Arc::new(RdKafkaAdmin);
    let brokerauths: Api<BrokerAuth> = match &config.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };

    // Every replica serves the lag, leader or not: the APIService's Service picks any of them.
    let (store, writer) = reflector::store();
    let watch = reflector::reflector(
        writer,
        watcher(brokerauths.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    let watch_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watch => {}
            _ = watch_shutdown.cancelled() => {}
        }
    });

    let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let http = axum::serve(metrics_listener, health_router(metrics.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::spawn(async move {
        if let Err(error) = http.await {
            tracing::error!(%error, "metrics server failed");
        }
    });

    if config.external_metrics_enabled {
        serve_external_metrics(&config, &client, store, kafka.clone(), shutdown.clone()).await?;
    } else {
        tracing::info!("external metrics API off (EXTERNAL_METRICS_ENABLED=false)");
    }

    let holder = config
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()));
    let lease_namespace = config
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        config.lease_name.clone(),
        holder.clone(),
        config.lease_duration(),
    );
    if config.leader_election {
        tracing::info!(lease = %config.lease_name, %holder, "waiting for leadership");
        if !lock.acquire(&shutdown).await {
            return Ok(());
        }
        tracing::info!(%holder, "leading");
    }
    let lost = shutdown.child_token();
    let renewing = {
        let lost = lost.clone();
        let election = config.leader_election;
        let lock = &lock;
        async move {
            if election {
                lock.keep_renewing(lost).await;
            } else {
                lost.cancelled().await;
            }
        }
    };

    let context = Arc::new(Context {
        client: client.clone(),
        kafka,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(holder),
            },
        ),
        metrics,
    });
    let controller = controller(&config, client.clone(), brokerauths)
        .await
        .graceful_shutdown_on(lost.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        });
    tokio::join!(controller, renewing);

    if shutdown.is_cancelled() {
        if config.leader_election
            && let Err(error) = lock.release().await
        {
            tracing::warn!(%error, "could not release the lease");
        }
        tracing::info!("stopped");
        Ok(())
    } else {
        Err(Error::LostLeadership)
    }
}

/// The controller with a watch on every kind of child, filtered to objects this operator made.
pub async fn controller(
    config: &Config,
    client: Client,
    brokerauths: Api<BrokerAuth>,
) -> Controller<BrokerAuth> {
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    let namespace = config.watch_namespace.as_deref();
    let mut controller = Controller::new(brokerauths, watcher::Config::default().any_semantic())
        .owns(child_api::<ConfigMap>(&client, namespace), children.clone())
        .owns(
            child_api::<Deployment>(&client, namespace),
            children.clone(),
        )
        .owns(child_api::<Service>(&client, namespace), children.clone())
        .owns(
            child_api::<HorizontalPodAutoscaler>(&client, namespace),
            children.clone(),
        )
        .owns(
            child_api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        );
    // Watching a kind the cluster does not serve would fail forever, so ScaledObjects are
    // owned only where KEDA is installed.
    let keda = client
        .list_api_groups()
        .await
        .map(|groups| groups.groups.iter().any(|g| g.name == "keda.sh"))
        .unwrap_or(false);
    if keda {
        let resource = resources::keda_scaled_object_resource();
        let api = match namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
            None => Api::<DynamicObject>::all_with(client.clone(), &resource),
        };
        controller = controller.owns_with(api, resource, children);
    }
    controller
}

fn child_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + DeserializeOwned,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn serve_external_metrics(
    config: &Config,
    client: &Client,
    store: Store<BrokerAuth>,
    kafka: Arc<dyn KafkaAdmin>,
    shutdown: CancellationToken,
) -> Result<()> {
    let source = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::SelfSigned {
            names: vec!["broker-auth-operator".into(), "localhost".into()],
        },
    };
    let cert = ReloadableCert::new(source.load()?);
    if let CertSource::Files {
        cert: cert_file,
        key,
    } = source
    {
        tokio::spawn(tls::reload_on_change(
            cert.clone(),
            cert_file,
            key,
            Duration::from_secs(30),
            shutdown.clone(),
        ));
    } else {
        tracing::warn!(
            "no TLS certificate given; serving the external metrics API with a self-signed one"
        );
    }
    let listener = TcpListener::bind(config.external_metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving external.metrics.k8s.io over HTTPS");
    let front_proxy = FrontProxyTrust::unconfigured();
    tokio::spawn(front_proxy::keep_loaded(
        front_proxy.clone(),
        client.clone(),
        // The kube-apiserver rotates its front-proxy CA rarely; a few minutes' lag is harmless
        // because the old CA stays valid during a rotation.
        Duration::from_secs(300),
        shutdown.clone(),
    ));
    let router = external_metrics::router(ExternalMetricsState {
        brokerauths: store,
        kafka,
        front_proxy: front_proxy.clone(),
        access: Arc::new(SubjectAccessReviewer::new(client.clone())),
    });
    let server_config = tls::server_config(cert, front_proxy)?;
    tokio::spawn(async move {
        if let Err(error) = tls::serve_tls(listener, server_config, router, shutdown).await {
            tracing::error!(%error, "external metrics server failed");
        }
    });
    Ok(())
}

/// /metrics, /healthz and /readyz on plain HTTP.
pub fn health_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(metrics): State<Arc<Metrics>>| async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        )
        .with_state(metrics)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
