"""chenu_agents.runbooks: the incident runbooks' rules, as tables."""

from __future__ import annotations

import pytest

from chenu_agents import runbooks
from chenu_agents.runbooks import RunbookError

SUPERVISOR_RUNNING = "chenu-agent-legal_info-green   RUNNING   pid 4242, uptime 0:10:00"
SUPERVISOR_STOPPED = "chenu-agent-legal_info-green   STOPPED   Dec 02 01:00 PM"
SYSTEMD_ACTIVE = "ActiveState=active\nMainPID=777"
SYSTEMD_FAILED = "ActiveState=failed\nMainPID=0"


@pytest.mark.parametrize(
    ("status", "state", "pid"),
    [
        (SUPERVISOR_RUNNING, "RUNNING", 4242),
        (SUPERVISOR_STOPPED, "STOPPED", None),
        ("chenu-agent-x   FATAL     Exited too quickly", "FATAL", None),
        (SYSTEMD_ACTIVE, "RUNNING", 777),
        (SYSTEMD_FAILED, "FAILED", None),
        ("", "unknown", None),
        ("no-such-process", "unknown", None),
    ],
)
def test_service_state_and_pid(status: str, state: str, pid: int | None) -> None:
    assert runbooks.service_state(status) == state
    assert runbooks.service_pid(status) == pid


def test_rss_by_pid_reads_ps_and_skips_noise() -> None:
    assert runbooks.rss_by_pid("    1  1024\n 4242 524288\nheader line\n\n  9\n") == {1: 1024, 4242: 524288}


READY = {"status": "ready", "checks": {"llm": {"ok": True, "detail": "scripted/legal_info: ok"}, "db": {"ok": True}}}
PRIMARY_DOWN = {
    "status": "not ready",
    "checks": {"llm": {"ok": False, "detail": "openai/gpt: unreachable; scripted/legal_info: ok"}, "db": {"ok": True}},
}
FALLBACK_DOWN = {
    "status": "ready",
    "checks": {"llm": {"ok": True, "detail": "openai/gpt: ok; scripted/legal_info: unreachable"}},
}


@pytest.mark.parametrize(
    ("ready", "unreachable"),
    [(READY, False), (PRIMARY_DOWN, True), (FALLBACK_DOWN, False), (None, False), ({"checks": None}, False)],
)
def test_only_the_first_provider_unreachable_counts(ready: dict | None, unreachable: bool) -> None:
    assert runbooks.llm_primary_unreachable(ready) is unreachable


def test_slot_findings_sum_up_one_slot() -> None:
    found = runbooks.slot_findings(
        SUPERVISOR_RUNNING,
        ["INFO started", "ERROR provider openai: timeout", "INFO ok", "Traceback (most recent call last):"],
        PRIMARY_DOWN,
        None,
        "llm_chain: [openai/gpt, scripted/legal_info]\nmemory_limit_mb: 512\n",
        400 * 1024,
    )
    assert found == {
        "service": "RUNNING",
        "log_errors": "Traceback (most recent call last):",
        "log_error_count": 2,
        "ready": "not ready",
        "checks": PRIMARY_DOWN["checks"],
        "llm_ok": False,
        "llm_detail": "openai/gpt: unreachable; scripted/legal_info: ok",
        "primary_unreachable": True,
        "providers": ["openai/gpt", "scripted/legal_info"],
        "memory_limit_mb": 512,
        "rss_mb": 400.0,
    }


@pytest.mark.parametrize(
    ("admin", "settings", "providers"),
    [
        ({"serving": {"providers": ["a/x", "b/y"]}}, "llm_chain: [c/z]", ["a/x", "b/y"]),
        (None, "llm_chain: [c/z]", ["c/z"]),
        (None, ": not yaml: [", []),
        (None, None, []),
    ],
)
def test_the_chain_comes_from_the_slot_else_its_settings(admin, settings, providers) -> None:
    assert runbooks.slot_findings("", [], None, admin, settings, None)["providers"] == providers


