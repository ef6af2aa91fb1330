"""playbooks/release.yml and rollback.yml on the local stack (legal_info, slots blue/green behind fe 8001).

Each test makes its own version (a copy of the example, version above everything seen), releases it,
and leaves the stack serving a good version. The local inventory's short steps (canary 5 % and 25 % for
20 s each, checks every second over 10 s windows, 1 s scrapes) keep each test within about two minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chenu_agents.analysis import Histogram
from tests.e2e.ansible_run import SECRETS, run_playbook
from tests.e2e.release_support import (
    SLOT_PORTS,
    load_summary,
    make_version,
    next_version,
    registry_audit,
    registry_versions,
    release,
    served_version,
    servers,
    service_running,
    stable_slot,
    stack_serving,  # noqa: F401  # the fixture, used below
    start_loadgen,
    start_release,
    stop_loadgen,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack_serving")]


def _step_lines(output: str) -> list[str]:
    return re.findall(r"msg: '?(canary step \d/\d: [^|]*\|[^\n]*)", output)


def test_good_version_goes_5_25_100_and_becomes_active(tmp_path):
    old_slot = stable_slot()
    old = served_version(old_slot)
    version = next_version()
    run = release(make_version(tmp_path, version))
    assert run.returncode == 0, run.tail()
    out = run.output
    assert "canary step 1/3: 5 %: PASS" in out and "canary step 2/3: 25 %: PASS" in out, run.tail()
    assert "PROMOTED" in out, run.tail()
    new_slot = stable_slot()
    assert new_slot != old_slot and served_version(new_slot) == version
    assert servers()[old_slot]["weight"] == 0 and servers()[old_slot]["op_state"] == 2  # warm for a rollback
    states = registry_versions()
    assert states[version] == "active" and states[old] == "deprecated", states
    trail = registry_audit("legal_info", version)
    assert [e["action"] for e in trail] == ["register", "validate", "approve", "deploy"], trail
    release_run = trail[-1]["run_id"]
    assert release_run and {e["run_id"] for e in trail} == {release_run}, trail
    deprecated = [e for e in registry_audit("legal_info", old) if e["action"] == "deprecate"]
    assert deprecated and deprecated[-1]["run_id"] == release_run and version in deprecated[-1]["reason"]
    load = load_summary(out)
    assert load["requests"] > 100 and load["failed"] == 0 and load["no_backend"] == 0, load
    report = re.search(r"report: (\S+\.md)", out)[1]
    text = Path(report).read_text()
    assert "| 5 % | 5 % | **pass** |" in text and "xychart-beta" in text and Path(report[:-3] + ".svg").is_file()


def test_bad_version_is_aborted_by_itself(tmp_path):
    stable = stable_slot()
    good = served_version(stable)
    version = next_version()
    run = release(make_version(tmp_path, version, bad=True))
    out = run.output
    assert run.returncode != 0, run.tail()
    assert "canary step 1/3: 5 %: FAIL" in out or "canary step 2/3: 25 %: FAIL" in out, run.tail()
    report = Path(re.search(r"report: (\S+\.md)", out)[1]).read_text()
    assert "- canary back to 0 % at " in report and "**fail**" in report, report
    assert "canary step 3/3" not in "".join(_step_lines(out)), _step_lines(out)  # never promoted
    state = servers()
    assert stable_slot() == stable and served_version(stable) == good
    assert sum(v["weight"] for s, v in state.items() if s != stable) == 0, state
    states = registry_versions()
    assert states[version] == "draft" and states[good] == "active", states
    trail = registry_audit("legal_info", version)
    assert [e["action"] for e in trail][-2:] == ["rollback_to_testing", "reject"]
    assert "failed" in trail[-1]["reason"] and "error rate" in trail[-1]["reason"], trail[-1]
    load = load_summary(out)
    assert load["no_backend"] == 0, load  # never a request without a server behind it
    assert load["requests"] > 50, load


def test_blue_green_switch_and_switch_back_under_load_lose_nothing(tmp_path):
    blue = stable_slot()
    old = served_version(blue)
    version = next_version()
    folder = make_version(tmp_path, version)
    summary_file = tmp_path / "load.json"
    load = start_loadgen(summary_file)
    try:
        time.sleep(2)
        run = release(folder, "blue_green", "-e", "release_synthetic_load=false")
        assert run.returncode == 0, run.tail()
        green = stable_slot()
        assert green != blue and served_version(green) == version
        assert re.search(r"switched to slot \w+ in [\d.]+ s", run.output), run.tail()
        time.sleep(3)
        back = run_playbook(
            "playbooks/rollback.yml", "-e", "agent=legal_info", "-e", json.dumps({"reason": "e2e switch-back"})
        )
        assert back.returncode == 0, back.tail()
        assert stable_slot() == blue and served_version(blue) == old
        time.sleep(3)
    finally:
        summary = stop_loadgen(load, summary_file)
    assert summary["requests"] > 200, summary
    assert summary["failed"] == 0 and summary["no_backend"] == 0, summary
    states = registry_versions()
    assert states[old] == "active" and states[version] == "deprecated", states
    assert any(e["action"] == "restore" and e["reason"] == "e2e switch-back" for e in registry_audit("legal_info", old))


def test_prometheus_stopped_mid_rollout_never_promotes(tmp_path):
    stable = stable_slot()
    good = served_version(stable)
    version = next_version()
    folder = make_version(tmp_path, version)
    log = tmp_path / "release.log"
    proc = start_release(folder, log)
    stopped = False
    try:
        deadline = time.monotonic() + 240
        candidate = next(s for s in servers() if s != stable)
        while servers()[candidate]["weight"] == 0:  # the canary's first step
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        subprocess.run(["service", "prometheus", "stop"], check=True, capture_output=True, timeout=60)
        stopped = True
        proc.wait(240)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        if stopped:
            subprocess.run(["service", "prometheus", "start"], check=False, capture_output=True, timeout=60)
            for _ in range(60):
                if service_running("prometheus"):
                    break
                time.sleep(1)
    out = log.read_text()
    assert proc.returncode != 0, out[-4000:]
    assert "INCONCLUSIVE" in out and "PROMOTED" not in out, out[-4000:]
    assert stable_slot() == stable and served_version(stable) == good
    assert servers()[candidate]["weight"] == 0
    states = registry_versions()
    assert states[version] != "active" and states[good] == "active", states


def _durations(slot: str) -> Histogram:
    """The request duration histogram of the version the slot serves (cumulative since it loaded it)."""
    version = served_version(slot)
    text = requests.get(f"http://127.0.0.1:{SLOT_PORTS[slot]}/metrics", timeout=5).text
    cumulative = {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "chenu_agent_request_duration_seconds_bucket"
        and (sample.labels.get("agent"), sample.labels.get("version")) == ("legal_info", version)
    }
    return Histogram.from_cumulative(cumulative)


def _ask(session: requests.Session, slot: str, token: str) -> float:
    started = time.perf_counter()
    answer = session.post(
        f"http://127.0.0.1:{SLOT_PORTS[slot]}/v1/tasks",
        json={"input": "Bonjour"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def stable_p95(slot: str, tasks: int = 80) -> float:
    """p95 of what the stable slot's runtime measures for the synthetic load's task, from its own buckets."""
    token = (SECRETS / "runtime_caller").read_text().strip()
    before = _durations(slot)
    with requests.Session() as session:
        for _ in range(tasks):
            _ask(session, slot, token)
    after = _durations(slot)
    assert after.bounds == before.bounds
    window = Histogram(after.bounds, tuple(a - b for a, b in zip(after.counts, before.counts, strict=True)))
    assert window.total == tasks
    return window.quantile(0.95)


def make_slow_version(dest: Path, version: str, added_ms: float) -> Path:
    """A good version whose every LLM call takes `added_ms` more (its scripted fault profile), no error."""
    folder = make_version(dest, version)
    script_path = folder / "tests" / "scripted.yaml"
    script = yaml.safe_load(script_path.read_text(encoding="utf-8"))
    script["fault_profile"] = {"error_rate": 0.0, "added_latency_ms": added_ms}
    script_path.write_text(yaml.safe_dump(script, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


def test_version_three_times_slower_is_taken_out_on_latency(tmp_path):
    """No error at all, only slower: a candidate whose every answer takes twice stable's p95 more (about
    3x stable's median answer) is taken out at the first step, the output naming latency."""
    stable = stable_slot()
    with requests.Session() as session:
        probe = _ask(session, stable, (SECRETS / "runtime_caller").read_text().strip())
    if probe > 0.5:  # an earlier run left a deliberately slow version serving: start from the example's
        restored = run_playbook("playbooks/deploy.yml", "-e", f"slot={stable}", "-e", "allow_rollback=true")
        assert restored.returncode == 0, restored.tail()
        stable = stable_slot()
    good = served_version(stable)
    p95 = stable_p95(stable)
    added_ms = round(2 * p95 * 1000, 2)
    version = next_version()
    run = release(make_slow_version(tmp_path, version, added_ms))
    out = run.output
    assert run.returncode != 0, run.tail()
    assert re.search(r"canary step 1/3: 5 %: FAIL \(latency", out), (added_ms, _step_lines(out), run.tail())
    assert "canary step 2/3" not in "".join(_step_lines(out)), _step_lines(out)
    report = Path(re.search(r"report: (\S+\.md)", out)[1]).read_text()
    row = re.search(r"\| 5 % \| 5 % \| \*\*fail\*\* \| (latency[\w, ]*) \| \d+ \| 0\.0 % \| [^|]+ \| [^|]+ \| [^|]+ \| "
                    r"([\d.]+) ms \| ([\d.]+) ms \|", report)  # fmt: skip
    assert row, report
    assert float(row[2]) > 1.8 * float(row[3]), row[0]  # candidate mean against stable's: slower, measured
    assert "significantly more than 2x slower" in report or "canary p95 latency" in report, report
    assert stable_slot() == stable and served_version(stable) == good
    assert sum(v["weight"] for s, v in servers().items() if s != stable) == 0
    assert registry_versions()[version] == "draft"
    reason = registry_audit("legal_info", version)[-1]["reason"]
    assert "decided by latency" in reason and "slower" in reason, reason
