# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  registry:
    description:
      - How to reach the lifecycle registry (PostgreSQL). The local inventory sets C(chenu_registry)
        (C(inventories/local/group_vars/all/database.yml)); pass it whole. A field left out takes libpq's
        default (or the value in O(registry.dsn)).
      - The registry's schema is migrated on first use (versioned migrations shipped in the package,
        recorded in its C(schema_migrations) table).
    type: dict
    required: true
    suboptions:
      host:
        description: Server host name or address, or the directory of its Unix socket.
        type: str
      port:
        description: Server port.
        type: int
      dbname:
        description: Registry database.
        type: str
      user:
        description: Role to connect as.
        type: str
      password:
        description: Password of O(registry.user).
        type: str
      dsn:
        description:
          - A libpq connection string or URI; the other fields, when given, override its parts.
        type: str
      sslmode:
        description: libpq C(sslmode).
        type: str
      connect_timeout:
        description: Seconds to wait for a connection.
        type: int
        default: 10
requirements:
  - chenu_agents (the Python package of this collection) and psycopg 3 on the host that runs the task
"""
