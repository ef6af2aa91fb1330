"""Disaster-recovery drills (seed 000 §7.2): each breaks something for real, runs its dr_*.yml playbook,
checks recovery and integrity, and prints the RTO and RPO it measured against the seed's 4 h and 1 h.

The shared stack is left alone: each drill builds PostgreSQL clusters of its own (start.conf manual, so
the postgresql service never touches them) on ports 5434 and up, and its own HAProxy on a free port, and
removes them afterwards. CHENU_DR_RESULTS=<file.json> collects the measured figures (bench/dr.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

from tests.e2e.ansible_run import local_secret, run_playbook

pytestmark = pytest.mark.e2e

VERSION = "15"
RTO_OBJECTIVE = 4 * 3600  # seed 000 §7.2
RPO_OBJECTIVE = 3600
PRIMARY = {"cluster": "drill_primary", "port": 5434}
REPLICA = {"cluster": "drill_replica", "port": 5435}
SAMPLE_ROWS = 20_000
HEARTBEAT_TABLE = (
    "CREATE TABLE dr_heartbeat (id bigserial PRIMARY KEY, client_at double precision NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _record(scenario: str, figures: dict) -> None:
    """Print the figures; add them to CHENU_DR_RESULTS when set."""
    print(
        f"\nDR {scenario}: RTO {figures['rto_seconds']:.1f} s (objective {RTO_OBJECTIVE} s), "
        f"RPO {figures['rpo_seconds']:.3f} s (objective {RPO_OBJECTIVE} s), drill {figures['drill_seconds']:.0f} s"
    )
    target = os.environ.get("CHENU_DR_RESULTS")
    if target:
        path = Path(target)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[scenario] = figures
        path.write_text(json.dumps(results, indent=2, sort_keys=True))


def _playbook(name: str, tmp_path: Path, extra: dict, timeout: int = 600):
    extra_file = tmp_path / f"{name}-{time.monotonic_ns()}.json"
    extra_file.write_text(json.dumps(extra))
    run = run_playbook(f"playbooks/{name}.yml", "-e", f"@{extra_file}", timeout=timeout)
    assert run.returncode == 0, f"{name}.yml failed (rc={run.returncode}):\n{run.tail()}"
    return run


def _psql(port: int, sql: str, dbname: str = "postgres") -> str:
    """As postgres over the local socket; the statement on stdin, so no secret lands in an error message."""
    done = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-h",
            "/var/run/postgresql",
            "-p",
            str(port),
            "-d",
            dbname,
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"psql on port {port}: {done.stderr}"
    return done.stdout.strip()


def _drop_cluster(name: str) -> None:
    subprocess.run(["pg_dropcluster", "--stop", VERSION, name], capture_output=True, check=False)


@dataclass
class Endpoint:
    """A private HAProxy with the listen section roles/load_balancer renders for load_balancer_postgresql."""

    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.directory / "admin.sock")

    def vars(self) -> dict:
        return {"socket": self.socket, "backend": "pg_primary", "host": "127.0.0.1", "port": self.port}

    def start(self, primary: dict, replica: dict | None = None) -> None:
        standby = f"    server {replica['cluster']} 127.0.0.1:{replica['port']} check disabled\n" if replica else ""
        config = self.directory / "haproxy.cfg"
        config.write_text(
            f"""global
    stats socket {self.socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
listen pg_primary
    bind 127.0.0.1:{self.port}
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
    server {primary["cluster"]} 127.0.0.1:{primary["port"]} check
{standby}"""
        )
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(self.socket).exists():
            assert time.monotonic() < deadline, "the drill's HAProxy did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)


class Heartbeat(threading.Thread):
    """Writes a row every 100 ms through the endpoint; remembers which commits the server acknowledged."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked: list[tuple[int, float]] = []
        self.failures: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        connection = None
        while not self.halt.is_set():
            try:
                if connection is None:
                    connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=1)
                at = time.time()
                row = connection.execute(
                    "INSERT INTO dr_heartbeat (client_at) VALUES (%s) RETURNING id", (at,)
                ).fetchone()
                self.acked.append((row[0], at))
            except psycopg.Error:
                self.failures.append(time.time())
                if connection is not None:
                    connection.close()
                connection = None
            self.halt.wait(0.1)
        if connection is not None:
            connection.close()

    def first_ack_after(self, moment: float) -> float | None:
        return next((at for _, at in self.acked if at > moment), None)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def _registry_dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname=registry user=registry password={local_secret('postgresql_registry')}"


