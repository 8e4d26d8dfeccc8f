"""GitHub workflows, Dockerfiles, skaffold.yaml and the plain manifests: checks that need no cluster or daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import CHART_DIR, REPO_ROOT, render

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
DOCKERFILES = {c: REPO_ROOT / "docker" / f"{c}.Dockerfile" for c in ("api", "dbproc", "operator")}


def _check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_there_are_ci_and_e2e_workflows() -> None:
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "e2e.yml"}


@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflows_match_githubs_workflow_schema(schema: str) -> None:
    # check-jsonschema ships these schemas; no network is needed.
    result = _check_jsonschema("--builtin-schema", schema, *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_config_matches_its_schema() -> None:
    result = _check_jsonschema("--builtin-schema", "vendor.dependabot", REPO_ROOT / ".github" / "dependabot.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _steps(workflow: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(workflow.read_text())
    return [step for job in document["jobs"].values() for step in job.get("steps", [])]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_release(workflow: Path) -> None:
    for step in _steps(workflow):
        if "uses" in step:
            ref = step["uses"].split("@", 1)
            assert len(ref) == 2, step["uses"]
            assert re.fullmatch(r"v\d+(\.\d+){0,2}|[0-9a-f]{40}", ref[1]), f"{step['uses']} is not pinned"


def test_ci_runs_the_required_checks() -> None:
    ci = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = ci["jobs"]
    runs = "\n".join(step.get("run", "") for job in jobs.values() for step in job.get("steps", []))
    assert "cargo fmt --all -- --check" in runs
    assert "cargo clippy --workspace --all-targets --locked -- -D warnings" in runs
    assert "scripts/test" in runs
    assert "pytest tests/chart" in runs
    assert "scripts/sync-chart-crd --check" in runs and "-- crd > k8s/crd.yaml" in runs
    services = jobs["test"]["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    kafka_env = services["kafka"]["env"]
    for name in ("CLUSTER_ID", "KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                 "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES"):
        assert name in kafka_env, f"the Kafka service container needs {name} (KRaft)"
    assert jobs["test"]["env"]["KAFKA_BROKERS"] in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    # scripts/test runs the Chromium walkthrough: it needs tests/browser's packages and a Chromium binary.
    test_steps = jobs["test"]["steps"]
    test_runs = "\n".join(step.get("run", "") for step in test_steps)
    assert any(step.get("uses", "").startswith("actions/setup-node@") for step in test_steps)
    assert any("npm ci" in step.get("run", "") and step.get("working-directory") == "tests/browser"
               for step in test_steps)
    assert "CHROMIUM_PATH=" in test_runs
    walkthrough = (REPO_ROOT / "tests" / "browser" / "walkthrough.test.mjs").read_text()
    assert "process.env.CHROMIUM_PATH" in walkthrough
    images = [s for s in jobs["images"]["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert images and images[0]["with"]["file"] == "docker/${{ matrix.component }}.Dockerfile"
    assert jobs["images"]["strategy"]["matrix"]["component"] == sorted(DOCKERFILES)


def test_e2e_runs_the_whole_path_on_kind() -> None:
    e2e = (REPO_ROOT / ".github" / "workflows" / "e2e.yml").read_text()
    for needle in (
        "helm/kind-action@",
        "kind load docker-image",
        "helm install",
        "k8s/examples",
        "--for=condition=Ready",
        "auth-flow.sh",
        "lag-scaling.sh",
        "dev/mailpit.yaml",
    ):
        assert needle in e2e, needle
    for script in ("auth-flow.sh", "lag-scaling.sh", "brokerauth_for_chart.py"):
        path = REPO_ROOT / ".github" / "e2e" / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("script", ["auth-flow.sh", "lag-scaling.sh"])
def test_e2e_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", REPO_ROOT / ".github" / "e2e" / script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_e2e_brokerauth_is_the_example_wired_to_the_chart(tmp_path: Path) -> None:
    from conftest import crd_schema, load_crd
    import jsonschema

    result = subprocess.run(
        [sys.executable, REPO_ROOT / ".github" / "e2e" / "brokerauth_for_chart.py", REPO_ROOT / "k8s" / "examples",
         "broker-auth", "broker-auth"],
        capture_output=True,
        text=True,
        check=True,
    )
    brokerauth = yaml.safe_load(result.stdout)
    jsonschema.validate(brokerauth, crd_schema(load_crd()))
    assert brokerauth["spec"]["kafka"]["bootstrapServers"] == "broker-auth-kafka.broker-auth.svc:9092"
    secrets = {doc["metadata"]["name"]: doc for doc in render({}).of_kind("Secret")}
    for field, ref in brokerauth["spec"]["secrets"].items():
        if field == "smtpUrl":
            continue  # created by the workflow
        assert ref["key"] in secrets[ref["name"]]["stringData"], ref


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_dockerfile_builds_the_binary_in_stages_and_runs_it_unprivileged(component: str) -> None:
    text = DOCKERFILES[component].read_text()
    binary = f"broker-auth-{component}"
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 3, "expected planner, builder and runtime stages"
    # The dependency layer is cooked from the recipe before the sources are copied in.
    assert text.index("cargo chef cook") < text.index("COPY . .", text.index("AS builder"))
    assert f"--bin {binary}" in text
    runtime = text[text.rindex("FROM") :]
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", runtime, flags=re.MULTILINE), "the final image must not run as root"
    assert f'ENTRYPOINT ["/usr/local/bin/{binary}"]' in runtime
    # Build and runtime share Debian 12 so glibc and libssl3 match the dynamically linked binary.
    assert "bookworm" in stages[0][0] and "bookworm" in stages[-1][0]
    for package in ("ca-certificates", "libssl3"):
        assert re.search(rf"apt-get install[^\n]*\b{package}\b", runtime), f"the runtime image needs {package}"


# Shared libraries debian:bookworm-slim already has (its required packages), by soname.
BOOKWORM_SLIM_LIBRARIES = {
    "linux-vdso.so.1": "kernel",
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "ld-linux-x86-64.so.2": "libc6",
    "ld-linux-aarch64.so.1": "libc6",
    "libgcc_s.so.1": "libgcc-s1",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
    "liblzma.so.5": "liblzma5",
    "libstdc++.so.6": "libstdc++6",
}
# Libraries the runtime stage installs, by soname.
INSTALLED_LIBRARIES = {"libssl.so.3": "libssl3", "libcrypto.so.3": "libssl3"}


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_the_runtime_image_has_every_library_the_binary_links(component: str) -> None:
    # The binaries link librdkafka's and lettre's dependencies dynamically; a library missing from the final
    # image only shows when the pod starts. This reads what the locally built binary really links.
    binary = next(
        (p for p in (REPO_ROOT / "target" / d / f"broker-auth-{component}" for d in ("release", "debug")) if p.is_file()),
        None,
    )
    if binary is None:
        pytest.skip(f"broker-auth-{component} is not built (scripts/test builds it first; or `cargo build --workspace`)")
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    sonames = {Path(line.split()[0]).name for line in result.stdout.splitlines() if line.strip()}
    runtime = DOCKERFILES[component].read_text().rsplit("FROM", 1)[1]
    for soname in sonames:
        if soname in BOOKWORM_SLIM_LIBRARIES:
            continue
        package = INSTALLED_LIBRARIES.get(soname)
        assert package, f"{binary.name} links {soname}, which the runtime image is not known to have"
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(package)}\b", runtime), f"{soname}: install {package}"


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for needed in ("/Cargo.toml", "/Cargo.lock", "/api", "/dbproc", "/operator", "/crates", "/.sqlx"):
        assert needed not in ignored, needed
    for heavy in ("/target", "/.git"):
        assert heavy in ignored, heavy


def _skaffold() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())


def _values_path_exists(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_skaffold_builds_the_three_images_from_their_dockerfiles() -> None:
    artifacts = {a["image"]: a["docker"]["dockerfile"] for a in _skaffold()["build"]["artifacts"]}
    assert artifacts == {f"ghcr.io/cfdbroker/broker-auth-{c}": f"docker/{c}.Dockerfile" for c in DOCKERFILES}
    for dockerfile in artifacts.values():
        assert (REPO_ROOT / dockerfile).is_file()


def test_skaffold_sets_only_values_the_chart_has() -> None:
    skaffold = _skaffold()
    release = skaffold["deploy"]["helm"]["releases"][0]
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART_DIR
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    keys = list(release.get("setValueTemplates", {})) + list(release.get("setValues", {}))
    for profile in skaffold.get("profiles", []):
        for patch in profile.get("patches", []):
            match = re.fullmatch(r"/deploy/helm/releases/0/setValueTemplates/(.+)", patch["path"])
            if match:
                keys.append(match.group(1))
            if patch["path"].endswith("/valuesFiles/-"):
                assert (REPO_ROOT / patch["value"]).is_file(), patch["value"]
    assert keys
    for key in keys:
        assert _values_path_exists(values, key), f"skaffold sets {key}, which the chart does not have"
    # Image templates name the artifacts the way skaffold exposes them (non-alphanumerics become "_").
    for template in release["setValueTemplates"].values():
        for name in re.findall(r"\.IMAGE_(?:REPO|TAG)_(\w+)", template):
            assert name in {re.sub(r"[^A-Za-z0-9]", "_", a["image"]) for a in skaffold["build"]["artifacts"]}


@pytest.mark.parametrize("values_file", ["dev/values.yaml", "dev/values-external.yaml", ".github/e2e/values.yaml"])
def test_dev_and_e2e_value_files_render_and_match_the_schema(values_file: str) -> None:
    values = yaml.safe_load((REPO_ROOT / values_file).read_text())
    if values_file.endswith("external.yaml"):
        dev = yaml.safe_load((REPO_ROOT / "dev" / "values.yaml").read_text())
        values = {**dev, **values, "kafka": {**values["kafka"], "external": {"bootstrapServers": "kafka.data:9092"}}}
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)
        chart.render(values, name="broker-auth", namespace="broker-auth")


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((REPO_ROOT / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["resources"]
    for resource in kustomization["resources"]:
        assert (REPO_ROOT / "k8s" / resource).exists(), resource
    assert "crd.yaml" in kustomization["resources"]


DOC_PAGES = ["install-helm.md", "brokerauth.md", "scaling.md", "external-services.md", "troubleshooting.md"]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_operations_docs_link_only_to_files_that_exist(page: str) -> None:
    path = REPO_ROOT / "docs" / page
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (path.parent / target).exists(), f"{page} links to missing {target}"


def test_docs_name_values_the_chart_has() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    # brokerauth.md documents the CRD's fields, which share names with chart values; the others name chart values.
    text = "\n".join((REPO_ROOT / "docs" / page).read_text() for page in DOC_PAGES if page != "brokerauth.md")
    named = set(re.findall(r"`((?:kafka|redis|postgres|operator|externalMetrics|brokerAuth|smtp|jwt)\.[A-Za-z.]+)`", text))
    assert named
    for dotted in named:
        assert _values_path_exists(values, dotted), f"the docs mention {dotted}, which the chart does not have"
