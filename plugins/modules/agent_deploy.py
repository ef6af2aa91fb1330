#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_deploy
short_description: Put a signed agent bundle into a runtime slot and wait until the slot serves it
version_added: 0.1.0
description:
  - Verifies the bundle on the runtime host the way the runtime will (trust store, expected agent and
    version, the slot's own accepted versions), copies it into a release directory of the slot, switches
    the slot's C(current) symlink to it in one rename, makes the runtime load it and waits until
    C(/health/ready) is ready and C(/metrics) names the new digest.
  - The runtime is told through C(POST /admin/reload) when O(admin_token) is given, otherwise through
    SIGHUP sent by the service manager; a slot that is not running is started by the service manager.
  - A bundle refused here or by the runtime, or a slot not ready within O(timeout), puts the previous
    release back; the runtime keeps serving the version it served.
  - The slot's settings file is the one the C(chenu.agents.sandbox_runtime) role writes; its C(bundle)
    must be C(<slot dir>/current/agent.tar.zst).
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  settings:
    description: The slot's runtime settings file on the host (C(/etc/chenu-agents/runtime/<agent>-<slot>.yaml)).
    type: path
    required: true
  bundle:
    description: Path on the host of the signed bundle to deploy (a staging copy).
    type: path
    required: true
  signature:
    description: Path on the host of its signature. Defaults to O(bundle) with C(.sig) appended.
    type: path
  agent:
    description: Agent id the statement must name. Defaults to the C(agent) of the slot's settings, if any.
    type: str
  version:
    description: Version the statement must name. Without it, any version the signature covers.
    type: str
  allow_rollback:
    description:
      - Deploy a version lower than the highest the slot has accepted. The slot's accepted-versions
        record is lowered to it, so that the runtime loads it too.
    type: bool
    default: false
  admin_token:
    description: Bearer token with the C(admin) role, to reload over HTTP (the runtime then says why it refuses).
    type: str
  service_manager:
    description: What runs the slot's process, to start it or send it SIGHUP. C(none) reloads over HTTP only.
    type: str
    choices: [none, supervisor, systemd]
    default: none
  service_name:
    description: The slot's supervisor program or systemd unit. Required unless O(service_manager=none).
    type: str
  wait:
    description:
      - Wait until the slot serves the new version and is ready.
      - With V(false) and nothing running under O(service_manager=none), the bundle is only installed.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the slot to serve the new version, ready.
    type: float
    default: 60
  keep_releases:
    description: Release directories kept in the slot besides the current and the previous one.
    type: int
    default: 3
attributes:
  check_mode:
    support: full
    details: Verifies the bundle and compares its digest with what the slot has installed and serves.
  diff_mode:
    support: full
    details: Agent, version and digest installed and served, before and after.
  idempotent:
    support: full
    details: A slot that already serves the bundle's digest from its current release is left alone.
notes:
  - Run the task with the interpreter of the runtime's virtualenv (C(ansible_python_interpreter) set to
    C(/opt/chenu-agents/venv/bin/python) with the role's defaults), so that the C(chenu_agents) package it
    imports is the one the slot runs.
requirements:
  - chenu_agents (the Python package of this collection) on the runtime host, with its C(runtime) extra
seealso:
  - module: chenu.agents.agent_signature
  - module: chenu.agents.agent_bundle
"""

EXAMPLES = r"""
- name: Stage the signed bundle on the runtime host
  ansible.builtin.copy:
    src: "{{ item }}"
    dest: /var/lib/chenu-agents/staging/
    mode: "0644"
  loop:
    - /var/lib/chenu/bundles/legal_info.tar.zst
    - /var/lib/chenu/bundles/legal_info.tar.zst.sig

- name: Deploy legal_info 1.2.0 into the blue slot
  chenu.agents.agent_deploy:
    settings: /etc/chenu-agents/runtime/legal_info-blue.yaml
    bundle: /var/lib/chenu-agents/staging/legal_info.tar.zst
    agent: legal_info
    version: 1.2.0
    admin_token: "{{ vault_runtime_admin_token }}"
    service_manager: supervisor
    service_name: chenu-agent-legal_info-blue
  vars:
    ansible_python_interpreter: /opt/chenu-agents/venv/bin/python
"""

RETURN = r"""
slot:
  description: Slot name, from the settings.
  returned: always
  type: str
  sample: blue
before:
  description: What the slot had installed (C(current)) and served before, each C({agent, version, digest}) or null.
  returned: always
  type: dict
after:
  description: What the slot has installed and serves after the task (or would, in check mode).
  returned: always
  type: dict
release:
  description: The release directory the bundle was copied into.
  returned: changed and not check mode
  type: str
reload:
  description: How the runtime was told, C(http), C(signal) or C(start); null when it was not.
  returned: changed and not check mode
  type: str
running:
  description: Whether a runtime process answers on the slot's port.
  returned: always
  type: bool
serving:
  description: What the running process serves at the end, C({agent, version, digest, ready, refused_reloads}).
  returned: when a process answers
  type: dict
error:
  description: On a refusal, the error class (for example C(TamperedBundle), C(RollbackRefused), C(ReloadRefused)).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def ensure_deployed(module):
    from chenu_agents.deploy import deploy, select_control

    p = module.params
    outcome = deploy(
        p["settings"],
        p["bundle"],
        signature=p["signature"],
        agent=p["agent"],
        version=p["version"],
        allow_rollback=p["allow_rollback"],
        admin_token=p["admin_token"],
        control=select_control(p["service_manager"], p["service_name"]),
        wait=p["wait"],
        timeout_s=p["timeout"],
        keep_releases=p["keep_releases"],
        check_mode=module.check_mode,
    ).to_dict()
    if module._diff:
        outcome["diff"] = dict(before=outcome["before"], after=outcome["after"])
    return outcome


def main():
    module = AnsibleModule(
        argument_spec=dict(
            settings=dict(type="path", required=True),
            bundle=dict(type="path", required=True),
            signature=dict(type="path"),
            agent=dict(type="str"),
            version=dict(type="str"),
            allow_rollback=dict(type="bool", default=False),
            admin_token=dict(type="str", no_log=True),
            service_manager=dict(type="str", default="none", choices=["none", "supervisor", "systemd"]),
            service_name=dict(type="str"),
            wait=dict(type="bool", default=True),
            timeout=dict(type="float", default=60),
            keep_releases=dict(type="int", default=3),
        ),
        required_if=[
            ("service_manager", "supervisor", ("service_name",)),
            ("service_manager", "systemd", ("service_name",)),
        ],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_deployed)


if __name__ == "__main__":
    main()
