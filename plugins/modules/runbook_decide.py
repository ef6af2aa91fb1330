#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: runbook_decide
short_description: Sum up what an incident runbook observed and decide what it does
version_added: 0.1.0
description:
  - The decisions of the incident runbooks of seed 000 section 8 (C(playbooks/runbook_*.yml)) - from the raw
    observations a runbook gathered (service manager output, log lines, health answers, Prometheus and
    RabbitMQ answers, C(/proc)), the findings, the decision and what each action changes.
  - The rules live in the C(chenu_agents.runbooks) Python module, each with a table test; this module
    translates arguments and results. It reads nothing from the host and changes nothing.
  - C(agent_not_responding), in O(action=auto), per slot, the first that applies - the primary LLM provider
    unreachable with a fallback configured, C(fallback) (the chain without its first provider); memory at
    O(memory_ratio) of its limit, C(restart_more_memory) (1.5 times the limit, at most O(max_memory_mb));
    dead letters waiting, C(clear_dead_letters); not running or not ready, C(restart); else C(none).
    Every slot with an action is restarted.
  - C(high_error_rate), in O(action=auto), when the worst error ratio (per slot and version, or HAProxy's
    5xx ratio) is over O(max_error_rate) - a slot deployed less than O(recent_deploy_s) ago, C(rollback);
    an LLM provider unreachable, C(fallback); a dependency down, C(notify); else C(investigate).
  - C(performance_degradation), in O(action=auto) - a slot slower than O(latency_threshold_s) (one timed task
    or Prometheus p95) gets a tighter LLM timeout; a load per core over O(cpu_ratio) calls for scaling out;
    slow queries are listed.
author:
  - chenu.agents maintainers (@chenu-agents)
