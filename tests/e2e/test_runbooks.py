"""Runbooks drilled on the local stack, on legal_info's green slot (weight 0 in HAProxy: no user traffic).

Each drill breaks the slot the way the runbook expects, runs it, checks what it found and did, and puts
the slot's settings and process back as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.ansible_run import run_playbook
from tests.e2e.release_support import (
    make_version,
    next_version,
    registry_versions,
    release,
    served_version,
    stable_slot,
    stack_serving,  # noqa: F401 (a fixture, used by name)
)

pytestmark = pytest.mark.e2e

SLOT = "green"
PORT = 8102
PROGRAM = f"chenu-agent-legal_info-{SLOT}"
SETTINGS = Path(f"/etc/chenu-agents/runtime/legal_info-{SLOT}.yaml")


def _supervisor(*args: str) -> str:
    return subprocess.run(["supervisorctl", *args], capture_output=True, text=True).stdout


def _ready(timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{PORT}/health/ready", timeout=3).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(1)
    return False


def _record(run) -> dict:
    line = next(line for line in run.output.splitlines() if "record: " in line and ".json" in line)
    path = line.split("record: ", 1)[1].strip().strip("'\"")
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture
def green_slot():
    """The green slot running and ready, as E's tests leave it; its settings and process restored after."""
    if "RUNNING" not in _supervisor("status", PROGRAM) or not _ready(30):
        pytest.skip(f"{PROGRAM} is not running and ready: someone else is using it ({_supervisor('status').strip()})")
    original = SETTINGS.read_bytes()
    stat = SETTINGS.stat()
    backups = set(SETTINGS.parent.glob(f"{SETTINGS.name}.*~"))
    yield
    changed = SETTINGS.read_bytes() != original
    if changed:
        SETTINGS.write_bytes(original)
        os.chown(SETTINGS, stat.st_uid, stat.st_gid)
        SETTINGS.chmod(stat.st_mode & 0o7777)
    for backup in set(SETTINGS.parent.glob(f"{SETTINGS.name}.*~")) - backups:
        backup.unlink()
    if changed or "RUNNING" not in _supervisor("status", PROGRAM):
        _supervisor("restart", PROGRAM)
    assert _ready(60), f"{PROGRAM} did not come back after the drill"


def _set_settings(**changes) -> None:
    settings = yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))
    settings.update(changes)
    SETTINGS.write_text(yaml.safe_dump(settings), encoding="utf-8")
    _supervisor("restart", PROGRAM)
    assert _ready(60)


def test_agent_not_responding_restarts_a_stopped_slot(green_slot):
    _supervisor("stop", PROGRAM)
    run = run_playbook("playbooks/runbook_agent_not_responding.yml", "-e", "agent=legal_info", "-e", f"slot={SLOT}")
    assert run.returncode == 0, run.tail()
    record = _record(run)
    assert record["findings"][f"legal_info-{SLOT}"]["service"] == "STOPPED"
    assert record["findings"][f"legal_info-{SLOT}"]["ready"] == "no answer"
    assert record["decisions"] == {f"legal_info-{SLOT}": "restart"}
    assert record["restarts"][0]["ready"] is True
    assert record["after"] == {f"legal_info-{SLOT}": "ready"}
    assert "queue" in record["findings"] and record["findings"]["queue"]["reachable"] is True
    assert "RUNNING" in _supervisor("status", PROGRAM)


def test_agent_not_responding_switches_to_the_fallback_provider(green_slot):
    # The primary provider is an OpenAI-compatible server that is not there; scripted is the fallback.
    _set_settings(
        llm_chain=["openai/gpt-drill", "scripted/legal_info"],
        provider_base_urls={"openai": "http://127.0.0.1:9/v1"},
    )
    run = run_playbook("playbooks/runbook_agent_not_responding.yml", "-e", "agent=legal_info", "-e", f"slot={SLOT}")
    assert run.returncode == 0, run.tail()
    record = _record(run)
    found = record["findings"][f"legal_info-{SLOT}"]
    assert found["primary_unreachable"] is True
    assert found["providers"] == ["openai/gpt-drill", "scripted/legal_info"]
    assert record["decisions"] == {f"legal_info-{SLOT}": "fallback"}
    assert record["settings_changed"]["changes"] == {"llm_chain": ["scripted/legal_info"]}
    assert yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))["llm_chain"] == ["scripted/legal_info"]
    assert record["after"] == {f"legal_info-{SLOT}": "ready"}


def test_performance_degradation_tightens_the_llm_timeout(green_slot):
    # A threshold no task can meet stands in for a slow provider.
    run = run_playbook(
        "playbooks/runbook_performance_degradation.yml",
        "-e",
        "agent=legal_info",
        "-e",
        f"slot={SLOT}",
        "-e",
        "runbook_latency_threshold_s=0.001",
        "-e",
        "runbook_llm_timeout_s=7",
    )
    assert run.returncode == 0, run.tail()
    record = _record(run)
    assert record["findings"]["probe_status"] == {SLOT: 200}
    assert record["findings"]["probe_s"][SLOT] > 0.001
    assert record["decisions"]["tighten_timeouts"] is True
    assert record["slow_slots"] == [SLOT]
    assert record["actions"]["restarts"][0]["ready"] is True
    settings = yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))
    assert settings["llm_parameters"] == {"timeout_s": 7.0, "retries": 1}
    assert "resources" in record["findings"] and record["findings"]["resources"]["cores"] >= 1


def test_high_error_rate_reads_the_patterns_and_decides():
    # Diagnosis only on the live agent, then a limit below zero with no deployment counted as recent:
    # no rollback, every dependency up, so the runbook says to investigate and changes nothing.
    run = run_playbook(
        "playbooks/runbook_high_error_rate.yml",
        "-e",
        "agent=legal_info",
        "-e",
        "runbook_max_error_rate=-1",
        "-e",
        "runbook_recent_deploy_s=0",
    )
    assert run.returncode == 0, run.tail()
    record = _record(run)
    findings = record["findings"]
    assert findings["errors"]["prometheus"] == "reachable"
    assert set(findings["slots"]) >= {"blue", "green"}
    assert all(slot["deployed_at"] for slot in findings["slots"].values())
    assert findings["dependencies"] == {"postgresql": "up", "rabbitmq": "up", "redis": "up"}
    assert findings["recent_deployments"] == []
    assert record["decision"] == "investigate"
    assert "investigate" in record["done"]


@pytest.mark.usefixtures("stack_serving")
def test_high_error_rate_rolls_back_a_recent_deployment(tmp_path):
    # A blue-green release of a new version, then the runbook with a limit every error rate is over: the
    # deployment is recent, so it decides to roll back and runs rollback.yml, which puts the old version back.
    stable = stable_slot()
    old = served_version(stable)
    version = next_version()
    run = release(make_version(tmp_path, version), "blue_green")
    assert run.returncode == 0, run.tail()
    assert stable_slot() != stable and served_version(stable_slot()) == version

    run = run_playbook(
        "playbooks/runbook_high_error_rate.yml", "-e", "agent=legal_info", "-e", "runbook_max_error_rate=-1"
    )
    assert run.returncode == 0, run.tail()
    record = _record(run)
    assert record["decision"] == "rollback", record
    assert record["findings"]["recent_deployments"], record["findings"]
    assert record["done"].startswith("rolled back"), record["done"]
    assert stable_slot() == stable and served_version(stable) == old
    states = registry_versions()
    assert states[old] == "active" and states[version] == "deprecated", states