def found(**changes) -> dict:
    base = {
        "service": "RUNNING",
        "ready": "ready",
        "primary_unreachable": False,
        "providers": ["scripted/legal_info"],
        "memory_limit_mb": 1000,
        "rss_mb": 100.0,
    }
    return {**base, **changes}


TWO = ["openai/gpt", "scripted/legal_info"]


@pytest.mark.parametrize(
    ("slot", "dead_letters", "action", "decision"),
    [
        (found(), 0, "auto", "none"),
        (found(service="STOPPED", ready="no answer"), 0, "auto", "restart"),
        (found(ready="not ready"), 0, "auto", "restart"),
        (found(primary_unreachable=True, providers=TWO), 0, "auto", "fallback"),
        # one provider: nothing to fall back to, so the slot is restarted as not ready
        (found(primary_unreachable=True, ready="not ready"), 0, "auto", "restart"),
        (found(rss_mb=900.0), 0, "auto", "restart_more_memory"),
        (found(rss_mb=899.9), 0, "auto", "none"),
        (found(memory_limit_mb=None, rss_mb=5000.0), 0, "auto", "none"),
        (found(), 3, "auto", "clear_dead_letters"),
        # the order of the rules: fallback before memory before dead letters before restart
        (found(primary_unreachable=True, providers=TWO, rss_mb=950.0), 3, "auto", "fallback"),
        (found(rss_mb=950.0, service="STOPPED"), 3, "auto", "restart_more_memory"),
        (found(service="STOPPED"), 3, "auto", "clear_dead_letters"),
        (found(service="STOPPED"), 0, "diagnose", "none"),
        (found(), 0, "restart", "restart"),
        (found(), 0, "fallback", "none"),
        (found(providers=TWO), 0, "fallback", "fallback"),
        (found(), 0, "clear_dead_letters", "clear_dead_letters"),
    ],
)
def test_decide_not_responding(slot: dict, dead_letters: int, action: str, decision: str) -> None:
    assert runbooks.decide_not_responding(slot, dead_letters, action, 0.9) == decision


@pytest.mark.parametrize("decide", [lambda a: runbooks.decide_not_responding(found(), 0, a, 0.9),
                                    lambda a: runbooks.decide_error_rate(a, 0, 0, [], False, []),
                                    lambda a: runbooks.plan_performance({"loadavg": "0 0 0"}, a)])  # fmt: skip
def test_an_unknown_action_is_refused_naming_the_allowed_ones(decide) -> None:
    with pytest.raises(RunbookError) as caught:
        decide("reboot_everything")
    assert "unknown action 'reboot_everything'" in str(caught.value)
    assert caught.value.problems[0].field == "runbook_action" and "auto" in caught.value.problems[0].expected


def not_responding(status: str, ready: dict | None, settings: str, dead_letters: int = 0) -> dict:
    return {
        "slots": [{"agent": "legal_info", "slot": "green", "port": 8102}],
        "status": [status],
        "log": [[]],
        "ready": [ready],
        "admin": [None],
        "settings": [settings],
        "ps": "4242 921600\n",
        "queue_name": "chenu.tasks.legal_info",
        "queue": {"status": 200, "json": {"messages": 2, "consumers": 1}},
        "dead_letter_queue": {"status": 200, "json": {"messages": dead_letters}},
    }


def test_plan_not_responding_restarts_a_stopped_slot() -> None:
    plan = runbooks.plan_not_responding(not_responding(SUPERVISOR_STOPPED, None, "llm_chain: [scripted/x]"), "auto")
    assert plan["findings"]["legal_info-green"]["service"] == "STOPPED"
    assert plan["findings"]["legal_info-green"]["ready"] == "no answer"
    assert plan["decisions"] == {"legal_info-green": "restart"}
    assert plan["restart"] == ["green"] and plan["settings"] == {} and plan["clear_dead_letters"] is False
    assert plan["queue"] == {
        "queue": "chenu.tasks.legal_info",
        "reachable": True,
        "messages": 2,
        "consumers": 1,
        "dead_letters": 0,
        "detail": "",
    }


