//! TLS for the external metrics API: a certificate that is reloaded from disk when it changes
//! (cert-manager and Secret updates rotate it in place), or a self-signed one when none is
//! mounted (the APIService then needs `insecureSkipTLSVerify`). Clients are asked for a
//! certificate, which the front-proxy verifier checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::front_proxy::VerifiedClientCert;

/// A certificate the server presents, swappable while it runs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|key| Arc::clone(&key))
    }
}

impl ReloadableCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    pub fn replace(&self, key: CertifiedKey) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
    }

    /// When the served certificate expires, in seconds since the Unix epoch; `None` if it cannot
    /// be read (never for a certificate rustls accepted).
    pub fn not_after(&self) -> Option<i64> {
        let chain = self.chain();
        let leaf = chain.first()?;
        let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(certificate.validity().not_after.timestamp())
    }

    /// The certificate chain currently served (for tests and logs).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .map(|key| key.cert.clone())
            .unwrap_or_default()
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| Error::Tls(e.to_string()))
}

/// Reads a PEM certificate chain and private key.
pub fn load_pem(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert_file.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| Error::Tls(format!("{}: {e}", key_file.display())))?;
    certified_key(chain, key)
}

/// A fresh self-signed certificate for `names`.
pub fn self_signed(names: Vec<String>) -> Result<CertifiedKey> {
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| Error::Tls(e.to_string()))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| Error::Tls(e.to_string()))?;
    certified_key(vec![generated.cert.der().clone()], key)
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { names: Vec<String> },
}

impl CertSource {
    pub fn load(&self) -> Result<CertifiedKey> {
        match self {
            CertSource::Files { cert, key } => load_pem(cert, key),
            CertSource::SelfSigned { names } => self_signed(names.clone()),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Polls the certificate files and swaps the served certificate when they change. Mounted
/// Secrets are updated through a symlink swap, which a modification time check sees.
pub async fn reload_on_change(
    cert: Arc<ReloadableCert>,
    cert_file: PathBuf,
    key_file: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last = (modified(&cert_file), modified(&key_file));
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = (modified(&cert_file), modified(&key_file));
        if now == last {
            continue;
        }
        match load_pem(&cert_file, &key_file) {
            Ok(key) => {
                cert.replace(key);
                last = now;
                tracing::info!(cert = %cert_file.display(), "reloaded TLS certificate");
            }
            // Half-written files: keep serving the old certificate and try again.
            Err(error) => tracing::warn!(%error, "could not reload TLS certificate"),
        }
    }
}

/// TLS settings serving `cert` and asking clients for a certificate `client_certs` verifies
/// (the aggregator's proxy certificate; see [`crate::front_proxy`]).
pub fn server_config(
    cert: Arc<ReloadableCert>,
    client_certs: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(client_certs)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` over TLS until `shutdown`, a task per connection. Requests on a connection
/// that presented a verified client certificate carry a [`VerifiedClientCert`] extension.
pub async fn serve_tls(
    listener: TcpListener,
    config: rustls::ServerConfig,
    router: Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(VerifiedClientCert::from_chain);
            let service = TowerToHyperService::new(router.map_request(
                move |mut request: http::Request<hyper::body::Incoming>| {
                    if let Some(cert) = &client_cert {
                        request.extensions_mut().insert(cert.clone());
                    }
                    request
                },
            ));
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
