# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  keystore:
    description:
      - Where signing keys live. C(file) keeps RSA-2048 private keys in a directory (mode 0600) with a
        C(keyring.json) of their public halves; C(vault) uses a HashiCorp Vault transit key, which
        versions and rotates natively.
    type: dict
    default: {}
    suboptions:
      type:
        description: Key store backend.
        type: str
        choices: [file, vault]
        default: file
      path:
        description: Directory of the file key store. Needed to sign, rotate or revoke with O(keystore.type=file).
        type: path
      rotation_period_hours:
        description: Age after which the current key is rotated out by O(state=rotated).
        type: float
        default: 24.0
      vault_url:
        description: Vault address. Required when O(keystore.type=vault).
        type: str
      vault_token:
        description: Vault token. Required when O(keystore.type=vault).
        type: str
      vault_mount:
        description: Mount point of the transit secrets engine.
        type: str
        default: transit
      vault_key_name:
        description: Name of the transit key.
        type: str
        default: chenu-agents
      vault_verify:
        description: Verify Vault's TLS certificate.
        type: bool
        default: true
requirements:
  - chenu_agents (the Python package of this collection) on the host that runs the task
  - hvac, for O(keystore.type=vault)
"""