def _lost(heartbeat: Heartbeat, port: int, until: float) -> tuple[int, float]:
    """Heartbeats acknowledged before `until` but missing on the cluster at `port`, and their time span."""
    present = {int(x) for x in _psql(port, "SELECT id FROM dr_heartbeat", "registry").split()}
    acked = [(i, at) for i, at in heartbeat.acked if at < until]
    missing = [at for i, at in acked if i not in present]
    if not missing:
        return 0, 0.0
    kept = [at for i, at in acked if i in present]
    return len(missing), max(missing) - (max(kept) if kept else min(missing))


@pytest.fixture
def drill_pair(tmp_path):
    """drill_primary (5434) streaming to drill_replica (5435), built by roles/postgresql, behind a private HAProxy."""
    replication_password = secrets.token_hex(16)
    playbook = tmp_path / "drill_clusters.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Drill clusters",
                    "hosts": "postgresql",
                    "gather_facts": True,
                    "gather_subset": ["min"],
                    "roles": [
                        {
                            "role": "chenu.agents.postgresql",
                            "vars": {
                                "postgresql_cluster_name": PRIMARY["cluster"],
                                "postgresql_port": PRIMARY["port"],
                                "postgresql_start_conf": "manual",
                                "postgresql_replication_password": replication_password,
                                "postgresql_replicas": [{"name": REPLICA["cluster"], "port": REPLICA["port"]}],
                            },
                        }
                    ],
                }
            ]
        )
    )
    endpoint = Endpoint(tmp_path)
    try:
        run = run_playbook(str(playbook), "--skip-tags", "postgresql_install", timeout=600)
        assert run.returncode == 0, f"drill clusters: rc={run.returncode}\n{run.tail()}"
        endpoint.start(PRIMARY, REPLICA)
        yield endpoint, replication_password
    finally:
        endpoint.stop()
        _drop_cluster(REPLICA["cluster"])
        _drop_cluster(PRIMARY["cluster"])


