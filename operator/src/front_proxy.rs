//! Who is calling the external metrics API. The kube-apiserver's aggregator proxies requests to
//! an APIService with a client certificate signed by the *request-header* CA and names the
//! original user in `X-Remote-User`/`X-Remote-Group` headers. Those headers are trusted only on a
//! connection whose certificate verifies against that CA and whose common name is one of
//! `requestheader-allowed-names` — the same rules as k8s.io/apiserver's request-header
//! authenticator, which metrics-server and KEDA's adapter use. The CA, names and header names
//! come from the `extension-apiserver-authentication` ConfigMap in kube-system.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

pub const AUTHENTICATION_CONFIGMAP: &str = "extension-apiserver-authentication";
pub const AUTHENTICATION_NAMESPACE: &str = "kube-system";

/// The request-header settings the kube-apiserver publishes for aggregated API servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM bundle of the CA that signs the aggregator's proxy client certificate.
    pub client_ca_pem: String,
    /// Common names a proxy certificate may have; empty means any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads the ConfigMap's data. Missing header lists take the kube-apiserver's defaults.
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|pem| !pem.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                Error::FrontProxy(format!(
                    "{AUTHENTICATION_NAMESPACE}/{AUTHENTICATION_CONFIGMAP} has no \
                     requestheader-client-ca-file: the aggregation layer is not configured"
                ))
            })?;
        let list = |key: &str, default: &[&str]| -> Result<Vec<String>> {
            match data.get(key) {
                Some(json) if !json.trim().is_empty() => serde_json::from_str(json)
                    .map_err(|e| Error::FrontProxy(format!("{key} is not a JSON list: {e}"))),
                _ => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            }
        };
        Ok(Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names", &[])?,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
        })
    }

    /// Reads the settings from the cluster (needs the extension-apiserver-authentication-reader
    /// Role in kube-system).
    pub async fn load(client: &Client) -> Result<Self> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), AUTHENTICATION_NAMESPACE);
        let configmap = api.get(AUTHENTICATION_CONFIGMAP).await?;
        Self::from_configmap_data(&configmap.data.unwrap_or_default())
    }
}

/// The user the aggregator vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// The client certificate a connection presented, after rustls verified it against the
/// request-header CA. Put into each request's extensions by the TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClientCert {
    pub common_name: Option<String>,
}

impl VerifiedClientCert {
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        chain.first().map(|leaf| Self {
            common_name: subject_common_name(leaf),
        })
    }
}

struct Trust {
    verifier: Arc<dyn ClientCertVerifier>,
    config: Option<RequestHeaderConfig>,
}

/// Trust in the aggregator's proxy certificate: a rustls client-certificate verifier (asks for,
/// but does not require, a certificate, so discovery and health stay reachable) and the rules
/// that turn a verified connection plus headers into a [`UserInfo`]. Swappable while serving, as
/// the kube-apiserver may rotate its CA.
pub struct FrontProxyTrust {
    current: RwLock<Arc<Trust>>,
}

impl std::fmt::Debug for FrontProxyTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxyTrust")
            .field("configured", &self.is_configured())
            .finish()
    }
}

impl FrontProxyTrust {
    /// Trusts no one until [`FrontProxyTrust::replace`] gives it a configuration.
    pub fn unconfigured() -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(Trust {
                verifier: WebPkiClientVerifier::no_client_auth(),
                config: None,
            })),
        })
    }

    pub fn new(config: RequestHeaderConfig) -> Result<Arc<Self>> {
        let trust = Self::unconfigured();
        trust.replace(config)?;
        Ok(trust)
    }

    pub fn replace(&self, config: RequestHeaderConfig) -> Result<()> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(config.client_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::FrontProxy(format!("request-header CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::FrontProxy(format!("request-header CA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::FrontProxy(format!("request-header CA: {e}")))?;
        let trust = Arc::new(Trust {
            verifier,
            config: Some(config),
        });
        if let Ok(mut current) = self.current.write() {
            *current = trust;
        }
        Ok(())
    }

    fn trust(&self) -> Option<Arc<Trust>> {
        self.current.read().ok().map(|trust| Arc::clone(&trust))
    }

    /// The trust for a TLS handshake; a handshake without it fails.
    fn loaded_trust(&self) -> std::result::Result<Arc<Trust>, rustls::Error> {
        self.trust().ok_or(rustls::Error::General(
            "authentication state unavailable".into(),
        ))
    }

    pub fn is_configured(&self) -> bool {
        self.trust().is_some_and(|t| t.config.is_some())
    }

    /// The user a request speaks for, or why it is not authenticated.
    pub fn authenticate(
        &self,
        cert: Option<&VerifiedClientCert>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, String> {
        let trust = self.trust().ok_or("authentication state unavailable")?;
        let config = trust
            .config
            .as_ref()
            .ok_or("the request-header CA is not loaded yet")?;
        let cert = cert.ok_or("no client certificate from the aggregator")?;
        if !config.allowed_names.is_empty()
            && !cert
                .common_name
                .as_ref()
                .is_some_and(|cn| config.allowed_names.contains(cn))
        {
            return Err(format!(
                "client certificate {:?} is not an allowed request-header name",
                cert.common_name.as_deref().unwrap_or("")
            ));
        }
        let header_values = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .flat_map(|name| headers.get_all(name.as_str()))
                .filter_map(|value| value.to_str().ok())
                .map(str::to_owned)
                .filter(|value| !value.is_empty())
                .collect()
        };
        let name = header_values(&config.username_headers)
            .into_iter()
            .next()
            .ok_or("no user named in the request headers")?;
        Ok(UserInfo {
            name,
            groups: header_values(&config.group_headers),
        })
    }
}

