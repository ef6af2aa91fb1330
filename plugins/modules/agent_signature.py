#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_signature
short_description: Sign an agent bundle, or verify its signed statement
version_added: 0.1.0
description:
  - O(state=signed) makes sure the bundle carries a valid signed statement (agent, version, sha256
    digest, key id, issued and expiry times) from the key store's current key, signing with RSA-2048
    PSS/SHA-256 only when there is none, it no longer verifies, it was made by an older key, or it
    expires within O(renew_before_days).
  - O(state=verified) checks the statement and the bundle and fails, each with its own error, on a
    tampered bundle, an unknown or wrong key, a revoked key, a statement issued outside its key's
    window, an expired statement, a statement for another agent or version, and a version lower
    than the highest already accepted (unless O(allow_rollback=true)).
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
  - chenu.agents.keystore
options:
  state:
    description: Whether to sign (when needed) or only verify.
    type: str
    choices: [signed, verified]
    default: verified
  bundle:
    description: Path of the bundle file.
    type: path
    required: true
  signature:
    description: Path of the signature file. Defaults to O(bundle) with C(.sig) appended.
    type: path
  agent:
    description:
      - Agent id the statement must name. With O(state=signed), defaults to the id in the bundle's manifest.
    type: str
  version:
    description:
      - Version the statement must name. With O(state=signed), defaults to the version in the bundle's manifest.
    type: str
  validity_days:
    description: Lifetime of a new statement, in days.
    type: float
    default: 30
  max_lifetime_days:
    description:
      - The longest a statement may live (C(expires_at - issued_at)), in days. With O(state=signed), a longer
        O(validity_days) is refused; with O(state=verified), a statement that claims a longer life is refused
        (C(StatementTooLong)), whatever it says, so a stolen key cannot back-date one that verifies for years.
    type: float
    default: 30
  force_digest:
    description:
      - With O(state=verified) and O(accepted_versions), accept this bundle although another digest was
        accepted before under the same version (C(VersionPinned) otherwise). The replacement is appended
        to the pin file's audit rows, with O(reason).
    type: bool
    default: false
  reason:
    description: Why O(force_digest) replaces a pinned digest; recorded with it.
    type: str
  renew_before_days:
    description: With O(state=signed), sign again when the statement expires within this many days.
    type: float
    default: 7
  trust_store:
    description:
      - Trust store file to verify against. Defaults to the key store's own public keys.
    type: path
  accepted_versions:
    description:
      - File recording the highest version accepted per agent, for the rollback check.
      - Without it, no rollback check is made.
    type: path
  allow_rollback:
    description: Accept a version lower than the highest already accepted (an explicit rollback).
    type: bool
    default: false
  record:
    description: With O(state=verified), record the version in O(accepted_versions) once it verified.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Reports whether a signature would be made or a version recorded, without writing.
  diff_mode:
    support: full
  idempotent:
    support: full
    details: A valid, current statement is kept; PSS signatures are randomised, so re-signing would change bytes.
requirements:
  - chenu_agents (the Python package of this collection) on the host that runs the task
seealso:
  - module: chenu.agents.agent_bundle
  - module: chenu.agents.signing_key
"""

EXAMPLES = r"""
- name: Sign a bundle with the file key store
  chenu.agents.agent_signature:
    state: signed
    bundle: /var/lib/chenu/bundles/estimator.tar.zst
    keystore:
      path: /etc/chenu/keys

- name: Verify before loading, refusing rollbacks
  chenu.agents.agent_signature:
    bundle: /var/lib/chenu/bundles/estimator.tar.zst
    trust_store: /etc/chenu/trust.json
    agent: estimator
    version: 1.4.0
    accepted_versions: /var/lib/chenu/accepted.json
    record: true
"""

RETURN = r"""
statement:
  description: The signed statement that verified.
  returned: success
  type: dict
  contains:
    agent:
      description: Agent id.
      type: str
    version:
      description: Agent version.
      type: str
    digest:
      description: sha256 of the bundle.
      type: str
    key_id:
      description: Key that signed.
      type: str
    issued_at:
      description: Issue time, ISO 8601 UTC.
      type: str
    expires_at:
      description: Expiry time, ISO 8601 UTC.
      type: str
signature:
  description: Path of the signature file.
  returned: success
  type: str
