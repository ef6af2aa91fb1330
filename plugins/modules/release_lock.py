#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_lock
short_description: Take, renew or free an agent's release lock in the lifecycle registry
version_added: 0.2.0
description:
  - One release at a time per agent. The lock is a lease in the lifecycle registry (PostgreSQL, table
    C(release_locks)) held by one run (O(holder), the playbook run or AWX job), with who (O(actor)),
    from which playbook, since when and until when. C(playbooks/release.yml) and C(playbooks/rollback.yml)
    take it before anything else and free it at their end, failed or not.
  - O(state=present) takes the lease atomically. Another run's lease is taken over only when it has
    expired or with O(force=true); otherwise the task fails naming the holder, since when, from which
    playbook and run, and how to force. A takeover writes an audit row (action C(release_lock_takeover))
    naming the previous holder. Taking it again as its holder renews it.
  - O(state=renewed) pushes the holder's lease back to O(ttl) seconds from now, and fails when this run
    no longer holds it (taken over, or freed).
  - O(state=absent) frees it. Only its holder may; freeing a free lock changes nothing.
  - A run killed before it frees its lease blocks the agent's releases until the lease expires.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
  - chenu.agents.registry
options:
  agent:
    description: Agent id.
    type: str
    required: true
  state:
    description: V(present) takes (or renews) the lease, V(renewed) renews it, V(absent) frees it.
    type: str
    choices: [present, renewed, absent]
    default: present
  holder:
    description: The run holding the lease (the release's run id, or the AWX job).
    type: str
    required: true
  actor:
    description: Who runs it; recorded with the lease. Defaults to the AWX user (C(AWX_USER_NAME)), else the login name.
    type: str
  playbook:
    description: The playbook taking the lease; recorded with it.
    type: str
    default: unknown
  ttl:
    description:
      - Seconds the lease lasts from now (O(state=present) or O(state=renewed)). Long enough for the run,
        or renewed during it; short enough that a killed run does not block the agent for long.
    type: float
    default: 7200
  force:
    description: Take over another run's lease that has not expired (recorded in the audit trail).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Says whether the lease would be taken, renewed or freed (and fails as the real run would), writes nothing.
  diff_mode:
    support: full
    details: The lease before and after.
  idempotent:
    support: partial
    details:
      - O(state=absent) on a free lock changes nothing. O(state=present) and O(state=renewed) always push
        the expiry back, and report a change.
requirements:
  - chenu_agents (the Python package of this collection) and psycopg 3 on the host that runs the task
seealso:
  - module: chenu.agents.agent_lifecycle
"""

EXAMPLES = r"""
- name: Take legal_info's release lock for two hours
  chenu.agents.release_lock:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    holder: "{{ release_run.run_id }}"
    playbook: playbooks/release.yml
    ttl: 7200

- name: Renew it before a long canary step
  chenu.agents.release_lock:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    holder: "{{ release_run.run_id }}"
    state: renewed
    ttl: 10800

- name: Take it over from a run that died (recorded in the audit trail)
  chenu.agents.release_lock:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    holder: "{{ release_run.run_id }}"
    force: true

- name: Free it
  chenu.agents.release_lock:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    holder: "{{ release_run.run_id }}"
    state: absent
"""

RETURN = r"""
agent:
  description: Agent id.
  returned: always
  type: str
lock:
  description: The lease after the task (null once freed) - agent, holder, actor, playbook, acquired_at, renewed_at, expires_at (UTC, ISO 8601).
  returned: success
  type: dict
  sample: {agent: legal_info, holder: release-20260101T020000-42, actor: ops, playbook: playbooks/release.yml,
           acquired_at: "2026-01-01T02:00:00Z", renewed_at: "2026-01-01T02:00:00Z", expires_at: "2026-01-01T04:00:00Z"}
previous:
  description: The lease before the task (null when the lock was free).
  returned: success
  type: dict
taken_over:
  description: C(expired) or C(forced) when another run's lease was taken over, else null.
  returned: success
  type: str
audit_id:
  description: Id of the audit row recording a takeover; null otherwise.
  returned: success
  type: int
migrations:
  description: Registry schema migrations applied by this run (empty when the schema was up to date).
  returned: success
  type: list
  elements: str
error:
  description: On failure, the error class - C(ReleaseLockHeld) (another run holds it), C(ReleaseLockError) (not this run's lease).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module
from ansible_collections.chenu.agents.plugins.module_utils.registry import (
    REGISTRY_SPEC,
    open_registry,
    registry_errors,
)


def ensure(module):
    from chenu_agents.lifecycle import default_actor

    p = module.params
    agent, holder, check = p["agent"], p["holder"], module.check_mode
    with open_registry(p["registry"]) as registry, registry_errors():
        if p["state"] == "present":
            outcome = registry.acquire_release_lock(
                agent,
                holder,
                actor=p["actor"] or default_actor(),
                playbook=p["playbook"],
                ttl=p["ttl"],
                force=p["force"],
                check_mode=check,
            )
        elif p["state"] == "renewed":
            outcome = registry.renew_release_lock(agent, holder, ttl=p["ttl"], check_mode=check)
        else:
            outcome = registry.free_release_lock(agent, holder, check_mode=check)
        result = dict(outcome.to_dict(), agent=agent, migrations=registry.applied)
    if module._diff:
        result["diff"] = dict(
            before_header=f"{agent} release lock",
            after_header=f"{agent} release lock",
            before=result["previous"] or {},
            after=result["lock"] or {},
        )
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            registry=REGISTRY_SPEC,
            agent=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "renewed", "absent"], default="present"),
            holder=dict(type="str", required=True),
            actor=dict(type="str"),
            playbook=dict(type="str", default="unknown"),
            ttl=dict(type="float", default=7200),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure)


if __name__ == "__main__":
    main()
