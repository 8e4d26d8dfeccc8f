"""The chart's monitoring: PodMonitors, and alerts checked and unit-tested with promtool (Debian's `prometheus`
package), each with a summary, a description and a runbook that exists, naming only catalogued metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, render

ALERTS_TEST = REPO_ROOT / "tests" / "monitoring" / "alerts_test.yaml"
TROUBLESHOOTING = REPO_ROOT / "docs" / "troubleshooting.md"
METRICS = REPO_ROOT / "docs" / "metrics.md"
RUNBOOK_BASE = "https://runbooks.example/troubleshooting.md"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install prometheus)")
    return promtool


def _rules() -> dict:
    rendered = render({"monitoring": {"prometheusRule": {"enabled": True, "runbookBaseUrl": RUNBOOK_BASE}}})
    return rendered.one("PrometheusRule")["spec"]


def _alerts() -> list[dict]:
    return [rule for group in _rules()["groups"] for rule in group["rules"]]


def test_monitoring_is_off_by_default(rendered_sets) -> None:
    rendered = rendered_sets["defaults"]
    assert not rendered.kinds() & {"PodMonitor", "PrometheusRule"}
    assert not [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_pod_monitors_scrape_the_operator_and_every_tier_it_creates(rendered_sets) -> None:
    rendered = rendered_sets["monitoring"]
    monitors = {m["metadata"]["name"]: m for m in rendered.of_kind("PodMonitor")}
    operator = monitors["broker-auth-operator"]["spec"]
    assert operator["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert operator["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    tiers = monitors["broker-auth-tiers"]["spec"]
    assert tiers["namespaceSelector"] == {"any": True}
    assert tiers["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "broker-auth",
        "app.kubernetes.io/managed-by": "broker-auth-operator",
    }
    assert tiers["selector"]["matchExpressions"][0]["values"] == ["api", "dbproc"]
    assert tiers["podMetricsEndpoints"][0]["port"] == "metrics"
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitors_follow_a_watched_namespace() -> None:
    rendered = render({"monitoring": {"podMonitor": {"enabled": True}}, "operator": {"watchNamespace": "trading"}})
    tiers = rendered.one("PodMonitor", "broker-auth-tiers")["spec"]
    assert tiers["namespaceSelector"] == {"matchNames": ["trading"]}


def test_the_operator_creates_pods_the_tier_monitor_selects() -> None:
    # The labels the PodMonitor selects on are the ones the operator puts on api and dbproc pods.
    resources = (REPO_ROOT / "operator" / "src" / "resources.rs").read_text()
    assert '("app.kubernetes.io/part-of", "broker-auth".to_owned())' in resources
    assert 'pub const MANAGER: &str = "broker-auth-operator";' in resources
    assert '"name": "metrics"' in resources


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(_rules()))
    result = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules()))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yaml")
    result = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = {case["alertname"] for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in group["alert_rule_test"]}
    assert {alert["alert"] for alert in _alerts()} == tested


def test_every_alert_says_what_and_where_its_runbook_is() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", TROUBLESHOOTING.read_text(), re.MULTILINE)
    }
    for alert in _alerts():
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == RUNBOOK_BASE, alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/troubleshooting.md"
        assert alert["labels"]["severity"] in {"warning", "critical"}


def test_alerts_name_only_catalogued_metrics() -> None:
    catalogued = set(re.findall(r"^\| `([a-z_:]+)`", METRICS.read_text(), re.MULTILINE))
    for alert in _alerts():
        names = set(re.findall(r"\b((?:broker_auth|dbproc)_[a-z0-9_]+)", alert["expr"]))
        assert names, alert["alert"]
        unknown = {n for n in names if n not in catalogued and n.removesuffix("_bucket") not in catalogued}
        assert not unknown, f"{alert['alert']} names metrics docs/metrics.md does not list: {sorted(unknown)}"


DASHBOARD = REPO_ROOT / "docs" / "grafana" / "broker-auth.json"


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_in_docs_is_the_one_the_chart_ships() -> None:
    assert DASHBOARD.resolve() == (REPO_ROOT / "charts" / "broker-auth" / "files" / "grafana-dashboard.json").resolve()


def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar() -> None:
    rendered = render({"monitoring": {"grafanaDashboard": {"enabled": True, "folder": "Trading"}}})
    configmap = rendered.one("ConfigMap", "broker-auth-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "Trading"
    assert json.loads(configmap["data"]["broker-auth.json"]) == json.loads(DASHBOARD.read_text())


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each query becomes a recording rule, Grafana's variables replaced by
    # what they expand to.
    rules = [
        {
            "record": f"dashboard:panel_{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace('"$namespace"', '".*"'),
        }
        for n, (_, expr) in enumerate(_dashboard_exprs())
    ]
    assert len(rules) >= 15
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_names_only_catalogued_metrics() -> None:
    catalogued = set(re.findall(r"^\| `([a-z_:]+)`", METRICS.read_text(), re.MULTILINE))
    for title, expr in _dashboard_exprs():
        names = set(re.findall(r"\b((?:broker_auth|dbproc)_[a-z0-9_]+)", expr))
        assert names, title
        unknown = {n for n in names if n not in catalogued and n.removesuffix("_bucket") not in catalogued}
        assert not unknown, f"panel {title!r} names metrics docs/metrics.md does not list: {sorted(unknown)}"


def test_without_the_prometheus_operator_every_pod_is_found_by_its_annotations(rendered_sets) -> None:
    operator = rendered_sets["defaults"].one("Deployment", "broker-auth-operator")
    annotations = operator["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    # The api and dbproc pods get theirs from the operator.
    resources = (REPO_ROOT / "operator" / "src" / "resources.rs").read_text()
    assert '"prometheus.io/scrape": "true"' in resources
