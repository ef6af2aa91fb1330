#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_plan
short_description: Decide what a release of an agent version will do
version_added: 0.3.0
description:
  - Reads the agent's slots (weights and health from HAProxy's runtime API, the version each slot's
    runtime serves from its C(/metrics)) and, with the registry's states and the version built, decides
    the release, as C(playbooks/release.yml) does before anything changes.
  - A first release when no slot takes traffic (the candidate goes into the first slot); nothing to do,
    with the reason, when the version already serves, is older than what serves, or was already
    released (active, paused, deprecated or archived in the registry); otherwise the slot with the most
    weight stays stable and the other one receives the candidate.
  - It only reads; it never changes a weight, a slot or the registry.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  agent:
    description: Agent id.
    type: str
    required: true
  strategy:
    description: Release strategy.
    type: str
    choices: [canary, blue_green, feature_flag]
    default: canary
  version:
    description:
      - The candidate version (the one built and signed). Without it the module only reads the slots
        (RV(slots), RV(serving)), as C(playbooks/rollback.yml) does.
    type: str
  slots:
    description:
      - The agent's slots in the inventory's order (C(sandbox_runtime_slots) entries), each C({slot, port})
        or C({slot, url}) where C(url) is its runtime's base URL as this host reaches it (default
        C(http://<runtime_host>:<port>)). The first one receives a first release.
    type: list
    elements: dict
    required: true
  runtime_host:
    description: Address of the runtime host, for slots given by port.
    type: str
    default: 127.0.0.1
  registry_versions:
    description: The agent's versions and states in the registry (the C(chenu.agents.agent_state) lookup's list).
    type: list
    elements: dict
    default: []
  socket:
    description: HAProxy admin socket.
    type: path
    default: /run/haproxy/admin.sock
  haproxy_backend:
    description: HAProxy backend holding the slots' servers. Defaults to C(be_<agent>).
    type: str
  run_id:
    description: The release's run id, quoted in the summary.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: It only reads, in check mode as otherwise.
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - chenu_agents (the Python package of this collection)
  - access to the HAProxy admin socket (root or the C(haproxy) group)
seealso:
  - module: chenu.agents.traffic_split
"""

EXAMPLES = r"""
- name: Plan the release of legal_info 1.3.0
  chenu.agents.release_plan:
    agent: legal_info
    strategy: canary
    version: 1.3.0
    slots:
      - {slot: blue, port: 8101}
      - {slot: green, port: 8102}
    registry_versions: "{{ lookup('chenu.agents.agent_state', 'legal_info', registry=chenu_registry) }}"
  register: plan
"""

RETURN = r"""
slots:
  description: Each slot by name, C({slot, url, weight, status, up, version, digest}).
  returned: always
  type: dict
  sample: {blue: {slot: blue, url: "http://127.0.0.1:8101", weight: 100, status: UP, up: true, version: 1.2.0, digest: "sha256:..."}}
serving:
  description: The slot with the most weight among those that serve a version, or null when none takes traffic.
  returned: always
  type: str
  sample: blue
plan:
  description: The decision.
  returned: when O(version) is given
  type: dict
  contains:
    initial: {description: No slot takes traffic; the candidate will take it all., type: bool}
    skip: {description: Nothing to release., type: bool}
    skip_reason: {description: Why nothing is released (empty otherwise)., type: str}
    stable: {description: "The serving slot C({slot, url, weight, status, up, version, digest}), or null.", type: dict}
    candidate: {description: "The slot receiving the candidate, with the candidate's version.", type: dict}
    candidate_state: {description: "The candidate version's registry state, or null.", type: str}
    stable_state: {description: "The stable version's registry state, or null.", type: str}
    summary: {description: One sentence saying what the release will do., type: str}
  sample:
    agent: legal_info
    strategy: canary
    version: 1.3.0
    initial: false
    skip: false
    skip_reason: ""
    stable: {slot: blue, url: "http://127.0.0.1:8101", weight: 100, status: UP, up: true, version: 1.2.0, digest: "sha256:..."}
    candidate: {slot: green, url: "http://127.0.0.1:8102", weight: 0, status: UP, up: true, version: 1.3.0, digest: null}
    candidate_state: null
    stable_state: active
    summary: "canary release of legal_info 1.3.0 into slot green; 1.2.0 keeps serving from slot blue meanwhile."
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def work(module):
    from chenu_agents.release_plan import decide, read_slots, serving
    from chenu_agents.traffic import HAProxyTraffic

    p = module.params
    traffic = HAProxyTraffic(p["haproxy_backend"] or f"be_{p['agent']}", p["socket"])
    entries = [
        {"slot": str(e["slot"]), "url": e.get("url") or f"http://{p['runtime_host']}:{e['port']}"} for e in p["slots"]
    ]
    slots = read_slots(entries, traffic)
    serving_slot = serving(slots)
    result = {
        "changed": False,
        "slots": {s.slot: s.to_dict() for s in slots},
        "serving": serving_slot.slot if serving_slot else None,
    }
    if p["version"]:
        states = {str(v["version"]): str(v["state"]) for v in p["registry_versions"] if "version" in v and "state" in v}
        result["plan"] = decide(p["agent"], p["strategy"], p["version"], slots, states).to_dict(p["run_id"])
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent=dict(type="str", required=True),
            strategy=dict(type="str", default="canary", choices=["canary", "blue_green", "feature_flag"]),
            version=dict(type="str"),
            slots=dict(type="list", elements="dict", required=True),
            runtime_host=dict(type="str", default="127.0.0.1"),
            registry_versions=dict(type="list", elements="dict", default=[]),
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            haproxy_backend=dict(type="str"),
            run_id=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, work)


if __name__ == "__main__":
    main()
