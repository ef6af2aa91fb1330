"""The lifecycle registry in PostgreSQL (psycopg 3): agents, versions, and an append-only audit trail.

The schema is migrated on first use: `migrations/NNNN_*.sql`, shipped in the package, applied in order
in one transaction under an advisory lock and recorded with their sha256 in `schema_migrations`; an
applied migration whose file changed afterwards is refused. The audit table refuses UPDATE, DELETE and
TRUNCATE in the database itself (a trigger), whoever connects.

Every write to one agent happens inside `locked(agent)`: a transaction holding the agent's row
`FOR UPDATE`, so that concurrent transitions of one agent serialize and each writes its audit row in
the same transaction as the state it sets.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from . import semver
from .errors import ChenuError, Problem

MIGRATION_LOCK = 0x63686E75  # "chnu": pg_advisory_xact_lock key of the migrator
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
CONNECTION_KEYS = ("host", "port", "dbname", "user", "password", "sslmode", "connect_timeout")


class RegistryError(ChenuError):
    """The registry cannot be reached, migrated or read."""


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
        with self.conn.transaction():
            self.conn.execute("INSERT INTO agents (name) VALUES (%s) ON CONFLICT DO NOTHING", (agent,))
            self.conn.execute("SELECT name FROM agents WHERE name = %s FOR UPDATE", (agent,))
            yield Transaction(self, agent)


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


def _json(wrap: Any, value: Any) -> Any:
    return None if value is None else wrap(value)