def test_database_failover(drill_pair, tmp_path):
    endpoint, replication_password = drill_pair
    started = time.monotonic()
    with psycopg.connect(_registry_dsn(endpoint.port), autocommit=True) as connection:
        connection.execute(HEARTBEAT_TABLE)
        connection.execute(
            "CREATE TABLE dr_sample AS SELECT i AS id, md5(i::text) AS payload FROM generate_series(1, %s) i",
            (SAMPLE_ROWS,),
        )
    heartbeat = Heartbeat(_registry_dsn(endpoint.port))
    heartbeat.start()
    common = {
        "dr_endpoint": endpoint.vars(),
        "dr_replication_password": replication_password,
        "dr_integrity_databases": ["registry"],
    }
    try:
        time.sleep(2)
        # The failure: the primary crashes (no shutdown checkpoint, no last WAL sent on purpose).
        failed_at = time.time()
        subprocess.run(["pg_ctlcluster", VERSION, PRIMARY["cluster"], "stop", "-m", "immediate"], check=True)
        report_file = tmp_path / "failover.json"
        _playbook(
            "dr_database_failover",
            tmp_path,
            {
                **common,
                "dr_primary": PRIMARY,
                "dr_replica": REPLICA,
                "dr_failed_at": failed_at,
                "dr_report_file": str(report_file),
            },
        )
        back = None
        deadline = time.monotonic() + 15
        while back is None and time.monotonic() < deadline:
            back = heartbeat.first_ack_after(failed_at)
            time.sleep(0.2)
    finally:
        heartbeat.stop()
    report = json.loads(report_file.read_text())
    assert back is not None, "no heartbeat went through the endpoint after the failover"
    lost, lost_span = _lost(heartbeat, REPLICA["port"], failed_at)
    client_rto = back - failed_at

    # Recovery, integrity, objectives.
    assert _psql(REPLICA["port"], "SELECT pg_is_in_recovery()") == "f"
    assert _psql(REPLICA["port"], "SELECT count(*) FROM dr_sample", "registry") == str(SAMPLE_ROWS)
    assert report["integrity"]["registry"], "the playbook compared no table"
    assert report["rto_seconds"] <= RTO_OBJECTIVE and client_rto <= RTO_OBJECTIVE
    assert report["rpo_seconds"] is not None and report["rpo_seconds"] <= RPO_OBJECTIVE
    assert lost_span <= RPO_OBJECTIVE

    # The old primary comes back as the replica; then a planned switchover and a second rebuild
    # return the drill to its original topology, losing nothing.
    _playbook(
        "dr_reinstate",
        tmp_path,
        {**common, "dr_primary": PRIMARY, "dr_replica": REPLICA, "dr_reinstate_start_conf": "manual"},
    )
    assert _psql(PRIMARY["port"], "SELECT pg_is_in_recovery()") == "t"
    switch_file = tmp_path / "switchover.json"
    _playbook(
        "dr_database_failover",
        tmp_path,
        {**common, "dr_primary": REPLICA, "dr_replica": PRIMARY, "dr_force": True, "dr_report_file": str(switch_file)},
    )
    switchover = json.loads(switch_file.read_text())
    assert switchover["rpo_seconds"] == 0 and switchover["rpo_wal_bytes"] == 0
    _playbook(
        "dr_reinstate",
        tmp_path,
        {**common, "dr_primary": REPLICA, "dr_replica": PRIMARY, "dr_reinstate_start_conf": "manual"},
    )
    assert _psql(PRIMARY["port"], "SELECT pg_is_in_recovery()") == "f"
    assert _psql(REPLICA["port"], "SELECT pg_is_in_recovery()") == "t"
    with psycopg.connect(_registry_dsn(endpoint.port), autocommit=True) as connection:
        assert connection.execute("SELECT current_setting('port')").fetchone()[0] == str(PRIMARY["port"])

    _record(
        "database_failover",
        {
            "rto_seconds": report["rto_seconds"],
            "rpo_seconds": report["rpo_seconds"],
            "rpo_wal_bytes": report["rpo_wal_bytes"],
            "client_rto_seconds": client_rto,
            "lost_heartbeats": lost,
            "lost_heartbeat_span_seconds": lost_span,
            "switchover_rto_seconds": switchover["rto_seconds"],
            "switchover_rpo_seconds": switchover["rpo_seconds"],
            "drill_seconds": time.monotonic() - started,
        },
    )


SOURCE = {"cluster": "drill_source", "port": 5436}
RESTORED = {"cluster": "drill_pitr", "port": 5437}
STANZA = "drill"
REGION = {"cluster": "drill_region", "port": 5438}


@dataclass
class BackedUpCluster:
    """A cluster archiving its WAL into a pgBackRest stanza of its own, with a full backup taken."""

    base: Path
    config: Path

    def pgbackrest(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args],
            check=True,
            capture_output=True,
        )


S3_ENDPOINT = ("127.0.0.1", 9555)  # roles/backup's S3 stand-in (moto behind a private CA)
S3_CA = "/etc/chenu-backup/s3/ca.pem"
S3_BUCKET = "chenu-dr-drill"


def _s3():
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"https://{S3_ENDPOINT[0]}:{S3_ENDPOINT[1]}",
        aws_access_key_id="drill",
        aws_secret_access_key="drill-secret",
        region_name="us-east-1",
        verify=S3_CA,
    )


