"""chenu_agents.reconcile: from the registry's states to what each slot and frontend must become (tables),
and carrying a plan out against fakes of a slot and of HAProxy's runtime API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from chenu_agents import reconcile
from chenu_agents.reconcile import FrontendMaps, ReconcileError, SlotReport, decide_frontend, decide_slot

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)


def row(at, action, frm, to, reason=None, **details):
    return SimpleNamespace(at=at, action=action, from_state=frm, to_state=to, reason=reason, details=details)


DEPLOYED = row(T0, "deploy", "staged", "active")
DEPRECATED_T2 = row(T2, "deprecate", "active", "deprecated")
RESTORED_T2 = row(T2, "restore", "deprecated", "active")
ANNOUNCED = row(T1, "announce_deprecation", "active", "active", sunset="2026-12-31T00:00:00+00:00", replacement="1.3.0")


@pytest.mark.parametrize(
    ("state", "rows", "actives", "expected"),
    [
        ("active", [DEPLOYED], ["1.2.0"], (None, None, None, None)),
        ("active", [DEPLOYED], ["1.2.0", "1.3.0", "1.10.0"], ("1.10.0", None, None, None)),
        ("active", [DEPLOYED, ANNOUNCED], ["1.2.0"], ("1.3.0", T1.isoformat(), "2026-12-31T00:00:00+00:00", None)),
        (
            "paused",
            [DEPLOYED, row(T1, "pause", "active", "paused", "incident 42")],
            [],
            (None, None, None, "incident 42"),
        ),
        (
            "deprecated",
            [DEPLOYED, row(T2, "deprecate", "active", "deprecated")],
            ["1.3.0"],
            ("1.3.0", T2.isoformat(), T2.isoformat(), None),
        ),
        (
            "deprecated",
            [DEPLOYED, ANNOUNCED, row(T2, "deprecate", "active", "deprecated")],
            ["1.4.0"],
            ("1.3.0", T1.isoformat(), "2026-12-31T00:00:00+00:00", None),
        ),
        # A restore starts afresh: the earlier announcement no longer stands.
        ("active", [DEPLOYED, ANNOUNCED, DEPRECATED_T2, RESTORED_T2], ["1.2.0"], (None, None, None, None)),
        ("staged", [row(T0, "approve", "testing", "staged")], ["1.1.0"], (None, None, None, None)),
    ],
)
def test_version_view(state, rows, actives, expected):
    view = reconcile.version_view(state, rows, actives, "1.2.0")
    assert (view.state, (view.replacement, view.deprecation, view.sunset, view.reason)) == (state, expected)


def versions(**states):
    return {"agent": "legal_info", "versions": {v[1:].replace("_", "."): s for v, s in states.items()}}


ACTIVE = {"state": "active"}
PAUSED = {"state": "paused", "reason": "incident 42"}
DEPRECATED = {"state": "deprecated", "replacement": "1.3.0", "deprecation": "d", "sunset": "s"}
ARCHIVED = {"state": "archived", "replacement": "1.3.0", "deprecation": "d", "sunset": "s"}
STAGED = {"state": "staged"}


@pytest.mark.parametrize(
    ("view", "fallback", "weight", "in_progress", "expected"),
    [
        (ACTIVE, "estimator", 100, False, {"state": "active"}),
        # another active version is no replacement to name until a deprecation is announced
        ({"state": "active", "replacement": "1.3.0"}, None, 100, False, {"state": "active"}),
        (
            {"state": "active", "replacement": "1.3.0", "deprecation": "d", "sunset": "s"}, None, 100, False,
            {"state": "active", "replacement": "1.3.0", "deprecation": "d", "sunset": "s"},
        ),
        (
            PAUSED, "estimator", 100, False,
            {"state": "paused", "fallback_agent": "estimator", "reason": "incident 42", "retry_after": 30},
        ),
        (PAUSED, None, 100, False, {"state": "paused", "reason": "incident 42", "retry_after": 30}),
        (
            DEPRECATED, None, 0, False,
            {"state": "deprecated", "replacement": "1.3.0", "deprecation": "d", "sunset": "s"},
        ),
        (
            ARCHIVED, None, 0, False,
            {"state": "archived", "replacement": "1.3.0", "deprecation": "d", "sunset": "s", "visible_to": ["admin"]},
        ),
        (STAGED, None, 0, False, {"state": "staged", "visible_to": ["operator", "admin"]}),
        (STAGED, None, 5, False, {"state": "staged"}),  # a canary takes traffic: its callers may call it
        (STAGED, None, 0, True, {"state": "staged"}),  # a release is under way (a flag's variant has weight 0)
        ({"state": "draft"}, None, 0, False, {"state": "draft", "visible_to": ["developer", "admin"]}),
        ({"state": "testing"}, None, 0, False, {"state": "testing", "visible_to": ["developer", "tester", "admin"]}),
    ],
)  # fmt: skip
def test_state_file_for(view, fallback, weight, in_progress, expected):
    content = reconcile.state_file_for(
        "legal_info",
        "1.2.0",
        view,
        fallback_agent=fallback,
        takes_traffic=bool(weight),
        release_in_progress=in_progress,
    )
    assert content == {**expected, "version": "1.2.0"}


def report(**kw):
    base = {"agent": "legal_info", "slot": "blue", "host": "web1", "installed": "1.2.0", "running": True,
            "serving": "1.2.0", "state": "active", "file": {"state": "active", "version": "1.2.0"}, "weight": 100}  # fmt: skip
    return SlotReport(**{**base, **kw})


PAUSE = {"version": "1.2.0", "from": "active", "to": "paused"}
RESTORE = {"version": "1.2.0", "from": "deprecated", "to": "active"}


@pytest.mark.parametrize(
    ("slot", "states", "transition", "write", "start", "stop", "drift"),
    [
        # in step: nothing to do
        (report(), versions(v1_2_0=ACTIVE), None, False, False, False, []),
        # the pause this run made: written, not drift
        (report(), versions(v1_2_0=PAUSED), PAUSE, True, False, False, []),
        # the same difference with no transition of this version: drift, repaired
        (report(), versions(v1_2_0=PAUSED), None, True, False, False, ["as active; the registry says paused"]),
        # the case: a deprecated version redeployed out of band, serving
        (report(file=None), versions(v1_2_0=DEPRECATED), None, True, False, True,
         ["as active; the registry says deprecated"]),
        # deprecated and already stopped: nothing more
        (report(running=False, serving=None, state=None, file=reconcile.state_file_for("legal_info", "1.2.0", DEPRECATED)),
         versions(v1_2_0=DEPRECATED), None, False, False, False, []),
        # restore: the stopped slot starts again, in the active state
        (report(running=False, serving=None, state=None, file={"state": "deprecated", "version": "1.2.0"}),
         versions(v1_2_0=ACTIVE), RESTORE, True, True, False, []),
        # a slot that should run and does not, out of band: drift, started
        (report(running=False, serving=None, state=None), versions(v1_2_0=ACTIVE), None, False, True, False,
         ["holds 1.2.0 but does not run"]),
        # a version the registry does not know: reported, left alone
        (report(serving="9.9.9"), versions(v1_2_0=ACTIVE), None, False, False, False, ["does not know: left as it is"]),
        # nothing deployed
        (report(installed=None, running=False, serving=None, state=None, file=None), versions(v1_2_0=ACTIVE), None,
         False, False, False, []),
    ],
)  # fmt: skip
def test_decide_slot(slot, states, transition, write, start, stop, drift):
    plan = decide_slot(slot, states, fallback_agent=None, transition=transition)
    assert (plan.write, plan.start, plan.stop) == (write, start, stop)
    assert len(plan.drift) == len(drift)
    for text, expected in zip(plan.drift, drift, strict=True):
        assert expected in text and "legal_info-blue on web1" in text


@pytest.mark.parametrize(
    ("slots", "states", "fallback", "backends", "route", "gone"),
    [
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0=ACTIVE), "estimator",
         ["be_estimator"], None, None),
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0=PAUSED), "estimator",
         ["be_legal_info", "be_estimator"], "be_estimator", None),
        # no fallback named, or its backend is not on this load balancer: the runtime answers 503 itself
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0=PAUSED), None, ["be_estimator"],
         None, None),
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0=PAUSED), "estimator", [], None, None),
        # a paused version with weight 0 next to an active one: nothing to redirect
        ([{"slot": "blue", "version": "1.2.0", "weight": 0}, {"slot": "green", "version": "1.3.0", "weight": 100}],
         versions(v1_2_0=PAUSED, v1_3_0=ACTIVE), "estimator", ["be_estimator"], None, None),
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0=DEPRECATED), "estimator",
         ["be_estimator"], None, "legal_info 1.2.0 deprecated; use legal_info 1.3.0"),
        ([{"slot": "blue", "version": "1.2.0", "weight": 100}], versions(v1_2_0={"state": "archived"}), None, [],
         None, "legal_info 1.2.0 archived; no replacement"),
        # a version unknown to the registry takes traffic: left serving
        ([{"slot": "blue", "version": "9.9.9", "weight": 100}], versions(v1_2_0=PAUSED), "estimator",
         ["be_estimator"], None, None),
        ([], versions(v1_2_0=PAUSED), "estimator", ["be_estimator"], None, None),
    ],
)  # fmt: skip
def test_decide_frontend(slots, states, fallback, backends, route, gone):
    plan = decide_frontend("legal_info", slots, states, fallback_agent=fallback, backends=backends)
    assert (plan.route, plan.gone) == (route, gone)


# -- carrying a plan out ---------------------------------------------------------------------------------


@dataclass
class FakeRuntime:
    """A slot process: reads its state file as the runtime does; in_flight tasks finish one per poll."""

    state_file: Path
    version: str = "1.2.0"
    running: bool = True
    in_flight: int = 0
    follows: bool = True
    calls: list[str] = field(default_factory=list)

    def status(self, url, token, timeout_s=2.0):
        if not self.running:
            return None
        data = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"state": "active"}
        state = data["state"] if self.follows else "active"
        status = {"state": state, "serving": {"version": self.version}, "in_flight": self.in_flight}
        self.in_flight = max(0, self.in_flight - 1)
        return status

    def start(self):
        self.calls.append("start")
        self.running = True

    def stop(self):
        self.calls.append(f"stop with {self.in_flight} in flight")
        self.running = False


def fake_slot(tmp_path):
    return SimpleNamespace(
        config=SimpleNamespace(state_file=tmp_path / "state.json"), url="http://slot", settings=tmp_path / "s.yaml"
    )


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def carry(plan, slot, fake, monkeypatch, **kw):
    monkeypatch.setattr(reconcile, "slot_status", fake.status)
    clock = Clock()
    return reconcile.apply_slot(plan, slot, fake, token="t", sleep=clock.sleep, clock=clock, **kw)


def test_apply_deprecation_drains_then_stops(tmp_path, monkeypatch):
    slot = fake_slot(tmp_path)
    fake = FakeRuntime(slot.config.state_file, in_flight=3)
    plan = decide_slot(report(), versions(v1_2_0=DEPRECATED))
    done = carry(plan, slot, fake, monkeypatch, stop=False)
    assert json.loads(slot.config.state_file.read_text())["state"] == "deprecated"
    assert done["status"]["state"] == "deprecated" and fake.running and not done["stopped"]
    done = carry(plan, slot, fake, monkeypatch, stop=True)
    assert done["stopped"] and fake.calls == ["stop with 0 in flight"]


def test_apply_restore_starts_the_slot_active(tmp_path, monkeypatch):
    slot = fake_slot(tmp_path)
    slot.config.state_file.write_text(json.dumps({"state": "deprecated", "version": "1.2.0"}))
    fake = FakeRuntime(slot.config.state_file, running=False)
    stopped = report(running=False, serving=None, state=None, file={"state": "deprecated", "version": "1.2.0"})
    plan = decide_slot(stopped, versions(v1_2_0=ACTIVE), transition=RESTORE)
    done = carry(plan, slot, fake, monkeypatch, stop=True)
    assert fake.calls == ["start"] and done["status"]["state"] == "active"
    assert json.loads(slot.config.state_file.read_text()) == {"state": "active", "version": "1.2.0"}


def test_a_runtime_that_does_not_follow_fails_naming_host_and_slot(tmp_path, monkeypatch):
    slot = fake_slot(tmp_path)
    fake = FakeRuntime(slot.config.state_file, follows=False)
    plan = decide_slot(report(), versions(v1_2_0=PAUSED), transition=PAUSE)
    with pytest.raises(ReconcileError, match=r"legal_info-blue on web1 did not follow the registry: report 1.2.0 as "
                       r"paused within 30 s \(state active"):  # fmt: skip
        carry(plan, slot, fake, monkeypatch, stop=True)


class FakeHAProxy:
    def __init__(self):
        self.commands = []

    def command(self, line):
        self.commands.append(line)
        if line == "show backend":
            return "# name\nstats\nbe_legal_info\nbe_estimator\n"
        return "\n"


def test_frontend_maps_route_then_clear(tmp_path):
    haproxy = FakeHAProxy()
    maps = FrontendMaps(haproxy, tmp_path / "fallback.map", tmp_path / "gone.map")
    assert maps.backends() == ["stats", "be_legal_info", "be_estimator"]
    route = reconcile.FrontendPlan("legal_info", route="be_estimator")
    assert maps.apply(route, check_mode=True) == {"route": {"before": None, "after": "be_estimator"}}
    assert not (tmp_path / "fallback.map").exists() and haproxy.commands == ["show backend"]
    assert maps.apply(route) == {"route": {"before": None, "after": "be_estimator"}}
    assert "legal_info be_estimator\n" in (tmp_path / "fallback.map").read_text()
    assert haproxy.commands[-1] == f"add map {tmp_path / 'fallback.map'} legal_info be_estimator"
    assert maps.apply(route) == {}  # a second run changes nothing
    gone = reconcile.FrontendPlan("legal_info", gone="legal_info 1.2.0 deprecated; use legal_info 1.3.0")
    assert set(maps.apply(gone)) == {"route", "gone"}
    assert haproxy.commands[-1].endswith(r"legal_info legal_info\ 1.2.0\ deprecated\;\ use\ legal_info\ 1.3.0")
    assert maps.current("legal_info") == {"route": None, "gone": "legal_info 1.2.0 deprecated; use legal_info 1.3.0"}


def test_registry_view_follows_announcement_deprecation_restore_and_the_release_lock():
    from chenu_agents.lifecycle import Request, apply
    from chenu_agents.registry import Registry
    from tests.pg import require, throwaway_database

    require()
    digest = "sha256:" + "ab" * 32
    with throwaway_database("chenu_test_reconcile_view") as settings, Registry(settings) as registry:

        def go(version, *actions, **kw):
            for action in actions:
                apply(registry, Request("demo", version, action=action, actor="t", **kw))

        for version in ("1.0.0", "1.1.0"):
            apply(registry, Request("demo", version, target="draft", digest=digest, key_id="k1"))
            go(version, "validate", "approve", "deploy")
        go("1.0.0", "announce_deprecation", details={"sunset": "2027-01-31"})
        announced = apply(registry, Request("demo", "1.0.0", action="announce_deprecation", details={}))
        assert not announced.changed  # the announcement stands: a second one without news changes nothing
        view = reconcile.registry_view(registry, "demo")
        v1 = view["versions"]["1.0.0"]
        assert (v1["state"], v1["sunset"], v1["replacement"]) == ("active", "2027-01-31T00:00:00+00:00", "1.1.0")
        assert v1["deprecation"] is not None and view["versions"]["1.1.0"]["deprecation"] is None
        go("1.0.0", "pause", reason="incident 7")
        assert reconcile.registry_view(registry, "demo")["versions"]["1.0.0"]["reason"] == "incident 7"
        go("1.0.0", "deprecate")
        v1 = reconcile.registry_view(registry, "demo")["versions"]["1.0.0"]
        assert (v1["state"], v1["sunset"], v1["replacement"]) == ("deprecated", "2027-01-31T00:00:00+00:00", "1.1.0")
        go("1.0.0", "restore")
        v1 = reconcile.registry_view(registry, "demo")["versions"]["1.0.0"]
        assert (v1["state"], v1["deprecation"], v1["sunset"]) == ("active", None, None)
        assert not reconcile.registry_view(registry, "demo")["release_in_progress"]
        registry.acquire_release_lock("demo", "run-1", actor="t", playbook="release.yml", ttl=60)
        assert reconcile.registry_view(registry, "demo")["release_in_progress"]
