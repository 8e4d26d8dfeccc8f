//! Prometheus metrics of the operator itself.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub dbproc_lag: Family<InstanceLabels, Gauge>,
    pub ready: Family<InstanceLabels, Gauge>,
    pub dbproc_replicas: Family<InstanceLabels, Gauge>,
    pub dbproc_max_replicas: Family<InstanceLabels, Gauge>,
    pub external_metrics_requests: Family<OutcomeLabels, Counter>,
    pub certificate_expiry: Gauge,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("broker_auth_operator");
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let dbproc_lag = Family::<InstanceLabels, Gauge>::default();
        let ready = Family::<InstanceLabels, Gauge>::default();
        let dbproc_replicas = Family::<InstanceLabels, Gauge>::default();
        let dbproc_max_replicas = Family::<InstanceLabels, Gauge>::default();
        let external_metrics_requests = Family::<OutcomeLabels, Counter>::default();
        let certificate_expiry = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "dbproc_lag",
            "dbproc consumer lag measured at the last reconcile",
            dbproc_lag.clone(),
        );
        registry.register(
            "brokerauth_ready",
            "1 while a BrokerAuth's Ready condition is True, 0 otherwise (written by the leader at each reconcile)",
            ready.clone(),
        );
        registry.register(
            "dbproc_replicas",
            "dbproc replicas of a BrokerAuth, as its Deployment reported at the last reconcile",
            dbproc_replicas.clone(),
        );
        registry.register(
            "dbproc_max_replicas",
            "spec.dbproc.maxReplicas of a BrokerAuth: the most replicas lag can scale dbproc to",
            dbproc_max_replicas.clone(),
        );
        registry.register(
            "external_metrics_requests",
            "Requests to the external metrics API, by outcome: ok, unauthenticated, forbidden, not_found, bad_request, unavailable",
            external_metrics_requests.clone(),
        );
        registry.register(
            "external_metrics_certificate_expiry_timestamp_seconds",
            "When the certificate the external metrics API serves expires (Unix time); 0 until it is served",
            certificate_expiry.clone(),
        );
        for outcome in EXTERNAL_METRICS_OUTCOMES {
            let _ = external_metrics_requests.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            reconciles,
            failures,
            reconcile_duration,
            dbproc_lag,
            ready,
            dbproc_replicas,
            dbproc_max_replicas,
            external_metrics_requests,
            certificate_expiry,
            registry,
        }
    }
}

/// The outcomes of an external metrics request (the `outcome` label).
pub const EXTERNAL_METRICS_OUTCOMES: [&str; 6] = [
    "ok",
    "unauthenticated",
    "forbidden",
    "not_found",
    "bad_request",
    "unavailable",
];

impl Metrics {
    pub fn external_metrics_request(&self, outcome: &'static str) {
        self.external_metrics_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Forgets every series of a deleted BrokerAuth.
    pub fn forget(&self, instance: &InstanceLabels) {
        for family in [
            &self.dbproc_lag,
            &self.ready,
            &self.dbproc_replicas,
            &self.dbproc_max_replicas,
        ] {
            family.remove(instance);
        }
    }

    /// Drops every per-BrokerAuth series: a replica that stops leading writes them no more, and
    /// its last values would otherwise stand beside the new leader's (an ex-leader's stale
    /// ready = 1 would hide a BrokerAuth that is not Ready from `max by` in the alerts).
    pub fn forget_all(&self) {
        for family in [
            &self.dbproc_lag,
            &self.ready,
            &self.dbproc_replicas,
            &self.dbproc_max_replicas,
        ] {
            family.clear();
        }
    }

    pub fn record_failure(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
