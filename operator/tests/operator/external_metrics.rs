//! The external metrics API end to end: HTTPS, a BrokerAuth in the watch cache, real lag.

use std::sync::Arc;
use std::time::Duration;

use broker_auth_contract::{RequestKind, Topics};
use broker_auth_operator::crd::BrokerAuth;
use broker_auth_operator::external_metrics::{ExternalMetricsState, router};
use broker_auth_operator::kafka::RdKafkaAdmin;
use broker_auth_operator::tls::{self, ReloadableCert};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{KAFKA, eventually, kafka_settings, produce, sample_brokerauth, unique};

async fn https_get(addr: std::net::SocketAddr, cert: &ReloadableCert, path: &str) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    for der in cert.chain() {
        roots.add(der).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_hpa_reads_the_consumer_lag_over_https() {
    let settings = kafka_settings();
    let namespace = unique("ns");
    let topics = Topics::for_deployment(&namespace, "auth").unwrap();
    broker_auth_kafka::ensure_topics(&settings, &topics.all())
        .await
        .unwrap();

    let mut ba: BrokerAuth = sample_brokerauth();
    ba.metadata.namespace = Some(namespace.clone());
    ba.spec.kafka.bootstrap_servers = KAFKA.into();
    ba.spec.dbproc.lag_per_replica = 2;
    let mut writer: Writer<BrokerAuth> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Apply(ba));
    let state = ExternalMetricsState {
        brokerauths: writer.as_reader(),
        kafka: Arc::new(RdKafkaAdmin),
    };

    let cert = ReloadableCert::new(tls::self_signed(vec!["localhost".into()]).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tls::serve_tls(
        listener,
        tls::server_config(cert.clone()).unwrap(),
        router(state),
        shutdown.clone(),
    ));

    let (status, discovery) = https_get(addr, &cert, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, 200);
    assert_eq!(discovery["kind"], "APIResourceList");
    assert_eq!(discovery["resources"][0]["name"], "brokerauth-dbproc-lag");

    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth"
    );
    let (status, empty) = https_get(addr, &cert, &path).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["kind"], "ExternalMetricValueList");
    assert_eq!(empty["items"][0]["value"], "0");

    produce(&settings, &topics.request(RequestKind::UserCreation), 0, 5).await;
    let value = eventually(Duration::from_secs(10), "lag 5", || async {
        let (_, list) = https_get(addr, &cert, &path).await;
        (list["items"][0]["value"] == "5").then_some(list)
    })
    .await;
    assert_eq!(value["items"][0]["metricName"], "brokerauth-dbproc-lag");
    assert_eq!(
        value["items"][0]["metricLabels"]["auth.cfdbroker.io/brokerauth"],
        "auth"
    );

    // 85 queued, but 3 request topics × 2 partitions × 2 per replica caps it at 12: beyond
    // that the HPA would only add idle consumers.
    produce(
        &settings,
        &topics.request(RequestKind::Authentication),
        1,
        80,
    )
    .await;
    eventually(Duration::from_secs(10), "capped lag 12", || async {
        let (_, list) = https_get(addr, &cert, &path).await;
        (list["items"][0]["value"] == "12").then_some(())
    })
    .await;

    let (status, _) = https_get(
        addr,
        &cert,
        &format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/other-metric"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = https_get(
        addr,
        &cert,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/elsewhere/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth",
    )
    .await;
    assert_eq!(status, 404);
    shutdown.cancel();
}

#[tokio::test]
async fn a_rotated_certificate_file_is_served_without_a_restart() {
    let dir = std::env::temp_dir().join(unique("broker-auth-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let write = |names: Vec<String>| {
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(&cert_file, generated.cert.pem()).unwrap();
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
    };
    write(vec!["localhost".into()]);
    let cert = ReloadableCert::new(tls::load_pem(&cert_file, &key_file).unwrap());
    let first = cert.chain();
    let shutdown = CancellationToken::new();
    tokio::spawn(tls::reload_on_change(
        cert.clone(),
        cert_file.clone(),
        key_file.clone(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    // Modification times have a coarse granularity on some filesystems; rewrite until seen.
    eventually(Duration::from_secs(10), "the new certificate", || {
        write(vec!["localhost".into(), "rotated".into()]);
        let changed = cert.chain() != first;
        async move { changed.then_some(()) }
    })
    .await;
    shutdown.cancel();
    std::fs::remove_dir_all(&dir).unwrap();
}