@pytest.fixture
def backed_up_source():
    base = Path(f"/var/tmp/chenu-dr-drill-{secrets.token_hex(4)}")
    s3_path = f"/{base.name}"
    base.mkdir()
    base.chmod(0o755)  # the drill's Redis and runtime users reach their directories below it
    shutil.chown(base, "postgres", "postgres")
    config = base / "pgbackrest.conf"
    config.write_text(
        f"""[global]
repo1-path={base}/repo
log-path={base}/log
lock-path={base}/lock
spool-path={base}/spool
start-fast=y
compress-type=lz4
log-level-console=warn

{_s3_repo(s3_path)}
[{STANZA}]
pg1-path=/var/lib/postgresql/{VERSION}/{SOURCE["cluster"]}
pg1-port={SOURCE["port"]}
pg1-socket-path=/var/run/postgresql
"""
    )
    shutil.chown(config, "postgres", "postgres")
    try:
        subprocess.run(
            ["pg_createcluster", VERSION, SOURCE["cluster"], f"--port={SOURCE['port']}", "--start-conf=manual"],
            check=True,
            capture_output=True,
        )
        conf_dir = Path(f"/etc/postgresql/{VERSION}/{SOURCE['cluster']}")
        # The authentication roles/postgresql writes (root may connect as postgres): as on the real primary.
        for name in ("pg_hba.conf", "pg_ident.conf"):
            shutil.copy2(f"/etc/postgresql/{VERSION}/main/{name}", conf_dir / name)
        (conf_dir / "conf.d" / "drill.conf").write_text(
            "archive_mode = on\n"
            f"archive_command = 'pgbackrest --config={config} --stanza={STANZA} archive-push %p'\n"
            "wal_level = replica\n"
        )
        subprocess.run(["pg_ctlcluster", VERSION, SOURCE["cluster"], "start"], check=True, capture_output=True)
        password = local_secret("postgresql_registry")
        _psql(SOURCE["port"], f"CREATE ROLE registry LOGIN PASSWORD '{password}'")
        _psql(SOURCE["port"], "CREATE DATABASE registry OWNER registry")
        if _s3_repo(s3_path):
            _s3().create_bucket(Bucket=S3_BUCKET)
        cluster = BackedUpCluster(base, config)
        cluster.pgbackrest("stanza-create")
        cluster.pgbackrest("--type=full", "--repo=1", "backup")
        if _s3_repo(s3_path):
            cluster.pgbackrest("--type=full", "--repo=2", "backup")
        yield cluster
    finally:
        for name in (RESTORED["cluster"], REGION["cluster"], SOURCE["cluster"]):
            _drop_cluster(name)
        shutil.rmtree(base, ignore_errors=True)
        if _s3_repo(s3_path):
            client = _s3()
            listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=s3_path.lstrip("/"))
            while listed.get("Contents"):
                client.delete_objects(
                    Bucket=S3_BUCKET, Delete={"Objects": [{"Key": o["Key"]} for o in listed["Contents"]]}
                )
                listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=s3_path.lstrip("/"))


def _s3_up() -> bool:
    try:
        with socket.create_connection(S3_ENDPOINT, timeout=1):
            return Path(S3_CA).exists()
    except OSError:
        return False


def _s3_repo(path: str) -> str:
    """repo2 on the S3 stand-in when it runs (region drill); the PITR drill needs only repo1."""
    if not _s3_up():
        return ""
    return (
        "repo2-type=s3\n"
        f"repo2-path={path}\n"
        f"repo2-s3-bucket={S3_BUCKET}\n"
        f"repo2-s3-endpoint={S3_ENDPOINT[0]}\n"
        f"repo2-storage-port={S3_ENDPOINT[1]}\n"
        "repo2-s3-region=us-east-1\n"
        "repo2-s3-uri-style=path\n"
        "repo2-s3-key=drill\n"
        "repo2-s3-key-secret=drill-secret\n"
        f"repo2-storage-ca-file={S3_CA}\n"
    )


