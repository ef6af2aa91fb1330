"""The rollout judge against a real, private Prometheus scraping synthetic slots every second.

Agents run side by side, each with a stable slot (blue 1.2.0) and a canary (green 1.3.0):
`good` (both fine), `bad` (the canary turns to 20 % errors during the test), `slow` (canary latency 5x),
`thin` (canary at 0.5 request per second), `costly` (canary spends 1.6x the tokens per task), `falling`
(20 % of the canary's tasks answered by the fallback provider), and the latency table: `lat_<stable ms>_
<factor>`, a canary at 1.5 requests per second (about the local inventory's 5 % step) whose requests take
<factor> times stable's, both with 10 % jitter.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from chenu_agents import analysis
from chenu_agents.analysis import Settings, Slot
from tests.unit.private_prometheus import PROMETHEUS, Exporter, PrivatePrometheus, Traffic

pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs the prometheus binary")

STABLE, CANARY = Slot("blue", "1.2.0"), Slot("green", "1.3.0")
WARM_UP_S = 11
PLAN = {
    "good": ({}, {}),
    "bad": ({}, {}),
    "slow": ({"latency": 0.08}, {"latency": 0.4}),
    "thin": ({}, {"rate": 0.5}),
    "costly": ({}, {"tokens": 160}),
    "falling": ({"fallback_ratio": 0.01}, {"fallback_ratio": 0.2}),
}
LATENCY_TABLE = [(stable, factor) for stable in (0.03, 0.3, 3.0) for factor in (1.3, 3.0)]


def lat_agent(stable: float, factor: float) -> str:
    return f"lat_{stable * 1000:g}_{factor:g}".replace(".", "_")


for _stable, _factor in LATENCY_TABLE:
    PLAN[lat_agent(_stable, _factor)] = (
        {"latency": _stable, "jitter": 0.1},
        {"latency": _stable * _factor, "jitter": 0.1, "rate": 1.5},
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    exporter = Exporter()
    traffic = {}
    for agent, (stable, canary) in PLAN.items():
        for slot, extra in ((STABLE, stable), (CANARY, canary)):
            kw = {"rate": 20.0, "error_ratio": 0.005, "latency": 0.03, **extra}
            traffic[agent, slot.slot] = Traffic(exporter.metrics, agent, slot.version, slot.slot, **kw).start()
    prom = PrivatePrometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{exporter.port}"])
    try:
        prom.wait_for_scrapes(WARM_UP_S)  # a full 10 s window of data
        yield prom, traffic
    finally:
        prom.stop()
        for t in traffic.values():
            t.stop()
        exporter.close()


def settings(agent: str, **kw) -> Settings:
    kw = {"window": 10, "scrape_interval": 1, "min_requests": 50, **kw}
    return Settings(agent=agent, canary=CANARY, baseline=STABLE, **kw)


def test_good_canary_passes(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("good"))
    assert out["verdict"] == "pass", out["reasons"]
    assert 150 <= out["canary"]["requests"] <= 260 and 150 <= out["baseline"]["requests"] <= 260
    # Every request takes 30 ms: the p95 is read inside the bucket (28.4, 31.0] ms, not at a coarse bound.
    assert out["canary"]["error_rate"] < 0.02 and out["canary"]["latency_p95"] == pytest.approx(0.03, rel=0.0905)
    assert out["canary"]["latency_mean"] == pytest.approx(0.03) and out["canary"]["tokens_per_task"] == 100
    assert out["comparison"]["error_rate"]["status"] == "ok" and not out["comparison"]["latency"]["significant"]
    assert any(r.startswith("canary error rate ") and "<= 5 % over 10 s" in r for r in out["reasons"])
    assert out["decided_by"] == [] and {c["verdict"] for c in out["criteria"]} == {"pass"}


def test_slow_canary_fails_on_latency(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("slow"))
    assert out["verdict"] == "fail" and out["decided_by"] == ["latency", "latency_shift"]
    first = re.match(
        r"canary p95 latency (\d+) ms is ([\d.]+)x the baseline's ([\d.]+) ms over 10 s \(limit 2x\): ",
        out["reasons"][0],
    )
    assert first and float(first[2]) == pytest.approx(5, rel=0.1), out["reasons"]
    assert float(first[1]) == pytest.approx(400, rel=0.0905) and float(first[3]) == pytest.approx(80, rel=0.0905)
    assert out["comparison"]["latency"]["worse"]


@pytest.mark.parametrize("stable,factor", LATENCY_TABLE)
def test_latency_criterion_at_every_scale(stack, stable, factor):
    """The first check of a step with the local inventory's settings (10 s window, 10 requests): a canary
    3x slower fails on latency whether stable answers in 30 ms, 300 ms or 3 s; one 1.3x slower passes."""
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings(lat_agent(stable, factor), min_requests=10))
    ratio = out["canary"]["latency_p95"] / out["baseline"]["latency_p95"]
    assert ratio == pytest.approx(factor, rel=0.2), out["reasons"]
    assert out["baseline"]["latency_p95"] == pytest.approx(stable * 1.18, rel=0.1)  # 10 % jitter: p95 at +1.64 sd
    if factor >= 2:
        assert out["verdict"] == "fail" and out["decided_by"][0] == "latency", out["reasons"]
        assert out["reasons"][0].startswith("canary p95 latency ") and "(limit 2x): " in out["reasons"][0]
    else:
        assert out["verdict"] == "pass", out["reasons"]
    assert out["comparison"]["latency"]["status"] == "ok" and out["comparison"]["latency"]["significant"]


def test_costly_canary_fails_on_tokens(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("costly"))
    assert out["verdict"] == "fail" and out["decided_by"] == ["token_cost"], out["reasons"]
    assert out["canary"]["tokens_per_task"] == 160 and out["baseline"]["tokens_per_task"] == 100
    assert "1.60x the baseline's 100 over 10 s (limit 1.5x)" in out["reasons"][0]


def test_falling_back_canary_fails_on_fallbacks(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("falling"))
    assert out["verdict"] == "fail" and out["decided_by"] == ["fallbacks"], out["reasons"]
    assert out["canary"]["fallback_rate"] == pytest.approx(0.2, abs=0.03)
    assert out["canary"]["answered_by"].keys() == {"scripted/a", "scripted/b"}


def test_thin_canary_is_inconclusive(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("thin"))
    assert out["verdict"] == "inconclusive"
    assert out["reasons"][0].startswith("canary served ") and "fewer than the 50 needed" in out["reasons"][0]
    assert out["canary"]["requests"] < 10


def test_no_error_budget_series_is_inconclusive(stack):
    prom, _ = stack
    budget = analysis.error_budget(prom.url, "good")
    assert budget["verdict"] == "inconclusive" and budget["exhausted"] is None
    assert "no error budget series for good" in budget["reasons"][0]


def test_bad_canary_fails_within_seconds(stack, record_property):
    prom, traffic = stack
    s = settings("bad")
    assert analysis.check(analysis.Prometheus(prom.url), s)["verdict"] == "pass"
    turned_bad = time.time()
    traffic["bad", "green"].error_ratio = 0.2
    out = analysis.watch(analysis.Prometheus(prom.url), s, duration=40, interval=1)
    detected = time.time() - turned_bad
    record_property("fail_detected_after_s", round(detected, 1))
    print(f"\nbad canary: fail detected {detected:.1f} s after the errors began ({len(out.checks)} checks)")
    assert out.verdict == "fail" and out.ended_early, out.reasons
    assert detected < 20
    # Either the 5 % limit, or (often sooner) the Fisher test against stable's 0.5 %.
    assert out.decided_by[0] in ("errors", "errors_vs_stable") and out.reasons[0].startswith("canary error rate ")


def test_prometheus_stopped_mid_watch_never_passes(stack):
    prom, _ = stack
    outcomes = []

    def stop_after_first(result):
        outcomes.append(result["verdict"])
        if len(outcomes) == 1:
            prom.stop()

    out = analysis.watch(
        analysis.Prometheus(prom.url, timeout=2), settings("good"), duration=4, interval=1, on_check=stop_after_first
    )
    assert outcomes[0] == "pass" and set(outcomes[1:]) == {"inconclusive"} and len(outcomes) >= 3
    assert out.verdict == "inconclusive"
    assert "cannot be reached" in out.reasons[0] and "no verdict without metrics" in out.reasons[0]
