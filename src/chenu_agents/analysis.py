"""Rollout analysis: judge a canary slot on Prometheus metrics, against thresholds and against stable.

One check reads, over the last `window` seconds, the runtime's `chenu_agent_requests_total` and
`chenu_agent_request_duration_seconds` series (roles/monitoring/README.md) of the canary slot and of the
baseline slot, and gives a verdict:

- `fail` when the canary's error rate is above `max_error_rate`, its latency quantile above
  `max_latency_ratio` times the baseline's, or when a Mann-Whitney U test (Kayenta's judge) finds its
  per-step error ratio or latency significantly higher than the baseline's by more than a tolerance;
- `inconclusive` when there is not enough traffic to judge (fewer than `min_requests`), or Prometheus
  cannot be queried: never a pass for want of data;
- `pass` otherwise.

`watch()` repeats the check every `interval` seconds for `duration` seconds and stops at the first fail.
`error_budget()` reads the monitoring role's SLO series. docs/analysis.md explains the choices.
"""

from __future__ import annotations

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
QUANTILES = (0.5, 0.95, 0.99)
VERDICTS = ("pass", "fail", "inconclusive")


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
    latency_quantile: float = 0.95
    min_requests: int = 50
    min_baseline_requests: int | None = None
    error_codes: str = "5.."
    alpha: float = 0.05
    error_rate_tolerance: float = 0.01
    latency_tolerance: float = 1.2
    scrape_interval: float = 15.0
    step: float | None = None
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
        need(0 < self.latency_quantile < 1, "latency_quantile", "a quantile in (0, 1), e.g. 0.95")
        need(self.min_requests >= 1, "min_requests", "at least 1")
        need(0 < self.alpha < 1, "alpha", "a significance level in (0, 1), e.g. 0.05")
        need(self.error_rate_tolerance >= 0, "error_rate_tolerance", "a non-negative ratio")
        need(self.latency_tolerance >= 1, "latency_tolerance", "a ratio of at least 1, e.g. 1.2")
        need(self.scrape_interval > 0, "scrape_interval", "a positive number of seconds")
        need(self.step is None or self.step > 0, "step", "a positive number of seconds")
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
    def series_step(self) -> float:
        """Resolution of the per-step series the Mann-Whitney test compares."""
        return self.step or max(1.0, self.scrape_interval, self.window / 30)

    @property
    def rate_range(self) -> int:
        """Range of each per-step rate(): at least four scrapes, so every step has samples."""
        return math.ceil(max(self.series_step, 4 * self.scrape_interval))


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


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _num(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _qname(q: float) -> str:
    return "latency_p" + f"{q * 100:g}".replace(".", "_")


def slot_stats(prom: Prometheus, settings: Settings, slot: Slot, at: float) -> dict[str, Any]:
    """Requests, errors, error rate and latency quantiles of one slot over the window ending at `at`."""
    w = f"{settings.window}s"
    by_code: dict[str, float] = {}
    for labels, value in prom.query(f"sum by (code) (increase({REQUESTS}{selector(settings.agent, slot)}[{w}]))", at):
        if math.isfinite(value):
            by_code[labels.get("code", "")] = value
    pattern = re.compile(settings.error_codes)
    total = sum(by_code.values())
    errors = sum(v for code, v in by_code.items() if pattern.fullmatch(code))
    stats: dict[str, Any] = {
        "slot": slot.slot,
        "version": slot.version,
        "requests": round(total),
        "errors": round(errors),
        "error_rate": _num(errors / total) if total > 0 else None,
        "by_code": {code: round(v) for code, v in sorted(by_code.items())},
    }
    buckets = f"sum by (le) (rate({BUCKETS}{selector(settings.agent, slot)}[{w}]))"
    for q in sorted({*QUANTILES, settings.latency_quantile}):
        result = prom.query(f"histogram_quantile({q:g}, {buckets})", at)
        stats[_qname(q)] = _num(result[0][1]) if result else None
    return stats


def slot_series(prom: Prometheus, settings: Settings, slot: Slot, at: float) -> dict[str, list[float]]:
    """Per-step error ratio and latency quantile of one slot across the window (NaN steps dropped)."""
    r = f"{settings.rate_range}s"
    everything = f"sum(rate({REQUESTS}{selector(settings.agent, slot)}[{r}]))"
    failing = f"sum(rate({REQUESTS}{selector(settings.agent, slot, f'code=~{_quote(settings.error_codes)}')}[{r}]))"
    error_ratio = f"({failing} or 0 * {everything}) / {everything}"
    latency = (
        f"histogram_quantile({settings.latency_quantile:g}, "
        f"sum by (le) (rate({BUCKETS}{selector(settings.agent, slot)}[{r}])))"
    )
    start = min(at, at - settings.window + settings.rate_range)
    out = {}
    for name, expr in (("error_rate", error_ratio), ("latency", latency)):
        result = prom.query_range(expr, start, at, settings.series_step)
        out[name] = _finite([point[1] for point in result[0][1]]) if result else []
    return out


def hodges_lehmann(canary: Sequence[float], baseline: Sequence[float]) -> float:
    """Median of every pairwise difference canary - baseline: the shift Mann-Whitney tests for."""
    import numpy as np

    return float(np.median(np.subtract.outer(np.asarray(canary), np.asarray(baseline))))


def compare(
    canary: Sequence[float],
    baseline: Sequence[float],
    *,
    alpha: float = 0.05,
    tolerance: float = 0.0,
    relative: bool = False,
    min_points: int = 5,
) -> dict[str, Any]:
    """One-sided Mann-Whitney U test: is the canary's series higher (worse) than the baseline's?

    NaN and infinite samples are dropped. `worse` needs both significance (p < alpha) and an effect
    above `tolerance`: the Hodges-Lehmann shift when `relative` is false, the ratio of medians when true.
    Fewer than `min_points` finite samples on a side gives status `insufficient` and no judgement.
    """
    import numpy as np

    c, b = _finite(canary), _finite(baseline)
    out: dict[str, Any] = {
        "n_canary": len(c),
        "n_baseline": len(b),
        "median_canary": _num(float(np.median(c))) if c else None,
        "median_baseline": _num(float(np.median(b))) if b else None,
        "u": None,
        "p_value": None,
        "shift": None,
        "effect": None,
        "direction": None,
        "tolerance": tolerance,
        "relative": relative,
        "significant": False,
        "worse": False,
        "status": "ok",
    }
    if len(c) < min_points or len(b) < min_points:
        out["status"] = "insufficient"
        return out
    shift = hodges_lehmann(c, b)
    if len(set(c) | set(b)) == 1:  # every sample equal: no difference to test (scipy would say p = 1 too)
        u, p = len(c) * len(b) / 2, 1.0
    else:
        from scipy.stats import mannwhitneyu

        result = mannwhitneyu(c, b, alternative="greater")
        u, p = float(result.statistic), float(result.pvalue)
    mc, mb = float(np.median(c)), float(np.median(b))
    if relative:
        effect = mc / mb if mb > 0 else (math.inf if mc > 0 else 1.0)
        beyond = effect > tolerance
    else:
        effect = shift
        beyond = shift > tolerance
    out.update(
        u=_num(u),
        p_value=float(f"{p:.4g}"),
        shift=_num(shift),
        effect=_num(effect) if math.isfinite(effect) else "inf",
        direction="higher" if shift > 0 else "lower" if shift < 0 else "same",
        significant=p < alpha,
        worse=p < alpha and shift > 0 and beyond,
    )
    return out


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.3g} %"