def test_point_in_time_restore(backed_up_source, tmp_path):
    started = time.monotonic()
    with psycopg.connect(_registry_dsn(SOURCE["port"]), autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE dr_events (id serial PRIMARY KEY, phase text NOT NULL, at timestamptz DEFAULT clock_timestamp())"
        )
        connection.execute(HEARTBEAT_TABLE)
        heartbeat = Heartbeat(_registry_dsn(SOURCE["port"]))
        heartbeat.start()
        for _ in range(50):
            connection.execute("INSERT INTO dr_events (phase) VALUES ('before')")
        time.sleep(1)
        target = connection.execute("SELECT clock_timestamp()::text").fetchone()[0]
        time.sleep(1)
        # The corruption the restore must undo.
        for _ in range(50):
            connection.execute("INSERT INTO dr_events (phase) VALUES ('after')")
        connection.execute("DELETE FROM dr_events WHERE phase = 'before' AND id % 2 = 0")
        heartbeat.stop()
        target_epoch = connection.execute("SELECT extract(epoch FROM %s::timestamptz)::float", (target,)).fetchone()[0]
    backed_up_source.pgbackrest("check")  # switches the WAL segment and waits until it is archived
    endpoint = Endpoint(tmp_path)
    endpoint.start(SOURCE)
    try:
        detected_at = time.time()
        report_file = tmp_path / "pitr.json"
        _playbook(
            "dr_point_in_time_restore",
            tmp_path,
            {
                "target_time": target,
                "dr_primary": SOURCE,
                "dr_pitr_target": RESTORED,
                "dr_pitr_source": {"stanza": STANZA, "config": str(backed_up_source.config), "repo": 1},
                "dr_endpoint": endpoint.vars(),
                "dr_integrity_databases": ["registry"],
                "dr_failed_at": detected_at,
                "dr_report_file": str(report_file),
            },
        )
        with psycopg.connect(_registry_dsn(endpoint.port), autocommit=True) as connection:
            port = connection.execute("SELECT current_setting('port')").fetchone()[0]
            phases = dict(connection.execute("SELECT phase, count(*) FROM dr_events GROUP BY phase").fetchall())
    finally:
        endpoint.stop()
    report = json.loads(report_file.read_text())
    assert port == str(RESTORED["port"])
    assert phases == {"before": 50}, phases
    status = subprocess.run(["pg_ctlcluster", VERSION, SOURCE["cluster"], "status"], capture_output=True, check=False)
    assert status.returncode == 3, "the old primary still runs"
    present = {int(x) for x in _psql(RESTORED["port"], "SELECT id FROM dr_heartbeat", "registry").split()}
    acked_before = {i for i, at in heartbeat.acked if at < target_epoch - 0.05}
    acked_after = {i for i, at in heartbeat.acked if at > target_epoch + 0.05}
    assert acked_before <= present and not acked_after & present
    assert report["rto_seconds"] <= RTO_OBJECTIVE
    assert report["rpo_seconds"] is not None and 0 <= report["rpo_seconds"] <= RPO_OBJECTIVE
    _record(
        "point_in_time_restore",
        {
            "rto_seconds": report["rto_seconds"],
            "rpo_seconds": report["rpo_seconds"],
            "target_time": target,
            "drill_seconds": time.monotonic() - started,
        },
    )


