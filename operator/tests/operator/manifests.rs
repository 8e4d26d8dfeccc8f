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
    // An object of a kind it has no schema for is only a warning; here it must be a failure,
    // or "every object is validated" would quietly stop being true.
    assert!(
        output.status.success() && !stdout.contains("ERROR") && !stdout.contains("WARN"),
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
        // Kustomize's own file, not an object the cluster receives.
        .filter(|path| !path.ends_with("kustomization.yaml"))
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
            // kubernetes-validate has no KEDA schema; the ScaledObject is checked below.
            .filter(|(_, object)| object.resource.group != "keda.sh")
        {
            let path = dir.join(format!("{provider:?}-{i}-{}.json", object.resource.kind));
            std::fs::write(&path, serde_json::to_vec_pretty(&object.body).unwrap()).unwrap();
            files.push(path);
        }
    }
    kubernetes_validate(&files);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The ScaledObject against KEDA's documented `kafka` trigger (kubernetes-validate has no KEDA
/// schema): one trigger per request topic, since the scaler reads one topic per trigger and
/// leaving `topic` out makes it guess the topics from the group's commits.
#[test]
fn the_keda_scaled_object_has_one_kafka_trigger_per_request_topic() {
    let mut ba = sample_brokerauth();
    ba.spec.autoscaling.provider = LagMetricsProvider::Keda;
    let topics = Topics::for_deployment("default", "auth").unwrap();
    let objects = desired_objects(&ba, "default", &topics, &BTreeMap::new());
    let scaled = objects
        .iter()
        .find(|o| o.resource.kind == "ScaledObject")
        .unwrap();
    assert_eq!(scaled.body["apiVersion"], "keda.sh/v1alpha1");
    let spec = &scaled.body["spec"];
    assert_eq!(
        spec["scaleTargetRef"],
        serde_json::json!({"name": "auth-dbproc"})
    );
    assert_eq!(spec["minReplicaCount"], ba.spec.dbproc.min_replicas);
    assert_eq!(spec["maxReplicaCount"], ba.spec.dbproc.max_replicas);
    let triggers = spec["triggers"].as_array().unwrap();
    let triggered: Vec<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["topic"].as_str().unwrap())
        .collect();
    assert_eq!(triggered, topics.request_topics());
    let documented = [
        "bootstrapServers",
        "consumerGroup",
        "topic",
        "lagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
    ];
    for trigger in triggers {
        assert_eq!(trigger["type"], "kafka");
        let metadata = trigger["metadata"].as_object().unwrap();
        for (key, value) in metadata {
            assert!(documented.contains(&key.as_str()), "undocumented {key}");
            // KEDA's trigger metadata is a map of strings.
            assert!(value.is_string(), "{key} is not a string");
        }
        assert_eq!(metadata["consumerGroup"], topics.dbproc_group().as_str());
        assert_eq!(metadata["lagThreshold"], "50");
        assert_eq!(metadata["offsetResetPolicy"], "earliest");
        assert_eq!(metadata["allowIdleConsumers"], "false");
    }
}
