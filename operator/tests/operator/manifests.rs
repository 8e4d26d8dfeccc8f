//! Every manifest in k8s/ and every object reconcile produces, checked with
//! `kubernetes-validate --strict` (PyPI) against Kubernetes 1.33.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use broker_auth_contract::Topics;
use broker_auth_operator::crd::LagMetricsProvider;
use broker_auth_operator::resources::desired_objects;

use crate::support::{repo_root, sample_brokerauth, unique};

const KUBERNETES_VERSION: &str = "1.33.0";

fn kubernetes_validate(files: &[PathBuf]) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate is not installed ({e}): pip install kubernetes-validate")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && !stdout.contains("ERROR"),
        "kubernetes-validate failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("passed"),
        "nothing was validated:\n{stdout}"
    );
}

#[test]
fn the_manifests_in_k8s_are_valid_kubernetes_objects() {
    let k8s = repo_root().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(k8s.join("examples/secrets.yaml"));
    files.sort();
    kubernetes_validate(&files);
}

#[test]
fn every_object_reconcile_applies_is_a_valid_kubernetes_object() {
    let dir = std::env::temp_dir().join(unique("broker-auth-objects-"));
    std::fs::create_dir_all(&dir).unwrap();
    let topics = Topics::for_deployment("default", "auth").unwrap();
    let mut files = Vec::new();
    for provider in [LagMetricsProvider::Operator, LagMetricsProvider::Keda] {
        let mut ba = sample_brokerauth();
        ba.spec.autoscaling.provider = provider;
        ba.spec.image.pull_secrets = vec!["registry".into()];
        ba.spec.observability.otlp_endpoint = Some("http://otel-collector:4317".into());
        let versions = BTreeMap::from([("broker-auth-jwt".to_owned(), "7".to_owned())]);
        for (i, object) in desired_objects(&ba, "default", &topics, &versions)
            .into_iter()
            .enumerate()
        {
            let path = dir.join(format!("{provider:?}-{i}-{}.json", object.resource.kind));
            std::fs::write(&path, serde_json::to_vec_pretty(&object.body).unwrap()).unwrap();
            files.push(path);
        }
    }
    kubernetes_validate(&files);
    std::fs::remove_dir_all(&dir).unwrap();
}
