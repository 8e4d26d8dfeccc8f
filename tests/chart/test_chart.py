"""The Helm chart: lint, values schema, strict Kubernetes validation and what each value set creates."""

from __future__ import annotations

import copy
import json
import re
import textwrap
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART_CRD_PATH,
    CHART_DIR,
    CRD_PATH,
    K8S_DIR,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE_NAME,
    VALUE_SETS,
    Rendered,
    crd_schema,
    load_crd,
    pod_specs,
    render,
)

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_reports_no_warnings_or_errors(value_set: str) -> None:
    report = helm.lint(
        CHART_DIR,
        VALUE_SETS[value_set],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_values_schema_accepts_every_value_set(value_set: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(VALUE_SETS[value_set])


@pytest.mark.parametrize(
    "bad_values",
    [
        {"metricsRoute": "prometheus-adapter"},
        {"kafka": {"replicas": 2}},
        {"kafka": {"image": {"tag": "latest"}}},
        {"redis": {"image": {"tag": ""}}},
        {"operator": {"image": {"tag": "latest"}}},
        {"postgres": {"username": "Robert'); DROP TABLE"}},
        {"brokerAuth": {"create": True, "unknownField": 1}},
        {"smtp": {"url": "http://not-smtp"}},
        {"typoedTopLevelKey": True},
    ],
    ids=lambda v: json.dumps(v)[:60],
)
def test_values_schema_rejects_invalid_values(bad_values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad_values)


def _schema_paths(schema: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= _schema_paths(sub, root, path)
    return paths


def _value_paths(values: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(values, dict):
        for key, sub in values.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            # Free-form maps (labels, resources, selectors) are described as a whole.
            if key not in {"requests", "limits", "commonLabels", "podAnnotations", "podLabels", "annotations",
                           "nodeSelector", "affinity", "issuerRef"}:
                paths |= _value_paths(sub, path)
    return paths


def test_values_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    undescribed = _value_paths(values) - _schema_paths(schema, schema)
    assert not undescribed, f"values.yaml keys missing from values.schema.json: {sorted(undescribed)}"


def test_every_rendered_object_is_valid_for_kubernetes(rendered: Rendered) -> None:
    crd = load_crd()
    failures = []
    for template, obj in rendered.objects:
        where = f"{template}: {obj['kind']}/{obj['metadata'].get('name')}"
        if obj["apiVersion"].startswith("auth.cfdbroker.io/"):
            _validate_against_crd(obj, crd, where, failures)
        elif obj["apiVersion"].startswith("cert-manager.io/"):
            _validate_closed(obj, "cert-manager.io/v1", _CERT_MANAGER_SPECS, where, failures)
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _validate_closed(obj, "monitoring.coreos.com/v1", _PROMETHEUS_OPERATOR_SPECS, where, failures)
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{where}: {error.message} at {list(error.path)}")
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.append(f"{where}: {error.message}")
    assert not failures, "\n".join(failures)


def _validate_against_crd(obj: dict[str, Any], crd: dict[str, Any], where: str, failures: list[str]) -> None:
    assert obj["kind"] == crd["spec"]["names"]["kind"], where
    version = obj["apiVersion"].split("/")[1]
    validator = jsonschema.Draft7Validator(crd_schema(crd, version))
    failures.extend(f"{where}: {e.message} at {list(e.path)}" for e in validator.iter_errors(obj))


# cert-manager's CRDs are not vendored here; these are the fields of its v1 API this chart uses,
# closed with additionalProperties so a typo fails the test.
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": {"type": "string"}},
}
_CERT_MANAGER_SPECS = {
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "selfSigned": {"type": "object"},
            "ca": {"type": "object", "required": ["secretName"], "properties": {"secretName": {"type": "string"}}},
        },
    },
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["secretName", "issuerRef"],
        "properties": {
            "secretName": {"type": "string"},
            "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": {"type": "array", "items": {"type": "string"}},
            "isCA": {"type": "boolean"},
            "duration": {"type": "string", "pattern": "^[0-9]+h$"},
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                },
            },
            "issuerRef": _ISSUER_REF,
        },
    },
}


