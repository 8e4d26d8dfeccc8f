//! Command line and environment of the operator. Only this module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "broker-auth-operator",
    version,
    about = "Kubernetes operator for BrokerAuth"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (the default).
    Run,
    /// Print the BrokerAuth CRD as YAML (the content of k8s/crd.yaml).
    Crd,
    /// Delete the BrokerAuths carrying a label and wait until they are gone (the Helm chart's
    /// pre-delete hook runs this while the operator can still clean up after them).
    DeleteBrokerauths(DeleteBrokerAuths),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeleteBrokerAuths {
    /// Namespace of the BrokerAuths.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Label selector naming the BrokerAuths to delete, e.g. `app.kubernetes.io/instance=my-release`.
    #[arg(long)]
    pub selector: String,
    /// How long to wait for them to be gone before failing.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// Serve the external metrics API. Off when the cluster's external metrics come from
    /// elsewhere (KEDA) or the lag metric is not used; nothing then reads the front-proxy CA.
    #[arg(long, env = "EXTERNAL_METRICS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub external_metrics_enabled: bool,

    /// HTTPS listener of the external metrics API (the APIService's Service targets it).
    #[arg(long, env = "EXTERNAL_METRICS_LISTEN", default_value = "0.0.0.0:6443")]
    pub external_metrics_listen: SocketAddr,

    /// PEM certificate (chain) of the external metrics API; reloaded when it changes.
    /// A self-signed certificate is generated when unset.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key matching --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Take a Lease before reconciling, so several replicas can run.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "broker-auth-operator")]
    pub lease_name: String,

    /// Namespace of the Lease: the operator's own (downward API), else the client's default.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity of this replica in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Lease validity; renewed every third of it.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How often each BrokerAuth's lag and status are refreshed (at least 1).
    #[arg(long, env = "LAG_REFRESH_SECONDS", default_value_t = 15)]
    pub lag_refresh_seconds: u64,
}

impl Config {
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(3))
    }

    pub fn lag_refresh_interval(&self) -> Duration {
        Duration::from_secs(self.lag_refresh_seconds.max(1))
    }
}
