//! Wiring: the Kubernetes client, the HTTP servers, leader election and the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_review::SubjectAccessReviewer;
use crate::config::Config;
use crate::crd::BrokerAuth;
use crate::error::Result;
use crate::external_metrics::{self, ExternalMetricsState};
use crate::front_proxy::{self, FrontProxyTrust};
use crate::kafka::{KafkaAdmin, RdKafkaAdmin};
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::resources::{self, MANAGER};
use crate::tls::{self, CertSource, ReloadableCert};
use crate::watch::{
    BrokerAuthWatch, child_changes, deployment_fingerprint, scaled_object_changes, spec_fingerprint,
};

/// Runs until SIGTERM/SIGINT. Losing the lease only stops reconciling: the replica keeps serving
/// metrics and becomes a candidate again.
pub async fn run(config: Config) -> Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let client = Client::try_default().await?;
    let kafka: Arc<dyn KafkaAdmin> = Arc::new(RdKafkaAdmin::default());
    let replica = Replica::start(config, client, kafka, shutdown).await?;
    replica.stopped().await
}

/// One operator process: its HTTP servers, its BrokerAuth watch and its leader election.
pub struct Replica {
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_addr: SocketAddr,
    /// Where the external metrics API is served, when it is.
    pub external_metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    running: tokio::task::JoinHandle<Result<()>>,
}

impl Replica {
    /// Binds the listeners, starts the watch and the servers, and campaigns for leadership in
    /// the background. Everything stops with `shutdown`.
    pub async fn start(
        config: Config,
        client: Client,
        kafka: Arc<dyn KafkaAdmin>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let brokerauths: Api<BrokerAuth> = match &config.watch_namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let watch = BrokerAuthWatch::start(brokerauths, shutdown.clone());

        let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz, /readyz");
        let http = axum::serve(
            metrics_listener,
            health_router(metrics.clone(), watch.store.clone()),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "metrics server failed");
            }
        });

        let external_metrics_addr = if config.external_metrics_enabled {
            Some(
                serve_external_metrics(
                    &config,
                    &client,
                    watch.store.clone(),
                    kafka.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .await?,
            )
        } else {
            tracing::info!("external metrics API off (EXTERNAL_METRICS_ENABLED=false)");
            None
        };

        let context = Arc::new(Context::new(
            client.clone(),
            kafka,
            metrics.clone(),
            config.pod_name.clone(),
            config.lag_refresh_interval(),
        ));
        let running = tokio::spawn(lead_when_elected(config, client, watch, context, shutdown));
        Ok(Self {
            metrics_addr,
            external_metrics_addr,
            metrics,
            running,
        })
    }

    /// Waits until the replica has stopped (after `shutdown`).
    pub async fn stopped(self) -> Result<()> {
        self.running.await?
    }
}

/// Campaigns for the lease and reconciles while holding it, until `shutdown`.
async fn lead_when_elected(
    config: Config,
    client: Client,
    watch: BrokerAuthWatch,
    context: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<()> {
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
    loop {
        if config.leader_election {
            tracing::info!(lease = %config.lease_name, %holder, "waiting for leadership");
            if !lock.acquire(&shutdown).await {
                return Ok(());
            }
            tracing::info!(%holder, "leading");
        }
        let lost = shutdown.child_token();
        let renewing = async {
            if config.leader_election {
                lock.keep_renewing(lost.clone()).await;
            } else {
                lost.cancelled().await;
            }
        };
        let reconciling = controller(&config, client.clone(), &watch)
            .graceful_shutdown_on(lost.clone().cancelled_owned())
            .run(
                reconcile::reconcile,
                reconcile::error_policy,
                context.clone(),
            )
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "reconcile error");
                }
            });
        tokio::join!(reconciling, renewing);

        if shutdown.is_cancelled() {
            if config.leader_election
                && let Err(error) = lock.release().await
            {
                tracing::warn!(%error, "could not release the lease");
            }
            tracing::info!("stopped");
            return Ok(());
        }
        // Another replica leads now; this one keeps serving metrics and stands by, without the
        // per-BrokerAuth series it no longer writes.
        context.metrics.forget_all();
        tracing::warn!(%holder, "lost the lease; following");
    }
}

/// The controller: BrokerAuth changes from `watch` (generation, finalizers, deletion), every
/// BrokerAuth once at the start, and the children the operator owns, filtered to objects this
/// operator made. The lag refresh is the requeue every reconcile ends with.
pub fn controller(
    config: &Config,
    client: Client,
    watch: &BrokerAuthWatch,
) -> Controller<BrokerAuth> {
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
        .any_semantic();
    let namespace = config.watch_namespace.as_deref();
    let store = watch.store.clone();
    Controller::for_stream(watch.changes(), watch.store.clone())
        // A new leader subscribes after the store filled: what it already holds is reconciled once.
        .reconcile_all_on(stream::once(async move {
            let _ = store.wait_until_ready().await;
        }))
        .owns_stream(child_changes(
            child_api::<ConfigMap>(&client, namespace),
            children.clone(),
            spec_fingerprint::<ConfigMap>,
        ))
        .owns_stream(child_changes(
            child_api::<Deployment>(&client, namespace),
            children.clone(),
            deployment_fingerprint,
        ))
        .owns_stream(child_changes(
            child_api::<Service>(&client, namespace),
            children.clone(),
            spec_fingerprint::<Service>,
        ))
        .owns_stream(child_changes(
            child_api::<HorizontalPodAutoscaler>(&client, namespace),
            children.clone(),
            spec_fingerprint::<HorizontalPodAutoscaler>,
        ))
        .owns_stream(child_changes(
            child_api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
            spec_fingerprint::<PodDisruptionBudget>,
        ))
        .owns_stream_with(
            scaled_object_changes(
                client,
                namespace.map(str::to_owned),
                children,
                reconcile::KEDA_CHECK_INTERVAL,
            ),
            resources::keda_scaled_object_resource(),
        )
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

/// Keeps `external_metrics_certificate_expiry_timestamp_seconds` on the certificate served now
/// (it is reloaded when its files change), for the alert on an expiring certificate.
async fn export_certificate_expiry(
    cert: Arc<ReloadableCert>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Some(not_after) = cert.not_after() {
            metrics.certificate_expiry.set(not_after);
        }
    }
}

async fn serve_external_metrics(
    config: &Config,
    client: &Client,
    store: Store<BrokerAuth>,
    kafka: Arc<dyn KafkaAdmin>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
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
    tokio::spawn(export_certificate_expiry(
        cert.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
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
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving external.metrics.k8s.io over HTTPS");
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
        metrics,
    });
    let server_config = tls::server_config(cert, front_proxy)?;
    tokio::spawn(async move {
        if let Err(error) = tls::serve_tls(listener, server_config, router, shutdown).await {
            tracing::error!(%error, "external metrics server failed");
        }
    });
    Ok(addr)
}

/// /metrics, /healthz and /readyz on plain HTTP. Ready once the BrokerAuth watch has listed
/// everything, so the Service sends metric reads only to replicas that can answer them.
pub fn health_router(metrics: Arc<Metrics>, brokerauths: Store<BrokerAuth>) -> Router {
    let readyz = get(move || {
        let brokerauths = brokerauths.clone();
        async move {
            if brokerauths.wait_until_ready().now_or_never().is_some() {
                (http::StatusCode::OK, "ok")
            } else {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "BrokerAuths not listed yet",
                )
            }
        }
    });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", readyz)
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
