"""The lifecycle registry in PostgreSQL (psycopg 3): agents, versions, and an append-only audit trail.

The schema is migrated on first use: `migrations/NNNN_*.sql`, shipped in the package, applied in order
in one transaction under an advisory lock and recorded with their sha256 in `schema_migrations`; an
applied migration whose file changed afterwards is refused. The audit table refuses UPDATE, DELETE and
TRUNCATE in the database itself (a trigger), whoever connects.

Every write to one agent happens inside `locked(agent)`: a transaction holding the agent's row
`FOR UPDATE`, so that concurrent transitions of one agent serialize and each writes its audit row in
the same transaction as the state it sets.

The release lock (`release_locks`, migration 0002): one lease per agent, held by the run that moves
its traffic (release.yml, rollback.yml), so that two such runs never interleave. `acquire_release_lock`
takes it atomically (INSERT ... ON CONFLICT DO NOTHING, else over a lease that expired, or forced,
either of which writes an audit row naming the previous holder), `renew_release_lock` pushes its expiry
back, `free_release_lock` frees it for its holder only. A killed run's lease blocks until it expires.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from . import semver
from .errors import ChenuError, Problem
from .safeload import check_agent_name

MIGRATION_LOCK = 0x63686E75  # "chnu": pg_advisory_xact_lock key of the migrator
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
CONNECTION_KEYS = ("host", "port", "dbname", "user", "password", "sslmode", "connect_timeout")


class RegistryError(ChenuError):
    """The registry cannot be reached, migrated or read."""


class ReleaseLockError(RegistryError):
    """The release lock is not this run's to renew or free."""


class ReleaseLockHeld(ReleaseLockError):
    """Another run holds the agent's release lock."""


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("chenu_agents").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.number)
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RegistryError(f"migrations must be numbered 0001, 0002... without gaps; found {numbers}")
    return found


@dataclass(frozen=True)
class VersionRecord:
    agent: str
    version: str
    digest: str
    key_id: str | None
    bundle: str | None
    capabilities: list[str] | None
    tools: list[str] | None
    state: str
    registered_at: datetime
    state_changed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["registered_at"] = self.registered_at.isoformat()
        out["state_changed_at"] = self.state_changed_at.isoformat()
        return out


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    agent: str
    version: str | None
    action: str
    from_state: str | None
    to_state: str | None
    reason: str | None
    run_id: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["at"] = self.at.isoformat()
        return out


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ReleaseLock:
    """A lease on an agent's releases: who holds it (run id), as whom, from which playbook, until when."""

    agent: str
    holder: str
    actor: str
    playbook: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("acquired_at", "renewed_at", "expires_at"):
            out[key] = _utc(out[key])
        return out

    def describe(self) -> str:
        return (
            f"run {self.holder} ({self.actor}, {self.playbook}) since {_utc(self.acquired_at)},"
            f" lease until {_utc(self.expires_at)}"
        )


@dataclass(frozen=True)
class LockOutcome:
    """What a release-lock request did: the lease after it (None once freed), the one before, and
    `taken_over` ("expired" or "forced") when it replaced another run's lease."""

    lock: ReleaseLock | None
    previous: ReleaseLock | None
    changed: bool
    taken_over: str | None = None
    audit_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lock": self.lock.to_dict() if self.lock else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "changed": self.changed,
            "taken_over": self.taken_over,
            "audit_id": self.audit_id,
        }


_LOCK_COLUMNS = "agent, holder, actor, playbook, acquired_at, renewed_at, expires_at"
_VERSION_COLUMNS = "agent, version, digest, key_id, bundle, capabilities, tools, state, registered_at, state_changed_at"
_AUDIT_COLUMNS = "id, at, actor, agent, version, action, from_state, to_state, reason, run_id, details"


def conninfo(settings: Mapping[str, Any] | str) -> str:
    """A libpq connection string from a DSN or a mapping (host, port, dbname, user, password...)."""
    from psycopg.conninfo import make_conninfo

    if isinstance(settings, str):
        return settings
    settings = dict(settings)
    dsn = settings.pop("dsn", None) or ""
    params = {k: str(v) for k, v in settings.items() if k in CONNECTION_KEYS and v not in (None, "")}
    params.setdefault("connect_timeout", "10")
    params.setdefault("application_name", "chenu_agents.registry")
    return make_conninfo(dsn, **params)


