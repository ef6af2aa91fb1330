"""The release lock against the real PostgreSQL (a throwaway database): one winner among concurrent
takers, an expired lease taken over, a forced takeover recorded in the audit trail, and only the holder
renews or frees it."""

from __future__ import annotations

import threading
import time

import pytest

from chenu_agents.registry import Registry, ReleaseLockError, ReleaseLockHeld
from tests.pg import require, throwaway_database

AGENT = "legal_info"


@pytest.fixture(autouse=True)
def registry_reachable():
    require()


@pytest.fixture(scope="module")
def settings():
    with throwaway_database("chenu_test_release_lock") as db:
        yield db


@pytest.fixture
def registry(settings):
    with Registry(settings) as reg:
        reg.conn.execute("DELETE FROM release_locks")
        yield reg


def take(reg: Registry, holder: str, ttl: float = 60, **kw):
    return reg.acquire_release_lock(AGENT, holder, actor="tests", playbook="release.yml", ttl=ttl, **kw)


def test_concurrent_takers_exactly_one_wins(settings, registry):
    takers = 8
    barrier = threading.Barrier(takers)
    won, refused, errors = [], [], []

    def attempt(i: int) -> None:
        try:
            with Registry(settings) as reg:
                barrier.wait(10)
                take(reg, f"run-{i}")
                won.append(f"run-{i}")
        except ReleaseLockHeld as exc:
            refused.append(str(exc))
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(won) == 1 and len(refused) == takers - 1, (won, refused)
    assert registry.release_lock(AGENT).holder == won[0]
    assert all(f"held by run {won[0]} (tests, release.yml) since " in m for m in refused), refused


def test_the_refusal_says_who_since_when_and_how_to_force(registry):
    take(registry, "release-a")
    with pytest.raises(ReleaseLockHeld) as refused:
        take(registry, "rollback-b")
    message = str(refused.value)
    held = registry.release_lock(AGENT)
    assert f"since {held.to_dict()['acquired_at']}" in message and "release-a" in message
    assert "-e release_lock_force=true" in message and "audit trail" in message
    assert registry.release_lock(AGENT).holder == "release-a"  # nothing changed


def test_the_holder_takes_it_again_renews_and_frees_it(registry):
    first = take(registry, "run-1", ttl=60)
    again = take(registry, "run-1", ttl=600)
    assert again.taken_over is None and again.lock.acquired_at == first.lock.acquired_at
    assert again.lock.expires_at > first.lock.expires_at
    renewed = registry.renew_release_lock(AGENT, "run-1", ttl=900)
    assert renewed.lock.expires_at > again.lock.expires_at
    freed = registry.free_release_lock(AGENT, "run-1")
    assert freed.changed and freed.lock is None and registry.release_lock(AGENT) is None
    assert not registry.free_release_lock(AGENT, "run-1").changed  # free already: nothing to do


def test_only_the_holder_frees_or_renews_it(registry):
    take(registry, "run-1")
    with pytest.raises(ReleaseLockError, match=r"held by run run-1 .*, not by run run-2: only its holder frees it"):
        registry.free_release_lock(AGENT, "run-2")
    with pytest.raises(ReleaseLockError, match="not held by run run-2: it is held by run run-1"):
        registry.renew_release_lock(AGENT, "run-2", ttl=60)
    assert registry.release_lock(AGENT).holder == "run-1"


def test_an_expired_lease_is_taken_over_and_recorded(registry):
    take(registry, "killed-run", ttl=0.2)
    time.sleep(0.5)
    outcome = take(registry, "next-run")
    assert outcome.taken_over == "expired" and outcome.previous.holder == "killed-run"
    assert registry.release_lock(AGENT).holder == "next-run"
    row = registry.audit(AGENT)[-1]
    assert row.id == outcome.audit_id and row.action == "release_lock_takeover" and row.version is None
    assert row.run_id == "next-run" and row.details["why"] == "expired"
    assert row.details["previous"]["holder"] == "killed-run"
    with pytest.raises(ReleaseLockError, match="not held by run killed-run"):
        registry.renew_release_lock(AGENT, "killed-run", ttl=60)  # the dead run lost it


def test_force_takes_over_a_live_lease_and_the_audit_trail_says_so(registry):
    take(registry, "stuck-run", ttl=3600)
    outcome = take(registry, "operator-run", force=True)
    assert outcome.taken_over == "forced" and outcome.previous.holder == "stuck-run"
    row = registry.audit(AGENT)[-1]
    assert row.action == "release_lock_takeover" and "forced" in row.reason and "stuck-run" in row.reason


def test_check_mode_writes_nothing(registry):
    outcome = take(registry, "run-1", check_mode=True)
    assert outcome.changed and outcome.lock.holder == "run-1" and registry.release_lock(AGENT) is None
    take(registry, "run-1")
    audit_before = len(registry.audit(AGENT))
    assert take(registry, "run-2", force=True, check_mode=True).taken_over == "forced"
    assert registry.free_release_lock(AGENT, "run-1", check_mode=True).changed
    assert registry.release_lock(AGENT).holder == "run-1" and len(registry.audit(AGENT)) == audit_before


def test_a_lease_must_last(registry):
    with pytest.raises(ReleaseLockError, match="ttl"):
        take(registry, "run-1", ttl=0)
