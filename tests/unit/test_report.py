"""chenu_agents.report: the release report (markdown, mermaid xychart, SVG)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from chenu_agents import report


def _numbers(requests, errors, p95, mean=None, tokens=None):
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p50": p95 / 2 if p95 is not None else None,
        "latency_p95": p95,
        "latency_p99": p95,
        "latency_mean": mean,
        "tokens_per_task": tokens,
    }


RELEASE = {
    "agent": "legal_info",
    "strategy": "canary",
    "outcome": "failed",
    "reason": "canary 5 %: canary error rate 20.0 % > 5 %",
    "stable": {"slot": "blue", "version": "1.2.0"},
    "candidate": {"slot": "green", "version": "1.2.1"},
    "started": "2026-11-21T16:30:00.123456+00:00",
    "ended": "2026-11-21T16:31:00+00:00",
    "run_id": "run-abc",
    "steps": [
        {
            "name": "5 %",
            "weight": 5,
            "verdict": "pass",
            "reasons": ["canary error rate 0.0 % <= 5 %"],
            "elapsed": 20.2,
            "canary": _numbers(40, 0, 0.012),
            "baseline": _numbers(800, 1, 0.010),
        },
        {
            "name": "25 %",
            "weight": 25,
            "verdict": "fail",
            "reasons": ["canary error rate 20.0 % > 5 % | over 10 s"],
            "elapsed": 4.0,
            "decided_by": ["errors", "errors_vs_stable"],
            "canary": _numbers(50, 10, 0.015, 0.0123, 140),
            "baseline": _numbers(150, 0, 0.011, 0.00213, 120.5),
            "action": "canary back to 0 %",
        },
        {"name": "100 %", "weight": 100, "verdict": None, "canary": None, "baseline": {"requests": 0}},
    ],
}


def test_series_scales_and_leaves_gaps():
    assert report.series(RELEASE["steps"], "canary", "error_rate", 100) == [0.0, 20.0, None]
    assert report.series(RELEASE["steps"], "baseline", "latency_p95", 1000) == [10.0, 11.0, None]


def test_markdown_has_the_steps_the_numbers_and_both_charts():
    out = report.render(RELEASE)
    md = out.markdown
    assert md.startswith("# Release of legal_info 1.2.1: failed")
    assert "stable: 1.2.0 (blue); candidate: 1.2.1 (green)" in md
    assert (
        "| 25 % | 25 % | **fail** | errors, errors_vs_stable | 50 | 20.0 % | 0.0 % | 15 ms | 11 ms | 12.3 ms "
        "| 2.13 ms | 140 / 120.5 | 4 |"
    ) in md
    assert "| 5 % | 5 % | **pass** | - | 40 | 0.0 % | 0.1 % | 12 ms | 10 ms | - | - | - / - | 20 |" in md
    assert "\\|" in md  # a pipe inside a reason does not break the table
    assert md.count("```mermaid") == 2 and "xychart-beta" in md
    assert 'x-axis ["5 %", "25 %", "100 %"]' in md
    assert "line [0, 20, 0]" in md  # candidate error rate, the missing step drawn as 0
    assert "bar [0.125, 0, 0]" in md  # stable's, as bars under the candidate's line
    assert f"]({out.name}.svg)" in md
    assert "- canary back to 0 %" in md
    assert out.name == "legal_info-1.2.1-canary-20261121T163000"


def test_svg_is_well_formed_with_both_panels_and_verdicts():
    root = ET.fromstring(  # noqa: S314 (our own output)
        report.render(RELEASE).svg
    )
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "Error rate (%)" in texts and "Latency p95 (ms)" in texts
    assert "fail" in texts and "pass" in texts
    lines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 4  # 2 metrics x 2 sides
    # Drawn distinctly, stable underneath: equal numbers still show two versions.
    assert [line.get("stroke-dasharray") for line in lines] == [None, "6 3", None, "6 3"]
    assert lines[0].get("stroke-width") == "7" and lines[1].get("stroke") != lines[0].get("stroke")


def test_no_steps_no_chart():
    out = report.render({**RELEASE, "steps": [], "outcome": "skipped"})
    assert "No traffic step ran." in out.markdown and out.svg == ""


@pytest.mark.parametrize("bad", [{"strategy": "canary"}, {"agent": "a", "strategy": "canary", "steps": "x"}])
def test_bad_input_names_the_field(bad):
    with pytest.raises(report.ReportError) as info:
        report.render(bad)
    assert info.value.problems


def test_write_is_idempotent_and_check_mode_writes_nothing(tmp_path):
    first = report.write(tmp_path / "reports", RELEASE)
    assert first["changed"] and (tmp_path / "reports" / "legal_info-1.2.1-canary-20261121T163000.svg").is_file()
    assert not report.write(tmp_path / "reports", RELEASE)["changed"]
    dry = report.write(tmp_path / "other", RELEASE, check_mode=True)
    assert dry["changed"] and not (tmp_path / "other").exists()


def test_nice_axis_bounds():
    assert [report._nice(v) for v in (0, 0.3, 1, 7, 12, 26)] == [1.0, 0.5, 1, 10, 20, 50]
