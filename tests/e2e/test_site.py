"""site.yml on the local inventory: every service answers, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest

from tests.e2e.ansible_run import local_secret, run_playbook

pytestmark = pytest.mark.e2e

# Ports of roles/monitoring/defaults/main.yml (monitoring_prometheus_port, monitoring_alertmanager_port).
PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
AGENTS = ["estimator", "legal_info", "takeoff"]  # inventories/local/group_vars/all/platform.yml


def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def _http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (fixed loopback URL)
        return json.load(response)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (fixed loopback URL)
            return response.status
    except OSError:
        return 0


def test_site_run_succeeded(site_run):
    if site_run is None:
        pytest.skip("CHENU_E2E_REUSE=1: site.yml was not run by this session")
    assert site_run.recap, site_run.tail()
    assert site_run.total("failed") == 0
    assert site_run.total("unreachable") == 0


def test_postgresql_answers_as_the_registry_role():
    env = {**os.environ, "PGPASSWORD": local_secret("postgresql_registry")}
    done = _run(
        "psql",
        "host=127.0.0.1 port=5432 dbname=registry user=registry",
        "--no-psqlrc",
        "-At",
        "-c",
        "SELECT current_user, current_setting('wal_level'), current_setting('archive_mode')",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "registry|replica|on"


def _replica_sender() -> str:
    """pid|state of the WAL sender feeding the local replica (inventories/local/group_vars/all/dr.yml)."""
    done = _run(
        "runuser", "-u", "postgres", "--", "psql", "--no-psqlrc", "-At", "-c",
        "SELECT pid || '|' || state FROM pg_stat_replication WHERE application_name = 'replica'",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_replica_reconnects_with_the_current_replication_password():
    """The replica must reach the primary with the password this run set, not the one it was cloned with.

    An established WAL stream outlives a password change; cutting it makes the replica log in again.
    """
    before = _replica_sender()
    assert before.endswith("|streaming"), before
    _run("runuser", "-u", "postgres", "--", "psql", "--no-psqlrc", "-At", "-c",
         f"SELECT pg_terminate_backend({before.split('|')[0]})")  # fmt: skip
    deadline = time.monotonic() + 60
    now = _replica_sender()
    while not (now.endswith("|streaming") and now != before) and time.monotonic() < deadline:
        time.sleep(1)
        now = _replica_sender()
    assert now.endswith("|streaming") and now != before, (
        f"the replica did not stream again within 60 s (WAL sender now: {now or 'none'}); "
        "see /var/log/postgresql/postgresql-15-replica.log"
    )


def test_postgresql_runtime_role_owns_its_database():
    env = {**os.environ, "PGPASSWORD": local_secret("postgresql_runtime")}
    done = _run(
        "psql",
        "host=127.0.0.1 dbname=runtime user=runtime",
        "--no-psqlrc",
        "-At",
        "-c",
        "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'runtime'",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "runtime"


def test_redis_answers_with_its_password_only():
    cli = ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "--no-auth-warning"]
    assert "NOAUTH" in _run(*cli, "PING").stdout
    authed = [*cli, "-a", local_secret("redis")]
    assert _run(*authed, "PING").stdout.strip() == "PONG"
    assert _run(*authed, "SET", "e2e:probe", "hello").stdout.strip() == "OK"
    assert _run(*authed, "GET", "e2e:probe").stdout.strip() == "hello"
    assert _run(*authed, "CONFIG", "GET", "save").stdout.split("\n")[1] == "3600 1 300 100 60 10000"


def test_rabbitmq_has_a_quorum_task_queue_and_dead_letter_queue_per_agent():
    done = _run(
        "rabbitmqctl",
        "--quiet",
        "list_queues",
        "-p",
        "chenu",
        "name",
        "type",
        "durable",
        "arguments",
        "--formatter",
        "json",
    )
    assert done.returncode == 0, done.stderr
    queues = {q["name"]: q for q in json.loads(done.stdout)}
    for agent in AGENTS:
        task, dlq = queues[f"chenu.tasks.{agent}"], queues[f"chenu.tasks.{agent}.dlq"]
        assert task["type"] == dlq["type"] == "quorum"
        assert task["durable"] and dlq["durable"]
        arguments = {name: value for name, _type, value in task["arguments"]}
        assert arguments["x-dead-letter-exchange"] == "chenu.tasks.dlx"


def test_prometheus_is_ready_and_every_target_is_up():
    assert _http_status(f"{PROMETHEUS}/-/ready") == 200
    deadline = time.monotonic() + 90  # a fresh target is "unknown" until its first scrape
    while True:
        targets = _http_json(f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
        health = {f"{t['labels']['job']} {t['scrapeUrl']}": t["health"] for t in targets}
        if targets and all(h == "up" for h in health.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"targets not all up: { {k: v for k, v in health.items() if v != 'up'} or 'none' }")
        time.sleep(3)
    jobs = {key.split()[0] for key in health}
    assert len(jobs) >= 5, jobs  # prometheus, node, postgres, redis, rabbitmq, alertmanager


def test_alertmanager_is_ready():
    assert _http_status(f"{ALERTMANAGER}/-/ready") == 200


def test_second_run_changes_nothing():
    rerun = run_playbook("playbooks/site.yml")
    assert rerun.returncode == 0, rerun.tail()
    assert rerun.recap, rerun.tail()
    changed = rerun.total("changed")
    assert changed == 0, f"second run reported changed={changed}:\n{rerun.tail()}"
