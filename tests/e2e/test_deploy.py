"""deploy.yml on the local inventory: legal_info answers through HAProxy, and Prometheus scrapes its slot."""

from __future__ import annotations

import time

import pytest
import requests

from tests.e2e.ansible_run import local_secret, run_playbook

pytestmark = pytest.mark.e2e

FRONTEND = "http://127.0.0.1:8001"  # inventories/local/group_vars/load_balancer/main.yml
PROMETHEUS = "http://127.0.0.1:9090"
DEPLOY_ARGS = ("-e", "allow_rollback=true")


@pytest.fixture(scope="module")
def deploy_run(site_run):
    # The release tests raise the versions the slots accept; the example is older, so say it is meant.
    run = run_playbook("playbooks/deploy.yml", *DEPLOY_ARGS)
    if run.returncode != 0:
        pytest.fail(f"deploy.yml failed (rc={run.returncode}):\n{run.tail()}", pytrace=False)
    return run


def _task(text: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{FRONTEND}/v1/tasks", json={"input": text}, headers=headers, timeout=30)
    return response.status_code, response.json() if response.content else {}


def test_agent_answers_through_haproxy(deploy_run):
    status, body = _task(
        "Puis-je poursuivre mon entrepreneur pour des travaux mal faits?", local_secret("runtime_caller")
    )
    assert status == 200, body
    assert (body["agent"], body["slot"]) == ("legal_info", "blue")
    output = body["output"].lower()
    assert "pas de conseil juridique" in output and "consultant un avocat" in output


def test_no_token_no_task(deploy_run):
    status, _ = _task("Bonjour", None)
    assert status == 401


def test_prometheus_scrapes_the_deployed_slot(deploy_run):
    _task("Délai pour publier une hypothèque légale?", local_secret("runtime_caller"))
    query = 'sum(chenu_agent_requests_total{job="chenu_runtime",agent="legal_info",slot="blue"})'
    deadline = time.monotonic() + 90  # file_sd refresh (30 s) plus a scrape interval
    while True:
        result = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": query}, timeout=10).json()["data"][
            "result"
        ]
        if result and float(result[0]["value"][1]) >= 1:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus has no chenu_agent_requests_total for legal_info/blue: {result}")
        time.sleep(3)


def test_second_deploy_changes_nothing(deploy_run):
    again = run_playbook("playbooks/deploy.yml", *DEPLOY_ARGS)
    assert again.returncode == 0, again.tail()
    assert again.total("changed") == 0, again.tail()
