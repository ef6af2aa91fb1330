"""The rollout judge on crafted numbers: each criterion, the tests against stable, thin traffic, the watch loop."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from chenu_agents import analysis
from chenu_agents.analysis import Histogram, Settings, Slot, compare_slots, fisher, judge, rank_test, tail_test
from chenu_agents.runtime.metrics import REQUEST_BUCKETS

CANARY, STABLE = Slot("green", "1.3.0"), Slot("blue", "1.2.0")
BOUNDS = (*REQUEST_BUCKETS, math.inf)


def settings(**kw) -> Settings:
    return Settings(
        **{"agent": "legal_info", "canary": CANARY, "baseline": STABLE, "window": 30, "min_requests": 50, **kw}
    )


def histogram(durations) -> Histogram:
    """The runtime's buckets filled with these durations, as Prometheus would count them."""
    counts = [0] * len(BOUNDS)
    for d in durations:
        counts[next(i for i, le in enumerate(BOUNDS) if d <= le)] += 1
    return Histogram(BOUNDS, tuple(counts))


def stats(requests: int, errors: int = 0, p95: float | None = 0.2, durations=None, tokens=100.0, fallbacks=0) -> dict:
    """One slot's numbers as slot_stats gives them; durations (default: all at p95) fill the histogram."""
    h = histogram(durations if durations is not None else [p95 or 0.2] * requests)
    quantile = (lambda q: h.quantile(q)) if durations is not None else (lambda q: p95)
    answered = requests - errors
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p50": quantile(0.5),
        "latency_p95": quantile(0.95),
        "latency_p99": quantile(0.99),
        "_histogram": h,
        "answered": answered,
        "tokens_input": round(tokens * answered * 0.8),
        "tokens_output": round(tokens * answered * 0.2),
        "tokens_per_task": tokens if answered else None,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / answered if answered else None,
    }


def run(s: Settings, canary: dict, baseline: dict | None):
    comparison = compare_slots(s, canary, baseline) if baseline is not None else None
    return judge(s, canary, baseline, comparison)


def jittered(latency: float, n: int, seed: int, spread: float = 0.1) -> list[float]:
    rng = random.Random(seed)
    return [latency * math.exp(rng.gauss(0, spread)) for _ in range(n)]


# -- each criterion -----------------------------------------------------------------------------


def test_clear_fail_on_error_rate():
    j = run(settings(), stats(412, 82), stats(8000, 2))
    assert j.verdict == "fail" and j.decided_by == ["errors", "errors_vs_stable"]
    assert j.reasons[0] == "canary error rate 19.9 % > 5 % over 30 s (412 requests, 82 errors)"
    assert "significantly above the baseline's 0.025 %" in j.reasons[1] and "Fisher exact" in j.reasons[1]


def test_clear_pass_names_every_criterion():
    j = run(settings(), stats(412, 1), stats(8000, 20))
    assert j.verdict == "pass" and j.decided_by == []
    assert "canary error rate 0.243 % <= 5 % over 30 s (412 requests, 1 errors)" in j.reasons
    assert any("1.00x the baseline's 200 ms" in r for r in j.reasons)
    assert [c["criterion"] for c in j.criteria] == [
        "errors", "latency", "errors_vs_stable", "latency_shift", "token_cost", "fallbacks",
    ]  # fmt: skip
    assert {c["verdict"] for c in j.criteria} == {"pass"}


def test_latency_over_twice_the_baseline_fails_and_says_so():
    j = run(settings(), stats(400, 0, p95=0.9), stats(8000, 0, p95=0.3))
    assert j.verdict == "fail" and j.decided_by[0] == "latency"
    assert j.reasons[0].startswith("canary p95 latency 900 ms is 3.00x the baseline's 300 ms over 30 s (limit 2x): ")
    assert "400 of 400 canary requests slower than 600 ms" in j.reasons[0]


def test_a_few_milliseconds_above_stable_is_not_a_latency_fail():
    """A fresh slot's first requests (8.7 ms against 2.5 ms, seen in CI) are noise, not a regression."""
    j = run(settings(), stats(400, 0, p95=0.0087), stats(8000, 0, p95=0.0025))
    latency = next(c for c in j.criteria if c["criterion"] == "latency")
    assert latency["verdict"] == "pass" and "min_latency_delta" in latency["reason"], latency
    assert run(settings(min_latency_delta=0), stats(400, 0, p95=0.0087), stats(8000, 0, p95=0.0025)).verdict == "fail"


def test_latency_at_the_limit_passes():
    assert run(settings(), stats(400, 0, p95=0.6), stats(8000, 0, p95=0.3)).verdict == "pass"


