"""The fleet tests (docs/fleet.md): one fleet of containers per pytest session, made from a bare machine.

`fleet` runs `scripts/fleet.sh nodes` (podman, the node image when missing or its recipe changed, the
network and one container per host of inventories/fleet), then playbooks/site.yml on the fleet, and
records how long each took in .cache/fleet/timings.json. CHENU_FLEET_REUSE=1 skips site.yml when the
fleet is already provisioned (a quicker loop while writing tests). The fleet uses its own network and
addresses, and binds no port of this host: it needs no stack lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.e2e.ansible_run import REPO, PlaybookRun, run_playbook
from tests.fleet.fleet import FLEET_SH, INVENTORY

TIMINGS = REPO / ".cache" / "fleet" / "timings.json"


@dataclass
class Fleet:
    nodes_seconds: float
    site: PlaybookRun | None


def record_timing(name: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    timings = json.loads(TIMINGS.read_text(encoding="utf-8")) if TIMINGS.exists() else {}
    timings[name] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def fleet_playbook(playbook: str, *args: str) -> PlaybookRun:
    return run_playbook(playbook, *args, inventory=INVENTORY)


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    if os.geteuid() != 0:
        pytest.fail("the fleet needs root: scripts/fleet.sh installs podman and runs rootful containers", pytrace=False)
    started = time.monotonic()
    done = subprocess.run(["bash", str(FLEET_SH), "nodes"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    nodes_seconds = time.monotonic() - started
    if done.returncode != 0:
        pytest.fail(f"scripts/fleet.sh nodes failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    record_timing("fleet_sh_nodes", nodes_seconds)
    if os.environ.get("CHENU_FLEET_REUSE") == "1":
        return Fleet(nodes_seconds, None)
    run = fleet_playbook("playbooks/site.yml")
    record_timing("site_first_run", run.seconds)
    if run.returncode != 0:
        pytest.fail(f"site.yml failed on the fleet (rc={run.returncode}):\n{run.tail()}", pytrace=False)
    return Fleet(nodes_seconds, run)
