"""Shared fixtures of the chart tests: the chart rendered with Helm's own engine under named value sets.

Rendering is offline (helm-python-sdk binds Helm 4's Go SDK): no cluster is contacted and `lookup`
returns nothing, exactly as under `helm template`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "broker-auth"
K8S_DIR = REPO_ROOT / "k8s"
CRD_PATH = K8S_DIR / "crd.yaml"
CHART_CRD_PATH = CHART_DIR / "crds" / "brokerauth.yaml"
SETTINGS_PATH = REPO_ROOT / "docs" / "settings.json"

RELEASE_NAME = "broker-auth"
NAMESPACE = "broker-auth"
# A recent Kubernetes release that kubernetes-validate ships schemas for; kind's node images track it.
KUBE_VERSION = "1.34.0"

# Value sets every test runs against. Each must render, lint clean and validate.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-services": {
        "kafka": {"enabled": False, "external": {"bootstrapServers": "kafka-0.kafka.data:9092,kafka-1.kafka.data:9092"}},
        "redis": {"enabled": False, "external": {"existingSecret": {"name": "shared-redis", "key": "url"}}},
        "postgres": {"enabled": False, "external": {"existingSecret": {"name": "shared-postgres", "key": "url"}}},
        "jwt": {"existingSecret": {"name": "broker-auth-jwt-key", "key": "key"}},
        "mailSeal": {"existingSecret": {"name": "broker-auth-mail-seal-key", "key": "key"}},
        "smtp": {"existingSecret": {"name": "smtp-relay", "key": "url"}},
        "brokerAuth": {"create": True, "name": "auth"},
    },
    "keda-route": {
        "metricsRoute": "keda",
        "smtp": {"url": "smtp://mailpit.mail.svc:1025"},
        "brokerAuth": {"create": True},
    },
    "metrics-route-off": {
        "metricsRoute": "none",
    },
    "brokerauth-from-values": {
        "smtp": {"url": "smtp://mailpit.mail.svc:1025", "mailFrom": "Broker <no-reply@broker.example>"},
        "imagePullSecrets": [{"name": "ghcr"}],
        "brokerAuth": {
            "create": True,
            "image": {"tag": "0.1.0-test"},
            "api": {"minReplicas": 1, "maxReplicas": 3, "cookieSecure": False},
            "dbproc": {"minReplicas": 1, "maxReplicas": 8, "lagPerReplica": 20},
            "observability": {"logLevel": "debug", "otlpEndpoint": "http://otel-collector.observability:4317"},
        },
    },
    "cert-manager": {
        "externalMetrics": {"certificate": {"source": "certManager"}},
    },
    "cert-manager-issuer": {
        "externalMetrics": {
            "certificate": {"source": "certManager", "certManager": {"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}}
        },
    },
    "monitoring": {
        "monitoring": {
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "grafanaDashboard": {"enabled": True},
        },
    },
    "sample-protected-route": {
        "smtp": {"url": "smtp://mailpit.mail.svc:1025"},
        "brokerAuth": {"create": True, "name": "auth"},
        "sampleProtectedRoute": {"enabled": True, "host": "trading.broker.example", "path": "/trading"},
    },
    "kafka-quorum": {
        "kafka": {"replicas": 3, "persistence": {"size": "20Gi", "storageClass": "fast"}},
        "operator": {"replicas": 2},
    },
}


@dataclass(frozen=True)
class Rendered:
    """One value set rendered: every object, with the template it came from."""

    name: str
    values: dict[str, Any]
    objects: list[tuple[str, dict[str, Any]]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name or ''} in {self.name}, found {len(matches)}"
        return matches[0]

    def kinds(self) -> set[str]:
        return {obj["kind"] for _, obj in self.objects}


def render(values: dict[str, Any], name: str = "custom") -> Rendered:
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(
            copy.deepcopy(values), name=RELEASE_NAME, namespace=NAMESPACE, is_install=True
        )
    objects: list[tuple[str, dict[str, Any]]] = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(text):
            if document:
                objects.append((template, document))
    return Rendered(name=name, values=values, objects=objects)


@pytest.fixture(scope="session")
def rendered_sets() -> dict[str, Rendered]:
    return {name: render(values, name) for name, values in VALUE_SETS.items()}


@pytest.fixture(params=sorted(VALUE_SETS), scope="session")
def rendered(request: pytest.FixtureRequest, rendered_sets: dict[str, Rendered]) -> Rendered:
    return rendered_sets[request.param]


def load_crd() -> dict[str, Any]:
    if not CRD_PATH.exists():
        pytest.fail(f"{CRD_PATH.relative_to(REPO_ROOT)} is missing: generate it with "
                    "`cargo run -p broker-auth-operator -- crd > k8s/crd.yaml`")
    return yaml.safe_load(CRD_PATH.read_text())


def crd_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise AssertionError(f"the CRD has no version {version}")


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload object, if it has one."""
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["spec"]
