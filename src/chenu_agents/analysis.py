"""Rollout analysis: judge a canary slot on Prometheus metrics, against thresholds and against stable.

One check reads, over the last `window` seconds, the runtime's series (roles/monitoring/README.md) of the
canary slot and of the baseline slot: requests by code, the request duration histogram (its buckets
counted per request, not only its quantiles), tokens, the provider that answered and fallbacks. Each
criterion gives its own verdict and sentence; the check's verdict is the worst of them, and
`decided_by` names the criteria that made it:

- `errors`: the canary's error rate above `max_error_rate` (a binomial test when it had few requests);
- `latency`: its `latency_quantile` (p95) above `max_latency_ratio` times the baseline's, with the
  excess significant: more canary requests slower than that limit than the quantile allows (binomial);
- `errors_vs_stable`: its error ratio above the baseline's by more than `error_rate_tolerance`, by a
  one-sided Fisher exact test over the window's requests;
- `latency_shift`: its durations ranked above the baseline's by a one-sided Mann-Whitney U test over
  the window's requests (from the histogram buckets, ties within a bucket), with a ratio of medians
  above `latency_tolerance`;
- `token_cost`: its tokens per answered task above `max_token_ratio` times the baseline's;
- `fallbacks`: its share of tasks answered by a fallback provider above the baseline's by more than
  `fallback_tolerance` (Fisher exact test);
- `traffic`, `baseline_traffic`, `prometheus`: `inconclusive` when there is not enough to judge, never
  a pass for want of data.

`watch()` repeats the check every `interval` seconds for `duration` seconds and stops at the first fail.
`error_budget()` reads the monitoring role's SLO series. docs/analysis.md explains the choices.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from chenu_agents.errors import ChenuError, Problem

REQUESTS = "chenu_agent_requests_total"
BUCKETS = "chenu_agent_request_duration_seconds_bucket"
DURATION_SUM = "chenu_agent_request_duration_seconds_sum"
DURATION_COUNT = "chenu_agent_request_duration_seconds_count"
TOKENS = "chenu_agent_tokens_total"
ANSWERS = "chenu_agent_llm_answers_total"
FALLBACKS = "chenu_agent_fallbacks_total"
QUANTILES = (0.5, 0.95, 0.99)
VERDICTS = ("pass", "fail", "inconclusive")
# Every criterion a check can be decided by, in the order they are judged and reported.
CRITERIA = {
    "prometheus": "metrics",
    "traffic": "canary traffic",
    "errors": "error rate",
    "baseline_traffic": "stable traffic",
    "latency": "latency",
    "errors_vs_stable": "error rate against stable",
    "latency_shift": "latency shift against stable",
    "token_cost": "token cost",
    "fallbacks": "fallbacks",
}


class AnalysisError(ChenuError):
    """The analysis was asked something it cannot do (bad settings)."""


class PrometheusUnavailable(ChenuError):
    """Prometheus did not answer, or answered with an error: no verdict can come from it."""


@dataclass(frozen=True)
class Slot:
    slot: str
    version: str | None = None

    def describe(self) -> str:
        return f"{self.slot} ({self.version})" if self.version else self.slot


@dataclass(frozen=True)
class Settings:
    """What to compare and how strictly; defaults follow seed 000 §4.1."""

    agent: str
    canary: Slot
    baseline: Slot | None = None
    window: int = 60
    max_error_rate: float = 0.05
    max_latency_ratio: float = 2.0
    # Seconds the canary's quantile must also exceed the baseline's by: at a few milliseconds, a ratio
    # is scheduling noise (a freshly started slot's first requests), not a regression.
    min_latency_delta: float = 0.025
    latency_quantile: float = 0.95
    min_requests: int = 50
    min_baseline_requests: int | None = None
    error_codes: str = "5.."
    alpha: float = 0.05
    error_rate_tolerance: float = 0.01
    latency_tolerance: float | None = None
    max_token_ratio: float = 1.5
    fallback_tolerance: float = 0.05
    scrape_interval: float = 15.0
    min_points: int = 5

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                problems.append(Problem("(analysis)", name, expected))

        need(bool(self.agent), "agent", "a non-empty agent name")
        need(self.window >= 1, "window", "at least 1 second")
        need(0 <= self.max_error_rate <= 1, "max_error_rate", "a ratio in [0, 1], e.g. 0.05")
        need(self.max_latency_ratio > 0, "max_latency_ratio", "a positive ratio, e.g. 2.0")
        need(self.min_latency_delta >= 0, "min_latency_delta", "a non-negative number of seconds, e.g. 0.025")
        need(0 < self.latency_quantile < 1, "latency_quantile", "a quantile in (0, 1), e.g. 0.95")
        need(self.min_requests >= 1, "min_requests", "at least 1")
        need(0 < self.alpha < 1, "alpha", "a significance level in (0, 1), e.g. 0.05")
        need(self.error_rate_tolerance >= 0, "error_rate_tolerance", "a non-negative ratio")
        need(
            self.latency_tolerance is None or self.latency_tolerance >= 1,
            "latency_tolerance",
            "a ratio of at least 1, e.g. 2.0 (default: max_latency_ratio)",
        )
        need(self.max_token_ratio > 0, "max_token_ratio", "a positive ratio, e.g. 1.5")
        need(0 <= self.fallback_tolerance <= 1, "fallback_tolerance", "a ratio in [0, 1], e.g. 0.05")
        need(self.scrape_interval > 0, "scrape_interval", "a positive number of seconds")
        need(self.min_points >= 3, "min_points", "at least 3")
        try:
            re.compile(self.error_codes)
        except re.error as exc:
            problems.append(Problem("(analysis)", "error_codes", f"a regular expression ({exc})"))
        if problems:
            raise AnalysisError("invalid analysis settings", problems)

    @property
    def baseline_min_requests(self) -> int:
        return self.min_requests if self.min_baseline_requests is None else self.min_baseline_requests

    @property
    def shift_tolerance(self) -> float:
        """Ratio of medians the rank test tolerates: by default the latency limit itself."""
        return self.max_latency_ratio if self.latency_tolerance is None else self.latency_tolerance


class Prometheus:
    """The two calls of Prometheus' HTTP API the analysis needs, with errors made explicit."""

    def __init__(self, url: str, timeout: float = 5.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            response = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} cannot be reached ({type(exc).__name__})") from exc
        try:
            body = response.json()
        except ValueError:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON"
            ) from None
        if body.get("status") != "success":
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} refused the query ({body.get('errorType')}: {body.get('error')})"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data.get("resultType") == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = self._get("/api/v1/query_range", params)
        return [(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(agent: str, slot: Slot, extra: str = "") -> str:
    labels = [f"agent={_quote(agent)}", f"slot={_quote(slot.slot)}"]
    if slot.version:
        labels.append(f"version={_quote(slot.version)}")
    if extra:
        labels.append(extra)
    return "{" + ",".join(labels) + "}"


def _num(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _qname(q: float) -> str:
    return "latency_p" + f"{q * 100:g}".replace(".", "_")


@dataclass(frozen=True)
class Histogram:
    """A window's request durations as bucket counts: `bounds` (upper, ascending, the last +Inf) and the
    number of requests in each bucket (not cumulative), rounded to whole requests."""

    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()

    @classmethod
    def from_cumulative(cls, cumulative: dict[float, float]) -> Histogram:
        """From `le -> cumulative count` (what `sum by (le) (increase(..._bucket[w]))` gives)."""
        bounds = tuple(sorted(cumulative))
        counts, below = [], 0.0
        for le in bounds:
            value = max(cumulative[le], below)  # counts extrapolated by increase() can dip: keep monotonic
            counts.append(max(0, round(value - below)))
            below = value
        return cls(bounds, tuple(counts))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """As PromQL's histogram_quantile: linear inside the bucket the rank falls in."""
        total = self.total
        if total == 0:
            return None
        rank, below = q * total, 0
        for i, (le, count) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if count and below + count >= rank:
                if math.isinf(le):
                    return self.bounds[i - 1] if i else None
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (le - lower) * (rank - below) / count
            below += count
        return None

    def above(self, threshold: float) -> int:
        """Requests surely slower than `threshold`: those of the buckets whose lower bound is at least it
        (a bucket straddling it is not counted, so the count errs towards the canary)."""
        lowers = (0.0, *self.bounds[:-1]) if self.bounds else ()
        return sum(c for lower, c in zip(lowers, self.counts, strict=True) if lower >= threshold)

    def aligned(self, other: Histogram) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Both histograms' counts on the bounds they share (two bucket layouts: the coarser common one)."""
        common = sorted(set(self.bounds) & set(other.bounds))

        def regroup(h: Histogram) -> tuple[int, ...]:
            out, i, acc = [], 0, 0
            for le, count in zip(h.bounds, h.counts, strict=True):
                acc += count
                if i < len(common) and le == common[i]:
                    out.append(acc)
                    acc, i = 0, i + 1
            return tuple(out)

        return regroup(self), regroup(other)


def _increase(prom: Prometheus, expr: str, at: float, by: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in prom.query(f"sum by ({by}) (increase({expr}))", at):
        if math.isfinite(value):
            out[labels.get(by, "")] = value
    return out


def slot_stats(prom: Prometheus, settings: Settings, slot: Slot, at: float) -> dict[str, Any]:
    """Requests, errors, latency (quantiles, mean, buckets), tokens and fallbacks of one slot over the
    window ending at `at`. The bucket counts travel under `_histogram` (check() drops them)."""
    w, sel = f"{settings.window}s", selector(settings.agent, slot)
    by_code = _increase(prom, f"{REQUESTS}{sel}[{w}]", at, "code")
    pattern = re.compile(settings.error_codes)
    total = sum(by_code.values())
    errors = min(total, sum(v for code, v in by_code.items() if pattern.fullmatch(code)))
    stats: dict[str, Any] = {
        "slot": slot.slot,
        "version": slot.version,
        "requests": round(total),
        "errors": round(errors),
        "error_rate": _num(errors / total) if total > 0 else None,
        "by_code": {code: round(v) for code, v in sorted(by_code.items())},
    }
    buckets = f"sum by (le) (rate({BUCKETS}{sel}[{w}]))"
    for q in sorted({*QUANTILES, settings.latency_quantile}):
        result = prom.query(f"histogram_quantile({q:g}, {buckets})", at)
        stats[_qname(q)] = _num(result[0][1]) if result else None
    # The mean is exact (sum and count of every duration), whatever the buckets.
    mean = prom.query(f"sum(increase({DURATION_SUM}{sel}[{w}])) / sum(increase({DURATION_COUNT}{sel}[{w}]))", at)
    stats["latency_mean"] = _num(mean[0][1]) if mean else None
    cumulative = _increase(prom, f"{BUCKETS}{sel}[{w}]", at, "le")
    stats["_histogram"] = Histogram.from_cumulative({float(le): v for le, v in cumulative.items()})
    tokens = _increase(prom, f"{TOKENS}{sel}[{w}]", at, "kind")
    answers = _increase(prom, f"{ANSWERS}{sel}[{w}]", at, "provider")
    # A runtime from before chenu_agent_llm_answers_total: its 200s are its answered tasks.
    answered = sum(answers.values()) if answers else sum(v for code, v in by_code.items() if code == "200")
    fallbacks = sum(_increase(prom, f"{FALLBACKS}{sel}[{w}]", at, "slot").values())
    stats.update(
        answered=round(answered),
        answered_by={p: round(v) for p, v in sorted(answers.items()) if round(v)},
        tokens_input=round(tokens.get("input", 0.0)),
        tokens_output=round(tokens.get("output", 0.0)),
        tokens_per_task=_num((tokens.get("input", 0.0) + tokens.get("output", 0.0)) / answered) if answered else None,
        fallbacks=round(min(fallbacks, answered)),
        fallback_rate=_num(min(fallbacks, answered) / answered) if answered else None,
    )
    return stats


def _p(value: float) -> float:
    return float(f"{value:.4g}")


def fisher(worse: tuple[int, int], better: tuple[int, int], *, alpha: float, tolerance: float) -> dict[str, Any]:
    """One-sided Fisher exact test: is the share `worse` = (events, trials) higher than `better`'s?

    `worse` (the verdict) needs significance (p < alpha) and a difference of shares above `tolerance`.
    """
    from scipy.stats import fisher_exact

    (ce, cn), (be, bn) = worse, better
    ce, be = min(ce, cn), min(be, bn)
    out: dict[str, Any] = {"test": "fisher", "n_canary": cn, "n_baseline": bn, "tolerance": tolerance}
    if cn == 0 or bn == 0:
        return {**out, "status": "insufficient", "p_value": None, "effect": None, "significant": False, "worse": False}
    p = float(fisher_exact([[ce, cn - ce], [be, bn - be]], alternative="greater").pvalue)
    diff = ce / cn - be / bn
    return {
        **out,
        "status": "ok",
        "canary": _num(ce / cn),
        "baseline": _num(be / bn),
        "p_value": _p(p),
        "effect": _num(diff),
        "significant": p < alpha,
        "worse": p < alpha and diff > tolerance,
    }


def _mann_whitney(c: Any, b: Any) -> tuple[float, float]:
    """U of `c` over `b` (bucket counts on the same bounds; a bucket's requests are ties) and its one-sided
    p-value: the normal approximation with tie and continuity corrections."""
    import numpy as np
    from scipy.stats import norm

    n1, n2 = float(c.sum()), float(b.sum())
    u = float(np.sum(c * (np.cumsum(b) - b + b / 2)))
    n = n1 + n2
    ties = c + b
    var = n1 * n2 / 12 * ((n + 1) - float(np.sum(ties**3 - ties)) / (n * (n - 1)))
    return u, 1.0 if var <= 0 else float(norm.sf((u - n1 * n2 / 2 - 0.5) / math.sqrt(var)))


def _growth(bounds: Sequence[float]) -> float | None:
    """The constant ratio between successive finite bounds, when there is one (the runtime's layout)."""
    finite = [b for b in bounds if math.isfinite(b) and b > 0]
    ratios = [hi / lo for lo, hi in itertools.pairwise(finite)]
    if len(ratios) < 2 or max(ratios) - min(ratios) > 1e-6 * max(ratios):
        return None
    return ratios[0]


def rank_test(
    canary: Histogram, baseline: Histogram, *, alpha: float = 0.05, tolerance: float = 1.0, min_points: int = 5
) -> dict[str, Any]:
    """One-sided Mann-Whitney U tests on every request of the window (requests of one bucket are ties).

    `significant`: the canary's durations rank above the baseline's (p < alpha). `worse`: they rank above
    the baseline's even once divided by `tolerance`, i.e. the canary is significantly more than
    `tolerance` times slower. On the runtime's geometric buckets a division is a shift by
    log(tolerance) / log(growth) buckets (8 for 2x; rounded: within 4.5 % of the tolerance otherwise);
    on other layouts the ratio of medians stands in for it. scipy's `mannwhitneyu(...,
    method="asymptotic")` on the same ranks gives the same U and p.
    """
    import numpy as np

    c_counts, b_counts = canary.aligned(baseline)
    c, b = np.asarray(c_counts, dtype=float), np.asarray(b_counts, dtype=float)
    n1, n2 = float(c.sum()), float(b.sum())
    out: dict[str, Any] = {
        "test": "mann_whitney",
        "n_canary": int(n1),
        "n_baseline": int(n2),
        "median_canary": _num(canary.quantile(0.5)),
        "median_baseline": _num(baseline.quantile(0.5)),
        "u": None,
        "p_value": None,
        "p_value_beyond_tolerance": None,
        "effect": None,
        "superiority": None,
        "tolerance": tolerance,
        "significant": False,
        "worse": False,
        "status": "ok",
    }
    if n1 < min_points or n2 < min_points:
        out["status"] = "insufficient"
        return out
    u, p = _mann_whitney(c, b)
    mc, mb = out["median_canary"], out["median_baseline"]
    effect = (mc / mb if mb else math.inf) if mc is not None and mb is not None else None
    common = sorted(set(canary.bounds) & set(baseline.bounds))
    growth = _growth(common)
    if growth is not None:
        shift = max(0, round(math.log(tolerance) / math.log(growth)))
        shifted = np.concatenate(([c[: shift + 1].sum()], c[shift + 1 :], np.zeros(shift)))
        _u, p_beyond = _mann_whitney(shifted, b)
        worse = p_beyond < alpha
        out["p_value_beyond_tolerance"] = _p(p_beyond)
    else:
        worse = p < alpha and effect is not None and effect > tolerance
    out.update(
        u=_num(u),
        p_value=_p(p),
        superiority=_num(u / (n1 * n2), 3),
        effect=None if effect is None else _num(effect, 3) if math.isfinite(effect) else "inf",
        significant=p < alpha,
        worse=worse,
    )
    return out


def tail_test(canary: Histogram, limit: float, quantile: float, *, alpha: float) -> dict[str, Any]:
    """Is the canary's `quantile` above `limit`? Then more than (1 - quantile) of its requests are
    slower than `limit`: a one-sided binomial test of the count of such requests against that share."""
    from scipy.stats import binomtest

    n, k = canary.total, canary.above(limit)
    share = 1 - quantile
    p = float(binomtest(k, n, share, alternative="greater").pvalue) if n else 1.0
    return {
        "test": "binomial",
        "limit": _num(limit),
        "slower": k,
        "n": n,
        "share": _num(share),
        "p_value": _p(p),
        "significant": p < alpha,
    }


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.3g} %"


def _secs(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reasons: list[str]
    criteria: list[dict[str, str]]  # {criterion, verdict, reason}, in CRITERIA order
    decided_by: list[str]  # the criteria that gave the verdict (empty for a pass: every one passed)


def judge(
    settings: Settings,
    canary: dict[str, Any],
    baseline: dict[str, Any] | None,
    comparison: dict[str, dict[str, Any]] | None = None,
) -> Judgement:
    """The verdict of one check from its numbers (pure): fail beats inconclusive beats pass."""
    from scipy.stats import binomtest

    w = f"{settings.window} s"
    found: list[tuple[str, str, str]] = []
    comparison = comparison or {}

    def say(criterion: str, verdict: str, sentence: str) -> None:
        found.append((criterion, verdict, sentence))

    n, e = canary["requests"], canary["errors"]
    if n < settings.min_requests:
        # Too few requests for a rate, but a flood of errors among them is already conclusive.
        if e > 0 and binomtest(min(e, n), n, settings.max_error_rate, alternative="greater").pvalue < settings.alpha:
            say(
                "errors",
                "fail",
                f"canary failed {e} of only {n} requests over {w}: an error rate above "
                f"{_pct(settings.max_error_rate)} at p < {settings.alpha:g} (binomial test)",
            )
        else:
            say(
                "traffic",
                "inconclusive",
                f"canary served {n} requests over {w}, fewer than the {settings.min_requests} needed for a verdict",
            )
    else:
        rate = canary["error_rate"] or 0.0
        over = rate > settings.max_error_rate
        say(
            "errors",
            "fail" if over else "pass",
            f"canary error rate {_pct(rate)} {'>' if over else '<='} "
            f"{_pct(settings.max_error_rate)} over {w} ({n} requests, {e} errors)",
        )

    if settings.baseline is not None and baseline is not None:
        bn = baseline["requests"]
        if bn < settings.baseline_min_requests:
            say(
                "baseline_traffic",
                "inconclusive",
                f"baseline {settings.baseline.describe()} served {bn} requests "
                f"over {w}, fewer than the {settings.baseline_min_requests} needed to compare against it",
            )
        elif n >= settings.min_requests:
            _judge_latency(settings, canary, baseline, comparison.get("latency_tail"), say)
            _judge_rank_tests(settings, comparison, say)
            _judge_cost(settings, canary, baseline, say)
        elif n >= settings.min_points:
            # Too few requests for a pass, enough for a fail: the tests against stable are exact (Fisher,
            # binomial) or ranked, and a clear regression among a handful of requests is already one.
            def fail_only(criterion: str, verdict: str, sentence: str) -> None:
                if verdict == "fail":
                    say(criterion, verdict, sentence)

            if comparison.get("latency_tail") is not None:
                _judge_latency(settings, canary, baseline, comparison["latency_tail"], fail_only)
            _judge_rank_tests(settings, comparison, fail_only)
    order = list(CRITERIA)
    found.sort(key=lambda item: order.index(item[0]))
    criteria = [{"criterion": c, "verdict": v, "reason": r} for c, v, r in found]
    for verdict in ("fail", "inconclusive"):
        deciding = [item for item in found if item[1] == verdict]
        if deciding:
            rest = [item for item in found if item[1] != verdict and (verdict == "fail" or item[1] == "pass")]
            if verdict == "fail":
                rest.sort(key=lambda item: item[1] != "inconclusive")
            reasons = [r for _c, _v, r in deciding + rest]
            return Judgement(verdict, reasons, criteria, list(dict.fromkeys(c for c, _v, _r in deciding)))
    return Judgement("pass", [r for _c, _v, r in found], criteria, [])


def _judge_latency(settings, canary, baseline, tail, say) -> None:
    q = settings.latency_quantile
    key, label = _qname(q), f"p{q * 100:g}"
    cl, bl = canary.get(key), baseline.get(key)
    w = f"{settings.window} s"
    if cl is None or bl is None or bl <= 0:
        say(
            "latency",
            "inconclusive",
            f"{label} latency cannot be compared over {w} (canary {_secs(cl)}, baseline {_secs(bl)})",
        )
        return
    ratio = cl / bl
    sentence = (
        f"canary {label} latency {_secs(cl)} is {ratio:.2f}x the baseline's {_secs(bl)} over {w} "
        f"(limit {settings.max_latency_ratio:g}x)"
    )
    if ratio <= settings.max_latency_ratio:
        say("latency", "pass", sentence)
    elif cl - bl <= settings.min_latency_delta:
        say(
            "latency",
            "pass",
            f"{sentence}, but only {_secs(cl - bl)} above it (min_latency_delta {_secs(settings.min_latency_delta)})",
        )
    elif tail is None or tail["significant"]:
        extra = (
            f": {tail['slower']} of {tail['n']} canary requests slower than {_secs(tail['limit'])}, more than "
            f"{_pct(tail['share'])} at p={tail['p_value']:.3g} (binomial test)"
            if tail
            else ""
        )
        say("latency", "fail", sentence + extra)
    else:
        say(
            "latency",
            "pass",
            f"{sentence}, but only {tail['slower']} of {tail['n']} canary requests slower than "
            f"{_secs(tail['limit'])} (binomial p={tail['p_value']:.3g}): not significant yet",
        )


def _judge_rank_tests(settings, comparison, say) -> None:
    w = f"{settings.window} s"
    errs = comparison.get("error_rate")
    if errs is not None:
        if errs["status"] != "ok":
            say("errors_vs_stable", "pass", f"error rate against stable: no requests to compare over {w}")
        else:
            stat = f"Fisher exact one-sided p={errs['p_value']:.3g}, difference {_pct(errs['effect'])}"
            if errs["worse"]:
                say(
                    "errors_vs_stable",
                    "fail",
                    f"canary error rate {_pct(errs['canary'])} is significantly above "
                    f"the baseline's {_pct(errs['baseline'])} ({stat}, tolerance {_pct(errs['tolerance'])})",
                )
            else:
                say(
                    "errors_vs_stable",
                    "pass",
                    f"canary error rate is not significantly above the baseline's "
                    f"by more than {_pct(errs['tolerance'])} ({stat})",
                )
    lat = comparison.get("latency")
    if lat is not None:
        if lat["status"] != "ok":
            say(
                "latency_shift",
                "pass",
                f"latency shift: too few requests for a Mann-Whitney test over {w} "
                f"({lat['n_canary']} canary, {lat['n_baseline']} baseline, {settings.min_points} needed)",
            )
        else:
            tol = f"{lat['tolerance']:g}x"
            beyond = lat.get("p_value_beyond_tolerance")
            stat = (
                f"Mann-Whitney U={lat['u']:g} over {lat['n_canary']} canary and {lat['n_baseline']} baseline "
                f"requests, one-sided p={lat['p_value']:.3g}"
                + (f", p={beyond:.3g} with the canary's durations divided by {tol}" if beyond is not None else "")
                + f"; median {_secs(lat['median_canary'])} against {_secs(lat['median_baseline'])}, "
                f"ratio {lat['effect']}x"
            )
            if lat["worse"]:
                say("latency_shift", "fail", f"canary requests are significantly more than {tol} slower ({stat})")
            elif lat["significant"]:
                say("latency_shift", "pass", f"canary requests are slower, not significantly more than {tol} ({stat})")
            else:
                say("latency_shift", "pass", f"canary requests are not significantly slower ({stat})")
    fb = comparison.get("fallbacks")
    if fb is not None and fb["status"] == "ok":
        stat = f"Fisher exact one-sided p={fb['p_value']:.3g}, tolerance {_pct(fb['tolerance'])}"
        if fb["worse"]:
            say(
                "fallbacks",
                "fail",
                f"canary tasks answered by a fallback provider: {_pct(fb['canary'])} against "
                f"the baseline's {_pct(fb['baseline'])} ({stat})",
            )
        else:
            say(
                "fallbacks",
                "pass",
                f"fallback providers answered {_pct(fb['canary'])} of the canary's tasks and "
                f"{_pct(fb['baseline'])} of the baseline's ({stat})",
            )


def _judge_cost(settings, canary, baseline, say) -> None:
    ct, bt = canary.get("tokens_per_task"), baseline.get("tokens_per_task")
    w, limit = f"{settings.window} s", settings.max_token_ratio
    if ct is None or bt is None:
        return  # no answered task on a side (or no token series): nothing to price
    if bt <= 0:
        verdict = "fail" if ct > 0 else "pass"
        say("token_cost", verdict, f"canary uses {ct:.4g} tokens per task, the baseline none over {w}")
        return
    ratio = ct / bt
    say(
        "token_cost",
        "fail" if ratio > limit else "pass",
        f"canary uses {ct:.4g} tokens per task "
        f"({canary.get('tokens_input', 0)} in, {canary.get('tokens_output', 0)} out over {canary.get('answered')} "
        f"tasks), {ratio:.2f}x the baseline's {bt:.4g} over {w} (limit {limit:g}x)",
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds")


def compare_slots(settings: Settings, canary: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The comparisons against stable over the window's requests (pure, from slot_stats' numbers)."""
    ch, bh = canary["_histogram"], baseline["_histogram"]
    out = {
        "error_rate": fisher(
            (canary["errors"], canary["requests"]),
            (baseline["errors"], baseline["requests"]),
            alpha=settings.alpha,
            tolerance=settings.error_rate_tolerance,
        ),
        "latency": rank_test(
            ch, bh, alpha=settings.alpha, tolerance=settings.shift_tolerance, min_points=settings.min_points
        ),
        "fallbacks": fisher(
            (canary["fallbacks"], canary["answered"]),
            (baseline["fallbacks"], baseline["answered"]),
            alpha=settings.alpha,
            tolerance=settings.fallback_tolerance,
        ),
    }
    bl = baseline.get(_qname(settings.latency_quantile))
    if bl:
        limit = max(settings.max_latency_ratio * bl, bl + settings.min_latency_delta)
        out["latency_tail"] = tail_test(ch, limit, settings.latency_quantile, alpha=settings.alpha)
    return out


def check(prom: Prometheus, settings: Settings, at: float | None = None) -> dict[str, Any]:
    """One check over the window ending at `at` (now): numbers, comparison, verdict, reasons."""
    at = time.time() if at is None else at
    result: dict[str, Any] = {"at": _iso(at), "window": settings.window, "canary": None, "baseline": None}
    try:
        canary = slot_stats(prom, settings, settings.canary, at)
        baseline = comparison = None
        if settings.baseline is not None:
            baseline = slot_stats(prom, settings, settings.baseline, at)
            comparison = compare_slots(settings, canary, baseline)
    except PrometheusUnavailable as exc:
        reason = f"{exc}: no verdict without metrics"
        result.update(
            verdict="inconclusive",
            reasons=[reason],
            comparison=None,
            decided_by=["prometheus"],
            criteria=[{"criterion": "prometheus", "verdict": "inconclusive", "reason": reason}],
        )
        return result
    judged = judge(settings, canary, baseline, comparison)
    for stats in (canary, baseline):
        if stats is not None:
            stats.pop("_histogram", None)
    result.update(
        canary=canary,
        baseline=baseline,
        comparison=comparison,
        verdict=judged.verdict,
        reasons=judged.reasons,
        decided_by=judged.decided_by,
        criteria=judged.criteria,
    )
    return result


def _side(who: str, stats: dict[str, Any] | None) -> str | None:
    if not stats:
        return None
    parts = [f"{stats['requests']} req", f"{(stats.get('error_rate') or 0) * 100:.1f} % errors"]
    if stats.get("requests"):
        parts.append(f"p95 {_secs(stats.get('latency_p95'))}, mean {_secs(stats.get('latency_mean'))}")
    if stats.get("tokens_per_task") is not None:
        parts.append(f"{stats['tokens_per_task']:.4g} tokens/task")
    if stats.get("fallbacks"):
        parts.append(f"{stats['fallbacks']} fallbacks")
    version = f" {stats['version']}" if stats.get("version") else ""
    return f"{who}{version}: " + ", ".join(parts)


def summary(result: dict[str, Any]) -> str:
    """One line for a release's output: the verdict and the criteria that decided it, both sides' numbers
    (measured: quantiles from the fine buckets, the exact mean), and the deciding reason."""
    verdict = str(result.get("verdict", "inconclusive")).upper()
    decided = [CRITERIA.get(c, c) for c in result.get("decided_by") or []]
    head = f"{verdict} ({', '.join(decided)})" if decided else verdict
    parts = [head]
    parts += [s for s in (_side("candidate", result.get("canary")), _side("stable", result.get("baseline"))) if s]
    if result.get("checks") is not None:
        count = len(result["checks"])
        parts.append(f"{count} check{'' if count == 1 else 's'} in {result.get('elapsed', 0):.0f} s")
    if result.get("reasons"):
        parts.append(str(result["reasons"][0]))
    return " | ".join(parts)


@dataclass
class Watch:
    """The result of watch(): the deciding check's numbers, and every check."""

    verdict: str
    reasons: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)
    decided_by: list[str] = field(default_factory=list)
    started: str = ""
    ended: str = ""
    elapsed: float = 0.0
    ended_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        last = self.checks[-1] if self.checks else {}
        out = {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "decided_by": self.decided_by,
            "criteria": last.get("criteria", []),
            "canary": last.get("canary"),
            "baseline": last.get("baseline"),
            "comparison": last.get("comparison"),
            "checks": self.checks,
            "started": self.started,
            "ended": self.ended,
            "elapsed": round(self.elapsed, 3),
            "ended_early": self.ended_early,
        }
        out["summary"] = summary(out)
        return out


def watch(
    prom: Prometheus,
    settings: Settings,
    *,
    duration: float = 0,
    interval: float = 10,
    inconclusive_limit: int = 0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_check: Callable[[dict[str, Any]], None] | None = None,
) -> Watch:
    """Check at once, then every `interval` seconds until `duration` has passed (and once at its end).

    Returns at the first `fail`. After `inconclusive_limit` inconclusive checks in a row (0: no limit)
    it returns `inconclusive` early. Otherwise the verdict is the last check's: `pass` only when the
    last window passed, `inconclusive` when it did not have enough to go on.

    With a `duration`, a check reads no further back than the watch's start plus two scrape intervals
    (the fewest samples increase() needs), up to `window`: a release step is judged on its own traffic,
    not on the smoke tests sent to the candidate just before it, nor on the step before.
    """
    if duration < 0 or interval <= 0 or inconclusive_limit < 0:
        raise AnalysisError(
            "invalid watch settings",
            [Problem("(analysis)", "duration/interval/inconclusive_limit", "duration >= 0, interval > 0, limit >= 0")],
        )
    start = clock()
    offsets = [k * interval for k in range(int(duration // interval) + 1)]
    if offsets[-1] < duration:
        offsets.append(duration)
    out = Watch(verdict="inconclusive", reasons=[], started=_iso(start))
    streak = 0
    for offset in offsets:
        wait = start + offset - clock()
        if wait > 0:
            sleep(wait)
        now = clock()
        judged = settings
        if duration > 0:
            since = math.ceil(now - start + 2 * settings.scrape_interval)
            judged = dataclasses.replace(settings, window=max(1, min(settings.window, since)))
        result = check(prom, judged, now)
        out.checks.append(result)
        if on_check is not None:
            on_check(result)
        out.verdict, out.reasons = result["verdict"], list(result["reasons"])
        out.decided_by = list(result.get("decided_by") or [])
        if result["verdict"] == "fail":
            out.ended_early = offset < offsets[-1]
            break
        streak = streak + 1 if result["verdict"] == "inconclusive" else 0
        if inconclusive_limit and streak >= inconclusive_limit:
            out.ended_early = offset < offsets[-1]
            out.reasons.append(f"{streak} checks in a row without a verdict (limit {inconclusive_limit}): giving up")
            break
    out.elapsed = clock() - start
    out.ended = _iso(clock())
    return out


def error_budget(prom: Prometheus | str, agent: str, *, min_remaining: float = 0.0, timeout: float = 5.0) -> dict:
    """The agent's error budget left over the availability window, from the monitoring role's SLO series.

    Verdict `fail` when the share left is at or below `min_remaining` (exhausted: refuse a promotion),
    `pass` above it, `inconclusive` when Prometheus cannot tell (unreachable, no series for the agent).
    """
    prom = Prometheus(prom, timeout=timeout) if isinstance(prom, str) else prom
    sel = "{agent=" + _quote(agent) + "}"
    out: dict[str, Any] = {
        "agent": agent,
        "remaining_ratio": None,
        "availability_ratio": None,
        "availability_target": None,
        "budget_ratio": None,
        "min_remaining": min_remaining,
        "exhausted": None,
    }
    try:
        for key, expr in (
            ("remaining_ratio", f"chenu:agent_slo:error_budget_remaining_ratio{sel}"),
            ("availability_ratio", f"chenu:agent_slo:availability_ratio_rate30d{sel}"),
            ("availability_target", f"chenu:agent_slo:availability_target{sel}"),
            ("budget_ratio", f"chenu:agent_slo:error_budget_ratio{sel}"),
        ):
            result = prom.query(expr)
            out[key] = _num(result[0][1]) if result else None
    except PrometheusUnavailable as exc:
        return {**out, "verdict": "inconclusive", "reasons": [f"{exc}: the error budget is unknown"]}
    left = out["remaining_ratio"]
    if left is None:
        reason = f"no error budget series for {agent} (no traffic recorded, or the SLO rules are not loaded)"
        return {**out, "verdict": "inconclusive", "reasons": [reason]}
    out["exhausted"] = left <= min_remaining
    target = out["availability_target"]
    goal = f" of its {target * 100:g} % availability objective" if target is not None else ""
    if out["exhausted"]:
        sentence = (
            f"{agent} has {_pct(left)} of the error budget{goal} left, at or below {_pct(min_remaining)}: exhausted"
        )
        return {**out, "verdict": "fail", "reasons": [sentence]}
    sentence = f"{agent} has {_pct(left)} of the error budget{goal} left (minimum {_pct(min_remaining)})"
    return {**out, "verdict": "pass", "reasons": [sentence]}
