use std::collections::BTreeMap;

use broker_auth_contract::Topics;
use broker_auth_operator::resources::desired_objects;

use crate::support::{repo_root, sample_brokerauth};

/// Every variable the operator sets on a container is one its binary reads, as recorded in
/// docs/settings.json (generated from the binaries' clap definitions).
#[test]
fn every_env_name_the_operator_sets_is_a_setting_of_that_binary() {
    let path = repo_root().join("docs/settings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}); it is generated from the binaries",
            path.display()
        )
    });
    let settings: BTreeMap<String, Vec<String>> = serde_json::from_str(&text).unwrap();
    let mut ba = sample_brokerauth();
    ba.spec.observability.otlp_endpoint = Some("http://otel:4317".into());
    let topics = Topics::for_deployment("default", "auth").unwrap();
    let objects = desired_objects(&ba, "default", &topics, &BTreeMap::new());
    let mut checked = 0;
    for object in objects.iter().filter(|o| o.resource.kind == "Deployment") {
        let containers = object.body["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        for container in containers {
            let binary = container["name"].as_str().unwrap();
            let known = settings
                .get(binary)
                .unwrap_or_else(|| panic!("docs/settings.json has no entry {binary:?}"));
            assert!(
                container.get("envFrom").is_none(),
                "envFrom would hide which names are set"
            );
            for env in container["env"].as_array().unwrap() {
                let name = env["name"].as_str().unwrap();
                assert!(
                    known.iter().any(|k| k == name),
                    "{binary} does not read {name}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} variables checked");
}
