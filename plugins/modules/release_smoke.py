#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_smoke
short_description: Smoke-test the candidate slot of a release with the agent's own tests
version_added: 0.3.0
description:
  - Sends the tests of the given categories that the agent's bundle carries (C(tests/scenarios/*.yaml)
    and the other test folders) to a runtime already serving it, straight to its port, and judges each
    answer as the lifecycle's C(validate) gate does (status, C(contains), C(not_contains),
    C(tools_called), the agent's constraints such as its disclaimer).
  - It only reads the bundle and sends tasks; the task never changes anything. A failing test does not
    fail the task; RV(failures) lists them, and the release decides.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  bundle:
    description: The candidate's bundle (C(.tar.zst)), whose tests are sent.
    type: path
    required: true
  url:
    description: Base URL of the candidate slot's runtime.
    type: str
    required: true
  token:
    description: A bearer token with the caller role.
    type: str
    required: true
  categories:
    description: Test categories to send (a test's C(category)).
    type: list
    elements: str
    default: [happy_path, security]
  timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    details: Sends the tests in check mode too; sending a task changes nothing on the host.
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - chenu_agents (the Python package of this collection)
seealso:
  - module: chenu.agents.agent_lifecycle
"""

EXAMPLES = r"""
- name: Smoke-test legal_info 1.3.0 in slot green
  chenu.agents.release_smoke:
    bundle: /var/lib/chenu/bundles/releases/legal_info-1.3.0.tar.zst
    url: http://127.0.0.1:8102
    token: "{{ caller_token }}"
  register: smoke

- name: Stop when one failed
  ansible.builtin.fail:
    msg: "{{ smoke.failures | join('; ') }}"
  when: smoke.failures | length > 0
"""

RETURN = r"""
report:
  description: The smoke report (C(passed), C(summary), C(total), C(failed), C(by_category), C(results)).
  returned: success
  type: dict
failures:
  description: "One sentence per failed test, C(<scenario>: <problems>); empty when every test passed."
  returned: success
  type: list
  elements: str
  sample: ["Question simple sur la licence RBQ: missing 'avocat' in reply: '...'"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def work(module):
    from chenu_agents.agent_tests import smoke

    p = module.params
    report = smoke(p["bundle"], p["url"], p["token"], categories=p["categories"], timeout=p["timeout"])
    failures = [f"{r['scenario']}: {', '.join(r['problems'])}" for r in report["results"] if not r["passed"]]
    return {"changed": False, "report": report, "failures": failures}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bundle=dict(type="path", required=True),
            url=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            categories=dict(type="list", elements="str", default=["happy_path", "security"]),
            timeout=dict(type="float", default=30),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, work)


if __name__ == "__main__":
    main()
