#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_lifecycle
short_description: Register an agent version and move it through its lifecycle, with an audit trail
version_added: 0.2.0
description:
  - Registers agent versions in the lifecycle registry (PostgreSQL) and moves them through the states of
    the seed's state machine (draft, testing, staged, active, paused, deprecated, archived) by its
    actions. Any other request is refused, naming the actions allowed in the version's current state.
  - Every change writes one row of the registry's append-only audit trail (who, when, action, from and
    to, reason, run id, details) in the same transaction. Concurrent requests on one agent serialize.
  - Asking for the state the version is already in, or for an action whose target it is already in,
    changes nothing.
  - Gates. O(action=validate) (draft to testing) verifies the bundle against O(trust_store) and runs
    the agent's own tests (its C(tests/scenarios) and C(tests/integration)) against a sandbox runtime of
    that version, recording the report. O(action=approve) (testing to staged) also requires every test
    to pass, and each capability or tool that the previous registered version did not have to be named
    in O(approved_capabilities) or O(approved_tools).
  - The state machine, what each action does, and the audit trail are described in docs/lifecycle.md.
  - Returns RV(serving), the registry's view of every version of the agent after the request (state,
    replacement, deprecation announced, sunset, reason), which M(chenu.agents.agent_reconcile) carries to
    the runtime slots and load balancers serving them (C(playbooks/lifecycle.yml) does both in one run).
  - O(action=scale) records the replica count asked for in the audit trail, then fails saying that
    nothing applies it yet (the scale-out issue).
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
  version:
    description: Agent version (semver).
    type: str
    required: true
  state:
    description:
      - Target state. The action that leads there from the current state is taken; C(draft) on a
        version not yet registered registers it.
      - Mutually exclusive with O(action).
    type: str
    choices: [draft, testing, staged, active, paused, deprecated, archived]
  action:
    description:
      - Action to take. Transitions - validate, reject, approve, rollback_to_testing, deploy, pause,
        resume, deprecate, restore, archive, clone. Operations that keep the state - edit, test, delete,
        hotfix, scale, delete_permanent, announce_deprecation. C(register) registers a new version in draft.
      - C(announce_deprecation) (active or paused) records C(sunset) and C(replacement) from O(details)
        (defaults - 30 days on, and the highest other active version); the version's answers then carry
        the Deprecation and Sunset headers until it is deprecated.
      - Mutually exclusive with O(state).
    type: str
    choices: [register, validate, reject, approve, rollback_to_testing, deploy, pause, resume, deprecate,
              restore, archive, clone, edit, test, delete, hotfix, scale, delete_permanent, announce_deprecation]
  reason:
    description: Why; recorded in the audit trail.
    type: str
  actor:
    description:
      - Who asks; recorded in the audit trail. Defaults to the AWX user (C(AWX_USER_NAME)), else the
        login name. Playbooks pass C(awx_user_name) when AWX runs them.
    type: str
  run_id:
    description:
      - The playbook run or AWX job; recorded in the audit trail. Defaults to C(awx-job-<JOB_ID>) under
        AWX, else a generated id.
    type: str
  bundle:
    description:
      - The version's signed bundle. At registration (and O(action=edit)), O(digest) and O(key_id) are
        read from its signed statement (verified when O(trust_store) is given, else checked against the
        bundle's hash) and its capabilities and tools from its C(config.yaml) and C(tools/definitions.yaml).
      - The gates use it, or the bundle path registered with the version.
    type: path
  signature:
    description: Signature file of O(bundle). Defaults to O(bundle) with C(.sig) appended.
    type: path
  digest:
    description: sha256 of the bundle (C(sha256:<hex>)), when registering without O(bundle).
    type: str
  key_id:
    description: Id of the key that signed the bundle, when registering without O(bundle).
    type: str
  trust_store:
    description: Trust store the bundle must verify against (gates, and registration when given).
    type: path
  new_version:
    description:
      - The version O(action=clone) or O(action=hotfix) creates in draft. O(action=hotfix) defaults to
        the next free patch version.
    type: str
  approved_capabilities:
    description: Capabilities new in this version (absent from the previous one) that O(action=approve) may accept.
    type: list
    elements: str
    default: []
  approved_tools:
    description: Tools new in this version that O(action=approve) may accept.
    type: list
    elements: str
    default: []
  details:
    description:
      - Extra facts recorded in the audit row (for O(action=scale), C(replicas) is required; for
        O(action=announce_deprecation), C(sunset) and C(replacement) are read from here).
    type: dict
    default: {}
  run_tests:
    description:
      - Run the agent's tests in the gates, against a sandbox runtime of the version.
      - With V(false), O(action=approve) accepts instead the latest passing test report recorded in the
        version's audit trail (by validate or test) for the same digest, and refuses without one.
    type: bool
    default: true
  test_timeout:
    description: Seconds the sandbox runtime may take to start serving.
    type: float
    default: 60
attributes:
  check_mode:
    support: full
    details:
      - Shows the transition without making it. Gates verify the bundle and the approvals but do not
        start a sandbox runtime.
  diff_mode:
    support: full
    details: The version's state before and after.
  idempotent:
    support: full
    details: Asking for the current state (or an action leading there) changes nothing.
requirements:
  - chenu_agents (the Python package of this collection) and psycopg 3 on the host that runs the task
  - the chenu_agents runtime extra, for the gates' sandbox runtime
seealso:
  - module: chenu.agents.agent_signature
  - module: chenu.agents.agent_deploy
  - plugin: chenu.agents.agent_state
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Register a signed bundle as a new draft version
  chenu.agents.agent_lifecycle:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    version: 1.3.0
    state: draft
    bundle: /var/lib/chenu/bundles/legal_info-1.3.0.tar.zst
    trust_store: /etc/chenu/trust.json

- name: Validate it (its own tests run against a sandbox runtime)
  chenu.agents.agent_lifecycle:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    version: 1.3.0
    action: validate
    trust_store: /etc/chenu/trust.json
    reason: ready for QA

- name: Approve it, accepting the capability it adds
  chenu.agents.agent_lifecycle:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    version: 1.3.0
    state: staged
    trust_store: /etc/chenu/trust.json
    approved_capabilities: [legal_deadline_calculation]
    actor: "{{ awx_user_name | default(omit) }}"
    run_id: "{{ awx_job_id | default(omit) }}"

- name: Pause the active version
  chenu.agents.agent_lifecycle:
    registry: "{{ chenu_registry }}"
    agent: legal_info
    version: 1.2.0
    action: pause
    reason: incident 42
"""

RETURN = r"""
agent:
  description: Agent id.
  returned: success
  type: str
version:
  description: The version acted on (for clone and hotfix, the new version).
  returned: success
  type: str
  sample: 1.3.0
previous_state:
  description: State before the request (null when the version was not registered).
  returned: success
  type: str
  sample: testing
state:
  description: State after the request (null when the version was deleted).
  returned: success
  type: str
  sample: staged
action:
  description: The action taken (the one O(state) led to), or C(none) when nothing was to be done.
  returned: success
  type: str
transition:
  description: The transition made (or, in check mode, that would be made); null when the state stays.
  returned: success
  type: dict
  sample: {action: approve, from: testing, to: staged}
audit_id:
  description: Id of the audit row written; null when nothing was written.
  returned: success
  type: int
gate:
  description:
    - The gate's report - C(verified) (digest, key_id), C(new) (capabilities and tools absent from the
      previous version), C(tests) (the report of the agent's tests - passed, total, failed, by_category,
      results with test, scenario, category, input, passed, problems), C(problems), C(passed).
  returned: when the action has a gate (validate, approve, test)
  type: dict
