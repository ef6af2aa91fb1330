"""playbooks/lifecycle.yml on the local inventory, its registry pointed at a throwaway database:
register, check mode, validate, a refused approve, approve, and the printed transition and audit tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chenu_agents import agent_tests, bundle
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.signing import sign_bundle
from tests.conftest import EXAMPLES, REPO
from tests.pg import require, throwaway_database

pytestmark = pytest.mark.integration


def lifecycle(extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    cmd = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        "-i",
        str(REPO / "inventories" / "local"),
        str(REPO / "playbooks" / "lifecycle.yml"),
        "-e",
        json.dumps(extra),
        *args,
    ]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    run.stdout = " ".join(run.stdout.split())  # the YAML callback wraps long lines
    return run


def test_lifecycle_playbook(tmp_path):
    require()
    store = FileKeyStore(tmp_path / "keys")
    store.ensure_key()
    trust = tmp_path / "trust.json"
    store.trust_store().save(trust)
    path = tmp_path / "legal_info.tar.zst"
    write_if_changed(path, bundle.build(EXAMPLES / "legal_info", level=3).data)
    sign_bundle(path, store, agent="legal_info", version="1.2.0")
    surface = agent_tests.bundle_surface(path)
    with throwaway_database("chenu_test_registry_playbook") as registry:
        # The registry alone: what serves is tests/e2e/test_lifecycle_effects.py's.
        base = {"chenu_registry": registry, "chenu_trust_store": str(trust), "agent": "legal_info", "version": "1.2.0",
                "lifecycle_reconcile": False}  # fmt: skip

        run = lifecycle({**base, "action": "register", "bundle": str(path), "reason": "new version"})
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "legal_info 1.2.0: register (new) -> draft" in run.stdout
        assert "legal_info 1.2.0 register - -> draft (run lifecycle-" in run.stdout and ") new version" in run.stdout

        run = lifecycle({**base, "state": "testing"}, "--check", "--diff")
        assert run.returncode == 0, run.stdout[-4000:]
        assert "validate draft -> testing [check mode]" in run.stdout
        assert "- state: draft + state: testing" in run.stdout

        run = lifecycle({**base, "action": "validate", "awx_user_name": "alice", "awx_job_id": 77})
        assert run.returncode == 0, run.stdout[-4000:]
        assert "validate draft -> testing" in run.stdout and "tests 29/29 tests passed" in run.stdout
        assert "alice: legal_info 1.2.0 validate draft -> testing (run awx-job-77)" in run.stdout

        run = lifecycle({**base, "action": "deploy"})
        assert run.returncode != 0
        assert "legal_info 1.2.0 is testing: deploy is not allowed; allowed actions in testing" in run.stdout

        approvals = {"approved_capabilities": surface["capabilities"], "approved_tools": surface["tools"]}
        run = lifecycle({**base, **approvals, "action": "approve", "reason": "QA sign-off"})
        assert run.returncode == 0, run.stdout[-4000:]
        assert "approve testing -> staged" in run.stdout and "approve testing -> staged (run lifecycle-" in run.stdout
        assert ") QA sign-off" in run.stdout

        run = lifecycle({**base, "state": "staged"})
        assert run.returncode == 0 and "none, state staged (unchanged)" in run.stdout
