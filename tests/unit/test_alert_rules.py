"""The Prometheus rules in ops/prometheus/ are valid (`promtool check rules`) and behave as their unit
cases say (`promtool test rules`): each alert fires when it should and stays quiet when it should not.
promtool is the one make setup builds into the cache (scripts/promtool.sh); a missing one fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = RULES_DIR / "edgehub-rules.yml"
CASES = RULES_DIR / "edgehub-rules.test.yml"


def promtool() -> str:
    cache = Path(os.environ.get("EDGEHUB_CACHE") or Path.home() / ".cache" / "edgehub")
    binary = cache / "go" / "bin" / "promtool"
    if not binary.exists():
        pytest.fail(f"promtool is not at {binary}: make setup builds it (scripts/promtool.sh)")
    return str(binary)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules_file() -> None:
    done = run("check", "rules", RULES.name, cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 18 rules found" in done.stdout


def test_every_alert_behaves_as_its_unit_cases_say() -> None:
    done = run("test", "rules", CASES.name, cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_wrong_expectation_fails_the_unit_cases(tmp_path: Path) -> None:
    """The cases can fail: the same file expecting a disk alert for a device with room fails."""
    shutil.copy(RULES, tmp_path / RULES.name)
    wrong = CASES.read_text().replace("device: pi-full}", "device: pi-roomy}", 1)
    assert wrong != CASES.read_text()
    (tmp_path / CASES.name).write_text(wrong)
    done = run("test", "rules", CASES.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "EdgehubDiskNearlyFull" in done.stdout + done.stderr


def test_every_alert_has_a_summary_a_runbook_and_cases_where_it_fires_and_where_it_does_not() -> None:
    tests = yaml.safe_load(CASES.read_text())["tests"]
    checks = [check for case in tests for check in case.get("alert_rule_test", [])]
    for alert in alerts():
        name = alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), name
        assert annotations.get("runbook"), name
        assert alert.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        fired = [c for c in checks if c["alertname"] == name and c.get("exp_alerts")]
        quiet = [c for c in checks if c["alertname"] == name and not c.get("exp_alerts")]
        assert fired, f"{name}: no case where it fires"
        assert quiet, f"{name}: no case where it stays quiet"