# The Prometheus Operator's CRDs are not vendored either: the fields of monitoring.coreos.com/v1 this chart uses,
# closed the same way.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_PROMETHEUS_OPERATOR_SPECS = {
    "PodMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
            },
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "honorLabels": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["alert", "expr"],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "expr": {"type": "string"},
                                    "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            }
        },
    },
}


def _validate_closed(
    obj: dict[str, Any], api_version: str, specs: dict[str, Any], where: str, failures: list[str]
) -> None:
    """Checks an object of a CRD not vendored here against the closed subset of its spec this chart uses."""
    if obj["apiVersion"] != api_version or obj["kind"] not in specs:
        failures.append(f"{where}: unexpected {obj['apiVersion']} object")
        return
    validator = jsonschema.Draft7Validator(specs[obj["kind"]])
    failures.extend(f"{where}: {e.message} at {list(e.path)}" for e in validator.iter_errors(obj["spec"]))


def test_rendered_objects_are_namespaced_into_the_release_or_cluster_scoped(rendered: Rendered) -> None:
    for _, obj in rendered.objects:
        if obj["kind"] == "RoleBinding" and obj["roleRef"]["name"] == "extension-apiserver-authentication-reader":
            # The one exception: that Role exists only in kube-system, so its binding must live there.
            assert obj["metadata"]["namespace"] == "kube-system", obj["metadata"]
            continue
        assert obj["metadata"].get("namespace") in (None, NAMESPACE), obj["metadata"]
        assert len(obj["metadata"]["name"]) <= 63 or obj["kind"] in {"ClusterRole", "ClusterRoleBinding", "APIService"}


def test_names_are_unique_per_kind(rendered: Rendered) -> None:
    seen: set[tuple[str, str]] = set()
    for _, obj in rendered.objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)


def test_every_image_is_pinned(rendered: Rendered) -> None:
    for _, obj in rendered.objects:
        for pod in pod_specs(obj):
            for container in pod.get("initContainers", []) + pod["containers"]:
                image = container["image"]
                assert re.fullmatch(r"[a-z0-9./_-]+(:[0-9]+)?[a-z0-9./_-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*", image), image
                assert not image.endswith(":latest"), image


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    for _, obj in rendered.objects:
        for pod in pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            pod_context = pod.get("securityContext", {})
            assert pod_context.get("runAsNonRoot") is True, where
            assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            for container in pod.get("initContainers", []) + pod["containers"]:
                context = container.get("securityContext", {})
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not context.get("capabilities", {}).get("add"), where
                assert context.get("privileged") is not True, where
                assert "resources" in container and container["resources"].get("limits"), f"{where} has no limits"
                # Beyond the restricted standard: writable paths are explicit volumes.
                assert context.get("readOnlyRootFilesystem") is True, f"{where}/{container['name']}: writable root"
            if obj["kind"] == "Job":
                continue  # runs to completion (the uninstall hook): nothing serves, nothing to probe
            for container in pod["containers"]:  # init containers cannot have probes
                assert container.get("readinessProbe") and container.get("livenessProbe"), f"{where} lacks probes"


def test_services_run_as_statefulsets_with_storage(rendered_sets: dict[str, Rendered]) -> None:
    defaults = rendered_sets["defaults"]
    for component, port in (("kafka", 9092), ("redis", 6379), ("postgres", 5432)):
        sts = defaults.one("StatefulSet", f"{RELEASE_NAME}-{component}")
        claims = sts["spec"]["volumeClaimTemplates"]
        assert claims and claims[0]["spec"]["resources"]["requests"]["storage"]
        container = sts["spec"]["template"]["spec"]["containers"][0]
        assert any(p["containerPort"] == port for p in container["ports"])
        assert container.get("startupProbe"), component
        service = defaults.one("Service", f"{RELEASE_NAME}-{component}")
        assert service["spec"]["ports"][0]["port"] == port


