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
        ("lagPerReplica: 50", "lagPerReplica: 0"),
        ("minReplicas: 1", "minReplicas: 0"),
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
            "    lagPerReplica: 50",
            "    lagPerReplica: 50\n    unknownField: 1",
        ),
        // dbproc does not start without MAIL_FROM, so neither it nor the dbproc block may be left out.
        ("    mailFrom: \"Broker <no-reply@example.com>\"\n", ""),
        (
            "    mailFrom: \"Broker <no-reply@example.com>\"",
            "    mailFrom: \"\"",
        ),
        (
            "  dbproc:\n    minReplicas: 1\n    maxReplicas: 6\n    lagPerReplica: 50\n    mailFrom: \"Broker <no-reply@example.com>\"\n",
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