def test_a_slow_outlier_among_few_requests_is_not_a_fail():
    """One slow request of twelve makes the p95 ratio large, but is no evidence of a slower version."""
    canary = stats(12, durations=[0.03] * 11 + [0.2])
    j = run(settings(min_requests=10), canary, stats(400, durations=jittered(0.03, 400, 1)))
    latency = next(c for c in j.criteria if c["criterion"] == "latency")
    assert canary["latency_p95"] / 0.03 > 2 and latency["verdict"] == "pass", latency
    assert "not significant yet" in latency["reason"] and j.verdict == "pass"


@pytest.mark.parametrize("stable_s", [0.005, 0.03, 0.3, 3.0])
@pytest.mark.parametrize("factor,verdict", [(1.0, "pass"), (1.3, "pass"), (1.5, "pass"), (3.0, "fail"), (10.0, "fail")])
def test_latency_judged_at_every_scale(stable_s, factor, verdict):
    """Requests timed with 10 % jitter, counted in the runtime's buckets: 12 canary requests (5 % of the local
    inventory's traffic over its 10 s window) against 240 stable ones."""
    canary = stats(12, durations=jittered(stable_s * factor, 12, 2))
    baseline = stats(240, durations=jittered(stable_s, 240, 3))
    j = run(settings(window=10, min_requests=10), canary, baseline)
    assert j.verdict == verdict, j.reasons
    if verdict == "fail" and stable_s * (factor - 1) > 0.025:
        assert j.decided_by[0] == "latency" and "latency_shift" in j.decided_by, j.reasons
    elif verdict == "fail":
        # Within min_latency_delta (25 ms) of stable, the p95 ratio is not trusted; the rank test decides.
        assert j.decided_by == ["latency_shift"], j.reasons
    measured = canary["latency_p95"] / baseline["latency_p95"]
    assert measured == pytest.approx(factor, rel=0.2)


def test_token_cost_over_the_ratio_fails():
    j = run(settings(), stats(400, tokens=320), stats(8000, tokens=200))
    assert j.verdict == "fail" and j.decided_by == ["token_cost"]
    assert "canary uses 320 tokens per task (" in j.reasons[0] and "1.60x the baseline's 200" in j.reasons[0]
    assert run(settings(), stats(400, tokens=290), stats(8000, tokens=200)).verdict == "pass"
    assert run(settings(max_token_ratio=1.7), stats(400, tokens=320), stats(8000, tokens=200)).verdict == "pass"


def test_fallbacks_are_a_signal_of_their_own():
    j = run(settings(), stats(400, fallbacks=60), stats(8000, fallbacks=80))
    assert j.verdict == "fail" and j.decided_by == ["fallbacks"]
    assert j.reasons[0].startswith("canary tasks answered by a fallback provider: 15 % against the baseline's 1 % (")
    assert run(settings(), stats(400, fallbacks=6), stats(8000, fallbacks=80)).verdict == "pass"


@pytest.mark.parametrize("canary_n,stable_n", [(12, 8000), (0, 8000), (400, 10)])
def test_thin_traffic_is_inconclusive_never_pass(canary_n, stable_n):
    j = run(settings(), stats(canary_n, 0), stats(stable_n, 0))
    assert j.verdict == "inconclusive" and j.decided_by in (["traffic"], ["baseline_traffic"])
    assert "fewer than the 50 needed" in j.reasons[0]


def test_a_flood_of_errors_fails_even_below_min_requests():
    j = run(settings(), stats(12, 8), stats(8000, 0))
    assert j.verdict == "fail" and j.decided_by == ["errors", "errors_vs_stable"]
    assert "failed 8 of only 12 requests" in j.reasons[0] and "binomial test" in j.reasons[0]


@pytest.mark.parametrize(
    "canary,decided_by",
    [
        (stats(6, 1), ["errors_vs_stable"]),  # one failure among six, none among stable's 8000
        (stats(6, p95=0.6), ["latency", "latency_shift"]),  # six requests, all 3x stable's
        (stats(6), ["traffic"]),  # six good requests: not yet enough to pass
        (stats(4, 1), ["traffic"]),  # below min_points: no test at all
    ],
)
def test_a_fail_needs_fewer_requests_than_a_pass(canary, decided_by):
    j = run(settings(), canary, stats(8000, 0, p95=0.2))
    assert j.decided_by == decided_by and j.verdict == ("inconclusive" if decided_by == ["traffic"] else "fail")
    assert any("fewer than the 50 needed for a verdict" in r for r in j.reasons)


