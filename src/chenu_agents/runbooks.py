"""The runbooks' decisions (seed 000 §8): from what the playbooks observed to what they do.

The playbooks gather raw observations (service manager output, log lines, health answers, Prometheus
answers, RabbitMQ queues, /proc); these functions sum them up and decide, so that each rule has a table
test. Exposed to playbooks by the chenu.agents.runbook_decide module. Nothing here touches a host.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import yaml

from .errors import ChenuError, Problem

NOT_RESPONDING_ACTIONS = ("auto", "diagnose", "restart", "fallback", "clear_dead_letters")
ERROR_RATE_ACTIONS = ("auto", "diagnose", "rollback", "fallback")
PERFORMANCE_ACTIONS = ("auto", "diagnose", "tighten_timeouts", "scale_out")
# /health/ready's llm check names the providers in order, `name: state; name: state`: the first is the primary.
_PRIMARY_UNREACHABLE = re.compile(r"^[^;]*: unreachable")
_LOG_ERROR = re.compile(r"ERROR|CRITICAL|Traceback|refusing")
_PID = re.compile(r"(?:pid |MainPID=)(\d+)")
SCALE_OUT_UNAVAILABLE = (
    "not available on this inventory: the runtime runs one process per slot (chenu_runtime_instances_* are not"
    " applied); add a runtime host or a slot behind HAProxy, or raise the slot workers/max_in_flight settings"
)
QUERIES_ADVICE = (
    "listed in the findings: optimise them or add indexes (EXPLAIN ANALYZE), then run maintenance.yml for ANALYZE"
)


class RunbookError(ChenuError):
    """Observations a runbook cannot decide on, or an action it does not know."""


def _check_action(action: str, allowed: tuple[str, ...], runbook: str) -> None:
    if action not in allowed:
        raise RunbookError(
            f"{runbook}: unknown action {action!r}",
            [Problem(runbook, "runbook_action", "one of " + ", ".join(allowed))],
        )


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _column(observations: dict, name: str, index: int) -> Any:
    """The index-th entry of one of the observations' parallel lists, None when it is short."""
    values = observations.get(name) or []
    if not isinstance(values, list):
        raise RunbookError(
            f"observations.{name} is not a list", [Problem("observations", name, "a list, one per slot")]
        )
    return values[index] if index < len(values) else None


# Agent not responding


def service_state(status: str) -> str:
    """RUNNING, or the state the service manager reports (supervisorctl status / systemctl show)."""
    status = status or ""
    if "ActiveState=" in status:
        state = re.search(r"ActiveState=(\S+)", status).group(1)
        return "RUNNING" if state == "active" else state.upper()
    words = status.split()
    return words[1] if len(words) > 1 else "unknown"


def service_pid(status: str) -> int | None:
    found = _PID.search(status or "")
    return int(found.group(1)) if found and int(found.group(1)) > 0 else None


