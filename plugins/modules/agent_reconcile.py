#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_reconcile
short_description: Make the runtime slots and load balancers serving an agent follow its lifecycle states
version_added: 0.3.0
description:
  - Carries the registry's lifecycle states of an agent's versions (the RV(chenu.agents.agent_lifecycle#module:serving)
    view that M(chenu.agents.agent_lifecycle) returns) to what serves them, on the host it runs on.
  - With O(target=slots) (a runtime host), for each slot of O(agent) it reads the version the slot holds,
    its state file and what the runtime reports (C(GET /admin/status)); writes the state file the
    registry's state means (paused with the fallback agent, deprecated with the replacement, the
    Deprecation and Sunset dates once announced, the roles that may call a version not yet deployed);
    starts a slot whose version must serve and does not run; and waits until the runtime reports the
    state. With O(stop=true), a slot whose version is deprecated or archived then finishes its tasks in
    flight (HTTP and queue) and is stopped.
  - With O(target=load_balancer) (an HAProxy host), the agent's frontend sends new tasks to the fallback
    agent's backend while every slot taking traffic is paused (its answers carry C(X-Chenu-Fallback-For)),
    answers 410 naming the replacement while every one is deprecated or archived, and is left to its
    slots otherwise. Both go through two map files of roles/load_balancer, changed through the runtime
    API (no reload).
  - A slot whose state differs from the registry without a transition in this run (out-of-band drift)
    is reported in RV(drift) and repaired the same way. A slot serving a version the registry does not
    know is reported and left alone.
  - Fails, naming the host and the slot, when a runtime does not report the state within O(timeout) or
    does not finish its tasks within O(drain_timeout).
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  agent:
    description: Agent id.
    type: str
    required: true
  view:
    description:
      - The registry's view of the agent's versions, as M(chenu.agents.agent_lifecycle) returns it in
        RV(chenu.agents.agent_lifecycle#module:serving) (C(versions), C(release_in_progress), C(transition)).
    type: dict
    required: true
  target:
    description: What this host runs for the agent - its runtime slots, or a load balancer frontend.
    type: str
    choices: [slots, load_balancer]
    default: slots
  fallback_agent:
    description:
      - The agent that takes a paused agent's new tasks (seed 000 - tasks_handling redirect_to_fallback).
        Without one, a paused version answers 503 with Retry-After and the reason.
    type: str
  slots:
    description:
      - O(target=slots) - the slots of this host (entries of C(sandbox_runtime_slots) - C(agent), C(slot));
        only those of O(agent) are reconciled.
    type: list
    elements: dict
    default: []
  settings_dir:
    description: Where each slot's runtime settings file is (C(<agent>-<slot>.yaml)).
    type: path
    default: /etc/chenu-agents/runtime
  service_manager:
    description: What runs the slots' processes, to start and stop them.
    type: str
    choices: [none, supervisor, systemd]
    default: none
  service_prefix:
    description: Service name of a slot - C(<prefix>-<agent>-<slot>).
    type: str
    default: chenu-agent
  token:
    description: A bearer token of the runtime with the operator or admin role (C(/admin/status)).
    type: str
  stop:
    description:
      - Let the slots whose version is deprecated or archived finish their tasks in flight, then stop them.
        Without it they are only reported in RV(slots) as C(pending_stop).
    type: bool
    default: false
  timeout:
    description: Seconds a runtime may take to start or to report the state it was given.
    type: float
    default: 30
  drain_timeout:
    description: Seconds a slot may take to finish its tasks in flight before it is stopped.
    type: float
    default: 300
  host:
    description: The name this host is reported under (the inventory host name).
    type: str
    default: localhost
  socket:
    description: O(target=load_balancer) - HAProxy's admin socket.
    type: path
    default: /run/haproxy/admin.sock
  fallback_map:
    description: O(target=load_balancer) - the map file of agent to fallback backend.
    type: path
    default: /etc/haproxy/lifecycle_fallback.map
  gone_map:
    description: O(target=load_balancer) - the map file of agent to the message of its 410 answer.
    type: path
    default: /etc/haproxy/lifecycle_gone.map
  slot_versions:
    description:
      - O(target=load_balancer) - the version each slot of the agent holds (slot name to version), from
        the runtime hosts' RV(slots).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    details: Reads the slots and the load balancer, reports the plan; writes, starts and stops nothing.
  diff_mode:
    support: full
    details: The state files (slots) or the map entries (load balancer) before and after.
  idempotent:
    support: full
requirements:
  - chenu_agents (the Python package of this collection) on the host that runs the task
seealso:
  - module: chenu.agents.agent_lifecycle
  - module: chenu.agents.agent_deploy
"""

EXAMPLES = r"""
- name: Pause legal_info 1.2.0
  chenu.agents.agent_lifecycle:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    version: 1.2.0
    action: pause
  register: __lifecycle
  delegate_to: "{{ groups['control'] | first }}"
  run_once: true

- name: Every slot serving it follows (runtime hosts)
  chenu.agents.agent_reconcile:
    agent: legal_info
    view: "{{ __lifecycle.serving }}"
    fallback_agent: estimator
    slots: "{{ sandbox_runtime_slots }}"
    service_manager: supervisor
    token: "{{ runtime_operator_token }}"
  register: __slots

- name: The frontend follows (load balancer hosts)
  chenu.agents.agent_reconcile:
    target: load_balancer
    agent: legal_info
    view: "{{ __lifecycle.serving }}"
    fallback_agent: estimator
    slot_versions: {blue: 1.2.0, green: 1.1.0}
"""

RETURN = r"""
slots:
  description:
    - O(target=slots) - one entry per slot of the agent - C(agent), C(slot), C(host), C(version),
      C(registry_state), C(state_file) (what it must say), C(before) (what it said), C(write), C(start),
      C(stop), C(pending_stop), C(running), C(drift), and C(done) (C(wrote), C(started), C(stopped),
      C(drained_in_s), C(status) - the runtime's report after).
  returned: success
  type: list
  elements: dict
drift:
  description: Slots that differed from the registry without a transition in this run (repaired unless left alone).
  returned: success
  type: list
  elements: str
  sample: ["legal_info-blue on web1 serves 1.2.0 as active; the registry says deprecated"]
frontend:
  description:
    - O(target=load_balancer) - C(agent), C(route) (the backend new tasks go to), C(gone) (the 410
      message), C(reason).
  returned: when O(target=load_balancer)
  type: dict
changes:
  description: O(target=load_balancer) - the map entries changed (C(route), C(gone)), each with C(before) and C(after).
  returned: when O(target=load_balancer)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def on_slots(module, p):
    import os

    from chenu_agents import deploy, reconcile

    pairs = []
    for entry in p["slots"]:
        if entry.get("agent") != p["agent"]:
            continue
        slot = deploy.Slot.load(os.path.join(p["settings_dir"], f"{entry['agent']}-{entry['slot']}.yaml"))
        service = f"{p['service_prefix']}-{entry['agent']}-{entry['slot']}"
        pairs.append((slot, deploy.select_control(p["service_manager"], service)))
    result = reconcile.reconcile_slots(
        pairs,
        p["view"],
        host=p["host"],
        token=p["token"],
        fallback_agent=p["fallback_agent"],
        stop=p["stop"],
        check_mode=module.check_mode,
        timeout_s=p["timeout"],
        drain_timeout_s=p["drain_timeout"],
    )
    if module._diff:
        result["diff"] = [
            dict(before_header=f"{s['agent']}-{s['slot']} state file", after_header=f"{s['agent']}-{s['slot']} state file",
                 before=s["before"] or {}, after=s["state_file"] or {})
            for s in result["slots"] if s["write"]
        ]  # fmt: skip
    return result


def on_load_balancer(module, p):
    from chenu_agents import reconcile
    from chenu_agents.traffic import HAProxyRuntime

    maps = reconcile.FrontendMaps(HAProxyRuntime(p["socket"]), p["fallback_map"], p["gone_map"])
    result = reconcile.reconcile_frontend(
        maps,
        p["agent"],
        p["view"],
        p["slot_versions"],
        fallback_agent=p["fallback_agent"],
        check_mode=module.check_mode,
    )
    result["drift"] = []
    if module._diff:
        result["diff"] = dict(
            before_header=f"fe_{p['agent']} lifecycle maps",
            after_header=f"fe_{p['agent']} lifecycle maps",
            before={k: v["before"] for k, v in result["changes"].items()},
            after={k: v["after"] for k, v in result["changes"].items()},
        )
    return result


def ensure(module):
    from pathlib import Path

    p = dict(module.params)
    for key in ("fallback_map", "gone_map"):
        p[key] = Path(p[key])
    return on_slots(module, p) if p["target"] == "slots" else on_load_balancer(module, p)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent=dict(type="str", required=True),
            view=dict(type="dict", required=True),
            target=dict(type="str", default="slots", choices=["slots", "load_balancer"]),
            fallback_agent=dict(type="str"),
            slots=dict(type="list", elements="dict", default=[]),
            settings_dir=dict(type="path", default="/etc/chenu-agents/runtime"),
            service_manager=dict(type="str", default="none", choices=["none", "supervisor", "systemd"]),
            service_prefix=dict(type="str", default="chenu-agent"),
            token=dict(type="str", no_log=True),
            stop=dict(type="bool", default=False),
            timeout=dict(type="float", default=30),
            drain_timeout=dict(type="float", default=300),
            host=dict(type="str", default="localhost"),
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            fallback_map=dict(type="path", default="/etc/haproxy/lifecycle_fallback.map"),
            gone_map=dict(type="path", default="/etc/haproxy/lifecycle_gone.map"),
            slot_versions=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure)


if __name__ == "__main__":
    main()
