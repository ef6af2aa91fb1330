"""The rollout judge against a real, private Prometheus scraping synthetic slots every second.

Four agents run side by side, each with a stable slot (blue 1.2.0) and a canary (green 1.3.0):
`good` (both fine), `bad` (the canary turns to 20 % errors during the test), `slow` (canary latency 5x)
and `thin` (canary at 0.5 request per second).
"""

from __future__ import annotations

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
}


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
    return Settings(agent=agent, canary=CANARY, baseline=STABLE, window=10, scrape_interval=1, min_requests=50, **kw)


def test_good_canary_passes(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("good"))
    assert out["verdict"] == "pass", out["reasons"]
    assert 150 <= out["canary"]["requests"] <= 260 and 150 <= out["baseline"]["requests"] <= 260
    assert out["canary"]["error_rate"] < 0.02 and out["canary"]["latency_p95"] == pytest.approx(0.0475, abs=0.002)
    assert out["comparison"]["error_rate"]["status"] == "ok" and not out["comparison"]["latency"]["significant"]
    assert any(r.startswith("canary error rate ") and "<= 5 % over 10 s" in r for r in out["reasons"])


def test_slow_canary_fails_on_latency(stack):
    prom, _ = stack
    out = analysis.check(analysis.Prometheus(prom.url), settings("slow"))
    assert out["verdict"] == "fail"
    assert "canary p95 latency 488 ms is 5.00x the baseline's 97.5 ms over 10 s (limit 2x)" in out["reasons"]
    assert out["comparison"]["latency"]["worse"]


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
    first = out.reasons[0]
    assert first.startswith("canary error rate ") and "> 5 % over 10 s" in first


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
