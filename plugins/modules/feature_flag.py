#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: feature_flag
short_description: Set the stage of an agent's release flag (off, internal, beta, all) on a runtime host
version_added: 0.1.0
description:
  - Writes the agent's release flag into the flags file the runtime slots read (JSON, replaced whole in
    one rename; concurrent writers are serialised by a lock file next to it).
  - The slot HAProxy sends traffic to evaluates the flag per request through OpenFeature and forwards the
    requests the flag gives to the variant to the variant's slot O(variant.url). The stage decides who
    gets the variant, by the request's groups. V(off) nobody; V(internal) members of O(internal_groups);
    V(beta) members of O(internal_groups) or O(beta_groups); V(all) everyone.
  - Sticky per session. A session keeps the variant it was first given for as long as the flag stays on,
    whatever the stage does meanwhile. V(off) sends every request to the stable slot at once (rollback). The
    next time the flag goes on, or when its variant changes, the flag gets a new epoch and no earlier
    assignment comes back.
  - Slots read the file again within a second of a change; nothing is reloaded.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  flags_file:
    description: The flags file on the runtime host, the C(feature_flag.file) of the slots' runtime settings.
    type: path
    required: true
  agent:
    description: Agent id.
    type: str
    required: true
  flag:
    description: Flag key. Defaults to C(<agent>.release).
    type: str
  stage:
    description: Who gets the variant.
    type: str
    required: true
    choices: ["off", internal, beta, all]
  variant:
    description:
      - The new version's slot. Required the first time the flag leaves V(off); omitted, the file's is kept.
      - Changing it while the flag is on starts a new epoch (every session is assigned again).
    type: dict
    suboptions:
      slot:
        description: Slot name (C(green)). A slot never forwards to itself.
        type: str
        required: true
      version:
        description: Version the slot serves, for the record and the answers' metadata.
        type: str
      url:
        description: Base URL the stable slot forwards to (C(http://127.0.0.1:8102)).
        type: str
        required: true
  internal_groups:
    description:
      - Groups whose members are internal users. Omitted, the file's, else the runtime's
        C(feature_flag.internal_groups) (default C([internal])).
    type: list
    elements: str
  beta_groups:
    description:
      - Groups whose members are beta users. Omitted, the file's, else the runtime's
        C(feature_flag.beta_groups) (default C([beta])).
    type: list
    elements: str
  mode:
    description: File mode of the flags file; the slots' user must be able to read it.
    type: raw
    default: "0644"
attributes:
  check_mode:
    support: full
  diff_mode:
    details: Returns the flag before and after in diff mode.
    support: full
  idempotent:
    details: A second run with the same arguments reports no change and keeps the epoch.
    support: full
notes:
  - The flag file holds no secret; the runtime reads it as the slot's user.
requirements:
  - chenu_agents (the Python package of this collection) with openfeature-sdk
seealso:
  - module: chenu.agents.agent_deploy
  - module: chenu.agents.traffic_split
"""

EXAMPLES = r"""
- name: Deploy with the flag off (the variant slot is known, nobody is sent to it)
  chenu.agents.feature_flag:
    flags_file: /etc/chenu-agents/runtime/flags.json
    agent: legal_info
    stage: "off"
    variant: {slot: green, version: 1.3.0, url: "http://127.0.0.1:8102"}

- name: Internal users first
  chenu.agents.feature_flag:
    flags_file: /etc/chenu-agents/runtime/flags.json
    agent: legal_info
    stage: internal

- name: Then beta users (group names of this organisation)
  chenu.agents.feature_flag:
    flags_file: /etc/chenu-agents/runtime/flags.json
    agent: legal_info
    stage: beta
    beta_groups: [beta, early-adopters]

- name: Roll back (everyone on stable at once)
  chenu.agents.feature_flag:
    flags_file: /etc/chenu-agents/runtime/flags.json
    agent: legal_info
    stage: "off"
"""

RETURN = r"""
flag:
  description: Flag key.
  returned: always
  type: str
  sample: legal_info.release
previous_stage:
  description: Stage before the task; null when the file had no such flag.
  returned: always
  type: str
  sample: internal
stage:
  description: Stage after the task (or that it would have, in check mode).
  returned: always
  type: str
  sample: beta
before:
  description: The flag before (C({agent, stage, variant, epoch, updated, internal_groups?, beta_groups?})), or null.
  returned: always
  type: dict
after:
  description: The flag after the task, same keys.
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def _mode(module):
    mode = module.params["mode"]
    try:
        return int(mode, 8) if isinstance(mode, str) else int(mode)
    except ValueError:
        module.fail_json(msg=f"mode: an octal file mode such as '0644' (got {mode!r})")


def ensure_stage(module):
    try:
        from chenu_agents.flags import set_stage
    except ImportError:
        module.fail_json(msg=missing_required_lib("openfeature-sdk"), exception=traceback.format_exc())

    p = module.params
    outcome = set_stage(
        p["flags_file"],
        p["agent"],
        p["stage"],
        flag=p["flag"],
        variant=p["variant"],
        internal_groups=p["internal_groups"],
        beta_groups=p["beta_groups"],
        check_mode=module.check_mode,
        mode=_mode(module),
    )
    if module._diff:
        outcome["diff"] = dict(before=outcome["before"] or {}, after=outcome["after"])
    return outcome


def main():
    module = AnsibleModule(
        argument_spec=dict(
            flags_file=dict(type="path", required=True),
            agent=dict(type="str", required=True),
            flag=dict(type="str"),
            stage=dict(type="str", required=True, choices=["off", "internal", "beta", "all"]),
            variant=dict(
                type="dict",
                options=dict(
                    slot=dict(type="str", required=True),
                    version=dict(type="str"),
                    url=dict(type="str", required=True),
                ),
            ),
            internal_groups=dict(type="list", elements="str"),
            beta_groups=dict(type="list", elements="str"),
            mode=dict(type="raw", default="0644"),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_stage)


if __name__ == "__main__":
    main()
