"""Every environment variable the chart or the operator gives api and dbproc is one the binary reads.

docs/settings.json is generated from the binaries' clap definitions ({"api": [...], "dbproc": [...]}), so it is the
single source of truth: renaming a setting in a binary without updating the operator (or the chart) fails here
instead of silently dropping the setting in a deployment.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from conftest import REPO_ROOT, SETTINGS_PATH, Rendered, pod_specs

TIERS = ("api", "dbproc")
OPERATOR_RESOURCES = REPO_ROOT / "operator" / "src" / "resources.rs"
ENV_NAME = re.compile(r'"([A-Z][A-Z0-9_]{2,})"')


def _setting_name(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    for key in ("env", "name"):
        if isinstance(entry, dict) and isinstance(entry.get(key), str):
            return entry[key]
    raise AssertionError(f"unrecognised entry in docs/settings.json: {entry!r}")


@pytest.fixture(scope="module")
def settings() -> dict[str, set[str]]:
    if not SETTINGS_PATH.exists():
        pytest.fail("docs/settings.json is missing: it is generated from the binaries' clap definitions "
                    "and must be committed beside them")
    document = json.loads(SETTINGS_PATH.read_text())
    assert set(TIERS) <= set(document), f"docs/settings.json needs the keys {TIERS}"
    return {tier: {_setting_name(entry) for entry in document[tier]} for tier in TIERS}


def _operator_tier_env() -> dict[str, set[str]]:
    """The variable names the operator puts on each tier's container, read from `tier_env` in resources.rs."""
    source = OPERATOR_RESOURCES.read_text()
    start = source.find("fn tier_env(")
    assert start >= 0, "operator/src/resources.rs no longer has `fn tier_env`; update this test with the new place"
    body = source[start : source.find("\nfn ", start + 1)]
    api_at, dbproc_at = body.find("Tier::Api =>"), body.find("Tier::Dbproc =>")
    assert 0 <= api_at < dbproc_at, "tier_env no longer has a `Tier::Api =>` arm followed by a `Tier::Dbproc =>` arm"
    return {
        "api": set(ENV_NAME.findall(body[api_at:dbproc_at])),
        "dbproc": set(ENV_NAME.findall(body[dbproc_at:])),
    }


def _operator_settings_keys() -> set[str]:
    source = OPERATOR_RESOURCES.read_text()
    start = source.find("fn settings(")
    assert start >= 0, "operator/src/resources.rs no longer has `fn settings`"
    return set(ENV_NAME.findall(source[start : source.find("\nfn ", start + 1)]))


@pytest.mark.parametrize("tier", TIERS)
def test_operator_sets_only_settings_the_tier_reads(settings: dict[str, set[str]], tier: str) -> None:
    given = _operator_tier_env()[tier]
    assert given, f"found no variables for {tier} in tier_env"
    unknown = given - settings[tier]
    assert not unknown, f"the operator sets {sorted(unknown)} on {tier}, which does not read them"


def test_every_setting_the_operator_computes_reaches_a_tier() -> None:
    tier_env = _operator_tier_env()
    orphaned = _operator_settings_keys() - tier_env["api"] - tier_env["dbproc"]
    assert not orphaned, f"the operator's ConfigMap holds {sorted(orphaned)} but no tier reads them"


@pytest.mark.parametrize("tier", TIERS)
def test_operator_gives_each_tier_its_required_connections(tier: str) -> None:
    required = {
        "api": {"KAFKA_BROKERS", "KAFKA_TOPIC_PREFIX", "REDIS_URL", "JWT_SECRET", "MAIL_SEAL_KEY", "API_LISTEN"},
        "dbproc": {"KAFKA_BROKERS", "KAFKA_TOPIC_PREFIX", "DATABASE_URL", "SMTP_URL", "MAIL_SEAL_KEY", "METRICS_LISTEN"},
    }[tier]
    missing = required - _operator_tier_env()[tier]
    assert not missing, f"the operator does not give {tier} {sorted(missing)}"


def test_chart_sets_only_settings_the_tiers_read(settings: dict[str, set[str]], rendered: Rendered) -> None:
    for _, obj in rendered.objects:
        for pod in pod_specs(obj):
            for container in pod.get("initContainers", []) + pod["containers"]:
                if container["name"] in TIERS:
                    names = {entry["name"] for entry in container.get("env", [])}
                    unknown = names - settings[container["name"]]
                    assert not unknown, f"{obj['kind']}/{obj['metadata']['name']} sets {sorted(unknown)}"
