"""playbooks/site.yml on the fleet: it converges on every host of every group, and a second run changes nothing."""

from __future__ import annotations

import re

import pytest

from tests.fleet.conftest import fleet_playbook, record_timing
from tests.fleet.fleet import group

pytestmark = pytest.mark.fleet

GROUPS = ["load_balancer", "runtime", "postgresql", "postgresql_replica", "redis", "rabbitmq", "monitoring"]


def test_site_converges_on_every_host(fleet):
    if fleet.site is None:
        pytest.skip("CHENU_FLEET_REUSE=1: the session did not run site.yml")
    hosts = {host for name in GROUPS for host in group(name)}
    assert hosts <= set(fleet.site.recap), f"hosts site.yml never reached: {sorted(hosts - set(fleet.site.recap))}"
    bad = {h: c for h, c in fleet.site.recap.items() if c.get("failed") or c.get("unreachable")}
    assert not bad, bad


def _changed_tasks(output: str) -> list[str]:
    """'TASK [name] -> host' for every task that reported changed in a playbook's output."""
    changed, task = [], ""
    for line in output.splitlines():
        if match := re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line):
            task = match[1]
        elif match := re.match(r"^changed: \[([^\]]+)\]", line):
            changed.append(f"{task} -> {match[1]}")
    return changed


def test_second_run_changes_nothing(fleet):
    run = fleet_playbook("playbooks/site.yml")
    record_timing("site_second_run", run.seconds)
    assert run.returncode == 0, run.tail()
    changed = run.total("changed")
    assert changed == 0, f"changed on the second run: {_changed_tasks(run.output)}"
