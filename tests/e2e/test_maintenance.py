"""maintenance.yml and maintenance_emergency.yml on the local inventory.

Refused outside the window; forced, HAProxy answers with the maintenance response while it runs and
serves again after; VACUUM/REINDEX, cache cleanup and the record; the emergency's seven steps. Every
test leaves HAProxy's maintenance map, the slots, Redis and PostgreSQL as it found them.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from tests.e2e.ansible_run import REPO, local_secret, run_playbook

pytestmark = pytest.mark.e2e

FRONTEND = "http://127.0.0.1:8001"  # fe_legal_info (inventories/local/group_vars/load_balancer)
ALERTMANAGER = "http://127.0.0.1:9093"
RECORDS = REPO / ".cache" / "local" / "operations"
LOGROTATE_CONF = Path("/etc/logrotate.d/chenu-agents")
TEST_DB = "chenu_test_h_maint"
KEY_PREFIX = "chenu:test_h:"
QUICK = [
    "-e",
    "maintenance_apt_update_cache=false",
    "-e",
    json.dumps({"maintenance_logrotate_configs": [str(LOGROTATE_CONF)]}),
]


def _maintenance_status() -> str:
    done = subprocess.run(["/usr/local/sbin/haproxy-maintenance", "status"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def host_as_found():
    """Checks the shared state first (E drives the same slots), puts it back after."""
    slots = subprocess.run(["supervisorctl", "status"], capture_output=True, text=True).stdout
    maintenance = _maintenance_status()
    if maintenance != "off":
        pytest.skip(f"HAProxy is already in maintenance ({maintenance}): someone else is using it")
    logrotate_existed = LOGROTATE_CONF.exists()
    yield slots
    if _maintenance_status() != "off":
        subprocess.run(["/usr/local/sbin/haproxy-maintenance", "off"], check=False)
        pytest.fail("maintenance mode was left on (switched off by the test teardown)")
    if not logrotate_existed:
        LOGROTATE_CONF.unlink(missing_ok=True)


class Watcher(threading.Thread):
    """Polls the frontend while a playbook runs: what did users get?"""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.maintenance: list[dict] = []
        self.served = 0
        self.alerts: list[dict] = []

    def run(self):
        while not self.stop.is_set():
            try:
                response = requests.get(f"{FRONTEND}/health/ready", timeout=3)
                body = (
                    response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                )
                if response.status_code == 503 and body.get("status") == "maintenance":
                    if not self.maintenance:
                        self.alerts = requests.get(
                            f"{ALERTMANAGER}/api/v2/alerts",
                            params={"filter": 'alertname="ChenuEmergencyMaintenance"'},
                            timeout=3,
                        ).json()
                    self.maintenance.append({"headers": dict(response.headers), **body})
                else:
                    self.served += 1
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)


def _run_watched(*args: str):
    watcher = Watcher()
    watcher.start()
    try:
        run = run_playbook(*args, timeout=600)
    finally:
        watcher.stop.set()
        watcher.join()
    return run, watcher


def _record(run) -> dict:
    line = next(line for line in run.output.splitlines() if "record: " in line and ".json" in line)
    path = line.split("record: ", 1)[1].strip().strip("'\"")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _wait_until_vacuum_can_remove(conn, timeout: float = 60.0) -> None:
    """VACUUM until the deleted rows are gone from t_pkey, so the index the playbook sees is bloated.

    Dead rows stay while anything still holds an older snapshot: on this host the streaming replica's
    hot_standby_feedback holds the slot's xmin, refreshed every wal_receiver_status_interval (10 s).
    """
    conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    deadline = time.monotonic() + timeout
    while True:
        conn.execute("VACUUM t")
        density = conn.execute("SELECT avg_leaf_density FROM pgstatindex('t_pkey')").fetchone()[0]
        if density < 50:
            return
        if time.monotonic() > deadline:
            holders = conn.execute(
                "SELECT 'slot ' || slot_name || ' xmin ' || xmin FROM pg_replication_slots WHERE xmin IS NOT NULL"
                " UNION ALL SELECT 'backend ' || pid || ' xmin ' || backend_xmin FROM pg_stat_activity"
                " WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"
            ).fetchall()
            pytest.fail(
                f"VACUUM could not remove the deleted rows in {timeout:.0f} s (leaf density {density} %); "
                f"the xmin horizon is held by {[h[0] for h in holders]}"
            )
        time.sleep(1)


@pytest.fixture
def bloated_database():
    admin = "host=/var/run/postgresql user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB}")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    with psycopg.connect(f"host=/var/run/postgresql user=postgres dbname={TEST_DB}", autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 60000) g")
        conn.execute("DELETE FROM t WHERE id % 10 <> 0")
        _wait_until_vacuum_can_remove(conn)
    yield TEST_DB
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")


@pytest.fixture
def cache_keys():
    client = redis.Redis(host="127.0.0.1", port=6379, password=local_secret("redis"))
    client.mset({f"{KEY_PREFIX}tmp:{n}": "x" for n in range(40)})
    client.set(f"{KEY_PREFIX}keep", "kept")
    yield client
    for key in client.scan_iter(f"{KEY_PREFIX}*"):
        client.unlink(key)


def test_refuses_outside_the_window_and_says_when_it_opens(host_as_found):
    run = run_playbook("playbooks/maintenance.yml", "-e", "maintenance_at=2026-11-21T16:00:00Z", *QUICK)
    assert run.returncode != 0
    assert "next opens at 2026-11-22T02:00:00-05:00" in run.output
    assert "-e force=true" in run.output
    assert "Switch HAProxy's maintenance response on" not in run.output
    assert _maintenance_status() == "off"


def test_forced_maintenance_answers_maintenance_then_serves_again(host_as_found, bloated_database, cache_keys):
    extra = {
        "maintenance_databases": ["registry", "runtime", bloated_database],
        "maintenance_redis_cleanup_patterns": [f"{KEY_PREFIX}tmp:*"],
    }
    run, watcher = _run_watched("playbooks/maintenance.yml", "-e", "force=true", *QUICK, "-e", json.dumps(extra))
    assert run.returncode == 0, run.tail()
    assert watcher.maintenance, "no request got the maintenance response during the run"
    seen = watcher.maintenance[0]
    assert seen["agent"] == "legal_info" and "maintenance" in seen["message"].lower()
    assert seen["headers"].get("Retry-After") or seen["headers"].get("retry-after")
    assert _maintenance_status() == "off"
    assert requests.get(f"{FRONTEND}/health/ready", timeout=5).json().get("status") != "maintenance"

    record = _record(run)
    assert record["outcome"] == "ok" and record["forced"] is True
    database = record["database"]["localhost"]
    assert bloated_database in database["vacuumed"]
    reindexed = {(r["database"], r["index"]): r for r in database["reindexed"]}
    pkey = reindexed[(bloated_database, "public.t_pkey")]
    assert pkey["leaf_density_after"] > pkey["leaf_density_before"] and pkey["bytes_after"] < pkey["bytes_before"]
    assert record["cache"]["localhost"]["deleted"] == {f"{KEY_PREFIX}tmp:*": 40}
    assert cache_keys.get(f"{KEY_PREFIX}keep") == b"kept"
    assert not list(cache_keys.scan_iter(f"{KEY_PREFIX}tmp:*"))
    assert record["patches"]["localhost"]["mode"] == "list"
    assert record["patches"]["localhost"]["applied"] == []
    assert record["health"]["localhost"]["ok"] is True
    audit = (RECORDS / "audit.log").read_text(encoding="utf-8").splitlines()
    assert json.loads(audit[-1])["run_id"] == record["run_id"]
    assert Path(str(_record_md(record))).exists()


def _record_md(record: dict) -> Path:
    return RECORDS / f"{record['kind']}-{record['run_id']}.md"


def test_emergency_maintenance_follows_the_seven_steps(host_as_found, tmp_path):
    marker = tmp_path / "performed"
    tasks = tmp_path / "emergency_tasks.yml"
    tasks.write_text(
        "- name: The emergency work\n"
        "  ansible.builtin.copy:\n"
        f"    dest: {marker}\n"
        "    content: done\n"
        "    mode: '0644'\n"
        "  when: inventory_hostname in groups['runtime']\n",
        encoding="utf-8",
    )
    args = {
        "reason": "drill of the emergency procedure",
        "emergency_action": "tasks",
        "emergency_tasks_file": str(tasks),
        "emergency_agents": ["legal_info"],
        "emergency_expected_minutes": 5,
    }
    run, watcher = _run_watched("playbooks/maintenance_emergency.yml", "-e", json.dumps(args))
    assert run.returncode == 0, run.tail()
    # 1: users told before the maintenance response started
    assert any(a["labels"].get("agents") == "legal_info" for a in watcher.alerts), watcher.alerts
    # 2 and 3: the maintenance response names the reason and the status page
    assert watcher.maintenance
    message = watcher.maintenance[0]["message"]
    assert "drill of the emergency procedure" in message and "http://127.0.0.1:9093/#/alerts" in message
    # 4: the work ran; 5: health verified; 6: serving again; 7: resolution sent
    assert marker.read_text() == "done"
    assert _maintenance_status() == "off"
    record = _record(run)
    assert record["outcome"] == "ok"
    assert record["health"]["localhost"]["ok"] is True
    assert any("accepted" in n for n in record["notified"])
    assert any("accepted" in n for n in record["resolution_notified"])
    active = requests.get(
        f"{ALERTMANAGER}/api/v2/alerts",
        params={"filter": 'alertname="ChenuEmergencyMaintenance"', "active": "true"},
        timeout=5,
    ).json()
    assert not [a for a in active if a["status"]["state"] == "active" and a["labels"].get("agents") == "legal_info"]