source_version:
  description: For clone and hotfix, the version the new one comes from.
  returned: when O(action=clone) or O(action=hotfix)
  type: str
serving:
  description:
    - The registry's view of the agent's versions after the request (in check mode, as it would be),
      for M(chenu.agents.agent_reconcile) - C(agent), C(versions) (by version - state, replacement,
      deprecation, sunset, reason), C(release_in_progress) (a release holds the agent's lock), and
      C(transition) (C(version), C(from), C(to)) when this request moved a version.
  returned: success
  type: dict
  sample:
    agent: legal_info
    versions: {"1.2.0": {state: paused, replacement: null, deprecation: null, sunset: null, reason: incident 42}}
    release_in_progress: false
    transition: {version: 1.2.0, from: active, to: paused}
migrations:
  description: Registry schema migrations applied by this run (empty when the schema was up to date).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module
from ansible_collections.chenu.agents.plugins.module_utils.registry import (
    REGISTRY_SPEC,
    open_registry,
    registry_errors,
)

STATES = ["draft", "testing", "staged", "active", "paused", "deprecated", "archived"]
ACTIONS = [
    "register",
    "validate",
    "reject",
    "approve",
    "rollback_to_testing",
    "deploy",
    "pause",
    "resume",
    "deprecate",
    "restore",
    "archive",
    "clone",
    "edit",
    "test",
    "delete",
    "hotfix",
    "scale",
    "delete_permanent",
    "announce_deprecation",
]


def build_request(p):
    from chenu_agents.agent_tests import registration_facts
    from chenu_agents.lifecycle import Request

    facts = {"digest": p["digest"], "key_id": p["key_id"], "bundle": None, "capabilities": None, "tools": None}
    if p["bundle"]:
        read = registration_facts(
            p["bundle"],
            agent=p["agent"],
            version=p["new_version"] or p["version"],
            signature=p["signature"],
            trust_store=p["trust_store"],
        )
        for key in ("digest", "key_id"):
            if p[key] and p[key] != read[key]:
                from chenu_agents.errors import LifecycleError, Problem

                raise LifecycleError(
                    f"{key} {p[key]} differs from the bundle's signed statement ({read[key]})",
                    [Problem(p["bundle"], key, read[key])],
                )
        facts = read
    return Request(
        p["agent"],
        p["version"],
        action=p["action"],
        target=p["state"],
        reason=p["reason"],
        actor=p["actor"],
        run_id=p["run_id"],
        new_version=p["new_version"],
        approved_capabilities=p["approved_capabilities"],
        approved_tools=p["approved_tools"],
        details=p["details"],
        **facts,
    )


def serving_view(registry, outcome):
    from chenu_agents import reconcile

    view = reconcile.registry_view(registry, outcome.agent)
    moved = outcome.transition if outcome.transition and outcome.state else None
    if moved:
        view["transition"] = {"version": outcome.version, "from": moved["from"], "to": moved["to"]}
        known = view["versions"].get(outcome.version)
        if known is not None:  # check mode: the registry has not moved; show what it would say
            known["state"] = outcome.state
    return view


def ensure(module):
    from chenu_agents import agent_tests, lifecycle

    p = module.params
    request = build_request(p)
    gates = agent_tests.gates(
        trust_store=p["trust_store"], signature=p["signature"], run_tests=p["run_tests"], timeout=p["test_timeout"]
    )
    with open_registry(p["registry"]) as registry, registry_errors():
        outcome = lifecycle.apply(registry, request, gates=gates, check_mode=module.check_mode)
        result = outcome.to_dict()
        result["serving"] = serving_view(registry, outcome)
        result["migrations"] = registry.applied
    if module._diff:
        header = f"{outcome.agent} {outcome.version}"
        result["diff"] = dict(
            before_header=header,
            after_header=header,
            before={"state": outcome.previous_state},
            after={"state": outcome.state},
        )
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            registry=REGISTRY_SPEC,
            agent=dict(type="str", required=True),
            version=dict(type="str", required=True),
            state=dict(type="str", choices=STATES),
            action=dict(type="str", choices=ACTIONS),
            reason=dict(type="str"),
            actor=dict(type="str"),
            run_id=dict(type="str"),
            bundle=dict(type="path"),
            signature=dict(type="path"),
            digest=dict(type="str"),
            key_id=dict(type="str", no_log=False),
            trust_store=dict(type="path"),
            new_version=dict(type="str"),
            approved_capabilities=dict(type="list", elements="str", default=[]),
            approved_tools=dict(type="list", elements="str", default=[]),
            details=dict(type="dict", default={}),
            run_tests=dict(type="bool", default=True),
            test_timeout=dict(type="float", default=60),
        ),
        mutually_exclusive=[("state", "action")],
        required_one_of=[("state", "action")],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure)


if __name__ == "__main__":
    main()
