"""The rollout judge on crafted numbers: thresholds, Mann-Whitney, thin traffic, NaN, the watch loop."""

from __future__ import annotations

import math

import pytest

from chenu_agents import analysis
from chenu_agents.analysis import Settings, Slot, compare, judge

CANARY, STABLE = Slot("green", "1.3.0"), Slot("blue", "1.2.0")


def settings(**kw) -> Settings:
    return Settings(
        **{"agent": "legal_info", "canary": CANARY, "baseline": STABLE, "window": 30, "min_requests": 50, **kw}
    )


def stats(requests: int, errors: int = 0, p95: float | None = 0.2) -> dict:
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p50": p95,
        "latency_p95": p95,
        "latency_p99": p95,
    }


QUIET = [0.0] * 20


def comparison(canary_err=QUIET, stable_err=QUIET, canary_lat=(0.2,) * 20, stable_lat=(0.2,) * 20) -> dict:
    return {
        "error_rate": compare(canary_err, stable_err, tolerance=0.01),
        "latency": compare(canary_lat, stable_lat, tolerance=1.2, relative=True),
    }


def test_clear_fail_on_error_rate():
    bad = [0.2 + 0.01 * (i % 3) for i in range(20)]
    verdict, reasons = judge(settings(), stats(412, 82), stats(8000, 2), comparison(canary_err=bad))
    assert verdict == "fail"
    assert reasons[0] == "canary error rate 19.9 % > 5 % over 30 s (412 requests, 82 errors)"
    assert any("significantly higher" in r and "Mann-Whitney U=400" in r for r in reasons)


def test_clear_pass():
    verdict, reasons = judge(settings(), stats(412, 1), stats(8000, 20), comparison())
    assert verdict == "pass"
    assert "canary error rate 0.243 % <= 5 % over 30 s (412 requests, 1 errors)" in reasons
    assert any("1.00x the baseline's 200 ms" in r for r in reasons)


def test_latency_over_twice_the_baseline_fails():
    verdict, reasons = judge(
        settings(), stats(400, 0, p95=0.9), stats(8000, 0, p95=0.3), comparison(canary_lat=[0.9] * 20)
    )
    assert verdict == "fail"
    assert reasons[0] == "canary p95 latency 900 ms is 3.00x the baseline's 300 ms over 30 s (limit 2x)"


def test_latency_at_the_limit_passes():
    verdict, _ = judge(settings(), stats(400, 0, p95=0.6), stats(8000, 0, p95=0.3))
    assert verdict == "pass"


@pytest.mark.parametrize("canary_n,stable_n", [(12, 8000), (0, 8000), (400, 10)])
def test_thin_traffic_is_inconclusive_never_pass(canary_n, stable_n):
    verdict, reasons = judge(settings(), stats(canary_n, 0), stats(stable_n, 0), comparison())
    assert verdict == "inconclusive"
    assert "fewer than the 50 needed" in reasons[0]


def test_a_flood_of_errors_fails_even_below_min_requests():
    verdict, reasons = judge(settings(), stats(12, 8), stats(8000, 0))
    assert verdict == "fail"
    assert "failed 8 of only 12 requests" in reasons[0] and "binomial test" in reasons[0]


def test_one_error_among_few_requests_stays_inconclusive():
    verdict, _ = judge(settings(), stats(12, 1), stats(8000, 0))
    assert verdict == "inconclusive"


def test_without_baseline_only_the_error_threshold():
    s = Settings(agent="legal_info", canary=CANARY, window=30, min_requests=50)
    assert judge(s, stats(100, 1), None) == (
        "pass",
        ["canary error rate 1 % <= 5 % over 30 s (100 requests, 1 errors)"],
    )
    assert judge(s, stats(100, 10), None)[0] == "fail"


def test_equal_series_no_difference():
    result = compare([0.1] * 10, [0.1] * 10, tolerance=0.0)
    assert result["p_value"] == 1.0 and result["direction"] == "same" and not result["worse"]
    assert result["u"] == 50


def test_canary_better_is_not_worse():
    result = compare([0.0] * 10, [0.1] * 10)
    assert result["direction"] == "lower" and result["p_value"] > 0.5 and not result["worse"]


def test_significant_but_within_tolerance():
    result = compare([0.105] * 10 + [0.106] * 10, [0.1] * 20, tolerance=1.2, relative=True)
    assert result["significant"] and not result["worse"] and result["effect"] < 1.2
    verdict, reasons = judge(settings(), stats(400, 0), stats(8000, 0), {"latency": result})
    assert verdict == "pass" and any("within tolerance" in r for r in reasons)


