//! Two operator replicas, as the chart runs them, against one API server: both serve the external
//! metrics API over HTTPS, one leads. The leader loses its lease while an HPA reads the metric
//! from both; no read may fail. Real time (HTTPS on loopback), with 3-second leases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_auth_operator::app::Replica;
use broker_auth_operator::config::Cli;
use broker_auth_operator::kafka::KafkaAdmin;
use broker_auth_operator::tls::{self, ReloadableCert};
use clap::Parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::external_metrics::{HPA_USER, PROXY_NAME, Request, RequestHeaderCa, https_get};
use crate::fake_api::{CONFIGMAPS, FakeApi, Key, LEASES};
use crate::over_time::{BusyKafka, seed};
use crate::support::{eventually, unique};

const LEASE: &str = "broker-auth-operator";
/// The readiness series of a BrokerAuth, as the operator's /metrics shows it.
const READY: &str = "broker_auth_operator_brokerauth_ready{";
const METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth";

struct RunningReplica {
    name: String,
    external_metrics: std::net::SocketAddr,
    metrics: Arc<broker_auth_operator::metrics::Metrics>,
    shutdown: CancellationToken,
    /// Set when the replica's `run` returned, as the process would then exit.
    exited: Arc<Mutex<bool>>,
}

async fn start_replica(
    api: &FakeApi,
    name: &str,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    kafka: Arc<dyn KafkaAdmin>,
) -> RunningReplica {
    let config = Cli::parse_from([
        "broker-auth-operator",
        "--metrics-listen",
        "127.0.0.1:0",
        "--external-metrics-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        cert.0.to_str().unwrap(),
        "--tls-key-file",
        cert.1.to_str().unwrap(),
        "--pod-name",
        name,
        "--lease-namespace",
        "default",
        "--lease-duration-seconds",
        "3",
    ])
    .config;
    let shutdown = CancellationToken::new();
    let replica = Replica::start(config, api.client(), kafka, shutdown.clone())
        .await
        .unwrap();
    let external_metrics = replica.external_metrics_addr.unwrap();
    let metrics = replica.metrics.clone();
    let exited = Arc::new(Mutex::new(false));
    let flag = exited.clone();
    let process = shutdown.clone();
    tokio::spawn(async move {
        let result = replica.stopped().await;
        *flag.lock().unwrap() = true;
        // The process exits: its servers go with it.
        process.cancel();
        result
    });
    RunningReplica {
        name: name.into(),
        external_metrics,
        metrics,
        shutdown,
        exited,
    }
}

fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get(&Key::new(LEASES, "default", LEASE))
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_leader_change_while_the_hpa_reads_metrics_from_both_replicas_fails_no_read() {
    let api = FakeApi::default();
    seed(&api);
    let ca = RequestHeaderCa::new();
    api.insert(
        CONFIGMAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
               "data": {"requestheader-client-ca-file": ca.pem.clone(),
                        "requestheader-allowed-names": format!("[\"{PROXY_NAME}\"]")}}),
    );
    let dir = std::env::temp_dir().join(unique("broker-auth-ha-"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let serving = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let files = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&files.0, serving.pem()).unwrap();
    std::fs::write(&files.1, key.serialize_pem()).unwrap();
    let trusted = ReloadableCert::new(tls::load_pem(&files.0, &files.1).unwrap());

    let kafka: Arc<dyn KafkaAdmin> = Arc::new(BusyKafka::quick());
    let replicas = [
        start_replica(&api, "operator-a", &files, kafka.clone()).await,
        start_replica(&api, "operator-b", &files, kafka.clone()).await,
    ];
    let proxy = ca.client(PROXY_NAME);
    let read = move |addr| {
        let trusted = trusted.clone();
        let proxy = proxy.clone();
        async move {
            let request = Request {
                path: METRIC_PATH,
                identity: Some(&proxy),
                user: Some(HPA_USER),
            };
            match https_get(addr, &trusted, request).await {
                Ok((200, list)) if list["items"][0]["value"].is_string() => Ok(()),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(error) => Err(error),
            }
        }
    };
    let first_leader = eventually(Duration::from_secs(20), "a leader", || async {
        lease_holder(&api)
    })
    .await;
    for replica in &replicas {
        eventually(Duration::from_secs(20), "both replicas serving", || async {
            read(replica.external_metrics).await.ok()
        })
        .await;
    }

    // Only the leader reconciles.
    let follower = replicas.iter().find(|r| r.name != first_leader).unwrap();
    let leader = replicas.iter().find(|r| r.name == first_leader).unwrap();
    eventually(
        Duration::from_secs(20),
        "the leader reconciling",
        || async { (leader.metrics.reconciles.get() > 0).then_some(()) },
    )
    .await;
    assert_eq!(
        follower.metrics.reconciles.get(),
        0,
        "a follower reconciled"
    );
    eventually(
        Duration::from_secs(20),
        "the leader exporting the BrokerAuth's readiness",
        || async { leader.metrics.encode().contains(READY).then_some(()) },
    )
    .await;

    // The HPA reads the metric from both replicas, as the APIService's Service spreads it.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(Mutex::new(0u32));
    let stop_reading = CancellationToken::new();
    let reader = {
        let addrs: Vec<_> = replicas
            .iter()
            .map(|r| (r.name.clone(), r.external_metrics))
            .collect();
        let (failures, reads, stop) = (failures.clone(), reads.clone(), stop_reading.clone());
        let read = read.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (name, addr) in &addrs {
                    if let Err(error) = read(*addr).await {
                        failures.lock().unwrap().push(format!("{name}: {error}"));
                    }
                    *reads.lock().unwrap() += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The leader cannot renew (its API server connection refuses it), so it steps down and the
    // other replica takes the lease once it expired.
    let refused = first_leader.clone();
    api.add_webhook(Box::new(move |_, key, lease| {
        (key.resource == LEASES && lease["spec"]["holderIdentity"] == refused.as_str())
            .then(|| format!("leases \"{LEASE}\" is forbidden for {refused}"))
    }));
    let second_leader = eventually(Duration::from_secs(30), "a new leader", || async {
        lease_holder(&api).filter(|holder| *holder != first_leader)
    })
    .await;
    let new_leader = replicas.iter().find(|r| r.name == second_leader).unwrap();
    eventually(
        Duration::from_secs(20),
        "the new leader reconciling",
        || async { (new_leader.metrics.reconciles.get() > 0).then_some(()) },
    )
    .await;
    // The old leader no longer exports the per-BrokerAuth series it stopped writing (a stale
    // ready = 1 beside the new leader's would hide a BrokerAuth that is not Ready); the new
    // leader does once its first reconcile is through.
    eventually(
        Duration::from_secs(20),
        "the new leader exporting the BrokerAuth's readiness",
        || async { new_leader.metrics.encode().contains(READY).then_some(()) },
    )
    .await;
    let leader_metrics = leader.metrics.encode();
    assert!(!leader_metrics.contains(READY), "{leader_metrics}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_reading.cancel();
    reader.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "metric reads failed: {failures:?}");
    assert!(*reads.lock().unwrap() > 20);
    for replica in &replicas {
        assert!(!*replica.exited.lock().unwrap(), "{} exited", replica.name);
        replica.shutdown.cancel();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