reason:
  description: With O(state=signed), why a new signature was (or would be) made, or C(current).
  returned: success
  type: str
error:
  description: On a refused verification, the error class (for example C(TamperedBundle), C(RevokedKey)).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import (
    KEYSTORE_SPEC,
    keystore_from_params,
    require_chenu_agents,
    run_module,
)


def _trust(module, keystore):
    from chenu_agents.trust import TrustStore

    if module.params["trust_store"]:
        return TrustStore.load(module.params["trust_store"])
    return keystore.trust_store()


def ensure_signed(module):
    from datetime import timedelta

    from chenu_agents import bundle, signing
    from chenu_agents.errors import VerificationError
    from chenu_agents.trust import utc

    p = module.params
    keystore = keystore_from_params(p["keystore"])
    sig_path = p["signature"] or str(signing.signature_path_for(p["bundle"]))
    manifest = bundle.read(p["bundle"]).manifest
    agent, version = p["agent"] or manifest["agent"], p["version"] or manifest["version"]
    current = keystore.current_key_id()
    reason = "current"
    before = None
    try:
        statement = signing.verify_bundle(
            p["bundle"],
            _trust(module, keystore),
            signature_path=sig_path,
            agent=agent,
            version=version,
            max_lifetime=timedelta(days=p["max_lifetime_days"]),
        )
        before = statement.to_dict()
        if statement.key_id != current:
            reason = f"signed by {statement.key_id}, current key is {current}"
        elif statement.expires_at - utc() < timedelta(days=p["renew_before_days"]):
            reason = f"expires at {before['expires_at']}, within renew_before_days"
    except VerificationError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    changed = reason != "current"
    if changed and not module.check_mode:
        statement = signing.sign_bundle(
            p["bundle"],
            keystore,
            agent=agent,
            version=version,
            validity=timedelta(days=p["validity_days"]),
            max_lifetime=timedelta(days=p["max_lifetime_days"]),
            signature_path=sig_path,
        )
    out = dict(changed=changed, signature=sig_path, reason=reason)
    if not (changed and module.check_mode):
        out["statement"] = statement.to_dict()
    if module._diff:
        out["diff"] = dict(before=before or {}, after=out.get("statement", {"pending": reason}))
    return out


def ensure_verified(module):
    from datetime import timedelta

    from chenu_agents import signing
    from chenu_agents.trust import AcceptedVersions, TrustStore

    p = module.params
    if p["trust_store"]:
        trust = TrustStore.load(p["trust_store"])
    elif p["keystore"].get("path") or p["keystore"]["type"] == "vault":
        trust = keystore_from_params(p["keystore"]).trust_store()
    else:
        module.fail_json(msg="state=verified needs trust_store or keystore")
    accepted = AcceptedVersions(p["accepted_versions"]) if p["accepted_versions"] else None
    sig_path = p["signature"] or str(signing.signature_path_for(p["bundle"]))
    statement = signing.verify_bundle(
        p["bundle"],
        trust,
        signature_path=sig_path,
        agent=p["agent"],
        version=p["version"],
        accepted=accepted,
        allow_rollback=p["allow_rollback"],
        max_lifetime=timedelta(days=p["max_lifetime_days"]),
        force_digest=p["force_digest"],
        reason=p["reason"],
    )
    changed = False
    if p["record"]:
        changed = accepted.record(
            statement.agent, statement.version, digest=statement.digest, dry_run=module.check_mode
        )
    return dict(changed=changed, signature=sig_path, statement=statement.to_dict())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="verified", choices=["signed", "verified"]),
            bundle=dict(type="path", required=True),
            signature=dict(type="path"),
            agent=dict(type="str"),
            version=dict(type="str"),
            validity_days=dict(type="float", default=30),
            max_lifetime_days=dict(type="float", default=30),
            force_digest=dict(type="bool", default=False),
            reason=dict(type="str"),
            renew_before_days=dict(type="float", default=7),
            trust_store=dict(type="path"),
            accepted_versions=dict(type="path"),
            allow_rollback=dict(type="bool", default=False),
            record=dict(type="bool", default=False),
            keystore=KEYSTORE_SPEC,
        ),
        required_if=[("record", True, ("accepted_versions",)), ("force_digest", True, ("accepted_versions", "reason"))],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_signed if module.params["state"] == "signed" else ensure_verified)


if __name__ == "__main__":
    main()
