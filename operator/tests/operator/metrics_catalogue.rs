//! The operator's section of `docs/metrics.md` lists exactly what its `/metrics` exposes, with
//! types and labels (every family given a sample, so its labels show).

use std::time::Duration;

use broker_auth_operator::metrics::{InstanceLabels, Metrics};
use broker_auth_testkit::metrics_catalogue::{catalogue, differences, exposed};

const CATALOGUE: &str = include_str!("../../../docs/metrics.md");

#[test]
fn the_catalogue_lists_what_the_operator_exposes() {
    let metrics = Metrics::default();
    let instance = InstanceLabels {
        namespace: "default".into(),
        name: "auth".into(),
    };
    metrics.reconciles.inc();
    metrics.record_failure("kafka");
    metrics.observe_duration(Duration::from_millis(20));
    metrics.dbproc_lag.get_or_create(&instance).set(3);
    metrics.ready.get_or_create(&instance).set(1);
    metrics.dbproc_replicas.get_or_create(&instance).set(2);
    metrics.dbproc_max_replicas.get_or_create(&instance).set(10);
    metrics.external_metrics_request("ok");
    metrics.certificate_expiry.set(1_803_859_200);
    let found = differences(
        &catalogue(CATALOGUE, "Operator"),
        &exposed(&metrics.encode()),
    );
    assert!(
        found.is_empty(),
        "section Operator of docs/metrics.md:\n{found}"
    );
}
