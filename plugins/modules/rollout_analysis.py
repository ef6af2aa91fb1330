#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rollout_analysis
short_description: Judge a canary agent slot on Prometheus metrics, or read an agent's error budget
version_added: 0.1.0
description:
  - With O(check=rollout) (the default), reads the agent runtime's series (requests by code, the request
    duration histogram, tokens, the provider that answered, fallbacks) of the O(canary) slot, and of the
    O(baseline) slot, over the last O(window) seconds, and gives a verdict C(pass), C(fail) or
    C(inconclusive), with the criteria that decided it in RV(decided_by).
  - C(fail) when the canary's error rate is above O(max_error_rate) (criterion C(errors)); its
    O(latency_quantile) latency above O(max_latency_ratio) times the baseline's with significantly more
    of its requests slower than that limit than the quantile allows (C(latency), binomial test); its error
    ratio above the baseline's by more than O(error_rate_tolerance) by a one-sided Fisher exact test
    (C(errors_vs_stable)); its requests ranked slower than the baseline's by a one-sided Mann-Whitney U
    test over every request of the window, with a ratio of medians above O(latency_tolerance)
    (C(latency_shift)); its tokens per answered task above O(max_token_ratio) times the baseline's
    (C(token_cost)); or its share of tasks answered by a fallback LLM provider above the baseline's by
    more than O(fallback_tolerance) (C(fallbacks), Fisher exact test).
  - C(inconclusive) when the canary served fewer than O(min_requests) requests (or the baseline fewer
    than O(min_baseline_requests)), or when Prometheus cannot be queried. Thin traffic and missing
    metrics never give C(pass). A flood of errors among few requests still fails (binomial test), and
    from O(min_points) canary requests so does a regression the tests against the baseline find.
  - Errors are the requests whose C(code) label matches O(error_codes), by default C(5..) like the
    monitoring role's availability objective; a 4xx (including the runtime's 429 back-pressure) is not
    counted unless O(error_codes) says so.
  - With O(duration) above 0, checks every O(interval) seconds until O(duration) has passed, returns at
    the first C(fail), and otherwise gives the last check's verdict.
  - With O(check=error_budget), reads the share of the agent's error budget left over the availability
    window (the monitoring role's C(chenu:agent_slo:error_budget_remaining_ratio)). C(fail) when it is at
    or below O(min_budget_remaining) (exhausted, a release should not promote), C(pass) above,
    C(inconclusive) when unknown.
  - The task never fails for a verdict; the playbook decides what a verdict means. It only reads.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  check:
    description: What to judge.
    type: str
    choices: [rollout, error_budget]
    default: rollout
  prometheus_url:
    description: Base URL of the Prometheus HTTP API.
    type: str
    default: http://127.0.0.1:9090
  timeout:
    description: Seconds to wait for each Prometheus query.
    type: float
    default: 5.0
  agent:
    description: The agent's name, the C(agent) label of the runtime's metrics.
    type: str
    required: true
  canary:
    description: The slot under judgement. Required with O(check=rollout).
    type: dict
    suboptions:
      slot:
        description: The C(slot) label, e.g. C(green) or C(canary).
        type: str
        required: true
      version:
        description: The C(version) label; when omitted, every version of the slot counts.
        type: str
  baseline:
    description:
      - The stable slot the canary is compared with over the same window. Without it, only the error
        rate threshold is checked.
    type: dict
    suboptions:
      slot:
        description: The C(slot) label.
        type: str
        required: true
      version:
        description: The C(version) label; when omitted, every version of the slot counts.
        type: str
  window:
    description: Seconds of metrics each check reads, ending at the check. At least two scrape intervals.
      With O(duration) above 0, a check reads no further back than the watch's start plus two scrape
      intervals, so a release step is judged on its own traffic.
    type: int
    default: 60
  max_error_rate:
    description: Highest acceptable canary error rate (seed 000 §4.1, 5 %).
    type: float
    default: 0.05
  max_latency_ratio:
    description: Highest acceptable ratio of the canary's latency quantile to the baseline's (seed, 2x).
    type: float
    default: 2.0
  latency_quantile:
    description: The latency quantile compared, from the request duration histogram.
    type: float
    default: 0.95
  min_requests:
    description: Fewest canary requests in the window for a verdict; fewer gives C(inconclusive).
    type: int
    default: 50
  min_baseline_requests:
    description: Fewest baseline requests in the window to compare against it; defaults to O(min_requests).
    type: int
  error_codes:
    description: Regular expression over the C(code) label of the requests counted as errors.
    type: str
    default: 5..
  alpha:
    description: Significance level of the one-sided tests (binomial, Fisher exact, Mann-Whitney U).
    type: float
    default: 0.05
  error_rate_tolerance:
    description: Difference of the canary's error ratio over the baseline's (absolute, 0.01 = 1 point)
      tolerated even when significant.
    type: float
    default: 0.01
  latency_tolerance:
    description: Ratio of the canary's median latency to the baseline's tolerated by the Mann-Whitney test
      even when significant; by default O(max_latency_ratio).
    type: float
  min_latency_delta:
    description:
      - Seconds the canary's O(latency_quantile) must also exceed the baseline's by before the latency
        criterion can fail; a ratio between a few milliseconds is noise, not a regression.
    type: float
    default: 0.025
  max_token_ratio:
    description: Highest acceptable ratio of the canary's LLM tokens (input and output) per answered task
      to the baseline's over the same window.
    type: float
    default: 1.5
  fallback_tolerance:
    description: Share of tasks answered by a fallback LLM provider that the canary may have above the
      baseline's (0.05 = 5 points) even when the difference is significant.
    type: float
    default: 0.05
  scrape_interval:
    description: The runtime targets' scrape interval in Prometheus, in seconds (a window shorter than two
      scrapes sees no increase).
    type: float
    default: 15.0
  min_points:
    description: Fewest requests on each side for the Mann-Whitney test; from this many canary requests,
      below O(min_requests), the tests against the baseline may already fail the canary (never pass it).
    type: int
    default: 5
  duration:
    description: Seconds to keep checking; 0 checks once.
    type: float
    default: 0
  interval:
    description: Seconds between checks when O(duration) is above 0.
    type: float
    default: 10
  inconclusive_limit:
    description: Stop early, C(inconclusive), after this many inconclusive checks in a row; 0 never stops early.
    type: int
    default: 0
  min_budget_remaining:
    description: With O(check=error_budget), the share of the error budget (0 to 1) at or below which it
      counts as exhausted.
    type: float
    default: 0.0
