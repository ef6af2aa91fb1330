#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_archive
short_description: Keep an archived agent version in the bundle store for its retention, and purge expired ones
version_added: 0.3.0
description:
  - With O(state=archived), keeps one version in the bundle store's archive (C(<store>/<agent>/<version>/))
    for the seed's retention of archived versions (5 years) - its bundle and signature (the file whose
    sha256 is the digest the registry holds, looked for in the registered bundle path, then O(search)),
    its audit trail as it stands (C(audit.json)) and C(manifest.json) (digest, key id, archived_at,
    expires_at, sha256 of every file). Written whole or not at all; a version already kept with the same
    digest changes nothing. C(playbooks/lifecycle.yml) runs it before the archive transition, so that a
    version whose bundle cannot be kept is not archived.
  - With O(state=purged), removes every kept version whose retention ran out (as of O(as_of)) - its
    directory, its registry row when the version is still archived - with one audit row (action
    C(purge)) per version. C(playbooks/archive_purge.yml) runs it on a schedule.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
  - chenu.agents.registry
options:
  state:
    description: Keep one version (V(archived)) or purge the expired ones (V(purged)).
    type: str
    choices: [archived, purged]
    default: archived
  store:
    description: The archive directory of the bundle store.
    type: path
    required: true
  agent:
    description: Agent id. Required with O(state=archived).
    type: str
  version:
    description: The version to keep. Required with O(state=archived).
    type: str
  search:
    description:
      - Paths or glob patterns where the version's bundle may be, after the registered bundle path (for
        instance the runtime slots' release directories, which keep the last releases of each slot).
    type: list
    elements: str
    default: []
  retention_days:
    description: Days to keep the version. Defaults to the seed's retention of archived versions (5 years).
    type: int
  as_of:
    description: O(state=purged) - the time retention is judged at (ISO 8601). Defaults to now.
    type: str
  actor:
    description: Who purges; recorded in the audit rows. Defaults to the AWX user, else the login name.
    type: str
  run_id:
    description: The run; recorded in the audit rows. Defaults to C(awx-job-<JOB_ID>) under AWX, else a generated id.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The versions kept in the store before and after.
  idempotent:
    support: full
requirements:
  - chenu_agents (the Python package of this collection) and psycopg 3 on the host that runs the task
seealso:
  - module: chenu.agents.agent_lifecycle
"""

EXAMPLES = r"""
- name: Keep legal_info 1.1.0 for its retention before archiving it
  chenu.agents.agent_archive:
    registry: "{{ chenu_registry }}"
    store: /var/lib/chenu-agents/documents/bundle-archive
    agent: legal_info
    version: 1.1.0
    search: ["/var/lib/chenu-agents/slots/legal_info/*/releases/*/agent.tar.zst"]

- name: Purge what outlived its retention
  chenu.agents.agent_archive:
    registry: "{{ chenu_registry }}"
    store: /var/lib/chenu-agents/documents/bundle-archive
    state: purged
"""

RETURN = r"""
directory:
  description: O(state=archived) - where the version is kept.
  returned: when O(state=archived)
  type: str
manifest:
  description: O(state=archived) - the kept version's manifest (digest, key_id, archived_at, expires_at, files).
  returned: when O(state=archived)
  type: dict
purged:
  description: O(state=purged) - the versions removed (agent, version, directory, expires_at, registry_row, audit_id).
  returned: when O(state=purged)
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module
from ansible_collections.chenu.agents.plugins.module_utils.registry import (
    REGISTRY_SPEC,
    open_registry,
    registry_errors,
)


def ensure(module):
    from datetime import datetime, timezone
    from pathlib import Path

    from chenu_agents import archive, lifecycle
    from chenu_agents.errors import LifecycleError, Problem

    p = module.params
    store = Path(p["store"])
    with open_registry(p["registry"]) as registry, registry_errors():
        if p["state"] == "archived":
            record = registry.version(p["agent"], p["version"])
            if record is None:
                raise LifecycleError(
                    f"{p['agent']} {p['version']} is not registered",
                    [Problem("(request)", "version", "a registered version")],
                )
            result = archive.archive_version(
                record,
                registry.audit(p["agent"], p["version"]),
                store,
                search=p["search"],
                retention_days=p["retention_days"],
                check_mode=module.check_mode,
            )
            if module._diff:
                result["diff"] = dict(before={"kept": not result["changed"]}, after={"kept": True})
            return result
        as_of = None
        if p["as_of"]:
            try:
                as_of = datetime.fromisoformat(p["as_of"])
            except ValueError:
                raise LifecycleError(
                    f"as_of {p['as_of']!r}", [Problem("(task)", "as_of", "an ISO 8601 time with its offset")]
                ) from None
            if as_of.tzinfo is None:
                as_of = as_of.replace(tzinfo=timezone.utc)
        before = sorted(f"{m['agent']} {m['version']}" for m in archive.kept(store))
        purged = archive.purge(
            registry,
            store,
            actor=p["actor"] or lifecycle.default_actor(),
            run_id=p["run_id"] or lifecycle.default_run_id(),
            now=as_of,
            check_mode=module.check_mode,
        )
        result = {"changed": bool(purged), "purged": purged}
        if module._diff:
            gone = {f"{m['agent']} {m['version']}" for m in purged}
            result["diff"] = dict(before={"kept": before}, after={"kept": [k for k in before if k not in gone]})
        return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            registry=REGISTRY_SPEC,
            state=dict(type="str", default="archived", choices=["archived", "purged"]),
            store=dict(type="path", required=True),
            agent=dict(type="str"),
            version=dict(type="str"),
            search=dict(type="list", elements="str", default=[]),
            retention_days=dict(type="int"),
            as_of=dict(type="str"),
            actor=dict(type="str"),
            run_id=dict(type="str"),
        ),
        required_if=[("state", "archived", ("agent", "version"))],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure)


if __name__ == "__main__":
    main()
