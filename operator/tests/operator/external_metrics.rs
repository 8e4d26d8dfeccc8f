//! The external metrics API end to end: HTTPS, the aggregator's proxy certificate and user
//! headers, a SubjectAccessReview answered by a mock API server, a BrokerAuth in the watch cache,
//! real lag.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_auth_contract::{RequestKind, Topics};
use broker_auth_operator::access_review::SubjectAccessReviewer;
use broker_auth_operator::crd::BrokerAuth;
use broker_auth_operator::external_metrics::{ExternalMetricsState, router};
use broker_auth_operator::front_proxy::{FrontProxyTrust, RequestHeaderConfig};
use broker_auth_operator::kafka::RdKafkaAdmin;
use broker_auth_operator::tls::{self, ReloadableCert};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{KAFKA, eventually, kafka_settings, produce, sample_brokerauth, unique};

pub const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
pub const PROXY_NAME: &str = "front-proxy-client";

/// A client certificate and its key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A CA like kubeadm's front-proxy-ca, and client certificates it (or another CA) signed.
pub struct RequestHeaderCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl RequestHeaderCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "front-proxy-ca");
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn client(&self, common_name: &str) -> ClientIdentity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn trust(&self) -> Arc<FrontProxyTrust> {
        FrontProxyTrust::new(RequestHeaderConfig {
            client_ca_pem: self.pem.clone(),
            allowed_names: vec![PROXY_NAME.into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
        })
        .unwrap()
    }
}

/// A mock kube-apiserver answering SubjectAccessReviews: only the HPA controller may read
/// external metrics. Returns the reviewer and the reviews it was asked.
fn access_reviewer() -> (Arc<SubjectAccessReviewer>, Arc<Mutex<Vec<Value>>>) {
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let log = reviews.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            assert_eq!(request.method(), "POST");
            assert_eq!(
                request.uri().path(),
                "/apis/authorization.k8s.io/v1/subjectaccessreviews"
            );
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let mut review: Value = serde_json::from_slice(&bytes).unwrap();
            let allowed = review["spec"]["user"] == HPA_USER;
            log.lock().unwrap().push(review["spec"].clone());
            review["status"] = json!({"allowed": allowed});
            respond.send_response(
                http::Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&review).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = kube::Client::new(service, "default");
    (Arc::new(SubjectAccessReviewer::new(client)), reviews)
}

pub struct Request<'a> {
    pub path: &'a str,
    pub identity: Option<&'a ClientIdentity>,
    pub user: Option<&'a str>,
}