def test_official_images_are_used_for_the_services(rendered_sets: dict[str, Rendered]) -> None:
    images = {
        sts["metadata"]["name"]: sts["spec"]["template"]["spec"]["containers"][0]["image"]
        for sts in rendered_sets["defaults"].of_kind("StatefulSet")
    }
    assert images[f"{RELEASE_NAME}-kafka"].startswith("apache/kafka:")
    assert images[f"{RELEASE_NAME}-redis"].startswith("redis:")
    assert images[f"{RELEASE_NAME}-postgres"].startswith("postgres:")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_kafka_runs_kraft_with_a_quorum_of_every_replica(rendered_sets: dict[str, Rendered]) -> None:
    for value_set, replicas in (("defaults", 1), ("kafka-quorum", 3)):
        sts = rendered_sets[value_set].one("StatefulSet", f"{RELEASE_NAME}-kafka")
        assert sts["spec"]["replicas"] == replicas
        env = _env(sts["spec"]["template"]["spec"]["containers"][0])
        assert env["KAFKA_PROCESS_ROLES"]["value"] == "broker,controller"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]["value"].split(",")
        assert [v.split("@")[0] for v in voters] == [str(i) for i in range(replicas)]
        assert env["CLUSTER_ID"]["valueFrom"]["secretKeyRef"]["key"] == "CLUSTER_ID"
        assert env["KAFKA_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]["value"] == str(min(replicas, 3))
        # Service links would inject KAFKA_-prefixed variables that the image turns into broker properties.
        assert sts["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_kafka_runs_with_a_read_only_root_and_writes_only_to_its_volumes(rendered_sets: dict[str, Rendered]) -> None:
    sts = rendered_sets["defaults"].one("StatefulSet", f"{RELEASE_NAME}-kafka")
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    kafka = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in kafka["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    # The image's start script renders server.properties and copies log4j files into /opt/kafka/config.
    assert "emptyDir" in volumes[mounts["/opt/kafka/config"]]
    seed = pod["initContainers"][0]
    assert seed["image"] == kafka["image"]
    assert {m["name"] for m in seed["volumeMounts"]} == {mounts["/opt/kafka/config"]}
    # kafka-run-class.sh logs under LOG_DIR; the JVM keeps hsperfdata in /tmp.
    assert "emptyDir" in volumes[mounts[env["LOG_DIR"]]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The partitions live on the PVC, in a subdirectory (the volume root may hold lost+found).
    data = [p for p, name in mounts.items() if name == "data"]
    assert data and env["KAFKA_LOG_DIRS"].startswith(data[0] + "/")


def test_generated_secrets_are_read_back_from_the_release_with_lookup() -> None:
    # `lookup` is empty offline, so this guards the templates' text: without it `helm upgrade` would rotate
    # the database password, the JWT key, the Kafka cluster id and the metrics CA.
    secrets = (CHART_DIR / "templates" / "secrets.yaml").read_text()
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "CLUSTER_ID"):
        assert re.search(rf'existingSecretValue" \(dict "root" \$ "name" \$name "key" "{key}"\)', secrets), key
    assert 'existingSecretValue" (dict "root" $ "name" $name "key" $key)' in secrets
    assert 'lookup "v1" "Secret"' in (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret"' in (CHART_DIR / "templates" / "external-metrics.yaml").read_text()


def test_redis_refuses_writes_when_full_instead_of_evicting_rate_limits(rendered_sets: dict[str, Rendered]) -> None:
    conf = rendered_sets["defaults"].one("ConfigMap", f"{RELEASE_NAME}-redis")["data"]["redis.conf"]
    policies = re.findall(r"^maxmemory-policy\s+(\S+)", conf, re.MULTILINE)
    assert policies == ["noeviction"], conf


def test_generated_credentials_are_strong_and_consistent(rendered_sets: dict[str, Rendered]) -> None:
    defaults = rendered_sets["defaults"]
    postgres = defaults.one("Secret", f"{RELEASE_NAME}-postgres")["stringData"]
    assert len(postgres["POSTGRES_PASSWORD"]) >= 32
    assert f":{postgres['POSTGRES_PASSWORD']}@{RELEASE_NAME}-postgres.{NAMESPACE}.svc:5432/" in postgres["DATABASE_URL"]
    redis = defaults.one("Secret", f"{RELEASE_NAME}-redis")["stringData"]
    assert redis["REDIS_URL"] == f"redis://:{redis['REDIS_PASSWORD']}@{RELEASE_NAME}-redis.{NAMESPACE}.svc:6379/0"
    assert redis["auth.conf"].strip() == f"requirepass {redis['REDIS_PASSWORD']}"
    jwt = defaults.one("Secret", f"{RELEASE_NAME}-jwt")["stringData"]["JWT_SECRET"]
    assert len(jwt.encode()) >= 32  # the api refuses shorter keys
    seal = defaults.one("Secret", f"{RELEASE_NAME}-mail-seal")["stringData"]["MAIL_SEAL_KEY"]
    assert len(seal.encode()) >= 32  # the api and dbproc refuse shorter keys
    assert seal != jwt
    cluster_id = defaults.one("Secret", f"{RELEASE_NAME}-kafka")["stringData"]["CLUSTER_ID"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), cluster_id


def test_external_services_replace_the_statefulsets(rendered_sets: dict[str, Rendered]) -> None:
    external = rendered_sets["external-services"]
    assert not external.of_kind("StatefulSet")
    assert not external.of_kind("Secret") or all(
        s["metadata"]["name"].endswith("metrics-tls") for s in external.of_kind("Secret")
    ), [s["metadata"]["name"] for s in external.of_kind("Secret")]
    spec = external.one("BrokerAuth", "auth")["spec"]
    assert spec["kafka"]["bootstrapServers"] == VALUE_SETS["external-services"]["kafka"]["external"]["bootstrapServers"]
    assert spec["kafka"]["replicationFactor"] == 1
    assert spec["secrets"] == {
        "databaseUrl": {"name": "shared-postgres", "key": "url"},
        "redisUrl": {"name": "shared-redis", "key": "url"},
        "smtpUrl": {"name": "smtp-relay", "key": "url"},
        "jwtSecret": {"name": "broker-auth-jwt-key", "key": "key"},
        "mailSealKey": {"name": "broker-auth-mail-seal-key", "key": "key"},
    }


def test_external_kafka_without_an_address_fails_to_render() -> None:
    with pytest.raises(helm.HelmError, match="kafka.external.bootstrapServers is required"):
        render({"kafka": {"enabled": False}, "smtp": {"url": "smtp://m:25"}, "brokerAuth": {"create": True}})


def test_brokerauth_from_values_needs_mail_settings() -> None:
    with pytest.raises(helm.HelmError, match="needs mail settings"):
        render({"brokerAuth": {"create": True}})


def test_brokerauth_from_values_is_wired_to_the_chart_services(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["brokerauth-from-values"]
    ba = rendered.one("BrokerAuth", RELEASE_NAME)
    spec = ba["spec"]
    assert spec["kafka"]["bootstrapServers"] == f"{RELEASE_NAME}-kafka.{NAMESPACE}.svc:9092"
    secret_names = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
    for ref in spec["secrets"].values():
        assert ref["name"] in secret_names, f"{ref} names no Secret of the release"
        assert ref["key"] in secret_names[ref["name"]]["stringData"], ref
    assert spec["image"] == {
        "repository": "ghcr.io/cfdbroker/broker-auth",
        "tag": "0.1.0-test",
        "pullPolicy": "IfNotPresent",
        "pullSecrets": ["ghcr"],
    }
    assert spec["autoscaling"]["provider"] == "Operator"
    assert spec["dbproc"]["mailFrom"] == "Broker <no-reply@broker.example>"
    # Deleting the BrokerAuth deletes its topics and consumer groups unless switched off.
    assert spec["kafka"]["deleteTopicsOnDelete"] is True
    assert spec["observability"] == {"logLevel": "debug", "otlpEndpoint": "http://otel-collector.observability:4317"}


def test_brokerauth_from_values_respects_the_crd_rules(rendered: Rendered) -> None:
    # CEL rules (x-kubernetes-validations) are not evaluated by jsonschema; check the ones the CRD declares.
    for ba in rendered.of_kind("BrokerAuth"):
        for tier in ("api", "dbproc"):
            assert ba["spec"][tier]["minReplicas"] <= ba["spec"][tier]["maxReplicas"]


def test_metrics_route_api_service_registers_the_operator_with_the_aggregator(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["defaults"]
    api_service = rendered.one("APIService", "v1beta1.external.metrics.k8s.io")
    spec = api_service["spec"]
    assert spec["group"] == "external.metrics.k8s.io" and spec["version"] == "v1beta1"
    assert spec["insecureSkipTLSVerify"] is False
    service = rendered.one("Service", spec["service"]["name"])
    assert any(port["port"] == spec["service"]["port"] for port in service["spec"]["ports"])
    tls = rendered.one("Secret", f"{RELEASE_NAME}-metrics-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert spec["caBundle"] == tls["data"]["ca.crt"]


def test_metrics_route_cert_manager_injects_the_ca(rendered_sets: dict[str, Rendered]) -> None:
    for value_set in ("cert-manager", "cert-manager-issuer"):
        rendered = rendered_sets[value_set]
        api_service = rendered.one("APIService")
        assert "caBundle" not in api_service["spec"]
        certificate = rendered.one("Certificate", f"{RELEASE_NAME}-metrics-tls")
        annotation = api_service["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == f"{NAMESPACE}/{certificate['metadata']['name']}"
        assert f"{RELEASE_NAME}-operator.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
        assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"].endswith("metrics-tls")]
    assert rendered_sets["cert-manager-issuer"].one("Certificate")["spec"]["issuerRef"] == {
        "name": "cluster-ca",
        "kind": "ClusterIssuer",
    }


@pytest.mark.parametrize("value_set", ["keda-route", "metrics-route-off"])
def test_other_metrics_routes_leave_the_external_metrics_api_alone(rendered_sets: dict[str, Rendered], value_set: str) -> None:
    rendered = rendered_sets[value_set]
    assert "APIService" not in rendered.kinds()
    assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"].endswith("metrics-tls")]


def test_keda_route_makes_the_operator_own_a_scaled_object(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["keda-route"]
    assert rendered.one("BrokerAuth")["spec"]["autoscaling"]["provider"] == "Keda"
    rules = [rule for role in rendered.of_kind("ClusterRole") for rule in role["rules"]]
    assert any("keda.sh" in rule.get("apiGroups", []) and "scaledobjects" in rule["resources"] for rule in rules)


def test_chart_crd_is_the_generated_crd() -> None:
    assert CRD_PATH.exists(), "k8s/crd.yaml is missing"
    assert CHART_CRD_PATH.read_text() == CRD_PATH.read_text(), (
        "charts/broker-auth/crds/brokerauth.yaml differs from k8s/crd.yaml: run scripts/sync-chart-crd"
    )


def test_the_chart_ships_its_crd_in_crds_so_helm_installs_it_first() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        crds = chart.crds
    assert [c["filename"] for c in crds] == ["broker-auth/crds/brokerauth.yaml"]
    crd = yaml.safe_load(crds[0]["data"])
    assert crd["metadata"]["name"] == "brokerauths.auth.cfdbroker.io"
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


def test_notes_say_what_to_apply_next() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        notes = chart.render({}, name=RELEASE_NAME, namespace=NAMESPACE)["broker-auth/templates/NOTES.txt"]
    assert "kubectl apply" in notes and "BrokerAuth" in notes


def _notes_brokerauth(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """NOTES.txt rendered for `values`, and the BrokerAuth in its `cat <<'EOF' | kubectl apply` block."""
    with helm.Chart.load(CHART_DIR) as chart:
        notes = chart.render(copy.deepcopy(values), name=RELEASE_NAME, namespace=NAMESPACE)[
            "broker-auth/templates/NOTES.txt"
        ]
    block = re.search(r"cat <<'EOF' \| kubectl -n \S+ apply -f -\n(.*?)\n\s*EOF\n", notes, re.S)
    assert block, notes
    return notes, yaml.safe_load(textwrap.dedent(block.group(1)))


@pytest.mark.parametrize("value_set", ["defaults", "keda-route", "metrics-route-off", "cert-manager"])
def test_the_brokerauth_in_the_notes_works_with_what_the_chart_created(value_set: str) -> None:
    # `helm install` with these values, then the BrokerAuth NOTES.txt prints: every Secret and key it names must be
    # one the chart created (or one the notes tell you to create), and dbproc must get every setting it requires.
    values = {k: v for k, v in VALUE_SETS[value_set].items() if k != "brokerAuth"}
    notes, ba = _notes_brokerauth(values)
    jsonschema.validate(ba, crd_schema(load_crd()))
    rendered = render(values)
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in rendered.of_kind("Secret")}
    told_to_create = set(re.findall(r"kubectl -n \S+ create secret generic (\S+) --from-literal=(\w+)=", notes))
    for field, ref in ba["spec"]["secrets"].items():
        assert ref["name"] in secrets or (ref["name"], ref["key"]) in told_to_create, f"{field}: {ref} is nowhere"
        if ref["name"] in secrets:
            assert ref["key"] in secrets[ref["name"]], f"{field}: Secret {ref['name']} has no key {ref['key']}"
    assert not {name for name, _ in told_to_create} & set(secrets), "the notes would create a Secret the chart owns"
    # dbproc has no default for MAIL_FROM; the CRD requires spec.dbproc.mailFrom (validated above).
    assert ba["spec"]["dbproc"]["mailFrom"]
    assert ba["spec"]["kafka"]["bootstrapServers"] == f"{RELEASE_NAME}-kafka.{NAMESPACE}.svc:9092"
    expected_provider = "Keda" if values.get("metricsRoute") == "keda" else "Operator"
    assert ba["spec"].get("autoscaling", {}).get("provider", "Operator") == expected_provider


def test_the_notes_use_the_chart_smtp_secret_when_one_is_configured() -> None:
    notes, ba = _notes_brokerauth({"smtp": {"url": "smtp://mailpit.mail.svc:1025"}})
    assert "create secret" not in notes
    assert ba["spec"]["secrets"]["smtpUrl"] == {"name": f"{RELEASE_NAME}-smtp", "key": "SMTP_URL"}


IANA_SVC_NAME = re.compile(r"(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*")


def test_port_names_are_valid_and_services_target_existing_ports(rendered: Rendered) -> None:
    # The API server rejects port names longer than 15 characters, which the JSON schemas do not encode.
    pods = []
    for _, obj in rendered.objects:
        for pod in pod_specs(obj):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            ports = {p["name"] for c in pod["containers"] for p in c.get("ports", []) if "name" in p}
            for name in ports:
                assert IANA_SVC_NAME.fullmatch(name), f"{obj['metadata']['name']}: invalid port name {name!r}"
            pods.append((labels, ports))
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        targets = [labels_ports[1] for labels_ports in pods if selector.items() <= labels_ports[0].items()]
        assert targets, f"Service {service['metadata']['name']} selects no pod of the chart"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert all(target in ports for ports in targets), f"{service['metadata']['name']}: no port {target}"


# Roles Kubernetes ships (bootstrap policy), which a binding names without the chart or k8s/ defining them.
_BUILT_IN_ROLES = {
    ("ClusterRole", "system:auth-delegator"),
    ("Role", "extension-apiserver-authentication-reader"),
}
_OPERATOR_NAMESPACE = "<operator namespace>"


def _operator_grants(objects: list[dict[str, Any]], service_account: str, namespace: str) -> set[tuple[str, ...]]:
    """What the operator's ServiceAccount may do, as (scope, apiGroup, resource, resourceNames, verb) rows, plus
    ("bound", scope, kind, name) for each built-in role it is bound to. The operator's own namespace is written
    as a placeholder, so a chart release and the plain manifests compare equal. A namespaced object without a
    namespace (a chart template) lands in the operator's namespace, as Helm installs it there."""
    roles = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", namespace)
              if o["kind"] == "Role" else None): o for o in objects if o["kind"] in {"Role", "ClusterRole"}}
    grants: set[tuple[str, ...]] = set()
    for binding in objects:
        if binding["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account and s.get("namespace") == namespace
                   for s in binding.get("subjects", [])):
            continue
        binding_ns = binding["metadata"].get("namespace", namespace) if binding["kind"] == "RoleBinding" else None
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else (
            _OPERATOR_NAMESPACE if binding_ns == namespace else binding_ns)
        ref = binding["roleRef"]
        if (ref["kind"], ref["name"]) in _BUILT_IN_ROLES:
            grants.add(("bound", scope, ref["kind"], ref["name"]))
            continue
        role = roles.get((ref["kind"], ref["name"], binding_ns if ref["kind"] == "Role" else None))
        assert role, f"{binding['kind']} {binding['metadata']['name']} binds the missing {ref['kind']} {ref['name']}"
        for rule in role["rules"]:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule["verbs"]:
                        grants.add((scope, group, resource, ",".join(sorted(rule.get("resourceNames", []))), verb))
    return grants


def _plain_manifests() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc and "kind" in doc)
    return objects


_AGGREGATED_API_SERVER_GRANTS = {
    # SubjectAccessReviews for every metric read (operator/src/access_review.rs).
    ("bound", "cluster", "ClusterRole", "system:auth-delegator"),
    # The front proxy's client CA, from kube-system/extension-apiserver-authentication (operator/src/front_proxy.rs).
    ("bound", "kube-system", "Role", "extension-apiserver-authentication-reader"),
}


def test_the_chart_grants_the_operator_exactly_what_the_plain_manifests_grant(rendered_sets: dict[str, Rendered]) -> None:
    plain = _operator_grants(_plain_manifests(), "broker-auth-operator", "broker-auth-system")
    assert _AGGREGATED_API_SERVER_GRANTS <= plain, "k8s/ lacks the aggregated API server bindings"
    rendered = rendered_sets["defaults"]
    service_account = rendered.one("ServiceAccount", f"{RELEASE_NAME}-operator")["metadata"]["name"]
    chart = _operator_grants([obj for _, obj in rendered.objects], service_account, NAMESPACE)
    assert chart == plain, (
        f"only in the chart: {sorted(chart - plain)}\nonly in k8s/: {sorted(plain - chart)}"
    )


@pytest.mark.parametrize("value_set", ["keda-route", "metrics-route-off"])
def test_without_the_api_service_the_operator_gets_no_authentication_delegation(
    rendered_sets: dict[str, Rendered], value_set: str
) -> None:
    # Nothing calls the operator's metrics API through the aggregator, so nothing needs authenticating.
    plain = _operator_grants(_plain_manifests(), "broker-auth-operator", "broker-auth-system")
    rendered = rendered_sets[value_set]
    service_account = rendered.one("ServiceAccount", f"{RELEASE_NAME}-operator")["metadata"]["name"]
    chart = _operator_grants([obj for _, obj in rendered.objects], service_account, NAMESPACE)
    assert chart == plain - _AGGREGATED_API_SERVER_GRANTS
    assert not [b for b in rendered.of_kind("RoleBinding") if b["metadata"].get("namespace") == "kube-system"]


def test_the_kube_system_binding_names_the_release_namespace_so_releases_do_not_collide() -> None:
    names = set()
    for namespace in ("team-a", "team-b"):
        with helm.Chart.load(CHART_DIR) as chart:
            manifests = chart.render({}, name=RELEASE_NAME, namespace=namespace, is_install=True)
        for document in yaml.safe_load_all(manifests["broker-auth/templates/external-metrics.yaml"]):
            if document and document["kind"] == "RoleBinding":
                assert document["metadata"]["namespace"] == "kube-system"
                names.add(document["metadata"]["name"])
    assert len(names) == 2, names


def test_the_crd_requires_the_sender_address_dbproc_cannot_start_without() -> None:
    schema = crd_schema(load_crd())
    spec = schema["properties"]["spec"]
    assert "dbproc" in spec["required"]
    assert "default" not in spec["properties"]["dbproc"], "a default dbproc block would lack mailFrom"
    dbproc = spec["properties"]["dbproc"]
    assert "mailFrom" in dbproc["required"]
    assert dbproc["properties"]["mailFrom"].get("minLength") == 1
    assert not dbproc["properties"]["mailFrom"].get("nullable")
    ba = render(VALUE_SETS["brokerauth-from-values"]).one("BrokerAuth")
    jsonschema.validate(ba, schema)
    del ba["spec"]["dbproc"]["mailFrom"]
    with pytest.raises(jsonschema.ValidationError, match="mailFrom"):
        jsonschema.validate(ba, schema)


def test_the_crd_requires_the_mail_seal_key_the_api_and_dbproc_share() -> None:
    schema = crd_schema(load_crd())
    secrets = schema["properties"]["spec"]["properties"]["secrets"]
    assert "mailSealKey" in secrets["required"]
    assert "default" not in secrets["properties"]["mailSealKey"]
    ba = render(VALUE_SETS["brokerauth-from-values"]).one("BrokerAuth")
    assert ba["spec"]["secrets"]["mailSealKey"] == {"name": f"{RELEASE_NAME}-mail-seal", "key": "MAIL_SEAL_KEY"}
    jsonschema.validate(ba, schema)
    del ba["spec"]["secrets"]["mailSealKey"]
    with pytest.raises(jsonschema.ValidationError, match="mailSealKey"):
        jsonschema.validate(ba, schema)


@pytest.mark.parametrize(
    ("value_set", "enabled"),
    [("defaults", "true"), ("keda-route", "false"), ("metrics-route-off", "false")],
)
def test_the_operator_serves_the_external_metrics_api_only_on_that_route(
    rendered_sets: dict[str, Rendered], value_set: str, enabled: str
) -> None:
    deployment = rendered_sets[value_set].one("Deployment", f"{RELEASE_NAME}-operator")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EXTERNAL_METRICS_ENABLED"] == enabled


def test_the_sample_protected_route_asks_the_api_for_every_request(rendered_sets: dict[str, Rendered]) -> None:
    sample = rendered_sets["sample-protected-route"]
    ingress = sample.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"] == (
        f"http://auth-api.{NAMESPACE}.svc.cluster.local/api/v1/auth/check"
    )
    assert set(annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")) == {
        "X-Auth-User-Id",
        "X-Auth-Email",
        "X-Auth-Session-Id",
    }
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "trading.broker.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = sample.one("Service", backend["name"])
    deployment = sample.one("Deployment", backend["name"])
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert rule["http"]["paths"][0]["path"] == "/trading"
    for name, rendered in rendered_sets.items():
        if name != "sample-protected-route":
            assert not rendered.of_kind("Ingress"), f"{name} has an Ingress: the sample route is off by default"


def test_the_sample_protected_route_needs_a_brokerauth() -> None:
    with pytest.raises(Exception, match="sampleProtectedRoute needs a BrokerAuth"):
        render({"sampleProtectedRoute": {"enabled": True}})
