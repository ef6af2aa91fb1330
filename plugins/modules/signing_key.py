#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: signing_key
short_description: Create, rotate and revoke bundle signing keys, and export the trust store
version_added: 0.1.0
description:
  - O(state=present) creates the first RSA-2048 key of the key store when there is none.
  - O(state=rotated) makes a new key version the signing key when the current one is older than
    O(keystore.rotation_period_hours) (24 h by default), or at once with O(force=true). Older public
    keys stay in the trust store with their validity window, so bundles signed before a rotation keep
    verifying until their statements expire.
  - O(state=revoked) revokes O(key_id); everything that key signed fails verification from then on.
  - With O(trust_store_dest), the trust store (public keys, windows, revocations; never private
    material) is written there, for the runtime hosts to verify against.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
  - chenu.agents.keystore
options:
  state:
    description: What to make true of the key store.
    type: str
    choices: [present, rotated, revoked]
    default: present
  key_id:
    description: Key to revoke. Required with O(state=revoked).
    type: str
  force:
    description: With O(state=rotated), rotate even if the current key is younger than the rotation period.
    type: bool
    default: false
  trust_store_dest:
    description: Where to write the trust store (JSON); written only when its content changes.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the current key and the key ids before and after.
  idempotent:
    support: full
    details: With O(force=true) and O(state=rotated), every run rotates, by design.
requirements:
  - chenu_agents (the Python package of this collection) on the host that runs the task
seealso:
  - module: chenu.agents.agent_signature
"""

EXAMPLES = r"""
- name: Rotate the signing key once it is a day old, and publish the trust store
  chenu.agents.signing_key:
    state: rotated
    keystore:
      path: /etc/chenu/keys
    trust_store_dest: /etc/chenu/trust.json

- name: Revoke a compromised key
  chenu.agents.signing_key:
    state: revoked
    key_id: file:1f3a9c0d2b4e5f60
    keystore:
      path: /etc/chenu/keys
    trust_store_dest: /etc/chenu/trust.json
"""

RETURN = r"""
key_id:
  description: The current signing key after the task (before it, in check mode).
  returned: success
  type: str
  sample: file:1f3a9c0d2b4e5f60
keys:
  description: Every key in the trust store, with its window and revocation time.
  returned: success
  type: list
  elements: dict
trust_store_dest:
  description: Where the trust store was written, when asked.
  returned: when O(trust_store_dest) is set
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import (
    KEYSTORE_SPEC,
    keystore_from_params,
    require_chenu_agents,
    run_module,
)


def ensure_key(module):
    from chenu_agents.trust import TrustStore

    p = module.params
    dry_run = module.check_mode
    keystore = keystore_from_params(p["keystore"])
    before = [k.key_id for k in keystore.trust_store()]
    if p["state"] == "present":
        changed, key_id = keystore.ensure_key(dry_run=dry_run)
    elif p["state"] == "rotated":
        changed, key_id = keystore.rotate(force=p["force"], dry_run=dry_run)
    else:
        changed = keystore.revoke(p["key_id"], dry_run=dry_run)
        key_id = keystore.current_key_id()
    trust = keystore.trust_store()
    out = dict(key_id=key_id, keys=trust.to_dict()["keys"])
    if p["trust_store_dest"]:
        stale = TrustStore.load(p["trust_store_dest"], missing_ok=True).to_dict() != trust.to_dict()
        if stale and not dry_run:
            trust.save(p["trust_store_dest"])
        changed = changed or stale
        out["trust_store_dest"] = p["trust_store_dest"]
    out["changed"] = changed
    if module._diff:
        out["diff"] = dict(
            before=dict(keys=before),
            after=dict(keys=[k.key_id for k in trust], current=key_id),
        )
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "rotated", "revoked"]),
            key_id=dict(type="str"),
            force=dict(type="bool", default=False),
            trust_store_dest=dict(type="path"),
            keystore=KEYSTORE_SPEC,
        ),
        required_if=[("state", "revoked", ("key_id",))],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_key)


if __name__ == "__main__":
    main()