pub async fn https_get(
    addr: std::net::SocketAddr,
    cert: &ReloadableCert,
    request: Request<'_>,
) -> Result<(u16, Value), String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in cert.chain() {
        roots.add(der).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match request.identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = http::Request::get(request.path).header("host", "localhost");
    if let Some(user) = request.user {
        builder = builder
            .header("X-Remote-User", user)
            .header("X-Remote-Group", "system:serviceaccounts")
            .header("X-Remote-Group", "system:authenticated");
    }
    // TLS 1.3 reports a refused client certificate only when the server first answers.
    let response = sender
        .send_request(builder.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A watch cache that has listed `ba`.
fn listed(ba: BrokerAuth) -> Writer<BrokerAuth> {
    let mut writer: Writer<BrokerAuth> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(ba));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer
}

/// The API on a loopback port with a fresh self-signed certificate.
async fn serve(
    state: ExternalMetricsState,
) -> (std::net::SocketAddr, Arc<ReloadableCert>, CancellationToken) {
    let cert = ReloadableCert::new(tls::self_signed(vec!["localhost".into()]).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tls::serve_tls(
        listener,
        tls::server_config(cert.clone(), state.front_proxy.clone()).unwrap(),
        router(state),
        shutdown.clone(),
    ));
    (addr, cert, shutdown)
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
    let writer = listed(ba);
    let ca = RequestHeaderCa::new();
    let proxy = ca.client(PROXY_NAME);
    let (access, reviews) = access_reviewer();
    let (addr, cert, shutdown) = serve(ExternalMetricsState {
        brokerauths: writer.as_reader(),
        kafka: Arc::new(RdKafkaAdmin::default()),
        front_proxy: ca.trust(),
        access,
        metrics: Arc::default(),
    })
    .await;
    let as_hpa = |path| Request {
        path,
        identity: Some(&proxy),
        user: Some(HPA_USER),
    };
    let get = |path| {
        let cert = cert.clone();
        let request = as_hpa(path);
        async move { https_get(addr, &cert, request).await.unwrap() }
    };

    let (status, discovery) = get("/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, 200);
    assert_eq!(discovery["kind"], "APIResourceList");
    assert_eq!(discovery["resources"][0]["name"], "brokerauth-dbproc-lag");

    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth"
    );
    let (status, empty) = get(&path).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["kind"], "ExternalMetricValueList");
    assert_eq!(empty["items"][0]["value"], "0");

    produce(&settings, &topics.request(RequestKind::UserCreation), 0, 5).await;
    let value = eventually(Duration::from_secs(10), "lag 5", || async {
        let (_, list) = get(&path).await;
        (list["items"][0]["value"] == "5").then_some(list)
    })
    .await;
    assert_eq!(value["items"][0]["metricName"], "brokerauth-dbproc-lag");
    assert_eq!(
        value["items"][0]["metricLabels"]["auth.cfdbroker.io/brokerauth"],
        "auth"
    );

    // 85 queued, but 4 request topics × 2 partitions × 2 per replica caps it at 16: beyond
    // that the HPA would only add idle consumers.
    produce(
        &settings,
        &topics.request(RequestKind::Authentication),
        1,
        80,
    )
    .await;
    eventually(Duration::from_secs(10), "capped lag 16", || async {
        let (_, list) = get(&path).await;
        (list["items"][0]["value"] == "16").then_some(())
    })
    .await;

    let other_metric =
        format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/other-metric");
    let (status, _) = get(&other_metric).await;
    assert_eq!(status, 404);
    let (status, _) = get(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/elsewhere/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth",
    )
    .await;
    assert_eq!(status, 404);

    // The HPA controller's identity reached the authorizer; repeated reads used the cached answer.
    let reviews = reviews.lock().unwrap().clone();
    assert!(!reviews.is_empty() && reviews.len() < 5, "{reviews:?}");
    assert_eq!(
        reviews[0]["resourceAttributes"],
        json!({"group": "external.metrics.k8s.io", "namespace": namespace, "resource": "brokerauth-dbproc-lag", "verb": "list", "version": "v1beta1"})
    );
    assert_eq!(
        reviews[0]["groups"],
        json!(["system:serviceaccounts", "system:authenticated"])
    );
    shutdown.cancel();
}

