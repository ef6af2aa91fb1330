#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_report
short_description: Write the short report of an agent release (markdown and an SVG chart)
version_added: 0.1.0
description:
  - Writes C(<dest>/<agent>-<version>-<strategy>-<start time>.md), a markdown summary of one release (outcome,
    stable and candidate, one table row per traffic step with its verdict and the numbers behind it), with
    two mermaid C(xychart-beta) charts (error rate and p95 latency per step, candidate and stable).
  - Writes the same two charts as a small SVG next to it, C(<same name>.svg), linked from the markdown.
  - The steps' numbers are those C(chenu.agents.rollout_analysis) returns (its C(canary) and C(baseline)).
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  dest:
    description: Directory of the reports; created when missing.
    type: path
    required: true
  release:
    description:
      - The release, with C(agent), C(strategy) (both required), C(outcome), C(reason), C(stable) and
        C(candidate) (each C({slot, version})), C(started), C(ended), C(forced), C(run_id), C(actor), and
        C(steps).
      - Each step is C({name, weight, verdict, reasons, elapsed, canary, baseline, action}), C(canary) and
        C(baseline) being C({requests, errors, error_rate, latency_p50, latency_p95, latency_p99}) or null.
    type: dict
    required: true
attributes:
  check_mode:
    details: Can run in check mode and return the report it would write, writing nothing.
    support: full
  diff_mode:
    details: Does not return a diff; the report is returned whole in RV(markdown).
    support: none
  idempotent:
    details: The same release data writes the same files, and a second run reports no change.
    support: full
requirements:
  - chenu_agents (the Python package of this collection)
seealso:
  - module: chenu.agents.rollout_analysis
"""

EXAMPLES = r"""
- name: Write the release report
  chenu.agents.release_report:
    dest: /var/lib/chenu/reports
    release:
      agent: legal_info
      strategy: canary
      outcome: promoted
      stable: {slot: blue, version: 1.2.0}
      candidate: {slot: green, version: 1.3.0}
      started: "2026-11-21T16:30:00+00:00"
      ended: "2026-11-21T19:30:05+00:00"
      steps:
        - name: 5 %
          weight: 5
          verdict: pass
          reasons: ["canary error rate 0.2 % <= 5 %"]
          canary: {requests: 1800, errors: 4, error_rate: 0.0022, latency_p95: 0.21}
          baseline: {requests: 34000, errors: 70, error_rate: 0.0021, latency_p95: 0.20}
  register: report
"""

RETURN = r"""
path:
  description: The markdown report.
  returned: always
  type: str
  sample: /var/lib/chenu/reports/legal_info-1.3.0-canary-20261121T163000.md
svg:
  description: The SVG chart next to it; null when no traffic step ran.
  returned: always
  type: str
  sample: /var/lib/chenu/reports/legal_info-1.3.0-canary-20261121T163000.svg
markdown:
  description: The report's text.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def write_report(module):
    from chenu_agents import report

    return report.write(module.params["dest"], module.params["release"], check_mode=module.check_mode)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            release=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, write_report)


if __name__ == "__main__":
    main()
