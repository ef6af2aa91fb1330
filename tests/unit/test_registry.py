"""The registry against the real PostgreSQL: migrations, the append-only audit trail, transitions,
operations, refusals, and concurrent transitions on one agent that serialize without losing one."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import pytest

from chenu_agents import lifecycle
from chenu_agents.errors import LifecycleError
from chenu_agents.lifecycle import Request, apply
from chenu_agents.registry import Registry, RegistryError, migrations
from tests.pg import require, throwaway_database

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.fixture(autouse=True)
def registry_reachable():
    require()


@pytest.fixture(scope="module")
def settings():
    with throwaway_database() as db:
        yield db


@pytest.fixture
def registry(settings):
    with Registry(settings) as reg:
        yield reg


def register(reg: Registry, agent: str, version: str, digest: str = DIGEST, **kw) -> dict:
    return apply(
        reg, Request(agent, version, target="draft", digest=digest, key_id="k1", actor="tests", **kw)
    ).to_dict()


def go(reg: Registry, agent: str, version: str, *actions: str, **kw) -> list[dict]:
    return [apply(reg, Request(agent, version, action=a, actor="tests", run_id="r1", **kw)).to_dict() for a in actions]


def test_migrations_are_applied_once_and_recorded(settings):
    with Registry(settings) as first:
        rows = first.conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
        assert [r["name"] for r in rows] == [m.name for m in migrations()]
        assert [r["name"] for r in rows][:2] == ["0001_registry.sql", "0002_release_lock.sql"]
        assert first.schema_version() == len(rows)
    with Registry(settings) as again:
        assert again.applied == []  # idempotent
        states = {r["name"] for r in again.conn.execute("SELECT name FROM lifecycle_states")}
        assert states == set(lifecycle.states())


def test_a_changed_migration_is_refused(settings):
    with Registry(settings) as reg:
        reg.conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        try:
            with pytest.raises(RegistryError, match=r"0001_registry\.sql was applied with another content"):
                reg.migrate()
        finally:
            reg.conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = 1", (lifecycle_checksum(),))


def lifecycle_checksum() -> str:
    return migrations()[0].checksum


def test_unreachable_registry_names_the_option():
    with pytest.raises(RegistryError, match="cannot connect to the registry"):
        Registry({"host": "127.0.0.1", "port": 1, "dbname": "x", "user": "x", "connect_timeout": 2})


def test_the_audit_trail_refuses_update_delete_and_truncate(registry):
    import psycopg

    register(registry, "append_only", "1.0.0")
    for statement in ("UPDATE audit SET reason = 'rewritten'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            registry.conn.execute(statement)
    assert registry.audit("append_only")[-1].reason is None


def test_a_version_through_its_whole_life(registry):
    assert register(registry, "walker", "1.0.0", reason="first")["transition"] == {
        "action": "register",
        "from": None,
        "to": "draft",
    }
    outs = go(
        registry,
        "walker",
        "1.0.0",
        "validate",
        "reject",
        "validate",
        "approve",
        "rollback_to_testing",
        "approve",
        "deploy",
        "pause",
        "resume",
        "pause",
        "deprecate",
        "restore",
        "deprecate",
        "archive",
    )
    assert all(o["changed"] for o in outs)
    assert registry.version("walker", "1.0.0").state == "archived"
    trail = registry.audit("walker")
    assert [e.action for e in trail] == ["register", *(o["action"] for o in outs)]
    for before, after in itertools.pairwise(trail):
        assert after.from_state == before.to_state  # a consistent chain
    assert {e.actor for e in trail} == {"tests"} and trail[1].run_id == "r1" and trail[0].reason == "first"
    assert trail[0].details["digest"] == DIGEST

    clone = apply(registry, Request("walker", "1.0.0", action="clone", new_version="1.1.0", actor="tests"))
    assert (clone.version, clone.previous_state, clone.state) == ("1.1.0", "archived", "draft")
    assert registry.version("walker", "1.1.0").digest == DIGEST
    assert registry.version("walker", "1.0.0").state == "archived"
    again = apply(registry, Request("walker", "1.0.0", action="clone", new_version="1.1.0", actor="tests"))
    assert not again.changed and again.state == "draft"
    gone = go(registry, "walker", "1.0.0", "delete_permanent")[0]
    assert gone["changed"] and gone["state"] is None and registry.version("walker", "1.0.0") is None
    assert registry.audit("walker", "1.0.0")[-1].action == "delete_permanent"  # history kept


def test_refused_requests_write_nothing_and_name_the_allowed_actions(registry):
    register(registry, "refused", "1.0.0")
    before = len(registry.audit("refused"))
    with pytest.raises(LifecycleError) as err:
        go(registry, "refused", "1.0.0", "deploy")
    assert "refused 1.0.0 is draft: deploy is not allowed" in str(err.value)
    assert "edit, validate (to testing), delete" in str(err.value)
    with pytest.raises(LifecycleError, match="cannot go to active"):
        apply(registry, Request("refused", "1.0.0", target="active"))
    with pytest.raises(LifecycleError, match="not registered"):
        go(registry, "refused", "9.9.9", "validate")
    assert len(registry.audit("refused")) == before and registry.version("refused", "1.0.0").state == "draft"


def test_same_state_and_check_mode_change_nothing(registry):
    register(registry, "idem", "1.0.0")
    again = register(registry, "idem", "1.0.0")
    assert not again["changed"] and again["transition"] is None
    with pytest.raises(LifecycleError, match="already registered with digest"):
        register(registry, "idem", "1.0.0", digest=OTHER)
    same = apply(registry, Request("idem", "1.0.0", target="draft"))
    assert not same.changed and same.state == "draft"
    before = registry.audit("idem")
    check = apply(registry, Request("idem", "1.0.0", action="validate"), check_mode=True)
    assert check.changed and check.transition == {"action": "validate", "from": "draft", "to": "testing"}
    assert registry.version("idem", "1.0.0").state == "draft" and registry.audit("idem") == before
    new = apply(registry, Request("idem", "2.0.0", target="draft", digest=DIGEST), check_mode=True)
    assert new.changed and registry.version("idem", "2.0.0") is None


def test_operations(registry):
    register(registry, "ops", "1.0.0")
    edit = apply(registry, Request("ops", "1.0.0", action="edit", digest=OTHER, capabilities=["a"]))
    assert edit.changed and registry.version("ops", "1.0.0").digest == OTHER
    assert registry.audit("ops")[-1].details["changes"]["digest"] == {"from": DIGEST, "to": OTHER}
    assert not apply(registry, Request("ops", "1.0.0", action="edit", digest=OTHER)).changed
    go(registry, "ops", "1.0.0", "validate", "approve", "deploy")
    # scale is recorded (once per count asked for), then refused: nothing applies a replica count yet.
    for n in (3, 3, 5):
        with pytest.raises(LifecycleError, match=rf"scale is recorded but not applied.*replicas {n}"):
            apply(registry, Request("ops", "1.0.0", action="scale", details={"replicas": n}))
    scaled = [e for e in registry.audit("ops", "1.0.0") if e.action == "scale"]
    assert [(e.details["replicas"], e.details["applied"]) for e in scaled] == [(3, False), (5, False)]
    with pytest.raises(LifecycleError, match=r"details\.replicas"):
        go(registry, "ops", "1.0.0", "scale")
    hotfix = apply(registry, Request("ops", "1.0.0", action="hotfix", reason="CVE"))
    assert (hotfix.version, hotfix.state, hotfix.source_version) == ("1.0.1", "draft", "1.0.0")
    assert registry.version("ops", "1.0.0").state == "active"
    assert registry.first_audit("ops", "1.0.1").details["source_version"] == "1.0.0"
    assert apply(registry, Request("ops", "1.0.0", action="hotfix", new_version="1.0.1")).changed is False
    deleted = go(registry, "ops", "1.0.1", "delete")[0]
    assert deleted["state"] is None and registry.version("ops", "1.0.1") is None
    assert registry.previous_version("ops", "1.0.5").version == "1.0.0"


def test_concurrent_transitions_on_one_agent_serialize_and_none_is_lost(settings):
    """Threads, each with its own connection, toggle pause/resume and fire transitions at the same agent."""
    agent, threads_n, rounds = "busy", 8, 15
    with Registry(settings) as reg:
        register(reg, agent, "1.0.0")
        go(reg, agent, "1.0.0", "validate", "approve", "deploy")
        for v in ("2.0.0", "3.0.0"):
            register(reg, agent, v)
        start = len(reg.audit(agent))
    done: Counter = Counter()
    errors: list[str] = []
    barrier = threading.Barrier(threads_n)

    def worker(n: int) -> None:
        with Registry(settings) as mine:
            barrier.wait()
            for i in range(rounds):
                action = ("pause", "resume")[(n + i) % 2]
                try:
                    out = apply(mine, Request(agent, "1.0.0", action=action, actor=f"t{n}", run_id=f"t{n}-{i}"))
                    if out.changed:
                        done[action] += 1
                except LifecycleError:
                    done["refused"] += 1
                other = ("2.0.0", "3.0.0")[n % 2]
                try:
                    out = apply(mine, Request(agent, other, target=("testing", "draft")[i % 2], actor=f"t{n}"))
                    done["other"] += out.changed
                except LifecycleError as exc:
                    errors.append(str(exc))

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors
    with Registry(settings) as reg:
        trail = reg.audit(agent)[start:]
        assert len(trail) == done["pause"] + done["resume"] + done["other"]  # every change recorded, once
        assert Counter(e.action for e in trail if e.version == "1.0.0") == Counter(
            pause=done["pause"], resume=done["resume"]
        )
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            chain = [e for e in reg.audit(agent, version)]
            for before, after in itertools.pairwise(chain):
                assert after.from_state == before.to_state, (version, before, after)
            assert chain[-1].to_state == reg.version(agent, version).state
        assert abs(done["pause"] - done["resume"]) <= 1
        assert done["pause"] > 0, done
        print(dict(done))
