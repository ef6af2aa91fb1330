"""The main job's releases from a state nobody prepared: a registry database that has never seen the agent
and no slot taking its traffic, as on a machine where scripts/main.sh never ran (issue 10).

The stack itself is shared with the other e2e tests, so "bare" is made, not found: a new, empty registry
database (tests/pg.py) and both of legal_info's slots at weight 0 in HAProxy. What the slots have
accepted before stays (their rollback protection), so the first release of the example's 1.2.0 is
deployed with allow_rollback.
"""

from __future__ import annotations

import json
import re

import pytest

from chenu_agents.traffic import HAProxyTraffic
from tests.e2e.ansible_run import run_playbook
from tests.e2e.release_support import (
    EXAMPLE,
    HAPROXY_SOCKET,
    make_version,
    next_version,
    served_version,
    servers,
    set_weights,
    stable_slot,
    stack_serving,  # noqa: F401  # the fixture, used below
)
from tests.pg import require, throwaway_database

SERVER_STATE_FILE = "/var/lib/haproxy/server-state"  # the load_balancer role's default

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack_serving")]


def registry_vars(settings: dict) -> str:
    return json.dumps({"chenu_registry": settings})


@pytest.fixture
def no_traffic():
    """Both slots out of traffic for the test; afterwards everything back on the slot that serves best."""
    before = stable_slot()
    set_weights({"blue": 0, "green": 0})
    try:
        yield
    finally:
        state = servers()
        if not any(s["weight"] for s in state.values()):
            set_weights({before: 100})


def test_first_release_without_approval_names_the_extra_vars_to_add(tmp_path, no_traffic):
    require()
    version = next_version()
    with throwaway_database("chenu_e2e_bare_refused") as settings:
        run = run_playbook(
            "playbooks/release.yml", "-e", "agent=legal_info", "-e", "release_strategy=canary",
            "-e", f"source={make_version(tmp_path, version)}", "-e", registry_vars(settings),
        )  # fmt: skip
    assert run.returncode != 0, run.tail()
    hint = re.search(r"To approve them, add: -e '(\{[^']*\})'", run.output)
    assert hint, run.tail()
    surface = json.loads(hint[1])
    config = (EXAMPLE / "config.yaml").read_text()
    assert surface["approved_capabilities"] and all(c in config for c in surface["approved_capabilities"])
    assert surface["approved_tools"], surface
    # Refused before anything reached a slot: nothing serves the new version.
    assert version not in {served_version("blue"), served_version("green")}


def test_main_job_releases_from_an_empty_registry_then_changes_nothing(no_traffic):
    require()
    version = next_version()
    args = (
        "--skip-tags",
        "provision,supply_chain",
        "-e",
        "allow_rollback=true",
        "-e",
        f"main_release_version={version}",
    )
    with throwaway_database("chenu_e2e_bare_main") as settings:
        first = run_playbook("playbooks/main.yml", *args, "-e", registry_vars(settings))
        assert first.returncode == 0, first.tail()
        assert "The main job approves legal_info's capabilities" in first.output
        assert "First release of legal_info: 1.2.0" in first.output, first.tail()
        assert re.search(rf"legal_info {re.escape(version)} \(canary\):\s+PROMOTED", first.output), first.tail()
        assert served_version(stable_slot()) == version

        again = run_playbook("playbooks/main.yml", *args, "-e", registry_vars(settings))
        assert again.returncode == 0, again.tail()
        assert again.output.count("Skipped:") == 2, again.tail()
        assert served_version(stable_slot()) == version


def test_retire_puts_the_idle_slot_in_maintenance_and_frees_the_lock():
    stable = stable_slot()
    idle = next(slot for slot in ("blue", "green") if slot != stable)
    try:
        run = run_playbook("playbooks/release.yml", "-e", "agent=legal_info", "-e", "retire=true")
        assert run.returncode == 0, run.tail()
        assert f"{idle} retired (HAProxy maintenance)" in run.output, run.tail()
        assert "release lock of legal_info freed" in run.output, run.tail()
        state = servers()
        assert state[idle]["weight"] == 0 and state[stable]["weight"] == 100, state
        assert state[idle]["admin_state"] & 0x01, state  # forced maintenance
    finally:
        # Back to ready, saved in the server-state file as the playbook saved the maintenance.
        HAProxyTraffic("be_legal_info", HAPROXY_SOCKET, server_state_file=SERVER_STATE_FILE).apply(
            {stable: 100}, {idle: "ready"}
        )
        assert servers()[idle]["admin_state"] == 0
