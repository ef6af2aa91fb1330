"""The short report a release leaves behind: markdown, with error rate and latency per step for the stable
and the candidate version, as a mermaid xychart in the markdown and as a small SVG written next to it.

The input is what playbooks/release.yml gathers (one dict per release, one per step, the step's numbers
from chenu.agents.rollout_analysis):

    {"agent": "legal_info", "strategy": "canary", "outcome": "promoted", "reason": "...",
     "stable": {"slot": "blue", "version": "1.2.0"}, "candidate": {"slot": "green", "version": "1.2.1"},
     "started": ISO, "ended": ISO, "forced": false, "run_id": "...",
     "steps": [{"name": "canary 5 %", "weight": 5, "verdict": "pass", "decided_by": [...], "reasons": [...],
                "elapsed": 20.1, "canary": {requests, errors, error_rate, latency_p50, latency_p95, latency_p99,
                latency_mean, tokens_per_task, fallbacks}, "baseline": {...} or null, "action": "..."}]}

The figures are the analysis' own: p95 read from the runtime's fine buckets (within 9 %), the mean exact.
In both charts the stable version is a wide pale band and the candidate a dashed line drawn over it, so
that two versions with the same numbers still show as two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from .errors import ChenuError, Problem
from .files import write_if_changed

NONE = "-"  # a missing number in the table
SERIES = (("canary", "candidate", "#d62728"), ("baseline", "stable", "#1f77b4"))
# How each side is drawn in the SVG: stable wide and pale underneath, the candidate dashed on top.
STROKES = {"baseline": 'stroke-width="7" stroke-opacity="0.35"', "canary": 'stroke-width="2" stroke-dasharray="6 3"'}
METRICS = (("error_rate", "Error rate", "%", 100.0), ("latency_p95", "Latency p95", "ms", 1000.0))


class ReportError(ChenuError):
    """The release data cannot be reported."""


@dataclass(frozen=True)
class Report:
    markdown: str
    svg: str
    name: str  # file name without extension


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def series(steps: Sequence[Mapping[str, Any]], side: str, metric: str, scale: float) -> list[float | None]:
    """One value per step (scaled: % or ms), None where that side had no numbers (no traffic, no metrics)."""
    out: list[float | None] = []
    for step in steps:
        numbers = step.get(side) or {}
        requests = _number(numbers.get("requests"))
        value = _number(numbers.get(metric))
        out.append(None if value is None or requests == 0 else round(value * scale, 3))
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return NONE
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _who(release: Mapping[str, Any], key: str) -> str:
    slot = release.get(key) or {}
    if not slot:
        return NONE
    return f"{slot.get('version') or '?'} ({slot.get('slot') or '?'})"


def _name(release: Mapping[str, Any]) -> str:
    started = str(release.get("started") or datetime.now(UTC).isoformat())
    stamp = re.sub(r"[^0-9T]", "", started.split(".", maxsplit=1)[0].split("+", maxsplit=1)[0])[:15] or "now"
    candidate = (release.get("candidate") or {}).get("version") or "unknown"
    raw = f"{release.get('agent', 'agent')}-{candidate}-{release.get('strategy', 'release')}-{stamp}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def _check(release: Mapping[str, Any]) -> None:
    problems = [Problem("(release)", key, "a non-empty value") for key in ("agent", "strategy") if not release.get(key)]
    steps = release.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, Mapping) for s in steps):
        problems.append(Problem("(release)", "steps", "a list of mappings"))
    if problems:
        raise ReportError("cannot write the release report", problems)


def mermaid(steps: Sequence[Mapping[str, Any]], metric: str, title: str, unit: str, scale: float) -> str:
    """A mermaid xychart-beta: stable as bars, the candidate as a line over them, so that equal numbers
    still show both (a missing value is drawn as 0)."""
    labels = ", ".join(f'"{str(s.get("name", i + 1)).replace(chr(34), chr(39))}"' for i, s in enumerate(steps))
    values = {side: series(steps, side, metric, scale) for side, *_rest in SERIES}
    top = max([v for vs in values.values() for v in vs if v is not None] + [0.0])
    top = _nice(top)
    lines = [
        "```mermaid",
        "xychart-beta",
        f'    title "{title} per step ({unit}): stable as bars, candidate as the line"',
        f"    x-axis [{labels}]",
        f'    y-axis "{unit}" 0 --> {top:g}',
    ]
    for side, kind in (("baseline", "bar"), ("canary", "line")):
        lines.append(f"    {kind} [" + ", ".join(f"{v if v is not None else 0:g}" for v in values[side]) + "]")
    lines.append("```")
    return "\n".join(lines)


def _nice(top: float) -> float:
    """A round upper bound for an axis (at least 1)."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(top))
    for factor in (1, 2, 2.5, 5, 10):
        if top <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def svg(steps: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Two line charts side by side (error rate, latency p95), candidate and stable, one point per step."""
    panel_w, panel_h, left, right, top_m, bottom = 320, 220, 48, 12, 40, 56
    width, height = panel_w * len(METRICS), panel_h + (24 if title else 0)
    offset_y = 24 if title else 0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        parts.append(f'<text x="{width / 2:g}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>')
    n = len(steps)
    for index, (metric, label, unit, scale) in enumerate(METRICS):
        x0, y0 = index * panel_w, offset_y
        plot_w, plot_h = panel_w - left - right, panel_h - top_m - bottom
        values = {side: series(steps, side, metric, scale) for side, *_rest in SERIES}
        top = _nice(max([v for vs in values.values() for v in vs if v is not None] + [0.0]))

        def px(i: int, x0: float = x0, plot_w: float = plot_w) -> float:
            return x0 + left + (plot_w * (i + 0.5) / n if n else 0)

        def py(v: float, y0: float = y0, plot_h: float = plot_h, top: float = top) -> float:
            return y0 + top_m + plot_h * (1 - v / top)

        parts.append(f'<text x="{x0 + panel_w / 2:g}" y="{y0 + 16}" text-anchor="middle">{label} ({unit})</text>')
        axis_x, axis_y = x0 + left, y0 + top_m + plot_h
        parts.append(f'<line x1="{axis_x}" y1="{y0 + top_m}" x2="{axis_x}" y2="{axis_y}" stroke="#444"/>')
        parts.append(f'<line x1="{axis_x}" y1="{axis_y}" x2="{axis_x + plot_w}" y2="{axis_y}" stroke="#444"/>')
        for tick in (0.0, top / 2, top):
            ty = py(tick)
            parts.append(f'<line x1="{axis_x - 3}" y1="{ty:.1f}" x2="{axis_x + plot_w}" y2="{ty:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{axis_x - 5}" y="{ty + 4:.1f}" text-anchor="end">{tick:g}</text>')
        for i, step in enumerate(steps):
            name = escape(str(step.get("name", i + 1)))
            parts.append(f'<text x="{px(i):.1f}" y="{axis_y + 14}" text-anchor="middle">{name}</text>')
            verdict = str(step.get("verdict") or "")
            if verdict:
                colour = {"pass": "#2ca02c", "fail": "#d62728"}.get(verdict, "#7f7f7f")
                parts.append(
                    f'<text x="{px(i):.1f}" y="{axis_y + 27}" text-anchor="middle" fill="{colour}">'
                    f"{escape(verdict)}</text>"
                )
        for side, who, colour in reversed(SERIES):  # stable underneath, the candidate over it
            runs: list[list[tuple[float, float]]] = [[]]
            for i, value in enumerate(values[side]):
                if value is None:
                    runs.append([])
                else:
                    runs[-1].append((px(i), py(min(value, top))))
            for run in runs:
                if len(run) > 1:
                    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                    parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" {STROKES[side]}/>')
                for x, y in run:
                    if side == "baseline":
                        parts.append(
                            f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}" '
                            f'fill-opacity="0.5"><title>{who}</title></rect>'
                        )
                    else:
                        parts.append(
                            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="white" stroke="{colour}" '
                            f'stroke-width="2"><title>{who}</title></circle>'
                        )
        for k, (side, who, colour) in enumerate(SERIES):
            lx, ly = x0 + left + k * 90, y0 + panel_h - 12
            parts.append(
                f'<line x1="{lx}" y1="{ly - 6}" x2="{lx + 12}" y2="{ly - 6}" stroke="{colour}" {STROKES[side]}/>'
            )
            parts.append(f'<text x="{lx + 14}" y="{ly - 3}">{who}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render(release: Mapping[str, Any]) -> Report:
    _check(release)
    steps = list(release.get("steps") or [])
    name = _name(release)
    agent, strategy = release["agent"], release["strategy"]
    outcome = release.get("outcome") or "unknown"
    lines = [
        f"# Release of {agent} {(release.get('candidate') or {}).get('version') or ''}: {outcome}".rstrip(),
        "",
        f"- strategy: {strategy}",
        f"- stable: {_who(release, 'stable')}; candidate: {_who(release, 'candidate')}",
        f"- started {release.get('started') or '?'}, ended {release.get('ended') or '?'}",
    ]
    if release.get("reason"):
        lines.append(f"- why: {release['reason']}")
    if release.get("forced"):
        lines.append("- forced: a maintenance window or an exhausted error budget was overridden (force=true)")
    for key, label in (("run_id", "run"), ("actor", "by")):
        if release.get(key):
            lines.append(f"- {label}: {release[key]}")
    lines.append("")
    if not steps:
        lines += ["No traffic step ran.", ""]
    else:
        lines += [
            "| step | weight | verdict | decided by | candidate requests | candidate errors | stable errors "
            "| candidate p95 | stable p95 | candidate mean | stable mean | tokens per task (candidate / stable) "
            "| seconds | numbers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        err = {side: series(steps, side, "error_rate", 100.0) for side, *_rest in SERIES}
        lat = {side: series(steps, side, "latency_p95", 1000.0) for side, *_rest in SERIES}
        mean = {side: series(steps, side, "latency_mean", 1000.0) for side, *_rest in SERIES}
        tokens = {side: series(steps, side, "tokens_per_task", 1.0) for side, *_rest in SERIES}
        for i, step in enumerate(steps):
            canary = step.get("canary") or {}
            reasons = "; ".join(str(r) for r in step.get("reasons") or []) or NONE
            elapsed = _number(step.get("elapsed"))
            cells = [
                str(step.get("name", i + 1)),
                f"{step['weight']} %" if step.get("weight") is not None else NONE,
                f"**{step.get('verdict') or NONE}**",
                ", ".join(str(c) for c in step.get("decided_by") or []) or NONE,
                str(canary.get("requests", NONE)),
                _fmt(err["canary"][i], "%"),
                _fmt(err["baseline"][i], "%"),
                _fmt(lat["canary"][i], "ms"),
                _fmt(lat["baseline"][i], "ms"),
                _fmt(mean["canary"][i], "ms"),
                _fmt(mean["baseline"][i], "ms"),
                " / ".join(f"{v:.4g}" if v is not None else NONE for v in (tokens["canary"][i], tokens["baseline"][i])),
                f"{elapsed:.0f}" if elapsed is not None else NONE,
                reasons.replace("|", "\\|"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"![error rate and latency per step]({name}.svg)",
            "",
            mermaid(steps, "error_rate", "Error rate", "%", 100.0),
            "",
            mermaid(steps, "latency_p95", "Latency p95", "ms", 1000.0),
            "",
        ]
    actions = [str(s["action"]) for s in steps if s.get("action")]
    if actions or release.get("actions"):
        lines += ["## What the release did", ""]
        lines += [f"- {a}" for a in (*actions, *(release.get("actions") or []))]
        lines.append("")
    title = f"{agent}: {_who(release, 'candidate')} vs {_who(release, 'stable')}, {strategy}, {outcome}"
    return Report("\n".join(lines), svg(steps, title) if steps else "", name)


def write(dest_dir: str | Path, release: Mapping[str, Any], *, check_mode: bool = False) -> dict[str, Any]:
    """Write <dest_dir>/<name>.md (and .svg when there were steps); returns the paths and changed."""
    report = render(release)
    dest = Path(dest_dir)
    md_path, svg_path = dest / f"{report.name}.md", dest / f"{report.name}.svg"
    changed = True
    if not check_mode:
        changed = write_if_changed(md_path, report.markdown.encode("utf-8"))
        if report.svg:
            changed = write_if_changed(svg_path, report.svg.encode("utf-8")) or changed
    return {
        "path": str(md_path),
        "svg": str(svg_path) if report.svg else None,
        "markdown": report.markdown,
        "changed": changed,
    }
