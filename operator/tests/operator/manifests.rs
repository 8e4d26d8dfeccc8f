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
        // cert-manager's kinds have no schema in kubernetes-validate; checked below.
        .filter(|path| !path.ends_with("cert-manager.yaml"))
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
        assert_eq!(metadata["lagThreshold"], "1600");
        assert_eq!(metadata["offsetResetPolicy"], "earliest");
        assert_eq!(metadata["allowIdleConsumers"], "false");
    }
}

fn documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo_root().join("k8s").join(file)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// As the chart does: the aggregator verifies the operator's certificate against a CA in the
/// APIService's caBundle (injected by cert-manager), never `insecureSkipTLSVerify`.
#[test]
fn the_plain_manifests_verify_the_operators_certificate_as_the_chart_does() {
    let apiservices = documents("external-metrics.yaml");
    let apiservice = find(
        &apiservices,
        "APIService",
        "v1beta1.external.metrics.k8s.io",
    );
    assert_ne!(apiservice["spec"]["insecureSkipTLSVerify"], true);
    let injected = apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("the APIService names the certificate whose CA cert-manager injects");
    let (namespace, certificate) = injected.split_once('/').unwrap();
    let service = &apiservice["spec"]["service"];
    assert_eq!(service["namespace"], namespace);

    let issued = documents("cert-manager.yaml");
    let certificate = find(&issued, "Certificate", certificate);
    assert_eq!(certificate["metadata"]["namespace"], namespace);
    let service_dns = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap(),
        service["namespace"].as_str().unwrap()
    );
    let names = certificate["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        names.iter().any(|n| *n == service_dns.as_str()),
        "{names:?}"
    );
    // Its issuer is a CA, not the self-signed issuer: the caBundle must be a CA.
    let issuer = find(
        &issued,
        "Issuer",
        certificate["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(issuer["spec"]["ca"]["secretName"].is_string());
    let secret = certificate["spec"]["secretName"].as_str().unwrap();

    let operator = documents("operator.yaml");
    let pod = &find(&operator, "Deployment", "broker-auth-operator")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .expect("the operator mounts the serving certificate");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no {name}"))
            .to_owned()
    };
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(env("TLS_CERT_FILE"), format!("{dir}/tls.crt"));
    assert_eq!(env("TLS_KEY_FILE"), format!("{dir}/tls.key"));
}

#[test]
fn the_plain_manifests_run_two_operator_replicas_kept_up_by_a_disruption_budget() {
    let operator = documents("operator.yaml");
    let deployment = find(&operator, "Deployment", "broker-auth-operator");
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    let budget = find(&operator, "PodDisruptionBudget", "broker-auth-operator");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}
