#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: task_probe
short_description: Send one task to an agent runtime slot and time its answer to the millisecond
version_added: 0.1.0
description:
  - POSTs one task (a JSON object with its C(input)) to a slot's C(/v1/tasks) with a caller token and reports the HTTP
    status and how long the answer took, in seconds with millisecond resolution (M(ansible.builtin.uri)
    reports whole seconds).
  - An HTTP error is a status, not a failure; a connection that fails or times out is status C(0). The
    runbook that calls it (C(playbooks/runbook_performance_degradation.yml)) judges the figures with
    M(chenu.agents.runbook_decide).
  - Runs on the host of the slot with its own Python alone (the chenu_agents package is not needed there).
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  url:
    description: The slot's task endpoint, for example C(http://127.0.0.1:8101/v1/tasks).
    type: str
    required: true
  token:
    description: A caller token of the runtime (C(sandbox_runtime_tokens)), sent as a bearer token (C(Authorization) header).
    type: str
    required: true
  input:
    description: The task's input.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the answer.
    type: float
    default: 120
attributes:
  check_mode:
    details: The task is sent in check mode too; a task changes nothing on the host.
    support: full
  diff_mode:
    details: Nothing changes, so there is no diff.
    support: none
  idempotent:
    details: Never reports a change.
    support: full
seealso:
  - module: chenu.agents.runbook_decide
"""

EXAMPLES = r"""
- name: Time one task sent to the blue slot
  chenu.agents.task_probe:
    url: http://127.0.0.1:8101/v1/tasks
    token: "{{ caller_token }}"
    input: Comment vérifier la licence RBQ de mon entrepreneur?
    timeout: 30
  register: __probe
"""

RETURN = r"""
status:
  description: The HTTP status of the answer; 0 when no answer came (refused, reset, timed out).
  returned: always
  type: int
  sample: 200
seconds:
  description: How long the answer took, in seconds, to the millisecond.
  returned: always
  type: float
  sample: 0.042
detail:
  description: Why no answer came, when none did.
  returned: when RV(status) is 0
  type: str
"""

import json
import time
from urllib.error import HTTPError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import open_url


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            input=dict(type="str", required=True),
            timeout=dict(type="float", default=120),
        ),
        supports_check_mode=True,
    )
    p = module.params
    body = json.dumps({"input": p["input"]})
    headers = {"Authorization": "Bearer " + p["token"], "Content-Type": "application/json"}
    result = dict(changed=False)
    started = time.monotonic()
    try:
        answer = open_url(p["url"], data=body, headers=headers, method="POST", timeout=p["timeout"])
        answer.read()
        result["status"] = answer.getcode()
    except HTTPError as exc:
        result["status"] = exc.code
    except Exception as exc:  # pylint: disable=broad-except  # any failure to get an answer is status 0
        result["status"] = 0
        result["detail"] = to_text(exc)
    result["seconds"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