def test_one_error_among_few_requests_stays_inconclusive_when_stable_fails_as_often():
    assert run(settings(), stats(12, 1), stats(8000, 0)).verdict == "fail"  # stable never fails: evidence
    assert run(settings(), stats(12, 1), stats(8000, 400)).verdict == "inconclusive"  # 5 % both: none


def test_without_baseline_only_the_error_threshold():
    s = Settings(agent="legal_info", canary=CANARY, window=30, min_requests=50)
    j = judge(s, stats(100, 1), None)
    assert (j.verdict, j.reasons) == ("pass", ["canary error rate 1 % <= 5 % over 30 s (100 requests, 1 errors)"])
    assert judge(s, stats(100, 10), None).verdict == "fail"


def test_unknown_baseline_latency_is_inconclusive():
    j = judge(settings(), stats(400, 0), stats(8000, 0, p95=None))
    assert j.verdict == "inconclusive" and j.decided_by == ["latency"] and "cannot be compared" in j.reasons[0]


# -- the statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_rank_test_is_mann_whitney_with_ties_per_bucket(seed):
    rng = np.random.default_rng(seed)
    bounds = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, math.inf)
    c = Histogram(bounds, tuple(int(x) for x in rng.integers(0, 8, len(bounds))))
    b = Histogram(bounds, tuple(int(x) for x in rng.integers(0, 30, len(bounds))))
    ours = rank_test(c, b, min_points=3)
    ranks = np.arange(len(bounds))
    theirs = mannwhitneyu(np.repeat(ranks, c.counts), np.repeat(ranks, b.counts), alternative="greater")
    assert ours["u"] == pytest.approx(float(theirs.statistic))
    assert ours["p_value"] == pytest.approx(float(theirs.pvalue), rel=1e-3)


def test_rank_test_equal_and_faster_are_not_worse():
    same = histogram([0.1] * 50)
    equal = rank_test(same, same)
    assert equal["p_value"] == 1.0 and not equal["significant"] and equal["effect"] == 1.0
    faster = rank_test(histogram([0.05] * 20), histogram([0.1] * 50))
    assert faster["p_value"] > 0.5 and not faster["worse"] and faster["superiority"] == 0.0


def test_rank_test_needs_points_and_tolerance():
    few = rank_test(histogram([0.5] * 3), histogram([0.1] * 50))
    assert few["status"] == "insufficient" and not few["worse"]
    slower = rank_test(histogram(jittered(0.13, 40, 1)), histogram(jittered(0.1, 400, 2)), tolerance=2.0)
    assert slower["significant"] and not slower["worse"] and 1.2 < slower["effect"] < 1.45


@pytest.mark.parametrize("factor,worse", [(1.3, False), (2.0, False), (2.6, True), (3.0, True), (10.0, True)])
def test_rank_test_fails_only_beyond_the_tolerance(factor, worse):
    """On the runtime's buckets the test asks "more than 2x slower?" (the canary shifted down 8 buckets),
    not "slower, with a median ratio over 2": a canary exactly 2x slower is not failed by noise."""
    stable = histogram(jittered(0.3, 500, 11))
    for seed in range(5):
        result = rank_test(histogram(jittered(0.3 * factor, 10, seed)), stable, tolerance=2.0)
        assert result["significant"] == (factor > 1.2) and result["worse"] == worse, result
        assert result["p_value_beyond_tolerance"] is not None


def test_rank_test_on_another_layout_uses_the_median_ratio():
    bounds = (0.1, 0.25, 0.5, 1, 2.5, 5, math.inf)  # not geometric: no shift possible
    c, b = Histogram(bounds, (0, 0, 0, 10, 0, 0, 0)), Histogram(bounds, (50, 400, 50, 0, 0, 0, 0))
    result = rank_test(c, b, tolerance=2.0)
    assert result["p_value_beyond_tolerance"] is None and result["worse"] and result["effect"] > 2


def test_histogram_quantile_counts_and_alignment():
    h = Histogram.from_cumulative({0.1: 10.4, 0.2: 30.0, 0.4: 29.6, math.inf: 40.2})
    assert h.counts == (10, 20, 0, 10) and h.total == 40  # a dip from increase() extrapolation is flattened
    assert h.quantile(0.5) == pytest.approx(0.15) and h.quantile(0.99) == 0.4
    assert h.above(0.2) == 10 and h.above(0.15) == 10 and h.above(0.1) == 30
    coarse = Histogram((0.2, math.inf), (5, 5))
    assert h.aligned(coarse) == ((30, 10), (5, 5))
    empty = Histogram()  # a slot whose duration series are not there yet
    assert empty.total == 0 and empty.above(0.1) == 0 and empty.quantile(0.95) is None
    assert empty.aligned(h) == ((), ()) and tail_test(empty, 0.1, 0.95, alpha=0.05)["slower"] == 0
    assert rank_test(empty, h)["status"] == "insufficient"