class Registry:
    """One connection to the registry database. Use as a context manager, or close()."""

    def __init__(self, settings: Mapping[str, Any] | str, *, migrate: bool = True):
        import psycopg
        from psycopg.rows import dict_row

        info = conninfo(settings)
        try:
            self.conn = psycopg.connect(info, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise RegistryError(
                f"cannot connect to the registry: {str(exc).strip()}",
                [Problem("(registry)", "registry", "a reachable PostgreSQL database and valid credentials")],
            ) from None
        self.applied: list[str] = []
        if migrate:
            self.applied = self.migrate()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema
    def _applied(self) -> dict[int, str]:
        exists = self.conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()["t"]
        if exists is None:
            return {}
        return {
            r["version"]: r["checksum"] for r in self.conn.execute("SELECT version, checksum FROM schema_migrations")
        }

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; the names applied now (empty when up to date)."""
        from .lifecycle import states

        wanted = migrations()
        applied = self._applied()
        if all(applied.get(m.number) == m.checksum for m in wanted) and self._states_synced():
            return []
        done = []
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = self._applied()
            for m in wanted:
                if m.number in applied:
                    if applied[m.number] != m.checksum:
                        raise RegistryError(
                            f"migration {m.name} was applied with another content (sha256 {applied[m.number]})",
                            [Problem(m.name, "(file)", "unchanged once applied: add a new migration instead")],
                        )
                    continue
                self.conn.execute(m.sql)
                self.conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.number, m.name, m.checksum),
                )
                done.append(m.name)
            for name in states():
                self.conn.execute("INSERT INTO lifecycle_states (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))
        return done

    def _states_synced(self) -> bool:
        from .lifecycle import states

        rows = self.conn.execute("SELECT name FROM lifecycle_states").fetchall()
        return set(states()) <= {r["name"] for r in rows}

    def schema_version(self) -> int:
        return max(self._applied(), default=0)

    # --- reads
    def agents(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("SELECT name FROM agents ORDER BY name")]

    def versions(self, agent: str) -> list[VersionRecord]:
        rows = self.conn.execute(_q("SELECT {} FROM versions WHERE agent = %s", _VERSION_COLUMNS), (agent,)).fetchall()
        return sorted((VersionRecord(**r) for r in rows), key=lambda v: semver.parse(v.version)._key())

    def version(self, agent: str, version: str) -> VersionRecord | None:
        row = self.conn.execute(
            _q("SELECT {} FROM versions WHERE agent = %s AND version = %s", _VERSION_COLUMNS), (agent, version)
        ).fetchone()
        return VersionRecord(**row) if row else None

    def previous_version(self, agent: str, version: str) -> VersionRecord | None:
        """The highest registered version of the agent below `version`."""
        lower = [v for v in self.versions(agent) if semver.compare(v.version, version) < 0]
        return lower[-1] if lower else None

    def audit(self, agent: str | None = None, version: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first; with `limit`, its last `limit` entries."""
        where, args = [], []
        if agent is not None:
            where.append("agent = %s")
            args.append(agent)
        if version is not None:
            where.append("version = %s")
            args.append(version)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        tail = f"LIMIT {int(limit)}" if limit else ""
        query = _q(
            "SELECT * FROM (SELECT {} FROM audit {} ORDER BY id DESC {}) t ORDER BY id", _AUDIT_COLUMNS, clause, tail
        )
        rows = self.conn.execute(query, args).fetchall()
        return [AuditEntry(**r) for r in rows]

    def last_audit(self, agent: str, version: str, action: str | None = None) -> AuditEntry | None:
        extra = " AND action = %s" if action else ""
        args = (agent, version, action) if action else (agent, version)
        row = self.conn.execute(
            _q(
                "SELECT {} FROM audit WHERE agent = %s AND version = %s{} ORDER BY id DESC LIMIT 1",
                _AUDIT_COLUMNS,
                extra,
            ),
            args,
        ).fetchone()
        return AuditEntry(**row) if row else None

    def first_audit(self, agent: str, version: str) -> AuditEntry | None:
        row = self.conn.execute(
            _q("SELECT {} FROM audit WHERE agent = %s AND version = %s ORDER BY id LIMIT 1", _AUDIT_COLUMNS),
            (agent, version),
        ).fetchone()
        return AuditEntry(**row) if row else None

    # --- writes
    @contextmanager
    def locked(self, agent: str) -> Iterator[Transaction]:
        """A transaction holding the agent's row FOR UPDATE (created on first use)."""
        check_agent_name(agent, file="(registry)", field="agent", error=RegistryError)
        with self.conn.transaction():
            self.conn.execute("INSERT INTO agents (name) VALUES (%s) ON CONFLICT DO NOTHING", (agent,))
            self.conn.execute("SELECT name FROM agents WHERE name = %s FOR UPDATE", (agent,))
            yield Transaction(self, agent)

    # --- the release lock
    def release_lock(self, agent: str) -> ReleaseLock | None:
        """The agent's release lease, expired or not (None when free)."""
        row = self.conn.execute(_q("SELECT {} FROM release_locks WHERE agent = %s", _LOCK_COLUMNS), (agent,)).fetchone()
        return ReleaseLock(**row) if row else None

    def acquire_release_lock(
        self,
        agent: str,
        holder: str,
        *,
        actor: str,
        playbook: str,
        ttl: float,
        force: bool = False,
        check_mode: bool = False,
    ) -> LockOutcome:
        """Take the agent's release lease for `ttl` seconds (again by its holder: renew it). Another run's
        lease is taken over only when it has expired or with `force` (an audit row names that run);
        otherwise ReleaseLockHeld says who holds it, since when, and how to force."""
        _check_ttl(ttl)
        outcome = None
        with self.locked(agent) as tx:
            row = self.conn.execute(
                _q(
                    "INSERT INTO release_locks (agent, holder, actor, playbook, expires_at)"
                    " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))"
                    " ON CONFLICT (agent) DO NOTHING RETURNING {}",
                    _LOCK_COLUMNS,
                ),
                (agent, holder, actor, playbook, ttl),
            ).fetchone()
            if row:
                outcome = LockOutcome(ReleaseLock(**row), None, True)
            else:
                current = self.conn.execute(
                    _q(
                        "SELECT {}, expires_at <= now() AS expired FROM release_locks WHERE agent = %s FOR UPDATE",
                        _LOCK_COLUMNS,
                    ),
                    (agent,),
                ).fetchone()
                expired = current.pop("expired")
                previous = ReleaseLock(**current)
                if previous.holder == holder:
                    outcome = LockOutcome(self._renew(agent, holder, ttl), previous, True)
                elif not (expired or force):
                    raise ReleaseLockHeld(
                        f"{agent}'s release lock is held by {previous.describe()}: another release or rollback of"
                        f" {agent} is under way. Wait for it to end; if that run is dead, take the lock over with"
                        " force (playbooks: -e release_lock_force=true; the takeover is recorded in the audit trail)"
                    )
                else:
                    why = "expired" if expired else "forced"
                    taken = self.conn.execute(
                        _q(
                            "UPDATE release_locks SET holder = %s, actor = %s, playbook = %s, acquired_at = now(),"
                            " renewed_at = now(), expires_at = now() + make_interval(secs => %s)"
                            " WHERE agent = %s RETURNING {}",
                            _LOCK_COLUMNS,
                        ),
                        (holder, actor, playbook, ttl, agent),
                    ).fetchone()
                    audit_id = tx.audit(
                        actor,
                        None,
                        "release_lock_takeover",
                        None,
                        None,
                        f"release lock taken over ({why}) from {previous.describe()}",
                        holder,
                        {"why": why, "previous": previous.to_dict(), "playbook": playbook},
                    )
                    outcome = LockOutcome(ReleaseLock(**taken), previous, True, why, audit_id)
            if check_mode:
                _rollback()
        return outcome

    def renew_release_lock(self, agent: str, holder: str, *, ttl: float, check_mode: bool = False) -> LockOutcome:
        """Push the lease's expiry to `ttl` seconds from now; only its holder may (ReleaseLockError otherwise:
        the lease was freed, or taken over after it expired or by force)."""
        _check_ttl(ttl)
        with self.locked(agent):
            previous = self._lock_for_update(agent)
            if previous is None or previous.holder != holder:
                raise ReleaseLockError(
                    f"{agent}'s release lock is not held by run {holder}: "
                    + (f"it is held by {previous.describe()}" if previous else "it is free")
                    + " (taken over, or freed); this run no longer owns the agent's releases"
                )
            outcome = LockOutcome(self._renew(agent, holder, ttl), previous, True)
            if check_mode:
                _rollback()
        return outcome

    def free_release_lock(self, agent: str, holder: str, *, check_mode: bool = False) -> LockOutcome:
        """Free the lease. Only its holder may (ReleaseLockError otherwise); freeing a free lock changes nothing."""
        with self.locked(agent):
            previous = self._lock_for_update(agent)
            if previous is None:
                return LockOutcome(None, None, False)
            if previous.holder != holder:
                raise ReleaseLockError(
                    f"{agent}'s release lock is held by {previous.describe()}, not by run {holder}:"
                    " only its holder frees it (a dead run's lease expires, or is taken over with force)"
                )
            self.conn.execute("DELETE FROM release_locks WHERE agent = %s AND holder = %s", (agent, holder))
            if check_mode:
                _rollback()
        return LockOutcome(None, previous, True)

    def _lock_for_update(self, agent: str) -> ReleaseLock | None:
        row = self.conn.execute(
            _q("SELECT {} FROM release_locks WHERE agent = %s FOR UPDATE", _LOCK_COLUMNS), (agent,)
        ).fetchone()
        return ReleaseLock(**row) if row else None

    def _renew(self, agent: str, holder: str, ttl: float) -> ReleaseLock:
        row = self.conn.execute(
            _q(
                "UPDATE release_locks SET renewed_at = now(), expires_at = now() + make_interval(secs => %s)"
                " WHERE agent = %s AND holder = %s RETURNING {}",
                _LOCK_COLUMNS,
            ),
            (ttl, agent, holder),
        ).fetchone()
        return ReleaseLock(**row)


class Transaction:
    """Writes to one agent, inside `Registry.locked`."""

    def __init__(self, registry: Registry, agent: str):
        self.registry, self.agent, self.conn = registry, agent, registry.conn

    def version(self, version: str) -> VersionRecord | None:
        return self.registry.version(self.agent, version)

    def insert_version(self, version: str, *, state: str, digest: str, **facts: Any) -> None:
        from psycopg.types.json import Jsonb

        self.conn.execute(
            "INSERT INTO versions (agent, version, digest, key_id, bundle, capabilities, tools, state)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.agent,
                version,
                digest,
                facts.get("key_id"),
                facts.get("bundle"),
                _json(Jsonb, facts.get("capabilities")),
                _json(Jsonb, facts.get("tools")),
                state,
            ),
        )

    def update_facts(self, version: str, **facts: Any) -> None:
        from psycopg.types.json import Jsonb

        columns = [k for k in ("digest", "key_id", "bundle", "capabilities", "tools") if k in facts]
        if not columns:
            return
        values = [_json(Jsonb, facts[k]) if k in ("capabilities", "tools") else facts[k] for k in columns]
        sets = ", ".join(f"{k} = %s" for k in columns)
        self.conn.execute(
            _q("UPDATE versions SET {} WHERE agent = %s AND version = %s", sets), (*values, self.agent, version)
        )

    def set_state(self, version: str, state: str) -> None:
        self.conn.execute(
            "UPDATE versions SET state = %s, state_changed_at = now() WHERE agent = %s AND version = %s",
            (state, self.agent, version),
        )

    def delete_version(self, version: str) -> None:
        self.conn.execute("DELETE FROM versions WHERE agent = %s AND version = %s", (self.agent, version))

    def audit(
        self,
        actor: str,
        version: str | None,
        action: str,
        from_state: str | None,
        to_state: str | None,
        reason: str | None,
        run_id: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        from psycopg.types.json import Jsonb

        row = self.conn.execute(
            "INSERT INTO audit (actor, agent, version, action, from_state, to_state, reason, run_id, details)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (actor, self.agent, version, action, from_state, to_state, reason, run_id, Jsonb(dict(details or {}))),
        ).fetchone()
        return row["id"]


def _q(template: str, *parts: str) -> Any:
    """A query from fixed fragments of this module (column lists, clauses built from constants)."""
    from psycopg import sql

    return sql.SQL(template).format(*(sql.SQL(p) for p in parts))


def _check_ttl(ttl: float) -> None:
    if not ttl or ttl <= 0:
        raise ReleaseLockError(
            f"the lease must last some time (ttl {ttl})", [Problem("(task)", "ttl", "seconds, more than 0")]
        )


def _rollback() -> None:
    """Undo the enclosing transaction (check mode): psycopg rolls back on this exception and swallows it."""
    from psycopg import Rollback

    raise Rollback()


def _json(wrap: Any, value: Any) -> Any:
    return None if value is None else wrap(value)
