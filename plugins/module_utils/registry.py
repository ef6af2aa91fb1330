# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry connection option group (doc fragment chenu.agents.registry), shared by the modules and
the lookup that read or write the lifecycle registry."""

from __future__ import annotations

from contextlib import contextmanager

REGISTRY_OPTIONS = dict(
    host=dict(type="str"),
    port=dict(type="int"),
    dbname=dict(type="str"),
    user=dict(type="str"),
    password=dict(type="str", no_log=True),
    dsn=dict(type="str", no_log=True),
    sslmode=dict(type="str"),
    connect_timeout=dict(type="int", default=10),
)

REGISTRY_SPEC = dict(type="dict", required=True, no_log=False, options=REGISTRY_OPTIONS)


def registry_settings(options):
    """Connection settings for chenu_agents.registry.Registry: a DSN, overridden by the fields given."""
    return {k: v for k, v in dict(options or {}).items() if k in REGISTRY_OPTIONS and v not in (None, "")}


def open_registry(options):
    """A migrated Registry (the schema is brought up to date on first use)."""
    from chenu_agents.registry import Registry

    return Registry(registry_settings(options))


@contextmanager
def registry_errors():
    """A database error inside becomes a RegistryError (one failure naming it), not a traceback."""
    import psycopg

    from chenu_agents.registry import RegistryError

    try:
        yield
    except psycopg.Error as exc:
        raise RegistryError(f"registry: {type(exc).__name__}: {str(exc).strip()}") from None