#[tokio::test]
async fn metric_values_are_served_only_to_users_the_aggregator_vouches_for_and_rbac_allows() {
    let ca = RequestHeaderCa::new();
    let proxy = ca.client(PROXY_NAME);
    // Signed by the same CA but not an allowed request-header name, e.g. a kubelet's certificate.
    let other_client = ca.client("system:node:worker-1");
    let foreign = RequestHeaderCa::new().client(PROXY_NAME);
    let (access, reviews) = access_reviewer();
    let mut ba = sample_brokerauth();
    ba.spec.kafka.bootstrap_servers = KAFKA.into();
    let writer = listed(ba);
    let (addr, cert, shutdown) = serve(ExternalMetricsState {
        brokerauths: writer.as_reader(),
        // Never reached: every request here is refused before Kafka is asked.
        kafka: Arc::new(RdKafkaAdmin::default()),
        front_proxy: ca.trust(),
        access,
        metrics: Arc::default(),
    })
    .await;
    let metric = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/brokerauth-dbproc-lag";
    let status = |identity, user| {
        let cert = cert.clone();
        async move {
            https_get(
                addr,
                &cert,
                Request {
                    path: metric,
                    identity,
                    user,
                },
            )
            .await
            .map(|(status, _)| status)
        }
    };

    // Anyone may read discovery (the aggregator's availability check names no user).
    let (code, discovery) = https_get(
        addr,
        &cert,
        Request {
            path: "/apis/external.metrics.k8s.io/v1beta1",
            identity: None,
            user: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (code, discovery["kind"].as_str()),
        (200, Some("APIResourceList"))
    );

    // User headers count for nothing without the aggregator's certificate.
    assert_eq!(status(None, Some(HPA_USER)).await, Ok(401));
    assert_eq!(status(Some(&other_client), Some(HPA_USER)).await, Ok(401));
    // The aggregator's certificate without a user is not a user.
    assert_eq!(status(Some(&proxy), None).await, Ok(401));
    // A certificate from another CA does not get through the handshake.
    assert!(status(Some(&foreign), Some(HPA_USER)).await.is_err());
    assert!(
        reviews.lock().unwrap().is_empty(),
        "unauthenticated requests reached the authorizer"
    );

    // An authenticated user RBAC does not allow is forbidden.
    assert_eq!(
        status(Some(&proxy), Some("system:serviceaccount:default:nosy")).await,
        Ok(403)
    );
    assert_eq!(reviews.lock().unwrap().len(), 1);
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

#[tokio::test(start_paused = true)]
async fn a_replica_that_has_not_listed_the_brokerauths_yet_answers_unavailable_not_not_found() {
    use tower::ServiceExt;
    let ca = RequestHeaderCa::new();
    let proxy = ca.client(PROXY_NAME);
    let api = crate::fake_api::FakeApi::default();
    // A watch that has not finished its first list.
    let writer: Writer<BrokerAuth> = Writer::default();
    let state = ExternalMetricsState {
        brokerauths: writer.as_reader(),
        kafka: Arc::new(RdKafkaAdmin::default()),
        front_proxy: ca.trust(),
        access: Arc::new(SubjectAccessReviewer::new(api.client())),
        metrics: Arc::default(),
    };
    let metrics = state.metrics.clone();
    let mut request = http::Request::get(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/brokerauth-dbproc-lag?labelSelector=auth.cfdbroker.io%2Fbrokerauth%3Dauth",
    )
    .header("X-Remote-User", HPA_USER)
    .body(axum::body::Body::empty())
    .unwrap();
    request.extensions_mut().insert(
        broker_auth_operator::front_proxy::VerifiedClientCert::from_chain(&proxy.chain).unwrap(),
    );
    let response = router(state).oneshot(request).await.unwrap();
    // "No such BrokerAuth" would make the HPA act on a lie; "not yet" makes it retry.
    assert_eq!(response.status(), 503);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        status["message"],
        "the operator has not listed the BrokerAuths yet"
    );
    // Counted by outcome, for the alert on external metrics errors.
    let exposition = metrics.encode();
    assert!(
        exposition.contains(
            "broker_auth_operator_external_metrics_requests_total{outcome=\"unavailable\"} 1"
        ),
        "{exposition}"
    );
    drop(writer);
}

#[tokio::test]
async fn a_replica_is_ready_for_the_service_only_once_it_has_listed_the_brokerauths() {
    use tower::ServiceExt;
    let mut writer: Writer<BrokerAuth> = Writer::default();
    let router = broker_auth_operator::app::health_router(
        Arc::new(broker_auth_operator::metrics::Metrics::default()),
        writer.as_reader(),
    );
    let readyz = |router: axum::Router| async move {
        let request = http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    };
    assert_eq!(readyz(router.clone()).await, 503);
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    assert_eq!(readyz(router).await, 200);
}

/// The serving certificate's expiry is read from the certificate itself, for the metric the
/// expiry alert watches; a reloaded certificate's replaces it.
#[test]
fn the_served_certificates_expiry_is_read_from_it() {
    let serving = |not_after: (i32, u8, u8)| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        rustls::sign::CertifiedKey::from_der(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            &rustls::crypto::ring::default_provider(),
        )
        .unwrap()
    };
    let cert = ReloadableCert::new(serving((2027, 3, 1)));
    // 2027-03-01T00:00:00Z
    assert_eq!(cert.not_after(), Some(1_803_859_200));
    cert.replace(serving((2028, 3, 1)));
    // 2028-03-01T00:00:00Z
    assert_eq!(cert.not_after(), Some(1_835_481_600));
}