attributes:
  check_mode:
    details: Runs in check mode exactly as in normal mode; it only reads.
    support: full
  diff_mode:
    details: Changes nothing, so there is nothing to diff.
    support: none
  idempotent:
    details: Never changes anything; the verdict depends on the metrics at the time of the run.
    support: full
requirements:
  - chenu_agents (the Python package of this collection), with requests, numpy and scipy
notes:
  - Latency quantiles come from the runtime's histogram buckets (growth 2^(1/8), 1 ms to 64 s), good to
    within 9 %; a runtime with another bucket layout is compared on the bounds both share.
  - See docs/analysis.md in the collection for the judge and how it compares to Argo Rollouts, Flagger
    and Kayenta.
seealso:
  - module: chenu.agents.traffic_split
"""

EXAMPLES = r"""
- name: Judge the canary against stable for two minutes, a check every 10 s
  chenu.agents.rollout_analysis:
    prometheus_url: http://127.0.0.1:9090
    agent: legal_info
    canary: {slot: green, version: 1.3.0}
    baseline: {slot: blue, version: 1.2.0}
    window: 30
    scrape_interval: 1
    min_requests: 50
    duration: 120
    interval: 10
  register: analysis

- name: Take the canary out at the first failed check
  chenu.agents.traffic_split:
    agent: legal_info
    weights: {blue: 100, green: 0}
  when: analysis.verdict == 'fail'

- name: Refuse a promotion when the error budget is spent
  chenu.agents.rollout_analysis:
    check: error_budget
    agent: legal_info
  register: budget
  failed_when: budget.verdict == 'fail' and not (force | default(false) | bool)
"""

RETURN = r"""
verdict:
  description: C(pass), C(fail) or C(inconclusive).
  returned: always
  type: str
  sample: fail
reasons:
  description: One sentence per criterion with the numbers behind it; the deciding ones first.
  returned: always
  type: list
  elements: str
  sample: ["canary error rate 19.8 % > 5 % over 30 s (412 requests, 82 errors)"]
decided_by:
  description:
    - The criteria that gave the verdict, most telling first (C(errors), C(latency), C(errors_vs_stable),
      C(latency_shift), C(token_cost), C(fallbacks); C(traffic), C(baseline_traffic) or C(prometheus) for an
      inconclusive). Empty for a pass, which every criterion judged passed.
  returned: O(check=rollout)
  type: list
  elements: str
  sample: [latency, latency_shift]
criteria:
  description: The last check's criteria, each with C(criterion), C(verdict) and C(reason).
  returned: O(check=rollout)
  type: list
  elements: dict
canary:
  description:
    - The canary's numbers over the last check's window, null when Prometheus could not be queried.
    - Keys C(slot), C(version), C(requests), C(errors), C(error_rate), C(by_code), C(latency_p50),
      C(latency_p95), C(latency_p99) (seconds, from the buckets; null without requests), C(latency_mean)
      (exact, from the durations' sum and count), C(answered), C(answered_by) (tasks by the LLM
      provider/model that answered), C(tokens_input), C(tokens_output), C(tokens_per_task), C(fallbacks),
      C(fallback_rate).
  returned: O(check=rollout)
  type: dict