def test_plan_not_responding_falls_back_to_the_rest_of_the_chain() -> None:
    observed = not_responding(SUPERVISOR_RUNNING, PRIMARY_DOWN, "llm_chain: [openai/gpt, scripted/legal_info]\n")
    plan = runbooks.plan_not_responding(observed, "auto")
    assert plan["decisions"] == {"legal_info-green": "fallback"}
    assert plan["settings"] == {"green": {"llm_chain": ["scripted/legal_info"]}}
    assert plan["restart"] == ["green"]


@pytest.mark.parametrize(("limit", "new"), [(600, 900), (7000, 8192)])
def test_plan_not_responding_gives_half_as_much_memory_again_up_to_the_ceiling(limit: int, new: int) -> None:
    observed = not_responding(SUPERVISOR_RUNNING, READY, f"memory_limit_mb: {limit}\n")
    observed["ps"] = f"4242 {limit * 1024}\n"
    plan = runbooks.plan_not_responding(observed, "auto", 0.9, 8192)
    assert plan["findings"]["legal_info-green"]["rss_mb"] == float(limit)
    assert plan["decisions"] == {"legal_info-green": "restart_more_memory"}
    assert plan["settings"] == {"green": {"memory_limit_mb": new}}


def test_plan_not_responding_clears_dead_letters_only_when_there_are_some() -> None:
    plan = runbooks.plan_not_responding(not_responding(SUPERVISOR_RUNNING, READY, "", dead_letters=4), "auto")
    assert plan["decisions"] == {"legal_info-green": "clear_dead_letters"} and plan["clear_dead_letters"] is True
    plan = runbooks.plan_not_responding(not_responding(SUPERVISOR_RUNNING, READY, ""), "clear_dead_letters")
    assert plan["clear_dead_letters"] is False and plan["restart"] == ["green"]


def test_an_unreachable_queue_says_why() -> None:
    observed = not_responding(SUPERVISOR_RUNNING, READY, "")
    observed["queue"] = {"status": -1, "msg": "Connection refused"}
    observed["dead_letter_queue"] = {"status": -1}
    plan = runbooks.plan_not_responding(observed, "diagnose")
    assert plan["queue"]["reachable"] is False and plan["queue"]["detail"] == "Connection refused"
    assert plan["queue"]["dead_letters"] == 0 and plan["decisions"] == {"legal_info-green": "none"}


def test_observations_must_be_lists_one_per_slot() -> None:
    observed = not_responding(SUPERVISOR_RUNNING, READY, "")
    observed["status"] = SUPERVISOR_RUNNING
    with pytest.raises(RunbookError, match=r"observations\.status is not a list"):
        runbooks.plan_not_responding(observed, "auto")


@pytest.mark.parametrize(
    ("action", "worst", "recent", "llm_down", "down", "decision"),
    [
        ("auto", 0.01, ["green"], True, ["redis"], "none"),
        ("auto", 0.05, [], False, [], "none"),  # at the limit is within it
        ("auto", 0.2, ["green"], True, ["redis"], "rollback"),
        ("auto", 0.2, [], True, ["redis"], "fallback"),
        ("auto", 0.2, [], False, ["redis"], "notify"),
        ("auto", 0.2, [], False, [], "investigate"),
        ("diagnose", 0.9, ["green"], True, [], "none"),
        ("rollback", 0.0, [], False, [], "rollback"),
        ("fallback", 0.0, [], False, [], "fallback"),
    ],
)
def test_decide_error_rate(action, worst, recent, llm_down, down, decision) -> None:
    assert runbooks.decide_error_rate(action, worst, 0.05, recent, llm_down, down) == decision


def vector(*samples: tuple[dict, str]) -> dict:
    return {"status": 200, "json": {"data": {"result": [{"metric": m, "value": [1.0, v]} for m, v in samples]}}}


NOW = 1_764_700_000.0