def _secs(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def judge(
    settings: Settings,
    canary: dict[str, Any],
    baseline: dict[str, Any] | None,
    comparison: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, list[str]]:
    """The verdict of one check from its numbers (pure): fail beats inconclusive beats pass."""
    from scipy.stats import binomtest

    w = f"{settings.window} s"
    fails: list[str] = []
    unsure: list[str] = []
    fine: list[str] = []
    n, e = canary["requests"], canary["errors"]
    name = "canary"
    if n < settings.min_requests:
        # Too few requests for a rate, but a flood of errors among them is already conclusive.
        if e > 0 and binomtest(min(e, n), n, settings.max_error_rate, alternative="greater").pvalue < settings.alpha:
            fails.append(
                f"{name} failed {e} of only {n} requests over {w}: an error rate above "
                f"{_pct(settings.max_error_rate)} at p < {settings.alpha:g} (binomial test)"
            )
        else:
            unsure.append(
                f"{name} served {n} requests over {w}, fewer than the {settings.min_requests} needed for a verdict"
            )
    else:
        rate = canary["error_rate"] or 0.0
        over = rate > settings.max_error_rate
        (fails if over else fine).append(
            f"{name} error rate {_pct(rate)} {'>' if over else '<='} {_pct(settings.max_error_rate)} over {w} "
            f"({n} requests, {e} errors)"
        )

    qkey, qlabel = _qname(settings.latency_quantile), f"p{settings.latency_quantile * 100:g}"
    if settings.baseline is not None and baseline is not None:
        bn = baseline["requests"]
        if bn < settings.baseline_min_requests:
            unsure.append(
                f"baseline {settings.baseline.describe()} served {bn} requests over {w}, fewer than the "
                f"{settings.baseline_min_requests} needed to compare against it"
            )
        elif n >= settings.min_requests:
            cl, bl = canary.get(qkey), baseline.get(qkey)
            if cl is None or bl is None or bl <= 0:
                unsure.append(
                    f"{qlabel} latency cannot be compared over {w} (canary {_secs(cl)}, baseline {_secs(bl)})"
                )
            else:
                ratio = cl / bl
                sentence = (
                    f"{name} {qlabel} latency {_secs(cl)} is {ratio:.2f}x the baseline's {_secs(bl)} over {w} "
                    f"(limit {settings.max_latency_ratio:g}x)"
                )
                (fails if ratio > settings.max_latency_ratio else fine).append(sentence)
            for metric, result in (comparison or {}).items():
                label = "error rate" if metric == "error_rate" else f"{qlabel} latency"
                if result["status"] != "ok":
                    fine.append(
                        f"{label}: too few points for a Mann-Whitney test over {w} "
                        f"({result['n_canary']} canary, {result['n_baseline']} baseline, {settings.min_points} needed)"
                    )
                    continue
                size = (
                    f"median ratio {result['effect']}x, tolerance {result['tolerance']:g}x"
                    if result["relative"]
                    else f"shift {_pct(result['shift'])}, tolerance {_pct(result['tolerance'])}"
                )
                stat = f"Mann-Whitney U={result['u']:g}, one-sided p={result['p_value']:.3g}"
                if result["worse"]:
                    fails.append(f"{name} {label} is significantly higher than the baseline's ({stat}, {size})")
                elif result["significant"]:
                    fine.append(f"{name} {label} is higher than the baseline's but within tolerance ({stat}, {size})")
                else:
                    fine.append(f"{name} {label} is not significantly higher than the baseline's ({stat})")
    if fails:
        return "fail", fails + unsure + fine
    if unsure:
        return "inconclusive", unsure + fine
    return "pass", fine


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds")


def check(prom: Prometheus, settings: Settings, at: float | None = None) -> dict[str, Any]:
    """One check over the window ending at `at` (now): numbers, comparison, verdict, reasons."""
    at = time.time() if at is None else at
    result: dict[str, Any] = {"at": _iso(at), "window": settings.window, "canary": None, "baseline": None}
    try:
        canary = slot_stats(prom, settings, settings.canary, at)
        baseline = comparison = None
        if settings.baseline is not None:
            baseline = slot_stats(prom, settings, settings.baseline, at)
            cs = slot_series(prom, settings, settings.canary, at)
            bs = slot_series(prom, settings, settings.baseline, at)
            common = {"alpha": settings.alpha, "min_points": settings.min_points}
            comparison = {
                "error_rate": compare(
                    cs["error_rate"], bs["error_rate"], tolerance=settings.error_rate_tolerance, **common
                ),
                "latency": compare(
                    cs["latency"], bs["latency"], tolerance=settings.latency_tolerance, relative=True, **common
                ),
            }
    except PrometheusUnavailable as exc:
        result.update(verdict="inconclusive", reasons=[f"{exc}: no verdict without metrics"], comparison=None)
        return result
    verdict, reasons = judge(settings, canary, baseline, comparison)
    result.update(canary=canary, baseline=baseline, comparison=comparison, verdict=verdict, reasons=reasons)
    return result


@dataclass
class Watch:
    """The result of watch(): the deciding check's numbers, and every check."""

    verdict: str
    reasons: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)
    started: str = ""
    ended: str = ""
    elapsed: float = 0.0
    ended_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        last = self.checks[-1] if self.checks else {}
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "canary": last.get("canary"),
            "baseline": last.get("baseline"),
            "comparison": last.get("comparison"),
            "checks": self.checks,
            "started": self.started,
            "ended": self.ended,
            "elapsed": round(self.elapsed, 3),
            "ended_early": self.ended_early,
        }


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
        result = check(prom, settings, clock())
        out.checks.append(result)
        if on_check is not None:
            on_check(result)
        out.verdict, out.reasons = result["verdict"], list(result["reasons"])
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
