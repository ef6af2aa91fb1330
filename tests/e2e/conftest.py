"""End-to-end tests run against the stack site.yml provisions on this host.

`site_run` provisions it once per pytest session, for every test under tests/e2e (autouse): later
e2e tests simply rely on it being there. CHENU_E2E_REUSE=1 skips the run when the stack is
already up (a quicker loop while writing tests).
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.ansible_run import PlaybookRun, run_playbook


@pytest.fixture(scope="session", autouse=True)
def site_run() -> PlaybookRun | None:
    if os.environ.get("CHENU_E2E_REUSE") == "1":
        return None
    run = run_playbook("playbooks/site.yml")
    if run.returncode != 0:
        pytest.fail(f"site.yml failed (rc={run.returncode}):\n{run.tail()}", pytrace=False)
    return run