impl ClientCertVerifier for FrontProxyTrust {
    fn offer_client_auth(&self) -> bool {
        self.trust().is_some_and(|t| t.verifier.offer_client_auth())
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // The hints would have to borrow from the swappable state; an empty list lets a client send
    // whatever certificate it has, which Go's TLS client (the kube-apiserver) does.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.loaded_trust()?
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.loaded_trust()?
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.loaded_trust()?
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Loads the request-header settings now and every `every`, keeping the last good ones when the
/// ConfigMap cannot be read (metric requests are refused until a first load succeeds).
pub async fn keep_loaded(
    trust: Arc<FrontProxyTrust>,
    client: Client,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    let mut last: Option<RequestHeaderConfig> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match RequestHeaderConfig::load(&client).await {
            Ok(config) if last.as_ref() == Some(&config) => {}
            Ok(config) => match trust.replace(config.clone()) {
                Ok(()) => {
                    tracing::info!(
                        allowed_names = ?config.allowed_names,
                        "loaded the aggregator's request-header CA"
                    );
                    last = Some(config);
                }
                Err(error) => tracing::error!(%error, "unusable request-header CA"),
            },
            Err(error) => tracing::error!(
                %error,
                "cannot read {AUTHENTICATION_NAMESPACE}/{AUTHENTICATION_CONFIGMAP}; external \
                 metric requests are refused until it can be read"
            ),
        }
    }
}

/// One DER element: tag, contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
        (length, rest)
    };
    (rest.len() >= length).then(|| {
        let (contents, rest) = rest.split_at(length);
        (tag, contents, rest)
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
const COMMON_NAME_OID: [u8; 3] = [0x55, 0x04, 0x03];

/// The subject's common name (the last one, as Go's crypto/x509 reads it). Only called on
/// certificates rustls has already verified, so the structure is well-formed DER.
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = der_element(certificate)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let (tag, _, after_version) = der_element(tbs)?;
    let mut fields = if tag == VERSION { after_version } else { tbs };
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        fields = der_element(fields)?.2;
    }
    let (SEQUENCE, mut names, _) = der_element(fields)? else {
        return None;
    };
    let mut common_name = None;
    while !names.is_empty() {
        let (SET, mut attributes, rest) = der_element(names)? else {
            return None;
        };
        names = rest;
        while !attributes.is_empty() {
            let (SEQUENCE, attribute, rest) = der_element(attributes)? else {
                return None;
            };
            attributes = rest;
            let (OID, oid, value) = der_element(attribute)? else {
                return None;
            };
            if oid == COMMON_NAME_OID {
                let (_, text, _) = der_element(value)?;
                common_name = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    common_name
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in dn {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let der = cert_with(&[
            (DnType::OrganizationName, "system:masters"),
            (DnType::CommonName, "front-proxy-client"),
        ]);
        assert_eq!(
            subject_common_name(&der).as_deref(),
            Some("front-proxy-client")
        );
    }

    #[test]
    fn a_subject_without_a_common_name_has_none() {
        let der = cert_with(&[(DnType::OrganizationName, "acme")]);
        assert_eq!(subject_common_name(&der), None);
        assert_eq!(subject_common_name(&der[..der.len() / 2]), None);
        assert_eq!(subject_common_name(&[]), None);
    }

    #[test]
    fn header_lists_default_to_the_kube_apiserver_names() {
        let data = BTreeMap::from([
            ("requestheader-client-ca-file".to_owned(), "pem".to_owned()),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
        ]);
        let config = RequestHeaderConfig::from_configmap_data(&data).unwrap();
        assert_eq!(config.allowed_names, vec!["front-proxy-client"]);
        assert_eq!(config.username_headers, vec!["X-Remote-User"]);
        assert_eq!(config.group_headers, vec!["X-Remote-Group"]);
        assert!(RequestHeaderConfig::from_configmap_data(&BTreeMap::new()).is_err());
    }
}
