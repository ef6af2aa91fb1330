"""Agents on the fleet: deploy.yml puts legal_info onto both runtime hosts, both load balancers route to
both, and the virtual address moves to the backup balancer when the master's container is killed."""

from __future__ import annotations

import csv
import io
import time

import pytest
import requests

from tests.fleet.conftest import fleet_playbook, record_timing
from tests.fleet.fleet import address, group, group_vars, podman, secret, sh, wait_until

pytestmark = pytest.mark.fleet

FRONTEND_PORT = 8001  # group_vars/load_balancer/main.yml, fe_legal_info
SLOT_PORT = 8101  # group_vars/runtime/slots.yml, legal_info blue
QUESTION = "Comment vérifier la licence RBQ de mon entrepreneur?"


@pytest.fixture(scope="module")
def deployed(fleet):
    # deploy.yml routes traffic by slot name, i.e. to the first runtime host's servers only (issue 15):
    # its load balancer play is left out, and the balancers keep the inventory's weights (blue on both).
    run = fleet_playbook("playbooks/deploy.yml", "--limit", "control,runtime,monitoring")
    record_timing("deploy", run.seconds)
    if run.returncode != 0:
        pytest.fail(f"deploy.yml failed on the fleet (rc={run.returncode}):\n{run.tail()}", pytrace=False)
    return run


def _task(host_address: str, port: int) -> dict:
    response = requests.post(
        f"http://{host_address}:{port}/v1/tasks",
        json={"input": QUESTION},
        headers={"Authorization": f"Bearer {secret('runtime_caller')}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_deploy_puts_the_agent_on_every_runtime_host(deployed):
    answers = {host: _task(address(host), SLOT_PORT) for host in group("runtime")}
    assert len(answers) == 2
    versions = {(a["agent"], a["slot"], a["version"]) for a in answers.values()}
    assert len(versions) == 1, answers
    agent, slot, version = versions.pop()
    assert (agent, slot) == ("legal_info", "blue") and version, answers


def _served(balancer: str) -> dict[str, int]:
    """Requests each server of be_legal_info has answered, from the balancer's stats (CSV)."""
    text = requests.get(f"http://{address(balancer)}:8404/stats;csv", timeout=10).text.lstrip("# ")
    return {
        row["svname"]: int(row["stot"] or 0)
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "be_legal_info" and row["svname"] not in ("BACKEND", "FRONTEND")
    }


def test_both_load_balancers_route_to_both_runtime_hosts(deployed):
    servers = {s["name"]: s["address"] for s in group_vars("load_balancer")["load_balancer_agents"][0]["slots"]}
    assert {"blue", "blue_2"} <= set(servers)
    for balancer in group("load_balancer"):
        # Health checks (2 s x rise 2) bring both servers up after the deploy.
        wait_until(
            lambda b=balancer: sh(b, "echo 'show servers state be_legal_info' | socat stdio /run/haproxy/admin.sock"),
            timeout=5,
            what=f"{balancer}'s runtime API",
        )
        before = _served(balancer)
        for _request in range(8):
            assert _task(address(balancer), FRONTEND_PORT)["slot"] == "blue"
        after = _served(balancer)
        moved = {name: after[name] - before.get(name, 0) for name in after}
        assert moved["blue"] > 0 and moved["blue_2"] > 0, (balancer, moved)
        assert moved["green"] == 0 and moved["green_2"] == 0, (balancer, moved)


def _holds(balancer: str, virtual: str) -> bool:
    return f" {virtual}/" in sh(balancer, "ip -4 -o addr show dev eth0", check=False)


def test_the_virtual_address_moves_to_the_backup_when_the_master_dies(deployed):
    virtual = group_vars("all")["fleet_virtual_address"]
    master, backup = group("load_balancer")  # hosts.yml: fleet-lb-1 has the higher priority
    wait_until(lambda: _holds(master, virtual), timeout=30, what=f"{virtual} on {master}")
    assert not _holds(backup, virtual)
    assert _task(virtual, FRONTEND_PORT)["agent"] == "legal_info"
    try:
        podman("kill", master)
        killed = time.monotonic()
        wait_until(lambda: _holds(backup, virtual), timeout=20, interval=0.1, what=f"{virtual} on {backup}")
        record_timing("vrrp_address_moved", time.monotonic() - killed)
        answer = wait_until(lambda: _task(virtual, FRONTEND_PORT), timeout=20, interval=0.2, what="the frontend")
        record_timing("vrrp_frontend_back", time.monotonic() - killed)
        assert answer["agent"] == "legal_info"
    finally:
        podman("start", master)
        sh(master, "service haproxy start; service keepalived start", timeout=60)
        # The master's higher priority takes the address back (preemption).
        wait_until(lambda: _holds(master, virtual), timeout=30, what=f"{virtual} back on {master}")
    assert not _holds(backup, virtual)
    assert _task(virtual, FRONTEND_PORT)["agent"] == "legal_info"