def rss_by_pid(ps_output: str) -> dict[int, int]:
    """`ps -eo pid=,rss=`: resident memory in KiB by process id."""
    found = {}
    for line in (ps_output or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            found[int(fields[0])] = int(fields[1])
    return found


def llm_primary_unreachable(ready: dict | None) -> bool:
    detail = _mapping(_mapping(_mapping(ready).get("checks")).get("llm")).get("detail") or ""
    return bool(_PRIMARY_UNREACHABLE.search(detail))


def slot_findings(
    status: str, log_lines: list[str], ready: dict | None, admin: dict | None, settings: str | None, rss_kb: int | None
) -> dict:
    """What one slot shows: service state, log errors, readiness, LLM chain, memory against its limit."""
    errors = [line for line in log_lines or [] if _LOG_ERROR.search(line)]
    ready = _mapping(ready)
    llm = _mapping(_mapping(ready.get("checks")).get("llm"))
    try:
        configured = _mapping(yaml.safe_load(settings or "") or {})
    except yaml.YAMLError:
        configured = {}
    providers = _mapping(_mapping(admin).get("serving")).get("providers") or configured.get("llm_chain") or []
    return {
        "service": service_state(status),
        "log_errors": errors[-1] if errors else "",
        "log_error_count": len(errors),
        "ready": ready.get("status", "no answer"),
        "checks": _mapping(ready.get("checks")),
        "llm_ok": bool(llm.get("ok", False)),
        "llm_detail": llm.get("detail", "no answer"),
        "primary_unreachable": llm_primary_unreachable(ready),
        "providers": list(providers),
        "memory_limit_mb": configured.get("memory_limit_mb"),
        "rss_mb": round((rss_kb or 0) / 1024, 1),
    }


def queue_summary(name: str, queue: dict | None, dead_letters: dict | None) -> dict:
    """The task queue and its dead-letter queue, from the RabbitMQ management API's answers (uri results)."""
    queue, dead_letters = _mapping(queue), _mapping(dead_letters)
    reachable = queue.get("status") == 200
    return {
        "queue": name,
        "reachable": reachable,
        "messages": _mapping(queue.get("json")).get("messages"),
        "consumers": _mapping(queue.get("json")).get("consumers"),
        "dead_letters": int(_mapping(dead_letters.get("json")).get("messages") or 0),
        "detail": "" if reachable else str(queue.get("msg", "")),
    }


def decide_not_responding(found: dict, dead_letters: int, action: str, memory_ratio: float) -> str:
    """One slot's action: none, restart, fallback, restart_more_memory or clear_dead_letters.

    In auto, the first that applies: the primary LLM unreachable with a fallback configured; memory at
    its limit; dead letters waiting; not running or not ready.
    """
    _check_action(action, NOT_RESPONDING_ACTIONS, "runbook_agent_not_responding")
    if action == "diagnose":
        return "none"
    if action == "fallback" and len(found["providers"]) < 2:
        return "none"
    if action != "auto":
        return action
    if found["primary_unreachable"] and len(found["providers"]) > 1:
        return "fallback"
    limit = found.get("memory_limit_mb")
    if limit and found["rss_mb"] >= limit * memory_ratio:
        return "restart_more_memory"
    if dead_letters > 0:
        return "clear_dead_letters"
    if found["service"] != "RUNNING" or found["ready"] != "ready":
        return "restart"
    return "none"


def plan_not_responding(observations: dict, action: str, memory_ratio: float = 0.9, max_memory_mb: int = 8192) -> dict:
    """Findings per slot and queue, the decision per slot, and what each action changes.

    observations: slots ([{agent, slot}]) and, in the same order, status (service manager output), log
    (lines), ready and admin (the slots' JSON answers or null), settings (YAML text); ps (`ps -eo
    pid=,rss=`); queue_name, queue and dead_letter_queue (uri results: status, json, msg).
    """
    rss = rss_by_pid(observations.get("ps", ""))
    findings, decisions, settings = {}, {}, {}
    queue = queue_summary(
        observations.get("queue_name", ""), observations.get("queue"), observations.get("dead_letter_queue")
    )
    for i, slot in enumerate(observations.get("slots") or []):
        key = f"{slot['agent']}-{slot['slot']}"
        status = _column(observations, "status", i) or ""
        pid = service_pid(status)
        found = slot_findings(
            status,
            _column(observations, "log", i) or [],
            _column(observations, "ready", i),
            _column(observations, "admin", i),
            _column(observations, "settings", i),
            rss.get(pid) if pid else None,
        )
        findings[key] = found
        decision = decide_not_responding(found, queue["dead_letters"], action, memory_ratio)
        decisions[key] = decision
        if decision == "fallback":
            settings[slot["slot"]] = {"llm_chain": found["providers"][1:]}
        elif decision == "restart_more_memory" and found["memory_limit_mb"]:
            settings[slot["slot"]] = {"memory_limit_mb": min(int(found["memory_limit_mb"] * 1.5), max_memory_mb)}
    return {
        "findings": findings,
        "queue": queue,
        "decisions": decisions,
        "settings": settings,
        "clear_dead_letters": "clear_dead_letters" in decisions.values() and queue["dead_letters"] > 0,
        "restart": sorted(key.rsplit("-", 1)[1] for key, decision in decisions.items() if decision != "none"),
    }


# High error rate


def _vector(answer: dict | None) -> list[dict]:
    """The samples of a Prometheus instant query's answer (a uri result), NaN ones left out."""
    data = _mapping(_mapping(_mapping(answer).get("json")).get("data"))
    samples = []
    for sample in data.get("result") or []:
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if not math.isnan(value):
            samples.append({"metric": _mapping(sample.get("metric")), "value": value})
    return samples


def error_patterns(by_code: dict | None, by_slot: dict | None, haproxy: dict | None, audit: Any) -> dict:
    """Requests by code, error ratio by slot and version, HAProxy's 5xx ratio, and the registry's audit."""
    return {
        "prometheus": "reachable" if _mapping(by_code).get("status") == 200 else "unreachable",
        "by_code": {s["metric"].get("code", "?"): round(s["value"], 1) for s in _vector(by_code)},
        "error_ratio_by_slot": {
            " ".join(str(v) for v in s["metric"].values()): round(s["value"], 4) for s in _vector(by_slot)
        },
        "haproxy_5xx_ratio": round(next((s["value"] for s in _vector(haproxy)), 0.0), 4),
        "registry_audit": audit,
    }


def slot_deployments(observations: dict, now: float) -> dict:
    """Per slot: when its `current` link last changed, how long ago, and its readiness checks.

    observations: slots ([{slot}]) and, in the same order, current_mtime (epoch or null) and ready (JSON or null).
    """
    found = {}
    for i, slot in enumerate(observations.get("slots") or []):
        mtime = _column(observations, "current_mtime", i)
        ready = _mapping(_column(observations, "ready", i))
        checks = _mapping(ready.get("checks"))
        found[slot["slot"]] = {
            "deployed_at": datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if mtime else None,
            "deployed_s_ago": int(now - mtime) if mtime else None,
            "ready": ready.get("status", "no answer"),
            "llm": _mapping(checks.get("llm")),
            "primary_unreachable": llm_primary_unreachable(ready),
            "failing_checks": [name for name, check in checks.items() if not _mapping(check).get("ok")],
        }
    return found


def dependency_states(knocks: Any) -> dict[str, str]:
    """{name: up|down}, from a mapping already so, or from wait_for results (item.key, state).

    A knock registered with `failed_when: false` says `failed: false` even when it timed out: only a
    result with the `state` wait_for reports on success counts as up.
    """
    if isinstance(knocks, dict):
        return {str(name): str(state) for name, state in knocks.items()}
    states = {}
    for knock in knocks or []:
        knock = _mapping(knock)
        item = _mapping(knock.get("item"))
        states[str(item.get("key", "?"))] = "up" if knock.get("state") and not knock.get("failed") else "down"
    return states


def decide_error_rate(
    action: str, worst: float, max_error_rate: float, recent: list[str], llm_down: bool, down: list[str]
) -> str:
    """none, rollback, fallback, notify or investigate. In auto, over the limit: a recent deployment is
    rolled back; else an LLM provider down means the fallback; else a dependency down, its owner told."""
    _check_action(action, ERROR_RATE_ACTIONS, "runbook_high_error_rate")
    if action == "diagnose":
        return "none"
    if action != "auto":
        return action
    if worst <= max_error_rate:
        return "none"
    if recent:
        return "rollback"
    if llm_down:
        return "fallback"
    return "notify" if down else "investigate"


def plan_error_rate(
    observations: dict, action: str, max_error_rate: float = 0.05, recent_deploy_s: int = 3600, now: float | None = None
) -> dict:
    """observations: prometheus ({by_code, error_ratio_by_slot, haproxy_5xx_ratio}: uri results), audit,
    slots, current_mtime and ready (see slot_deployments), dependencies (see dependency_states)."""
    now = datetime.now(UTC).timestamp() if now is None else now
    prometheus = _mapping(observations.get("prometheus"))
    errors = error_patterns(
        prometheus.get("by_code"),
        prometheus.get("error_ratio_by_slot"),
        prometheus.get("haproxy_5xx_ratio"),
        observations.get("audit", []),
    )
    slots = slot_deployments(observations, now)
    dependencies = dependency_states(observations.get("dependencies"))
    worst = max([*errors["error_ratio_by_slot"].values(), errors["haproxy_5xx_ratio"], 0.0])
    recent = [
        name for name, s in slots.items() if s["deployed_s_ago"] is not None and s["deployed_s_ago"] < recent_deploy_s
    ]
    down = [name for name, state in dependencies.items() if state == "down"]
    llm_down = any(s["primary_unreachable"] for s in slots.values())
    decision = decide_error_rate(action, worst, max_error_rate, recent, llm_down, down)
    done = {
        "none": "none: the error rate is within the limit",
        "fallback": "switched to the fallback provider (see the agent_not_responding record)",
        "notify": f"dependencies down: {', '.join(down)}: notify their owner or vendor",
        "investigate": (
            "error rate over the limit with no recent deployment and every dependency up: investigate the errors"
            " by code above"
        ),
    }.get(decision, "")
    return {
        "findings": {
            "errors": errors,
            "slots": slots,
            "dependencies": dependencies,
            "worst_error_rate": worst,
            "recent_deployments": recent,
        },
        "decision": decision,
        "down": down,
        "done": done,
    }


# Performance degradation


def resources(loadavg: str, meminfo: str, cores: int, cpu_ratio: float) -> dict:
    """Load per core and memory from /proc/loadavg and /proc/meminfo."""
    try:
        load1 = float((loadavg or "").split()[0])
    except (IndexError, ValueError):
        raise RunbookError(
            "cannot read the load", [Problem("/proc/loadavg", "1-minute load", "a number first")]
        ) from None

    def kib(name: str) -> int:
        found = re.search(rf"^{name}:\s+(\d+)", meminfo or "", re.M)
        return int(found.group(1)) if found else 0

    per_core = load1 / max(int(cores), 1)
    return {
        "cores": int(cores),
        "load1": load1,
        "load_per_core": round(per_core, 2),
        "cpu_saturated": per_core > cpu_ratio,
        "memory_available_mb": round(kib("MemAvailable") / 1024),
        "memory_total_mb": round(kib("MemTotal") / 1024),
    }


def _query_rows(results: list[dict] | None, required: str) -> list[dict]:
    rows = []
    for result in results or []:
        rows += [row for row in _mapping(result).get("query_result") or [] if required in row]
    return rows


def plan_performance(observations: dict, action: str, threshold_s: float = 2.0, cpu_ratio: float = 0.8) -> dict:
    """observations: {loadavg, meminfo, cores, slow_queries, slow_statements (postgresql_query results),
    p95 (uri result), probes: {slot: {status, seconds}}, slots: [slot names]}."""
    _check_action(action, PERFORMANCE_ACTIONS, "runbook_performance_degradation")
    found_resources = resources(observations.get("loadavg", ""), observations.get("meminfo", ""),
                                observations.get("cores", 1), cpu_ratio)  # fmt: skip
    statements = observations.get("slow_statements") or []
    probes = _mapping(observations.get("probes"))
    p95 = {s["metric"].get("slot", "?"): round(s["value"], 3) for s in _vector(observations.get("p95"))}
    findings = {
        "resources": found_resources,
        "slow_queries": _query_rows(observations.get("slow_queries"), "pid"),
        "slow_statements": _query_rows(statements, "calls"),
        "pg_stat_statements": any("query_result" in _mapping(r) for r in statements),
        "prometheus_p95_s": p95,
        "probe_s": {slot: _mapping(probe).get("seconds") for slot, probe in probes.items()},
        "probe_status": {slot: _mapping(probe).get("status") for slot, probe in probes.items()},
    }
    slots = list(observations.get("slots") or probes)
    slow = [
        slot
        for slot in slots
        if (findings["probe_s"].get(slot) or 0) > threshold_s or (p95.get(slot) or 0) > threshold_s
    ]
    slowest = max([*(v or 0 for v in findings["probe_s"].values()), *p95.values(), 0])
    decisions = {
        "tighten_timeouts": action == "tighten_timeouts" or (action == "auto" and slowest > threshold_s),
        "scale_out": action == "scale_out" or (action == "auto" and found_resources["cpu_saturated"]),
        "optimize_queries": bool(findings["slow_queries"] or findings["slow_statements"]),
    }
    if not decisions["tighten_timeouts"]:
        tighten = []
    else:
        tighten = slow if action == "auto" else slots
    return {
        "findings": findings,
        "slow_slots": slow,
        "decisions": decisions,
        "tighten": tighten,
        "scale_out": SCALE_OUT_UNAVAILABLE if decisions["scale_out"] else "not needed",
        "queries": QUERIES_ADVICE if decisions["optimize_queries"] else "none slow",
    }