baseline:
  description: The same numbers for the baseline, null without O(baseline).
  returned: O(check=rollout)
  type: dict
comparison:
  description:
    - The tests against the baseline over the window's requests, null without O(baseline).
      C(error_rate) and C(fallbacks) (Fisher exact, one-sided) with C(canary), C(baseline), C(p_value),
      C(effect) (difference of shares), C(significant), C(worse), C(status);
      C(latency) (Mann-Whitney U over the buckets) with C(u), C(p_value), C(superiority) (share of pairs
      where the canary was slower), C(median_canary), C(median_baseline), C(effect) (ratio of medians),
      C(n_canary), C(n_baseline), C(significant), C(worse), C(status) (C(ok) or C(insufficient));
      C(latency_tail) (binomial) with C(limit), C(slower), C(n), C(share), C(p_value), C(significant).
  returned: O(check=rollout)
  type: dict
checks:
  description: Every check, each with C(at), C(window), C(verdict), C(reasons), C(decided_by), C(criteria),
    C(canary), C(baseline), C(comparison).
  returned: O(check=rollout)
  type: list
  elements: dict
started:
  description: When the first check ran (ISO 8601, UTC).
  returned: O(check=rollout)
  type: str
ended:
  description: When the last check ended (ISO 8601, UTC).
  returned: O(check=rollout)
  type: str
elapsed:
  description: Seconds from the first check to the end.
  returned: O(check=rollout)
  type: float
ended_early:
  description: True when a fail or O(inconclusive_limit) stopped the watch before O(duration).
  returned: O(check=rollout)
  type: bool
error_budget:
  description: C(agent), C(remaining_ratio), C(availability_ratio), C(availability_target), C(budget_ratio),
    C(min_remaining), C(exhausted) (null when unknown).
  returned: O(check=error_budget)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module

SLOT_SPEC = dict(
    type="dict",
    options=dict(slot=dict(type="str", required=True), version=dict(type="str")),
)


def analyse(module):
    from chenu_agents import analysis

    p = module.params
    if p["check"] == "error_budget":
        out = analysis.error_budget(
            p["prometheus_url"], p["agent"], min_remaining=p["min_budget_remaining"], timeout=p["timeout"]
        )
        return dict(verdict=out.pop("verdict"), reasons=out.pop("reasons"), error_budget=out, changed=False)
    settings = analysis.Settings(
        agent=p["agent"],
        canary=analysis.Slot(**p["canary"]),
        baseline=analysis.Slot(**p["baseline"]) if p["baseline"] else None,
        **{
            key: p[key]
            for key in (
                "window", "max_error_rate", "max_latency_ratio", "latency_quantile", "min_requests",
                "min_baseline_requests", "error_codes", "alpha", "error_rate_tolerance", "latency_tolerance",
                "max_token_ratio", "fallback_tolerance", "scrape_interval", "min_points", "min_latency_delta",
            )
        },
    )  # fmt: skip
    prom = analysis.Prometheus(p["prometheus_url"], timeout=p["timeout"])
    watched = analysis.watch(
        prom, settings, duration=p["duration"], interval=p["interval"], inconclusive_limit=p["inconclusive_limit"]
    )
    return dict(watched.to_dict(), changed=False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            check=dict(type="str", default="rollout", choices=["rollout", "error_budget"]),
            prometheus_url=dict(type="str", default="http://127.0.0.1:9090"),
            timeout=dict(type="float", default=5.0),
            agent=dict(type="str", required=True),
            canary=SLOT_SPEC,
            baseline=SLOT_SPEC,
            window=dict(type="int", default=60),
            max_error_rate=dict(type="float", default=0.05),
            max_latency_ratio=dict(type="float", default=2.0),
            latency_quantile=dict(type="float", default=0.95),
            min_requests=dict(type="int", default=50),
            min_baseline_requests=dict(type="int"),
            error_codes=dict(type="str", default="5.."),
            alpha=dict(type="float", default=0.05),
            error_rate_tolerance=dict(type="float", default=0.01),
            latency_tolerance=dict(type="float"),
            max_token_ratio=dict(type="float", default=1.5, no_log=False),
            min_latency_delta=dict(type="float", default=0.025),
            fallback_tolerance=dict(type="float", default=0.05),
            scrape_interval=dict(type="float", default=15.0),
            min_points=dict(type="int", default=5),
            duration=dict(type="float", default=0),
            interval=dict(type="float", default=10),
            inconclusive_limit=dict(type="int", default=0),
            min_budget_remaining=dict(type="float", default=0.0),
        ),
        required_if=[("check", "rollout", ("canary",))],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, analyse)


if __name__ == "__main__":
    main()
