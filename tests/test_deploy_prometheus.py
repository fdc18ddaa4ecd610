"""deploy/prometheus: the alerting rules pass `promtool check rules` and their unit tests (`promtool test
rules`), every rule has a test, and the tests catch a broken rule."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO

RULES = REPO / "deploy/prometheus/cloudlayer-alerts.yml"
RULE_TESTS = REPO / "deploy/prometheus/cloudlayer-alerts.test.yml"


def promtool() -> str:
    """`make test` puts promtool into the venv (Debian's prometheus package); one on PATH also does."""
    found = Path(sys.executable).parent / "promtool"
    if found.exists():
        return str(found)
    on_path = shutil.which("promtool")
    assert on_path, "promtool not found: `make promtool` installs it into .venv"
    return on_path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_both_ways() -> None:
    """Each alert has a test time where it fires and one where it must not."""
    alerts = {rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts == firing == quiet
    expected = {
        "CloudLayerHostDown",
        "CloudLayerAcquirerLinkDown",
        "CloudLayerDecline91AboveNormal",
        "CloudLayerSafQueueGrowing",
        "CloudLayerSafEntryOld",
        "CloudLayerLatencyP99High",
        "CloudLayerStoreNearMapLimit",
        "CloudLayerTokenFailureSpike",
        "CloudLayerWorkerRestarting",
    }
    assert alerts == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("cloudlayer_saf_oldest_entry_age_seconds) > 15 * 60", "cloudlayer_saf_oldest_entry_age_seconds) > 60 * 60"),
        (
            'rate(cloudlayer_transaction_responses_total{code="91"}[10m]))',
            'rate(cloudlayer_transaction_responses_total{code="05"}[10m]))',
        ),
        ("increase(cloudlayer_worker_exits_total[15m]) > 0", "increase(cloudlayer_worker_exits_total[15m]) > 1"),
    ],
)
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_docs_deploy_lists_every_alert() -> None:
    alerts = {rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    documented = set(re.findall(r"^\| `(CloudLayer\w+)` \|", (REPO / "docs/deploy.md").read_text(), re.MULTILINE))
    assert documented == alerts