def test_fine_buckets_keep_quantiles_within_a_few_percent():
    """From 5 ms to 30 s (p95 up to 60 s), a version's p95 from the runtime's buckets is within 9 % of the true p95
    (a bucket's width) for a point mass, and within 3 % for a spread distribution."""
    for latency in np.geomspace(0.005, 30, 40):  # spread to 1.6x at p95: still below the 64 s top
        assert histogram([latency] * 100).quantile(0.95) == pytest.approx(latency, rel=0.0905)
        spread = jittered(latency, 2000, 7, spread=0.3)
        assert histogram(spread).quantile(0.95) == pytest.approx(float(np.quantile(spread, 0.95)), rel=0.03)


def test_tail_and_fisher():
    tail = tail_test(histogram([0.9] * 10), 0.6, 0.95, alpha=0.05)
    assert (tail["slower"], tail["n"], tail["significant"]) == (10, 10, True)
    assert not tail_test(histogram([0.1] * 11 + [0.9]), 0.6, 0.95, alpha=0.05)["significant"]
    worse = fisher((5, 10), (2, 200), alpha=0.05, tolerance=0.01)
    assert worse["worse"] and worse["p_value"] < 1e-4 and worse["effect"] == pytest.approx(0.49)
    same = fisher((1, 100), (10, 1000), alpha=0.05, tolerance=0.01)
    assert not same["significant"] and not same["worse"]
    assert fisher((0, 0), (1, 10), alpha=0.05, tolerance=0.0)["status"] == "insufficient"


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"latency_quantile": 1.0}, "latency_quantile"),
        ({"error_codes": "5(("}, "error_codes"),
        ({"window": 0}, "window"),
        ({"max_token_ratio": 0}, "max_token_ratio"),
        ({"latency_tolerance": 0.5}, "latency_tolerance"),
        ({"fallback_tolerance": 2}, "fallback_tolerance"),
    ],
)
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises(analysis.AnalysisError, match=field):
        settings(**kw)


def test_selector_quotes_labels():
    assert analysis.selector("a", Slot("b", 'v"1')) == '{agent="a",slot="b",version="v\\"1"}'


# -- the watch loop -------------------------------------------------------------------------------


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
        return {
            "at": at, "verdict": v, "reasons": [f"check {len(seen)}: {v}"], "canary": None, "baseline": None,
            "decided_by": ["latency"] if v == "fail" else [],
        }  # fmt: skip

    monkeypatch.setattr(analysis, "check", fake)
    return seen


def test_watch_returns_at_the_first_fail(monkeypatch):
    clock = FakeClock()
    seen = fake_checks(monkeypatch, ["pass", "inconclusive", "fail", "pass"])
    out = analysis.watch(None, settings(), duration=60, interval=10, clock=clock, sleep=clock.sleep)
    assert out.verdict == "fail" and out.ended_early and len(seen) == 3
    assert out.elapsed == 20 and out.reasons == ["check 3: fail"] and out.to_dict()["decided_by"] == ["latency"]


def test_watch_reads_no_further_back_than_its_start(monkeypatch):
    """A step is judged on its own traffic: the window grows from two scrapes to `window` as it runs."""
    clock = FakeClock()
    windows = []

    def spy(prom, s, at=None):
        windows.append(s.window)
        return {"at": at, "verdict": "pass", "reasons": [], "canary": None, "baseline": None}

    monkeypatch.setattr(analysis, "check", spy)
    analysis.watch(
        None, settings(window=10, scrape_interval=1), duration=12, interval=3, clock=clock, sleep=clock.sleep
    )
    assert windows == [2, 5, 8, 10, 10]  # checks at 0, 3, 6, 9 and 12 s
    windows.clear()
    analysis.watch(None, settings(window=10, scrape_interval=1), duration=0, clock=clock, sleep=clock.sleep)
    assert windows == [10]  # one check alone reads the whole window


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
    assert out["verdict"] == "inconclusive" and out["decided_by"] == ["prometheus"]
    assert "cannot be reached" in out["reasons"][0]
    budget = analysis.error_budget(prom, "legal_info")
    assert budget["verdict"] == "inconclusive" and budget["exhausted"] is None


def test_percent_formatting_is_readable():
    assert analysis._pct(0.198) == "19.8 %" and analysis._secs(1.5) == "1.5 s" and analysis._secs(0.0123) == "12.3 ms"
