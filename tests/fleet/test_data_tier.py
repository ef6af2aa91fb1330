"""The data tier on the fleet: PostgreSQL streams to a replica on another host, RabbitMQ runs as a
three-node cluster whose quorum queues survive a node lost, Redis replicates to a second host."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
import requests

from tests.fleet.conftest import record_timing
from tests.fleet.fleet import address, group, podman, psql, secret, sh, wait_until

pytestmark = pytest.mark.fleet


# PostgreSQL --------------------------------------------------------------------------------------------


def test_replica_on_another_host_streams_from_the_primary(fleet):
    primary, replica = group("postgresql")[0], group("postgresql_replica")[0]
    rows = psql(primary, "SELECT application_name, client_addr, state, sync_state FROM pg_stat_replication")
    streaming = [row.split("|") for row in rows.splitlines()]
    assert [replica, address(replica), "streaming"] in [r[:3] for r in streaming], streaming
    assert psql(replica, "SELECT pg_is_in_recovery()") == "t"
    assert psql(primary, "SELECT pg_is_in_recovery()") == "f"


def test_a_write_on_the_primary_is_read_on_the_replica(fleet):
    primary, replica = group("postgresql")[0], group("postgresql_replica")[0]
    token = uuid.uuid4().hex
    psql(primary, "CREATE TABLE IF NOT EXISTS fleet_probe (token text PRIMARY KEY, at timestamptz DEFAULT now())")
    try:
        written = time.monotonic()
        psql(primary, f"INSERT INTO fleet_probe (token) VALUES ('{token}')")  # noqa: S608 (a uuid)
        wait_until(
            lambda: psql(replica, f"SELECT count(*) FROM fleet_probe WHERE token = '{token}'") == "1",  # noqa: S608
            timeout=30,
            interval=0.1,
            what=f"the row {token} on {replica}",
        )
        record_timing("postgresql_replica_visible", time.monotonic() - written)
        # Read-only: a write on the replica is refused.
        refused = podman(
            "exec", replica, "runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-c",
            f"INSERT INTO fleet_probe (token) VALUES ('{token}-replica')", check=False,  # noqa: S608
        )  # fmt: skip
        assert refused.returncode != 0 and "read-only transaction" in refused.stderr, refused.stderr
    finally:
        psql(primary, "DROP TABLE IF EXISTS fleet_probe")


def test_the_database_endpoint_on_the_virtual_address_reaches_the_primary(fleet):
    from tests.fleet.fleet import group_vars

    endpoint = group_vars("all")["fleet_virtual_address"]
    with psycopg.connect(
        host=endpoint, port=6432, dbname="registry", user="registry",
        password=secret("postgresql_registry"), connect_timeout=10,
    ) as conn:  # fmt: skip
        in_recovery, server = conn.execute("SELECT pg_is_in_recovery(), inet_server_addr()::text").fetchone()
    assert in_recovery is False
    assert server.split("/")[0] == address(group("postgresql")[0])


# RabbitMQ ----------------------------------------------------------------------------------------------

VHOST = "chenu"


def _api(host: str) -> str:
    return f"http://{address(host)}:15672/api"


def _auth() -> tuple[str, str]:
    return ("chenu-admin", secret("rabbitmq_admin"))


def _cluster_status(host: str) -> dict:
    return json.loads(sh(host, "rabbitmqctl cluster_status --formatter json"))


def test_rabbitmq_runs_as_one_cluster_of_three(fleet):
    nodes = sorted(f"rabbit@{host}" for host in group("rabbitmq"))
    assert len(nodes) == 3
    for host in group("rabbitmq"):
        status = _cluster_status(host)
        assert sorted(status["running_nodes"]) == nodes, (host, status["running_nodes"])
        assert sorted(status["disk_nodes"]) == nodes, (host, status["disk_nodes"])


def _publish(host: str, queue: str, body: str) -> None:
    response = requests.post(
        f"{_api(host)}/exchanges/{VHOST}/amq.default/publish",
        json={"properties": {"delivery_mode": 2}, "routing_key": queue, "payload": body, "payload_encoding": "string"},
        auth=_auth(),
        timeout=10,
    )
    response.raise_for_status()
    assert response.json()["routed"] is True, response.text


def _drain(host: str, queue: str, count: int) -> list[str]:
    response = requests.post(
        f"{_api(host)}/queues/{VHOST}/{queue}/get",
        json={"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"},
        auth=_auth(),
        timeout=30,
    )
    response.raise_for_status()
    return [message["payload"] for message in response.json()]


def test_a_quorum_queue_survives_its_leader_killed(fleet):
    hosts = group("rabbitmq")
    queue = f"fleet.test.{uuid.uuid4().hex[:8]}"
    url = f"{_api(hosts[0])}/queues/{VHOST}/{queue}"
    created = requests.put(
        url, json={"durable": True, "arguments": {"x-queue-type": "quorum"}}, auth=_auth(), timeout=10
    )
    created.raise_for_status()
    killed = None
    try:
        info = wait_until(
            lambda: (q := requests.get(url, auth=_auth(), timeout=10).json()).get("members") and q,
            timeout=30,
            what=f"{queue} with its members",
        )
        assert sorted(info["members"]) == sorted(f"rabbit@{h}" for h in hosts), info["members"]
        before = [f"before-{n}" for n in range(20)]
        for body in before:
            _publish(hosts[0], queue, body)

        killed = info["leader"].split("@", 1)[1]
        survivor = next(h for h in hosts if h != killed)
        podman("kill", killed)
        lost = time.monotonic()
        # A new leader is elected among the two left: publishing works again through a survivor.
        wait_until(
            lambda: _publish(survivor, queue, "after-0") is None,
            timeout=30,
            interval=0.2,
            what=f"a publish to {queue} with {killed} down",
        )
        record_timing("rabbitmq_publish_back_after_leader_killed", time.monotonic() - lost)
        after = ["after-0"] + [f"after-{n}" for n in range(1, 20)]
        for body in after[1:]:
            _publish(survivor, queue, body)
        got = _drain(survivor, queue, len(before) + len(after) + 5)
        assert got == before + after
        new_leader = requests.get(f"{_api(survivor)}/queues/{VHOST}/{queue}", auth=_auth(), timeout=10).json()["leader"]
        assert new_leader != info["leader"]
    finally:
        if killed:
            podman("start", killed)
            sh(killed, "service rabbitmq-server start", timeout=180)
            wait_until(
                lambda: len(_cluster_status(killed)["running_nodes"]) == 3,
                timeout=120,
                interval=2,
                what=f"{killed} back in the cluster",
            )
        requests.delete(url, auth=_auth(), timeout=10)


# Redis -------------------------------------------------------------------------------------------------


def test_redis_replicates_to_its_second_host(fleet):
    master, replica = group("redis")[0], group("redis")[1]
    password = secret("redis")

    def cli(host: str, *command: str) -> str:
        done = podman("exec", "-e", f"REDISCLI_AUTH={password}", host, "redis-cli", "--no-auth-warning", *command)
        return done.stdout.strip()

    info = cli(replica, "INFO", "replication")
    assert "role:slave" in info and "master_link_status:up" in info, info
    assert f"connected_slaves:{len(group('redis')) - 1}" in cli(master, "INFO", "replication")
    key, value = f"fleet:{uuid.uuid4().hex}", uuid.uuid4().hex
    cli(master, "SET", key, value, "EX", "60")
    try:
        assert wait_until(
            lambda: cli(replica, "GET", key) == value, timeout=10, interval=0.1, what=f"{key} on {replica}"
        )
        assert "READONLY" in cli(replica, "SET", key, "x")
    finally:
        cli(master, "DEL", key)
