"""playbooks/release.yml -e strategy=feature_flag on the local stack: the release flag goes off ->
internal -> beta -> all; while it is on, the stable slot (the one HAProxy sends to) forwards flagged
requests to the candidate; a session keeps the side it got first across a stage change; at the end the
candidate takes everything and the flag goes off.

The release runs at an instant inside the maintenance window with -e force=true: the gate before each
stage is forced past (the other half of test_release_guards' maintenance-window test), and says so.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from tests.e2e.ansible_run import local_secret
from tests.e2e.release_support import (
    FLAGS_FILE,
    FRONTEND,
    INSIDE_MAINTENANCE_WINDOW,
    make_version,
    next_version,
    registry_versions,
    served_version,
    stable_slot,
    stack_serving,  # noqa: F401  # the fixture, used below
    start_release,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack_serving")]


def flag() -> dict:
    """The agent's release flag as the runtime reads it: {} before any feature-flag release wrote the file."""
    try:
        text = open(FLAGS_FILE, encoding="utf-8").read()
    except FileNotFoundError:
        return {}
    return json.loads(text)["flags"].get("legal_info.release") or {}


def ask(session: str | None, groups: str | None) -> tuple[str, str]:
    """(version that answered, X-Chenu-Flag-Route) for one task through HAProxy's frontend."""
    headers = {"Authorization": f"Bearer {local_secret('runtime_caller')}"}
    if session:
        headers["X-Chenu-Session"] = session
    if groups:
        headers["X-Chenu-Groups"] = groups
    answer = requests.post(f"{FRONTEND}/v1/tasks", json={"input": "Bonjour"}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["version"], answer.headers.get("X-Chenu-Flag-Route", "")


def test_feature_flag_release_internal_beta_all_with_sticky_sessions(tmp_path):
    stable = stable_slot()
    old = served_version(stable)
    version = next_version()
    log = tmp_path / "release.log"
    proc = start_release(
        make_version(tmp_path, version), log, "feature_flag", "-e", f"release_at={INSIDE_MAINTENANCE_WINDOW}",
        "-e", "force=true",
    )  # fmt: skip
    internal, late_beta = f"e2e-internal-{uuid.uuid4()}", f"e2e-beta-{uuid.uuid4()}"
    stages, seen = [], {}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            current = flag()
            if (current.get("variant") or {}).get("version") == version:
                stage = current["stage"]
                if not stages or stages[-1] != stage:
                    stages.append(stage)
                    time.sleep(1)  # the runtime re-reads the file within check_interval_s (0.1 s)
                if stage == "internal" and "internal" not in seen:
                    seen["internal"] = {
                        "internal user": ask(internal, "internal"),
                        "anonymous": ask(None, None),
                        "beta user, session starting now": ask(late_beta, "beta"),
                    }
                elif stage == "beta" and "beta" not in seen:
                    seen["beta"] = {
                        "internal user, same session": ask(internal, "internal"),
                        "beta user, session from the internal stage": ask(late_beta, "beta"),
                        "beta user, new session": ask(f"e2e-beta-{uuid.uuid4()}", "beta"),
                        "anonymous": ask(None, None),
                    }
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    assert stages == ["off", "internal", "beta", "all", "off"], stages
    for i, stage in enumerate(("internal", "beta", "all"), 1):
        assert f"feature_flag step {i}/3: {stage}: PASS" in out, out[-4000:]
    assert len(re.findall(r"FORCED\s+past:\s+a\s+maintenance\s+window", out)) == 3, out[-4000:]
    assert seen["internal"] == {
        "internal user": (version, "variant"),
        "anonymous": (old, "stable"),
        "beta user, session starting now": (old, "stable"),
    }, seen
    assert seen["beta"] == {
        "internal user, same session": (version, "variant"),
        "beta user, session from the internal stage": (old, "stable"),  # sticky: it started on stable
        "beta user, new session": (version, "variant"),
        "anonymous": (old, "stable"),
    }, seen
    assert "PROMOTED" in out, out[-4000:]
    new = stable_slot()
    assert new != stable and served_version(new) == version
    states = registry_versions()
    assert states[version] == "active" and states[old] == "deprecated", states
    report = re.search(r"report: (\S+\.md)", out)[1]
    forced = re.findall(
        r"- forced past the gate before feature_flag step \d/3: (\w+): a maintenance window is open",
        open(report, encoding="utf-8").read(),
    )
    assert forced == ["internal", "beta", "all"], forced
