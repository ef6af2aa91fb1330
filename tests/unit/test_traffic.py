"""Weight planning, request validation and parsing of the HAProxy runtime API's answers."""

from __future__ import annotations

import pytest

from chenu_agents.traffic import (
    HAProxyRuntime,
    HAProxyTraffic,
    SlotTraffic,
    TrafficError,
    order_steps,
    parse_servers_state,
    plan_targets,
    refusals,
    slot_from_state,
    validate_request,
)

STATE_DUMP = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 be_legal_info 1 blue 127.0.0.1 2 0 100 100 35 15 3 3 6 0 0 0 - 8101 - 0 0 - - 0
4 be_legal_info 2 green 127.0.0.1 0 0 0 0 35 15 3 3 6 0 0 0 - 8102 - 0 0 - - 0
5 be_other 1 blue 127.0.0.1 2 1 10 100 35 15 3 3 6 0 0 0 - 8201 - 0 0 - - 0
5 be_other 2 green 127.0.0.1 2 8 20 100 35 15 3 3 6 0 0 0 - 8202 - 0 0 - - 0
"""

STAT = """\
# pxname,svname,status,weight,
be_legal_info,BACKEND,UP,100,
be_legal_info,blue,UP,100,
be_legal_info,green,DOWN,0,
"""


def up(weight: int, state: str = "ready") -> SlotTraffic:
    return SlotTraffic(weight=weight, state=state, up=True, status="UP")


def down(weight: int, state: str = "ready") -> SlotTraffic:
    return SlotTraffic(weight=weight, state=state, up=False, status="DOWN")


class FakeRuntime(HAProxyRuntime):
    def __init__(self, state: str = STATE_DUMP, stat: str = STAT):
        super().__init__("/nonexistent")
        self.answers = {"show servers state": state, "show servers state be_legal_info": state, "show stat": stat}
        self.sent: list[str] = []

    def command(self, line: str) -> str:
        self.sent.append(line)
        return self.answers.get(line, "")


def test_parse_servers_state_keeps_one_backend():
    rows = parse_servers_state(STATE_DUMP, "be_other")
    assert sorted(rows) == ["blue", "green"]
    assert rows["green"]["srv_uweight"] == "20"


@pytest.mark.parametrize(
    ("backend", "server", "expected"),
    [
        ("be_legal_info", "blue", SlotTraffic(100, "ready", True, "UP")),
        ("be_legal_info", "green", SlotTraffic(0, "ready", False, "DOWN")),
        ("be_other", "blue", SlotTraffic(10, "maint", True, "MAINT")),
        ("be_other", "green", SlotTraffic(20, "drain", True, "DRAIN")),
    ],
)
def test_slot_from_state(backend, server, expected):
    assert slot_from_state(parse_servers_state(STATE_DUMP, backend)[server]) == expected


@pytest.mark.parametrize("text", ["", "Unknown command.\n", "2\n# be_id\n"])
def test_parse_servers_state_refuses_other_answers(text):
    with pytest.raises(TrafficError):
        parse_servers_state(text, "be_x")


def test_read_uses_show_stat_words():
    traffic = HAProxyTraffic("be_legal_info", runtime=FakeRuntime())
    assert traffic.read() == {
        "blue": SlotTraffic(100, "ready", True, "UP"),
        "green": SlotTraffic(0, "ready", False, "DOWN"),
    }


@pytest.mark.parametrize(
    ("weights", "states", "field"),
    [
        ({"blue": 90, "green": 5}, None, "weights"),
        ({"blue": 90, "red": 10}, None, "weights.red"),
        ({"blue": 95.5, "green": 4.5}, None, "weights.blue"),
        ({"blue": -5, "green": 105}, None, "weights.blue"),
        ({"blue": True, "green": 99}, None, "weights.blue"),
        ({"blue": 100}, {"green": "off"}, "slot_states.green"),
        ({"blue": 100}, {"red": "drain"}, "slot_states.red"),
    ],
)
def test_validate_request_names_the_field(weights, states, field):
    with pytest.raises(TrafficError) as err:
        validate_request(weights, states, ["blue", "green"], "haproxy be_x")
    assert field in [p.field for p in err.value.problems]


def test_validate_request_fills_unnamed_slots_with_zero():
    weights, states = validate_request({"blue": 100.0}, {"green": "drain"}, ["blue", "green"], "x")
    assert weights == {"blue": 100, "green": 0}
    assert states == {"green": "drain"}


@pytest.mark.parametrize(
    ("current", "weights", "states", "field", "words"),
    [
        ({"blue": up(100), "green": down(0)}, {"blue": 95, "green": 5}, {}, "weights.green", "DOWN"),
        ({"blue": up(100), "green": up(0, "maint")}, {"blue": 95, "green": 5}, {}, "weights.green", "maint"),
        ({"blue": up(100), "green": up(0, "drain")}, {"blue": 95, "green": 5}, {}, "weights.green", "drain"),
        ({"blue": up(100), "green": up(0)}, {"blue": 95, "green": 5}, {"green": "maint"}, "weights.green", "maint"),
    ],
)
def test_refusals_name_slot_and_state(current, weights, states, field, words):
    problems = refusals(current, plan_targets(current, weights, states), "x")
    assert [p.field for p in problems] == [field]
    assert words in problems[0].expected


def test_maint_slot_made_ready_is_not_refused_before_it_gets_the_chance():
    current = {"blue": up(100), "green": SlotTraffic(0, "maint", False, "MAINT")}
    assert refusals(current, plan_targets(current, {"blue": 95, "green": 5}, {"green": "ready"}), "x") == []


def _total_up_weight_stays_positive(current, steps):
    weights = {s: t.weight for s, t in current.items()}
    states = {s: t.state for s, t in current.items()}
    for step in steps:
        if step.kind == "weight":
            weights[step.slot] = step.value
        else:
            states[step.slot] = step.value
        total = sum(w for s, w in weights.items() if states[s] == "ready" and current[s].up)
        assert total > 0, f"zero total weight after {step.describe()}"


@pytest.mark.parametrize(
    ("current", "weights", "states", "expected"),
    [
        ({"blue": up(100), "green": up(0)}, {"blue": 0, "green": 100}, {}, ["green weight 100", "blue weight 0"]),
        ({"blue": up(95), "green": up(5)}, {"blue": 75, "green": 25}, {}, ["green weight 25", "blue weight 75"]),
        (
            {"blue": up(100), "green": up(0)},
            {"blue": 0, "green": 100},
            {"blue": "drain"},
            ["green weight 100", "blue weight 0", "blue state drain"],
        ),
        (
            {"blue": up(100), "green": up(50, "maint")},
            {"blue": 50, "green": 50},
            {"green": "ready"},
            ["green state ready", "blue weight 50"],
        ),
        (
            {"blue": up(100), "green": up(0, "maint"), "red": up(0)},
            {"blue": 0, "green": 70, "red": 30},
            {"green": "ready", "blue": "maint"},
            ["red weight 30", "green weight 70", "green state ready", "blue weight 0", "blue state maint"],
        ),
        ({"blue": up(100), "green": up(0)}, {"blue": 100, "green": 0}, {}, []),
    ],
)
def test_order_steps_never_leaves_zero_weight(current, weights, states, expected):
    steps = order_steps(current, plan_targets(current, weights, states))
    assert [s.describe() for s in steps] == expected
    _total_up_weight_stays_positive(current, steps)


def test_check_mode_sends_no_set_command():
    runtime = FakeRuntime(state=STATE_DUMP.replace("127.0.0.1 0 0 0 0", "127.0.0.1 2 0 0 0"))
    split = HAProxyTraffic("be_legal_info", runtime=runtime).apply({"blue": 95, "green": 5}, check_mode=True)
    assert split.changed
    assert split.after["green"].weight == 5
    assert not [c for c in runtime.sent if c.startswith("set ")]


def test_down_slot_refused_without_any_command():
    runtime = FakeRuntime()
    with pytest.raises(TrafficError, match="green is DOWN"):
        HAProxyTraffic("be_legal_info", runtime=runtime).apply({"blue": 95, "green": 5})
    assert not [c for c in runtime.sent if c.startswith("set ")]


def test_unreachable_socket_is_a_traffic_error(tmp_path):
    with pytest.raises(TrafficError, match="does not answer"):
        HAProxyTraffic("be_x", tmp_path / "nothing.sock").read()