requirements:
  - the chenu_agents Python package (shipped in this collection's C(src/))
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  runbook:
    description: Which runbook's rules apply.
    type: str
    required: true
    choices: [agent_not_responding, high_error_rate, performance_degradation]
  action:
    description:
      - C(auto) decides from the observations; C(diagnose) decides nothing; any other forces that action.
      - C(agent_not_responding) knows C(restart), C(fallback) (none for a slot with one provider) and
        C(clear_dead_letters); C(high_error_rate) C(rollback) and C(fallback); C(performance_degradation)
        C(tighten_timeouts) (every slot) and C(scale_out).
    type: str
    default: auto
  observations:
    description:
      - What the runbook gathered, as registered by its tasks.
      - For C(agent_not_responding) - C(slots), a list of C(agent), C(slot), C(status) (supervisorctl status or
        systemctl show output), C(log) (lines), C(ready) (the C(/health/ready) JSON or null), C(admin) (the
        C(/admin/status) JSON or null), C(settings) (the slot's settings file, YAML text); C(ps) (output of
        C(ps -eo pid=,rss=)); C(queue_name); C(queue) and C(dead_letter_queue) (uri results of the RabbitMQ
        management API - C(status), C(json), C(msg)).
      - For C(high_error_rate) - C(prometheus) with C(by_code), C(error_ratio_by_slot) and C(haproxy_5xx_ratio)
        (uri results of instant queries); C(audit) (the registry's audit rows, or why they could not be read);
        C(slots), a list of C(slot), C(current_mtime) (when its C(current) link changed, or null) and C(ready);
        C(dependencies), a mapping of name to C(up) or C(down).
      - For C(performance_degradation) - C(loadavg) and C(meminfo) (the text of C(/proc/loadavg) and
        C(/proc/meminfo)); C(cores); C(slow_queries) and C(slow_statements) (postgresql_query results);
        C(p95) (uri result of a Prometheus query by slot); C(probes), a mapping of slot to C(status) and
        C(seconds); C(slots), the slot names.
    type: dict
    required: true
  memory_ratio:
    description: C(agent_not_responding) - resident memory at this fraction of the limit counts as at the limit.
    type: float
    default: 0.9
  max_memory_mb:
    description: C(agent_not_responding) - the highest memory limit C(restart_more_memory) sets.
    type: int
    default: 8192
  max_error_rate:
    description: C(high_error_rate) - the error ratio (0 to 1) over which the runbook acts.
    type: float
    default: 0.05
  recent_deploy_s:
    description: C(high_error_rate) - a slot whose version changed less than this many seconds ago is recent.
    type: int
    default: 3600
  latency_threshold_s:
    description: C(performance_degradation) - a slot slower than this (seconds) is slow (seed 000 section 5.1 - 2 s).
    type: float
    default: 2.0
  cpu_ratio:
    description: C(performance_degradation) - a 1-minute load per core over this is saturated.
    type: float
    default: 0.8
attributes:
  check_mode:
    details: Reads only its arguments; runs the same in check mode.
    support: full
  diff_mode:
    details: Nothing changes, so there is no diff.
    support: none
  idempotent:
    details: Never changes anything.
    support: full
notes:
  - C(docs/operations.md) in this collection describes the runbooks built on this module.
seealso:
  - module: chenu.agents.task_probe
"""

EXAMPLES = r"""
- name: Decide, slot by slot
  chenu.agents.runbook_decide:
    runbook: agent_not_responding
    action: auto
    observations:
      slots:
        - agent: legal_info
          slot: green
          status: "chenu-agent-legal_info-green   STOPPED   Dec 02 01:00 PM"
          log: []
          ready: null
          admin: null
          settings: "llm_chain: [scripted/legal_info]\nmemory_limit_mb: 512\n"
      ps: ""
      queue_name: chenu.tasks.legal_info
      queue: {status: 200, json: {messages: 0, consumers: 1}}
      dead_letter_queue: {status: 200, json: {messages: 0}}
  register: __plan

- name: Restart what was decided
  ansible.builtin.debug:
    msg: "{{ __plan.decisions }} -> restart {{ __plan.restart }}"

- name: Decide on a high error rate
  chenu.agents.runbook_decide:
    runbook: high_error_rate
    max_error_rate: 0.05
    observations:
      prometheus:
        by_code: "{{ __prom.results[0] }}"
        error_ratio_by_slot: "{{ __prom.results[1] }}"
        haproxy_5xx_ratio: "{{ __prom.results[2] }}"
      audit: []
      slots: [{slot: blue, current_mtime: 1764680000.0, ready: {status: ready, checks: {}}}]
      dependencies: {postgresql: up, rabbitmq: up, redis: up}
"""

RETURN = r"""
findings:
  description:
    - What the observations show. C(agent_not_responding) - per C(agent-slot), C(service), C(log_errors) (the last
      error line), C(log_error_count), C(ready), C(checks), C(llm_ok), C(llm_detail), C(primary_unreachable),
      C(providers), C(memory_limit_mb), C(rss_mb).
    - C(high_error_rate) - C(errors) (C(prometheus), C(by_code), C(error_ratio_by_slot), C(haproxy_5xx_ratio),
      C(registry_audit)), C(slots) (per slot C(deployed_at), C(deployed_s_ago), C(ready), C(llm),
      C(primary_unreachable), C(failing_checks)), C(dependencies), C(worst_error_rate), C(recent_deployments).
    - C(performance_degradation) - C(resources), C(slow_queries), C(slow_statements), C(pg_stat_statements),
      C(prometheus_p95_s), C(probe_s), C(probe_status).
  returned: success
  type: dict
queue:
  description: C(agent_not_responding) - the task queue (C(queue), C(reachable), C(messages), C(consumers), C(dead_letters), C(detail)).
  returned: when O(runbook=agent_not_responding)
  type: dict
decisions:
  description:
    - C(agent_not_responding) - the action per C(agent-slot) (C(none), C(restart), C(fallback), C(restart_more_memory),
      C(clear_dead_letters)).
    - C(performance_degradation) - C(tighten_timeouts), C(scale_out) and C(optimize_queries), each true or false.
  returned: when O(runbook) is C(agent_not_responding) or C(performance_degradation)
  type: dict
  sample: {legal_info-green: restart}
settings:
  description: C(agent_not_responding) - per slot name, the settings to merge into its file (C(llm_chain) or C(memory_limit_mb)).
  returned: when O(runbook=agent_not_responding)
  type: dict
  sample: {green: {llm_chain: [scripted/legal_info]}}
clear_dead_letters:
  description: C(agent_not_responding) - whether to save and clear the dead letters.
  returned: when O(runbook=agent_not_responding)
  type: bool
restart:
  description: C(agent_not_responding) - the slot names to restart.
  returned: when O(runbook=agent_not_responding)
  type: list
  elements: str
  sample: [green]
decision:
  description: C(high_error_rate) - C(none), C(rollback), C(fallback), C(notify) or C(investigate).
  returned: when O(runbook=high_error_rate)
  type: str
  sample: rollback
down:
  description: C(high_error_rate) - the dependencies down.
  returned: when O(runbook=high_error_rate)
  type: list
  elements: str
done:
  description: C(high_error_rate) - what the decision amounts to, in a sentence; empty for C(rollback), which the playbook words.
  returned: when O(runbook=high_error_rate)
  type: str
slow_slots:
  description: C(performance_degradation) - the slots slower than O(latency_threshold_s).
  returned: when O(runbook=performance_degradation)
  type: list
  elements: str
tighten:
  description: C(performance_degradation) - the slots whose LLM timeout is tightened.
  returned: when O(runbook=performance_degradation)
  type: list
  elements: str
scale_out:
  description: C(performance_degradation) - what scaling out amounts to here, or C(not needed).
  returned: when O(runbook=performance_degradation)
  type: str
queries:
  description: C(performance_degradation) - what to do about slow queries, or C(none slow).
  returned: when O(runbook=performance_degradation)
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def decide(module):
    from chenu_agents import runbooks

    p = module.params
    observations = p["observations"]
    if p["runbook"] == "agent_not_responding":
        plan = runbooks.plan_not_responding(observations, p["action"], p["memory_ratio"], p["max_memory_mb"])
    elif p["runbook"] == "high_error_rate":
        plan = runbooks.plan_error_rate(observations, p["action"], p["max_error_rate"], p["recent_deploy_s"])
    else:
        plan = runbooks.plan_performance(observations, p["action"], p["latency_threshold_s"], p["cpu_ratio"])
    return dict(changed=False, **plan)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            runbook=dict(
                type="str",
                required=True,
                choices=["agent_not_responding", "high_error_rate", "performance_degradation"],
            ),
            action=dict(type="str", default="auto"),
            observations=dict(type="dict", required=True),
            memory_ratio=dict(type="float", default=0.9),
            max_memory_mb=dict(type="int", default=8192),
            max_error_rate=dict(type="float", default=0.05),
            recent_deploy_s=dict(type="int", default=3600),
            latency_threshold_s=dict(type="float", default=2.0),
            cpu_ratio=dict(type="float", default=0.8),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, decide)


if __name__ == "__main__":
    main()
