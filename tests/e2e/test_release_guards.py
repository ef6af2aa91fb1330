"""What stops a release on the local stack before it moves traffic: the release lock (another run holds
the agent's lease) and a maintenance window (the promotion gate). Each leaves the stack as it was."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.e2e.ansible_run import run_playbook
from tests.e2e.release_support import (
    INSIDE_MAINTENANCE_WINDOW,
    local_registry,
    make_version,
    next_version,
    registry_versions,
    release,
    served_version,
    servers,
    stable_slot,
    stack_serving,  # noqa: F401  # the fixture, used below
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack_serving")]


def test_a_held_lock_stops_release_and_rollback_before_anything(tmp_path):
    before, stable = servers(), stable_slot()
    version = next_version()
    folder = make_version(tmp_path, version)
    holder = f"e2e-lock-holder-{os.getpid()}"
    with local_registry(migrate=True) as registry:
        held = registry.acquire_release_lock("legal_info", holder, actor="e2e", playbook="tests/e2e", ttl=600).lock
        try:
            run = release(folder)
            back = run_playbook("playbooks/rollback.yml", "-e", "agent=legal_info")
        finally:
            registry.free_release_lock("legal_info", holder)
    assert run.returncode != 0, run.tail()
    since = held.to_dict()["acquired_at"]
    assert f"held by run {holder} (e2e, tests/e2e) since {since}" in run.output, run.tail()
    assert "-e release_lock_force=true" in run.output, run.tail()
    assert "TASK [Build the bundle]" not in run.output and "TASK [Read the agent's slots]" not in run.output
    assert run.seconds < 60, run.seconds  # fails fast
    assert back.returncode != 0 and f"held by run {holder}" in back.output, back.tail()
    assert "TASK [All traffic back" not in back.output, back.tail()
    assert version not in registry_versions()
    assert servers() == before and stable_slot() == stable


# Seed 000 §5.3's window (inventories/local: chenu_maintenance_windows, Sunday 02:00-04:00 Toronto);
# release.yml asks about this instant instead of now (-e release_at).
def test_a_maintenance_window_blocks_the_promotion(tmp_path):
    stable = stable_slot()
    good = served_version(stable)
    version = next_version()
    run = release(make_version(tmp_path, version), "canary", "-e", f"release_at={INSIDE_MAINTENANCE_WINDOW}")
    out = run.output
    assert run.returncode != 0, run.tail()
    assert "gate before canary step 1/3: 5 %: BLOCKED: a maintenance window is open" in out, run.tail()
    assert "-e force=true releases anyway" in out and "(canary): BLOCKED" in out, run.tail()
    assert not re.search(r"TASK \[Give the candidate its share of the traffic\] \**\n(ok|changed)", out), run.tail()
    state = servers()
    assert stable_slot() == stable and served_version(stable) == good and state[stable]["weight"] == 100, state
    assert sum(v["weight"] for s, v in state.items() if s != stable) == 0, state
    states = registry_versions()
    assert states[version] == "staged" and states[good] == "active", states  # a later run goes on from staged
    report = Path(re.search(r"report: (\S+\.md)", out)[1]).read_text()
    assert "blocked" in report and "maintenance window" in report, report
    with local_registry() as registry:
        assert registry.release_lock("legal_info") is None  # freed by the failed run
