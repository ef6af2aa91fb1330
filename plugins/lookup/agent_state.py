# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: agent_state
short_description: Read agent versions, their lifecycle states and audit trail from the registry
version_added: 0.2.0
description:
  - For a term C(agent), the agent's registered versions, lowest first, each with its state, digest,
    signing key id, bundle, capabilities, tools and times.
  - For a term C(agent:version), that version's state (null when it is not registered).
  - With O(audit), the last O(audit) entries of the audit trail of the agent (or of the version)
    instead, oldest first.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.registry
options:
  _terms:
    description: C(agent) or C(agent:version).
    required: true
    type: list
    elements: str
  audit:
    description: Return the last this many audit entries instead of versions or the state (0 for none).
    type: int
    default: 0
requirements:
  - chenu_agents (the Python package of this collection) and psycopg 3 on the controller
seealso:
  - module: chenu.agents.agent_lifecycle
"""

EXAMPLES = r"""
- name: Versions of legal_info and their states
  ansible.builtin.debug:
    msg: "{{ lookup('chenu.agents.agent_state', 'legal_info', registry=chenu_registry) }}"

- name: The state of one version
  ansible.builtin.debug:
    msg: "{{ lookup('chenu.agents.agent_state', 'legal_info:1.2.0', registry=chenu_registry) }}"

- name: The last ten entries of the agent's audit trail
  ansible.builtin.debug:
    msg: "{{ lookup('chenu.agents.agent_state', 'legal_info', registry=chenu_registry, audit=10) }}"
"""

RETURN = r"""
_raw:
  description:
    - One element per term. For C(agent), a list of versions (version, state, digest, key_id, bundle,
      capabilities, tools, registered_at, state_changed_at). For C(agent:version), its state string or
      null. With O(audit), a list of audit entries (id, at, actor, agent, version, action, from_state,
      to_state, reason, run_id, details).
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.module_utils.basic import missing_required_lib
from ansible.plugins.lookup import LookupBase
from ansible_collections.chenu.agents.plugins.module_utils.common import HAS_CHENU_AGENTS, ChenuError
from ansible_collections.chenu.agents.plugins.module_utils.registry import (
    REGISTRY_OPTIONS,
    open_registry,
    registry_errors,
)


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if not HAS_CHENU_AGENTS:
            raise AnsibleLookupError(missing_required_lib("chenu_agents"))
        self.set_options(var_options=variables, direct=kwargs)
        options = self.get_option("registry") or {}
        unknown = sorted(set(options) - set(REGISTRY_OPTIONS))
        if unknown:
            raise AnsibleLookupError(f"registry: unknown fields {unknown}; known: {', '.join(REGISTRY_OPTIONS)}")
        audit = self.get_option("audit")
        out = []
        try:
            with open_registry(options) as registry, registry_errors():
                for term in terms:
                    agent, _sep, version = str(term).partition(":")
                    if audit:
                        out.append([e.to_dict() for e in registry.audit(agent, version or None, limit=audit)])
                    elif version:
                        record = registry.version(agent, version)
                        out.append(record.state if record else None)
                    else:
                        out.append([v.to_dict() for v in registry.versions(agent)])
        except ChenuError as exc:
            raise AnsibleLookupError(str(exc)) from None
        return out
