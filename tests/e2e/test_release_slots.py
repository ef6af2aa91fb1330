"""A slot whose bundle no longer verifies does not block the deploy that replaces it (roles/sandbox_runtime)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from chenu_agents import bundle
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.signing import sign_bundle
from tests.e2e.ansible_run import run_playbook
from tests.e2e.release_support import EXAMPLE, SLOT_PORTS, make_version, next_version, servers, set_weights, stable_slot

pytestmark = pytest.mark.e2e

SLOTS_DIR = "/var/lib/chenu-agents/slots/legal_info"


def _put_untrusted_bundle(slot: str, work) -> None:
    """The example, signed by a key this host's trust store does not hold, made `current` in the slot."""
    store = FileKeyStore(work / "keys")
    store.ensure_key()
    built = bundle.build(EXAMPLE)
    release = f"{SLOTS_DIR}/{slot}/releases/{built.version}-untrusted"
    os.makedirs(release, exist_ok=True)
    write_if_changed(f"{release}/agent.tar.zst", built.data)
    sign_bundle(f"{release}/agent.tar.zst", store, agent=built.agent, version=built.version)
    os.symlink(f"releases/{built.version}-untrusted", f"{SLOTS_DIR}/{slot}/current.new")
    os.replace(f"{SLOTS_DIR}/{slot}/current.new", f"{SLOTS_DIR}/{slot}/current")


def test_deploy_replaces_a_slot_whose_bundle_no_longer_verifies(tmp_path):
    before = servers()
    stable = stable_slot()
    idle = next(slot for slot in SLOT_PORTS if slot != stable)
    assert before[stable]["op_state"] == 2, before
    _put_untrusted_bundle(idle, tmp_path)
    # What the role used to trip on: the slot refuses to start (exit 2, FATAL after its retries).
    subprocess.run(["supervisorctl", "restart", f"chenu-agent-legal_info-{idle}"], capture_output=True, timeout=60)
    try:
        # A version above any the slots accepted (the release tests raise them), deployed from a copy.
        version = next_version()
        make_version(tmp_path / "agents", version)
        agents_dir = tmp_path / "agents" / version
        run = run_playbook("playbooks/deploy.yml", "-e", f"slot={idle}", "-e", f"chenu_agents_dir={agents_dir}")
        assert run.returncode == 0, run.tail()
        assert f"slot legal_info-{idle} is not started: its bundle does not verify (UnknownKey" in run.output, (
            run.tail()
        )
        status = requests.get(f"http://127.0.0.1:{SLOT_PORTS[idle]}/admin/status", timeout=5)
        assert status.status_code in (200, 401, 403)
        assert "untrusted" not in os.readlink(f"{SLOTS_DIR}/{idle}/current")
    finally:
        # deploy.yml routed everything to the slot it deployed: give the traffic back.
        set_weights({stable: before[stable]["weight"], idle: 0})
        time.sleep(0.5)
    after = servers()
    assert after[stable]["weight"] == before[stable]["weight"] and after[idle]["weight"] == 0, after
