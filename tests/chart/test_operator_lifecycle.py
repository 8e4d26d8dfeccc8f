"""The operator as the chart runs it over its lifetime: replicas that keep the external metrics API up, the refresh
setting, and the pre-delete hook that lets `helm uninstall` finish with nothing left Terminating."""

from __future__ import annotations

from typing import Any

from conftest import NAMESPACE, RELEASE_NAME, Rendered


def _operator(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("Deployment", f"{RELEASE_NAME}-operator")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_two_operator_replicas_serve_metrics_and_a_disruption_budget_keeps_one(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["defaults"]
    operator = _operator(rendered)
    assert operator["spec"]["replicas"] == 2
    budget = rendered.one("PodDisruptionBudget", f"{RELEASE_NAME}-operator")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    env = _env(operator["spec"]["template"]["spec"]["containers"][0])
    assert env["LEADER_ELECTION"] == "true"
    assert env["LAG_REFRESH_SECONDS"] == "15"


def test_without_a_chart_brokerauth_there_is_no_uninstall_hook(rendered_sets: dict[str, Rendered]) -> None:
    assert not rendered_sets["defaults"].of_kind("Job")


def test_uninstall_runs_a_pre_delete_hook_that_deletes_the_chart_brokerauth_and_waits(
    rendered_sets: dict[str, Rendered],
) -> None:
    rendered = rendered_sets["brokerauth-from-values"]
    brokerauth = rendered.one("BrokerAuth")
    job = rendered.one("Job", f"{RELEASE_NAME}-uninstall")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == _operator(rendered)["spec"]["template"]["spec"]["containers"][0]["image"]
    args = container["args"]
    assert args[0] == "delete-brokerauths"
    assert f"--namespace={NAMESPACE}" in args
    selector = next(a for a in args if a.startswith("--selector=")).removeprefix("--selector=")
    labels = brokerauth["metadata"]["labels"]
    for requirement in selector.split(","):
        key, value = requirement.split("=")
        assert labels.get(key) == value, f"the hook's selector {selector} misses the chart's BrokerAuth"
    # The hook's own RBAC exists before the Job runs (lower weight) and grants what it does, nothing more.
    role = rendered.one("Role", f"{RELEASE_NAME}-uninstall")
    assert int(role["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert role["rules"] == [
        {"apiGroups": ["auth.cfdbroker.io"], "resources": ["brokerauths"], "verbs": ["get", "list", "delete"]}
    ]
    binding = rendered.one("RoleBinding", f"{RELEASE_NAME}-uninstall")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert rendered.one("ServiceAccount", pod["serviceAccountName"])["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    # It waits longer than the operator retries Kafka cleanup (5 minutes).
    assert job["spec"]["activeDeadlineSeconds"] > 300