def error_rate(slot_ratio: str = "0.5", mtimes=(NOW - 600, NOW - 7200), deps=None) -> dict:
    return {
        "prometheus": {
            "by_code": vector(({"code": "200"}, "95.04"), ({"code": "500"}, "5")),
            "error_ratio_by_slot": vector(
                ({"slot": "blue", "version": "1.2.0"}, slot_ratio), ({"slot": "green"}, "NaN")
            ),
            "haproxy_5xx_ratio": vector(({}, "0.01234")),
        },
        "audit": [],
        "slots": [{"agent": "legal_info", "slot": "blue"}, {"agent": "legal_info", "slot": "green"}],
        "current_mtime": list(mtimes),
        "ready": [READY, PRIMARY_DOWN],
        "dependencies": deps
        if deps is not None
        else [
            {"item": {"key": "postgresql"}, "failed": False, "state": "started", "elapsed": 0},
            # failed_when: false turns a timeout into failed: false; no `state` tells it apart
            {"item": {"key": "redis"}, "failed": False, "msg": "Timeout when waiting for 127.0.0.1:6379"},
        ],
    }


def test_plan_error_rate_sums_the_patterns_and_rolls_back_a_recent_deployment() -> None:
    plan = runbooks.plan_error_rate(error_rate(), "auto", 0.05, 3600, now=NOW)
    errors = plan["findings"]["errors"]
    assert errors["prometheus"] == "reachable"
    assert errors["by_code"] == {"200": 95.0, "500": 5.0}
    assert errors["error_ratio_by_slot"] == {"blue 1.2.0": 0.5}  # NaN (no traffic) left out
    assert errors["haproxy_5xx_ratio"] == 0.0123
    slots = plan["findings"]["slots"]
    assert slots["blue"]["deployed_s_ago"] == 600 and slots["blue"]["deployed_at"] == "2025-12-02T18:16:40Z"
    assert slots["green"]["primary_unreachable"] is True and slots["green"]["failing_checks"] == ["llm"]
    assert plan["findings"]["dependencies"] == {"postgresql": "up", "redis": "down"}
    assert plan["findings"]["worst_error_rate"] == 0.5
    assert plan["findings"]["recent_deployments"] == ["blue"]
    assert plan["decision"] == "rollback" and plan["down"] == ["redis"] and plan["done"] == ""


@pytest.mark.parametrize(
    ("observed", "recent_s", "decision", "done"),
    [
        (error_rate(slot_ratio="0.01"), 3600, "none", "none: the error rate is within the limit"),
        (error_rate(), 0, "fallback", "switched to the fallback provider (see the agent_not_responding record)"),
        (
            {**error_rate(), "ready": [READY, READY]},
            0,
            "notify",
            "dependencies down: redis: notify their owner or vendor",
        ),
        (
            {**error_rate(deps={"postgresql": "up"}), "ready": [READY, READY]},
            0,
            "investigate",
            "investigate the errors",
        ),
        (error_rate(mtimes=(None, None)), 10**9, "fallback", "switched to the fallback provider"),
    ],
)
def test_plan_error_rate_says_what_each_decision_amounts_to(observed, recent_s, decision, done) -> None:
    plan = runbooks.plan_error_rate(observed, "auto", 0.05, recent_s, now=NOW)
    assert plan["decision"] == decision
    assert done in plan["done"]


def test_an_unreachable_prometheus_reads_as_no_errors() -> None:
    observed = {**error_rate(), "prometheus": {"by_code": {"status": -1, "msg": "refused"}}}
    plan = runbooks.plan_error_rate(observed, "auto", 0.05, 3600, now=NOW)
    assert plan["findings"]["errors"]["prometheus"] == "unreachable"
    assert plan["findings"]["worst_error_rate"] == 0.0 and plan["decision"] == "none"


MEMINFO = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n"


@pytest.mark.parametrize(
    ("loadavg", "cores", "per_core", "saturated"),
    [("1.00 0.5 0.2 1/100 42", 4, 0.25, False), ("3.3 1 1 1/1 1", 4, 0.82, True), ("2 1 1", 0, 2.0, True)],
)
def test_resources(loadavg: str, cores: int, per_core: float, saturated: bool) -> None:
    found = runbooks.resources(loadavg, MEMINFO, cores, 0.8)
    assert found["load_per_core"] == per_core and found["cpu_saturated"] is saturated
    assert (found["memory_available_mb"], found["memory_total_mb"]) == (8000, 16000)


