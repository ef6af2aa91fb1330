#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_bundle
short_description: Build a deterministic, checked agent bundle (tar + zstd with a sha256 manifest)
version_added: 0.1.0
description:
  - Checks an agent source folder against the agent schema (C(config.yaml), C(tools/definitions.yaml))
    and the security policy, then packs it into a deterministic C(tar) compressed with zstd, with a
    manifest of the sha256 of every file.
  - The same folder always gives the same bytes, so the task reports C(changed) only when the bundle
    at O(dest) would differ. Every schema error and every policy violation is reported at once, with
    the file, the line, the field and what was expected; nothing is written then.
  - The bundle is written through a temporary file and a rename; a reader never sees half a bundle.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  src:
    description: The agent source folder (its name must equal the agent id).
    type: path
    required: true
  dest:
    description: Path of the bundle file to write, conventionally C(<id>-<version>.tar.zst).
    type: path
    required: true
  compression_level:
    description: zstd level, 1 (fast) to 22 (smallest).
    type: int
    default: 19
  policy:
    description: A policy file merged over the policy shipped with the collection.
    type: path
  policy_overrides:
    description:
      - Policy keys merged over the shipped policy and O(policy) (mappings merge; lists and scalars replace).
      - Set it per inventory, for example from a C(chenu_policy_overrides) group variable.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    details: The bundle is built in memory and compared with O(dest); nothing is written.
  diff_mode:
    support: full
    details: Shows the digest and sizes before and after.
  idempotent:
    support: full
requirements:
  - chenu_agents (the Python package of this collection) on the host that runs the task
seealso:
  - module: chenu.agents.agent_signature
"""

EXAMPLES = r"""
- name: Build the estimator's bundle
  chenu.agents.agent_bundle:
    src: examples/agents/estimator
    dest: /var/lib/chenu/bundles/estimator.tar.zst

- name: Build with a stricter policy from the inventory
  chenu.agents.agent_bundle:
    src: "{{ item }}"
    dest: "/var/lib/chenu/bundles/{{ item | basename }}.tar.zst"
    policy_overrides: "{{ chenu_policy_overrides | default({}) }}"
  loop: "{{ query('ansible.builtin.fileglob', 'examples/agents/*/config.yaml') | map('dirname') }}"
"""

RETURN = r"""
agent:
  description: Agent id from C(config.yaml).
  returned: success
  type: str
  sample: estimator
version:
  description: Agent version from C(config.yaml).
  returned: success
  type: str
  sample: 1.4.0
digest:
  description: sha256 of the bundle's bytes, the value a signature covers.
  returned: success
  type: str
  sample: sha256:9f2c5e...
raw_size:
  description: Bytes of every file plus the manifest, uncompressed.
  returned: success
  type: int
compressed_size:
  description: Bytes of the bundle.
  returned: success
  type: int
compression_ratio:
  description: compressed_size / raw_size.
  returned: success
  type: float
saving:
  description: 1 - compression_ratio.
  returned: success
  type: float
files:
  description: Number of agent files in the bundle.
  returned: success
  type: int
dest:
  description: Path of the bundle.
  returned: success
  type: str
problems:
  description: On failure, every schema error or policy violation, each with file, line, field, expected and rule.
  returned: failure
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def _digest_of(path):
    from chenu_agents.signing import file_digest

    return file_digest(path) if os.path.isfile(path) else None


def ensure_bundle(module):
    from chenu_agents import bundle, policy
    from chenu_agents.files import write_if_changed

    params = module.params
    result = bundle.build(
        params["src"],
        level=params["compression_level"],
        policy=policy.load_policy(params["policy"], params["policy_overrides"]),
    )
    before = _digest_of(params["dest"])
    changed = before != result.digest
    if changed and not module.check_mode:
        write_if_changed(params["dest"], result.data)
    out = dict(changed=changed, dest=params["dest"], **result.summary())
    if module._diff:
        out["diff"] = dict(before=dict(digest=before), after=dict(digest=result.digest))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            compression_level=dict(type="int", default=19),
            policy=dict(type="path"),
            policy_overrides=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_bundle)


if __name__ == "__main__":
    main()