def _redis_snapshot(directory: Path) -> dict[str, str]:
    """A Redis of the drill's own, some agent state in it, snapshotted the way the state backup does."""
    port = _free_port()
    data = directory / "redis-source"
    data.mkdir()
    shutil.chown(data, "redis", "redis")
    server = subprocess.Popen(
        [
            "runuser",
            "-u",
            "redis",
            "--",
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        state = {f"chenu:dr:drill:{i}": secrets.token_hex(8) for i in range(100)}
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "the drill's Redis did not start"
            time.sleep(0.1)
        for key, value in state.items():
            subprocess.run(["redis-cli", "-p", str(port), "SET", key, value], capture_output=True, check=True)
        snapshots = directory / "state"
        snapshots.mkdir()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        subprocess.run(
            ["redis-cli", "-p", str(port), "--rdb", str(snapshots / f"redis-{stamp}.rdb")],
            capture_output=True,
            check=True,
        )
        return state
    finally:
        server.terminate()
        server.wait(timeout=10)


def _stop_region(base: Path) -> None:
    for pid_file in base.glob("runtime/*/runtime.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass
    redis_pid = base / "redis" / "redis.pid"
    if redis_pid.exists():
        try:
            os.kill(int(redis_pid.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass
    time.sleep(1)
    shutil.rmtree(base, ignore_errors=True)


def test_region_rebuild(backed_up_source, tmp_path):
    # site.yml's backup play starts it (supervisor program chenu-backup-s3); checked here, when the
    # test runs, not when pytest collects it before e2e has provisioned anything.
    assert _s3_up(), "the S3 stand-in of roles/backup (chenu-backup-s3, 127.0.0.1:9555) is not running"
    started = time.monotonic()
    state = _redis_snapshot(backed_up_source.base)
    with psycopg.connect(_registry_dsn(SOURCE["port"]), autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE dr_sample AS SELECT i AS id, md5(i::text) AS payload FROM generate_series(1, %s) i",
            (SAMPLE_ROWS,),
        )
        connection.execute(HEARTBEAT_TABLE)
        heartbeat = Heartbeat(_registry_dsn(SOURCE["port"]))
        heartbeat.start()
        time.sleep(2)
    backed_up_source.pgbackrest("check")  # the WAL so far reaches both repositories
    # The region fails: the primary, its disks and its local repository with it.
    failed_at = time.time()
    subprocess.run(["pg_ctlcluster", VERSION, SOURCE["cluster"], "stop", "-m", "immediate"], check=True)
    heartbeat.stop()
    shutil.rmtree(backed_up_source.base / "repo", ignore_errors=True)
    region_dir = backed_up_source.base / "region"
    runtime_port = _free_port()
    redis_port = _free_port()
    try:
        report_file = tmp_path / "region.json"
        _playbook(
            "dr_region_rebuild",
            tmp_path,
            {
                "dr_primary": SOURCE,
                "dr_failed_at": failed_at,
                "dr_report_file": str(report_file),
                "dr_integrity_databases": ["registry"],
                "dr_region": {
                    "base_dir": str(region_dir),
                    "postgresql": {
                        **REGION,
                        "stanza": STANZA,
                        "config": str(backed_up_source.config),
                        "repo": 2,
                        "auth_from": SOURCE["cluster"],
                    },
                    "redis": {"port": redis_port, "snapshot_dir": str(backed_up_source.base / "state"), "password": ""},
                    "runtime": {
                        "slots": [
                            {
                                "agent": "legal_info",
                                "slot": "dr",
                                "port": runtime_port,
                                "llm_chain": ["scripted/legal_info"],
                            }
                        ]
                    },
                },
            },
        )
        report = json.loads(report_file.read_text())
        assert _psql(REGION["port"], "SELECT count(*) FROM dr_sample", "registry") == str(SAMPLE_ROWS)
        lost, lost_span = _lost(heartbeat, REGION["port"], failed_at)
        restored = {
            key: subprocess.run(
                ["redis-cli", "-p", str(redis_port), "GET", key], capture_output=True, text=True
            ).stdout.strip()
            for key in state
        }
        assert restored == state
        ready = requests.get(f"http://127.0.0.1:{runtime_port}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        answer = requests.post(
            f"http://127.0.0.1:{runtime_port}/v1/tasks",
            json={"input": "Délai pour publier une hypothèque légale?"},
            headers={"Authorization": f"Bearer {local_secret('runtime_caller')}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    finally:
        _stop_region(region_dir)
    assert report["rto_seconds"] <= RTO_OBJECTIVE
    assert report["rpo_seconds"] is not None and report["rpo_seconds"] <= RPO_OBJECTIVE
    _record(
        "region_rebuild",
        {
            "rto_seconds": report["rto_seconds"],
            "rpo_seconds": report["rpo_seconds"],
            "postgresql_rpo_seconds": report["postgresql_rpo_seconds"],
            "redis_rpo_seconds": report["redis_rpo_seconds"],
            "lost_heartbeats": lost,
            "lost_heartbeat_span_seconds": lost_span,
            "drill_seconds": time.monotonic() - started,
        },
    )