def test_an_unreadable_load_is_said() -> None:
    with pytest.raises(RunbookError, match="cannot read the load"):
        runbooks.resources("", MEMINFO, 2, 0.8)


def performance(probe_s: float, p95: str = "0.1", loadavg: str = "0.1 0 0", statements=None) -> dict:
    return {
        "loadavg": loadavg,
        "meminfo": MEMINFO,
        "cores": 2,
        "slow_queries": [{"query_result": []}, {"query_result": [{"pid": 9, "seconds": 12.0, "query": "SELECT"}]}],
        "slow_statements": statements if statements is not None else [{"failed": True, "msg": "no pg_stat_statements"}],
        "p95": vector(({"slot": "green"}, p95)),
        "probes": {"blue": {"status": 200, "seconds": 0.05}, "green": {"status": 200, "seconds": probe_s}},
        "slots": ["blue", "green"],
    }


@pytest.mark.parametrize(
    ("observed", "action", "tighten", "slow", "scale_out"),
    [
        (performance(0.1), "auto", [], [], False),
        (performance(3.0), "auto", ["green"], ["green"], False),
        (performance(0.1, p95="2.5"), "auto", ["green"], ["green"], False),
        (performance(0.1, loadavg="1.7 1 1"), "auto", [], [], True),
        (performance(3.0), "diagnose", [], ["green"], False),
        (performance(0.1), "tighten_timeouts", ["blue", "green"], [], False),
        (performance(0.1), "scale_out", [], [], True),
    ],
)
def test_plan_performance(observed: dict, action: str, tighten: list, slow: list, scale_out: bool) -> None:
    plan = runbooks.plan_performance(observed, action, 2.0, 0.8)
    assert plan["tighten"] == tighten and plan["slow_slots"] == slow
    assert plan["decisions"]["tighten_timeouts"] is bool(tighten)
    assert plan["decisions"]["scale_out"] is scale_out
    assert plan["scale_out"] == (runbooks.SCALE_OUT_UNAVAILABLE if scale_out else "not needed")


def test_plan_performance_lists_slow_queries_and_reads_pg_stat_statements_when_there() -> None:
    plan = runbooks.plan_performance(performance(0.1), "auto")
    findings = plan["findings"]
    assert findings["slow_queries"] == [{"pid": 9, "seconds": 12.0, "query": "SELECT"}]
    assert findings["pg_stat_statements"] is False and findings["slow_statements"] == []
    assert findings["probe_s"] == {"blue": 0.05, "green": 0.1} and findings["probe_status"]["green"] == 200
    assert findings["prometheus_p95_s"] == {"green": 0.1}
    assert plan["decisions"]["optimize_queries"] is True and plan["queries"] == runbooks.QUERIES_ADVICE
    statement = {"database": "registry", "calls": 3, "mean_ms": 9000.0, "query": "SELECT 1"}
    plan = runbooks.plan_performance(performance(0.1, statements=[{"query_result": [statement]}]), "auto")
    assert plan["findings"]["pg_stat_statements"] is True and plan["findings"]["slow_statements"] == [statement]


@pytest.mark.parametrize(
    ("knocks", "states"),
    [
        ({"postgresql": "up", "redis": "down"}, {"postgresql": "up", "redis": "down"}),
        ([{"item": {"key": "redis"}, "state": "started"}], {"redis": "up"}),
        ([{"item": {"key": "redis"}, "state": "started", "failed": True}], {"redis": "down"}),
        ([{"item": {"key": "redis"}, "failed": False, "msg": "Timeout"}], {"redis": "down"}),
        ([{"item": {"key": "redis"}, "failed": True, "msg": "Timeout"}], {"redis": "down"}),
        (None, {}),
    ],
)
def test_dependency_states(knocks, states) -> None:
    assert runbooks.dependency_states(knocks) == states
