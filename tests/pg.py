"""A throwaway database in the local PostgreSQL cluster, owned by the registry role.

Created as the `postgres` superuser over the local socket (peer authentication: root and postgres are
in the cluster's ident map, roles/postgresql) and dropped afterwards; the tests connect to it as the
`registry` role over TCP with the local inventory's generated password, the way the modules do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import REPO

SOCKET_DIR = "/var/run/postgresql"
SECRET = REPO / ".cache" / "local" / "secrets" / "postgresql_registry"


def unavailable() -> str | None:
    """Why the registry tests cannot run here, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    if not SECRET.is_file():
        return f"{SECRET} is missing (the local stack is not provisioned)"
    try:
        psycopg.connect(host=SOCKET_DIR, user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return f"no local PostgreSQL superuser access: {exc}"
    return None


def require() -> None:
    """Skip the calling test when the registry cannot be reached: asked when the test runs, not when it
    is collected, so the full suite runs these tests after its end-to-end part provisions the stack."""
    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)


@contextmanager
def throwaway_database(prefix: str = "chenu_test_registry") -> Iterator[dict]:
    """Yield registry connection settings for a fresh database `<prefix>_<pid>`, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{os.getpid()}"
    with psycopg.connect(host=SOCKET_DIR, user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER registry").format(sql.Identifier(name)))
    try:
        yield {
            "host": "127.0.0.1",
            "port": 5432,
            "dbname": name,
            "user": "registry",
            "password": SECRET.read_text().strip(),
        }
    finally:
        with psycopg.connect(host=SOCKET_DIR, user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
