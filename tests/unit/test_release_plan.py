"""The release plan's rules: slot states x registry states x versions."""

from __future__ import annotations

import pytest

from chenu_agents.release_plan import ReleasePlanError, Slot, decide, read_slots, served_by, serving
from chenu_agents.traffic import SlotTraffic, TrafficBackend

BLUE, GREEN = "http://rt:8101", "http://rt:8102"


def slots(blue: tuple[int, str | None], green: tuple[int, str | None]) -> list[Slot]:
    """Two slots from (weight, version served) each."""
    return [
        Slot("blue", BLUE, weight=blue[0], status="UP", up=True, version=blue[1]),
        Slot("green", GREEN, weight=green[0], status="UP", up=True, version=green[1]),
    ]


# (blue, green), registry states, candidate version -> (initial, stable, candidate slot, skip reason fragment)
CASES = {
    "bare: nothing deployed": ((0, None), (0, None), {}, "1.2.0", (True, None, "blue", "")),
    "deployed but no traffic": ((0, "1.2.0"), (0, "1.1.0"), {}, "1.2.0", (True, None, "blue", "")),
    "weight on a slot serving nothing": ((100, None), (0, None), {}, "1.2.0", (True, None, "blue", "")),
    "new version, blue serves": ((100, "1.2.0"), (0, None), {"1.2.0": "active"}, "1.3.0", (False, "blue", "green", "")),
    "new version, green serves": ((0, "1.2.0"), (100, "1.2.1"), {}, "1.3.0", (False, "green", "blue", "")),
    "mid-canary: the heavier slot is stable": ((95, "1.2.0"), (5, "1.3.0"), {}, "1.3.1", (False, "blue", "green", "")),
    "same version serves": ((100, "1.3.0"), (0, "1.2.0"), {"1.3.0": "active"}, "1.3.0", (False, "blue", "green", "already serves in slot blue (active)")),
    "same version serves, registry never saw it": ((0, "1.2.0"), (100, "1.3.0"), {}, "1.3.0", (False, "green", "blue", "not in the registry")),
    "older than what serves": ((100, "1.4.0"), (0, "1.2.0"), {}, "1.3.0", (False, "blue", "green", "older than 1.4.0")),
    "prerelease below its release": ((100, "2.0.0"), (0, None), {}, "2.0.0-rc.1", (False, "blue", "green", "older than 2.0.0")),
    "already deprecated in the registry": ((100, "1.4.0"), (0, None), {"1.5.0": "deprecated"}, "1.5.0", (False, "blue", "green", "already deprecated")),
    "already archived, first release": ((0, None), (0, None), {"1.2.0": "archived"}, "1.2.0", (True, None, "blue", "already archived")),
    "staged in the registry: released": ((100, "1.2.0"), (0, None), {"1.3.0": "staged"}, "1.3.0", (False, "blue", "green", "")),
    "failed before (testing): released again": ((100, "1.2.0"), (0, "1.3.0"), {"1.3.0": "testing"}, "1.3.0", (False, "blue", "green", "")),
}  # fmt: skip


@pytest.mark.parametrize("blue, green, states, version, expected", CASES.values(), ids=CASES.keys())
def test_decide(blue, green, states, version, expected):
    initial, stable, candidate, skip = expected
    plan = decide("legal_info", "canary", version, slots(blue, green), states)
    assert plan.initial is initial
    assert (plan.stable.slot if plan.stable else None) == stable
    assert plan.candidate.slot == candidate
    assert plan.skip is bool(skip)
    assert skip in plan.skip_reason
    assert plan.candidate_state == states.get(version)
    data = plan.to_dict()
    assert data["candidate"]["version"] == version and data["skip"] is bool(skip)
    if skip:
        assert data["summary"].startswith("Skipped:")
    elif initial:
        assert data["summary"].startswith(f"First release of legal_info: {version} into slot {candidate}")
    else:
        assert f"into slot {candidate}" in data["summary"] and f"from slot {stable}" in data["summary"]


def test_stable_state_comes_from_the_registry():
    plan = decide("legal_info", "blue_green", "1.3.0", slots((100, "1.2.0"), (0, None)), {"1.2.0": "paused"})
    assert plan.stable_state == "paused"


@pytest.mark.parametrize(
    "strategy, entries, version, field",
    [
        ("rolling", 2, "1.3.0", "strategy"),
        ("canary", 1, "1.3.0", "sandbox_runtime_slots"),
        ("canary", 3, "1.3.0", "sandbox_runtime_slots"),
        ("canary", 2, "1.3", "version"),
    ],
)
def test_refusals_name_the_field(strategy, entries, version, field):
    some = [Slot(f"s{i}", f"http://rt:{8100 + i}") for i in range(entries)]
    with pytest.raises(ReleasePlanError) as err:
        decide("legal_info", strategy, version, some, {})
    assert [p.field for p in err.value.problems] == [field]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('chenu_agent_info{agent="legal_info",digest="sha256:ab",version="1.3.0"} 1.0\n', ("1.3.0", "sha256:ab")),
        ('# HELP x\nchenu_agent_info{version="1.2.0",agent="legal_info"} 1\n', ("1.2.0", None)),
        ('chenu_agent_info{version="1.2.0"} 0\n', (None, None)),
        ("", (None, None)),
        ("not metrics at all", (None, None)),
    ],
)
def test_served_by(text, expected):
    assert served_by(text) == expected


class FakeTraffic(TrafficBackend):
    def __init__(self, seen):
        self.seen = seen

    def read(self):
        return self.seen

    def apply(self, *args, **kwargs):  # pragma: no cover - not used here
        raise AssertionError


def test_read_slots_joins_the_load_balancer_and_the_runtimes():
    traffic = FakeTraffic({"blue": SlotTraffic(weight=100, state="ready", up=True, status="UP")})
    metrics = {BLUE: 'chenu_agent_info{agent="legal_info",version="1.2.0",digest="d1"} 1\n', GREEN: ""}
    read = read_slots([{"slot": "blue", "url": BLUE}, {"slot": "green", "url": GREEN}], traffic, metrics.__getitem__)
    assert read[0] == Slot("blue", BLUE, 100, "UP", True, "1.2.0", "d1")
    assert read[1] == Slot("green", GREEN, 0, "absent", False, None, None)
    assert serving(read) == read[0]