def test_nan_and_inf_are_dropped():
    nan, inf = float("nan"), float("inf")
    result = compare([0.3, nan, 0.3, 0.31, inf, 0.32, 0.3], [0.0, 0.0, nan, 0.01, 0.0, 0.0])
    assert result["n_canary"] == 5 and result["n_baseline"] == 5
    assert result["status"] == "ok" and result["worse"]


def test_too_few_points_is_not_judged():
    result = compare([0.5, float("nan"), 0.5], [0.0] * 10)
    assert result["status"] == "insufficient" and result["u"] is None and not result["worse"]
    verdict, reasons = judge(settings(), stats(400, 0), stats(8000, 0), {"error_rate": result})
    assert verdict == "pass" and any("too few points" in r for r in reasons)


def test_relative_effect_when_the_baseline_median_is_zero():
    result = compare([0.2] * 10, [0.0] * 10, tolerance=1.2, relative=True)
    assert result["effect"] == "inf" and result["worse"]


def test_unknown_baseline_latency_is_inconclusive():
    verdict, reasons = judge(settings(), stats(400, 0), stats(8000, 0, p95=None))
    assert verdict == "inconclusive" and "cannot be compared" in reasons[0]


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"latency_quantile": 1.0}, "latency_quantile"),
        ({"error_codes": "5(("}, "error_codes"),
        ({"window": 0}, "window"),
    ],
)
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises(analysis.AnalysisError, match=field):
        settings(**kw)


def test_selector_quotes_labels():
    assert analysis.selector("a", Slot("b", 'v"1')) == '{agent="a",slot="b",version="v\\"1"}'


class FakeClock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def fake_checks(monkeypatch, verdicts):
    seen = []

    def fake(prom, s, at=None):
        seen.append(at)
        v = verdicts[min(len(seen), len(verdicts)) - 1]
        return {"at": at, "verdict": v, "reasons": [f"check {len(seen)}: {v}"], "canary": None, "baseline": None}

    monkeypatch.setattr(analysis, "check", fake)
    return seen


def test_watch_returns_at_the_first_fail(monkeypatch):
    clock = FakeClock()
    seen = fake_checks(monkeypatch, ["pass", "inconclusive", "fail", "pass"])
    out = analysis.watch(None, settings(), duration=60, interval=10, clock=clock, sleep=clock.sleep)
    assert out.verdict == "fail" and out.ended_early and len(seen) == 3
    assert out.elapsed == 20 and out.reasons == ["check 3: fail"]


def test_watch_passes_only_when_the_last_window_passes(monkeypatch):
    clock = FakeClock()
    seen = fake_checks(monkeypatch, ["inconclusive", "pass", "pass", "inconclusive"])
    out = analysis.watch(None, settings(), duration=25, interval=10, clock=clock, sleep=clock.sleep)
    assert [s - seen[0] for s in seen] == [0, 10, 20, 25]
    assert out.verdict == "inconclusive" and not out.ended_early


def test_watch_stops_after_the_inconclusive_limit(monkeypatch):
    clock = FakeClock()
    seen = fake_checks(monkeypatch, ["pass", "inconclusive"])
    out = analysis.watch(
        None, settings(), duration=100, interval=5, inconclusive_limit=3, clock=clock, sleep=clock.sleep
    )
    assert len(seen) == 4 and out.verdict == "inconclusive" and out.ended_early
    assert "3 checks in a row without a verdict" in out.reasons[-1]


def test_watch_single_check(monkeypatch):
    seen = fake_checks(monkeypatch, ["pass"])
    out = analysis.watch(None, settings(), duration=0, interval=10)
    assert len(seen) == 1 and out.to_dict()["verdict"] == "pass"


def test_unreachable_prometheus_is_inconclusive():
    prom = analysis.Prometheus("http://127.0.0.1:9", timeout=1)
    out = analysis.check(prom, settings())
    assert out["verdict"] == "inconclusive"
    assert "cannot be reached" in out["reasons"][0]
    budget = analysis.error_budget(prom, "legal_info")
    assert budget["verdict"] == "inconclusive" and budget["exhausted"] is None


def test_percent_formatting_is_readable():
    assert analysis._pct(0.198) == "19.8 %" and analysis._secs(1.5) == "1.5 s" and analysis._secs(0.0123) == "12.3 ms"
    assert not math.isnan(analysis.hodges_lehmann([1, 2], [0, 0]))
