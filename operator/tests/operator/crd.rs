use std::process::Command;

use broker_auth_operator::crd::{BrokerAuth, crd_yaml};

use crate::support::repo_root;

#[test]
fn the_checked_in_crd_matches_the_rust_types() {
    let path = repo_root().join("k8s/crd.yaml");
    let generated = crd_yaml().unwrap();
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "k8s/crd.yaml is stale: run `cargo run -p broker-auth-operator -- crd > k8s/crd.yaml`"
    );
}

#[test]
fn the_example_brokerauth_loses_no_field_when_read_by_the_operator() {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    let original: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let typed: BrokerAuth = serde_json::from_value(original.clone()).unwrap();
    let round_trip = serde_json::to_value(&typed).unwrap();
    assert_kept(&original["spec"], &round_trip["spec"], "spec");
}

/// Every field of `original` is in `kept` with the same value (defaults may be added).
fn assert_kept(original: &serde_json::Value, kept: &serde_json::Value, path: &str) {
    match original.as_object() {
        Some(fields) => {
            for (key, value) in fields {
                assert_kept(value, &kept[key], &format!("{path}.{key}"));
            }
        }
        None => assert_eq!(original, kept, "{path} changed"),
    }
}

/// Validates documents against the CRD's openAPIV3Schema with Python's jsonschema (installed
/// with kubernetes-validate), unknown fields refused as a structural schema would prune them.
fn validate_against_crd(documents: &str) -> Result<(), String> {
    let script = r#"
import json, sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if node.get("nullable"):
            t = node.get("type")
            if isinstance(t, str):
                node["type"] = [t, "null"]
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
strict(schema)
schema["properties"]["metadata"] = {"type": "object"}
schema["properties"]["apiVersion"] = {"type": "string", "enum": ["auth.cfdbroker.io/v1alpha1"]}
schema["properties"]["kind"] = {"type": "string", "enum": ["BrokerAuth"]}
failed = False
for doc in yaml.safe_load_all(sys.stdin):
    for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
        failed = True
        print("/".join(map(str, error.path)), error.message)
sys.exit(1 if failed else 0)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(repo_root().join("k8s/crd.yaml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed (pip install kubernetes-validate brings jsonschema and PyYAML)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(documents.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[test]
fn the_example_brokerauth_validates_against_the_crd() {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    validate_against_crd(&text).unwrap();
}

#[test]
fn the_crd_schema_refuses_what_it_can() {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    for (from, to) in [
        ("lagPerReplica: 1600", "lagPerReplica: 0"),
        // api's; dbproc's may be 0 with KEDA (a CEL rule, tested below).
        ("minReplicas: 2", "minReplicas: 0"),
        ("tag: 0.1.0", "tag: \"bad tag\""),
        (
            "repository: ghcr.io/cfdbroker/broker-auth",
            "repository: Not/Lower",
        ),
        (
            "      name: broker-auth-jwt\n      key: secret",
            "      name: broker-auth-jwt",
        ),
        (
            "    lagPerReplica: 1600",
            "    lagPerReplica: 1600\n    unknownField: 1",
        ),
        // dbproc does not start without MAIL_FROM, so neither it nor the dbproc block may be left out.
        ("    mailFrom: \"Broker <no-reply@example.com>\"\n", ""),
        (
            "    mailFrom: \"Broker <no-reply@example.com>\"",
            "    mailFrom: \"\"",
        ),
        (
            "  dbproc:\n    minReplicas: 1\n    maxReplicas: 6\n    lagPerReplica: 1600\n    mailFrom: \"Broker <no-reply@example.com>\"\n",
            "",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let invalid = text.replacen(from, to, 1);
        assert!(
            validate_against_crd(&invalid).is_err(),
            "the schema accepted {to:?}"
        );
    }
    let crd = std::fs::read_to_string(repo_root().join("k8s/crd.yaml")).unwrap();
    // min ≤ max is a CEL rule the API server enforces; reconcile checks it too.
    assert!(crd.contains("rule: self.minReplicas <= self.maxReplicas"));
    assert!(crd.contains("x-kubernetes-list-type: map"));
}

/// The openAPIV3Schema of the checked-in CRD, as the API server holds it.
fn crd_schema() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("k8s/crd.yaml")).unwrap();
    let crd: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn example() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("k8s/examples/brokerauth.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The CRD's CEL rules (x-kubernetes-validations) evaluated as the API server does, defaults
/// applied first; the messages of the rules that refused.
fn cel_refusals(object: &serde_json::Value) -> Vec<String> {
    match kube_cel::validate(&crd_schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_example_brokerauth_passes_the_crds_cel_rules() {
    assert_eq!(cel_refusals(&example()), Vec::<String>::new());
}

#[test]
fn the_crds_cel_rules_refuse_what_the_openapi_schema_cannot_say() {
    type Change = fn(&mut serde_json::Value);
    let refused: [(&str, Change, &str); 9] = [
        (
            "api min above max",
            |ba| ba["spec"]["api"]["minReplicas"] = 7.into(),
            "api.minReplicas must not exceed",
        ),
        (
            "dbproc min above max",
            |ba| ba["spec"]["dbproc"]["minReplicas"] = 9.into(),
            "dbproc.minReplicas must not exceed",
        ),
        (
            "no port",
            |ba| ba["spec"]["kafka"]["bootstrapServers"] = "kafka.default.svc".into(),
            "bootstrapServers",
        ),
        (
            "port not a number",
            |ba| ba["spec"]["kafka"]["bootstrapServers"] = "kafka:ninety".into(),
            "bootstrapServers",
        ),
        (
            "trailing comma",
            |ba| ba["spec"]["kafka"]["bootstrapServers"] = "kafka:9092,".into(),
            "bootstrapServers",
        ),
        (
            "spaces",
            |ba| ba["spec"]["kafka"]["bootstrapServers"] = "kafka:9092, other:9092".into(),
            "bootstrapServers",
        ),
        (
            "a URL path",
            |ba| ba["spec"]["kafka"]["bootstrapServers"] = "PLAINTEXT://kafka:9092/x".into(),
            "bootstrapServers",
        ),
        (
            "scale to zero by the operator's HPA",
            |ba| ba["spec"]["dbproc"]["minReplicas"] = 0.into(),
            "needs autoscaling.provider Keda",
        ),
        (
            "scale to zero with the provider defaulted",
            |ba| {
                ba["spec"]["dbproc"]["minReplicas"] = 0.into();
                ba["spec"].as_object_mut().unwrap().remove("autoscaling");
            },
            "needs autoscaling.provider Keda",
        ),
    ];
    for (what, change, message) in refused {
        let mut ba = example();
        change(&mut ba);
        let refusals = cel_refusals(&ba);
        assert!(
            refusals.iter().any(|r| r.contains(message)),
            "{what}: expected a refusal containing {message:?}, got {refusals:?}"
        );
        // The operator refuses the same shapes when a cluster without CEL stored them.
        let typed: BrokerAuth = serde_json::from_value(ba).unwrap();
        assert!(
            !broker_auth_operator::reconcile::spec_problems(&typed, "default").is_empty(),
            "{what}: reconcile accepted it"
        );
    }

    let accepted: [(&str, Change); 4] = [
        ("several brokers", |ba| {
            ba["spec"]["kafka"]["bootstrapServers"] = "kafka-0.kafka:9092,kafka-1.kafka:9092".into()
        }),
        ("an IPv6 broker", |ba| {
            ba["spec"]["kafka"]["bootstrapServers"] = "[fd00::1]:9092".into()
        }),
        ("a protocol prefix", |ba| {
            ba["spec"]["kafka"]["bootstrapServers"] = "SSL://kafka.example.com:9093".into()
        }),
        ("KEDA scaling to zero", |ba| {
            ba["spec"]["dbproc"]["minReplicas"] = 0.into();
            ba["spec"]["autoscaling"]["provider"] = "Keda".into();
        }),
    ];
    for (what, change) in accepted {
        let mut ba = example();
        change(&mut ba);
        assert_eq!(cel_refusals(&ba), Vec::<String>::new(), "{what}");
        let typed: BrokerAuth = serde_json::from_value(ba).unwrap();
        assert_eq!(
            broker_auth_operator::reconcile::spec_problems(&typed, "default"),
            Vec::<String>::new(),
            "{what}"
        );
    }
}

#[test]
fn a_brokerauth_without_an_autoscaling_block_caps_the_lag_as_documented() {
    let schema = crd_schema();
    let autoscaling = &schema["properties"]["spec"]["properties"]["autoscaling"];
    assert_eq!(autoscaling["default"]["capLagAtPartitions"], true);
    assert_eq!(
        autoscaling["properties"]["capLagAtPartitions"]["default"],
        true
    );
    let mut ba = example();
    ba["spec"].as_object_mut().unwrap().remove("autoscaling");
    let typed: BrokerAuth = serde_json::from_value(ba).unwrap();
    assert!(typed.spec.autoscaling.cap_lag_at_partitions);
}
