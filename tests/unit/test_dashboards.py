"""The monitoring role's Grafana dashboards and provisioning files (Grafana itself cannot be installed
on the test machines: tests/e2e/test_dashboard_queries.py runs every panel's query against Prometheus).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.unit.test_promtool_rules import ROLE, render_template

DASHBOARDS = sorted((ROLE / "files" / "dashboards").glob("*.json"))
DATASOURCE_UID = "chenu-prometheus"
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_the_three_dashboards_are_shipped():
    assert {p.stem for p in DASHBOARDS} == {"chenu-fleet", "chenu-agent", "chenu-release"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_has_uid_title_and_panels(path):
    dashboard = _load(path)
    assert dashboard["uid"] == path.stem
    assert len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("chenu.agents / ")
    assert dashboard["panels"], f"{path.name} has no panels"
    assert "chenu.agents" in dashboard["tags"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_prometheus(path):
    dashboard = _load(path)
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for panel in _panels(dashboard):
        where = f"{path.name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), f"{where} has no title"
        assert panel.get("gridPos", {}).get("w", 0) > 0, f"{where} has no size"
        assert panel.get("targets"), f"{where} has no targets"
        assert panel["datasource"]["uid"] == DATASOURCE_UID, where
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{where}: target {target.get('refId')} has no expr"
            assert target["datasource"]["uid"] == DATASOURCE_UID, where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refIds"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_variable_used_is_defined(path):
    dashboard = _load(path)
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])} | GRAFANA_BUILTINS
    for panel in _panels(dashboard):
        texts = [panel["title"], panel.get("repeat", "")] + [t["expr"] for t in panel["targets"]]
        for text in texts:
            for match in VARIABLE.finditer(text):
                name = next(group for group in match.groups() if group)
                assert name in defined, f"{path.name}: ${name} in {panel['title']!r} is not a dashboard variable"
        if "repeat" in panel:
            assert panel["repeat"] in defined


def test_release_view_repeats_panels_per_slot_side_by_side():
    dashboard = _load(ROLE / "files" / "dashboards" / "chenu-release.json")
    slot = next(v for v in dashboard["templating"]["list"] if v["name"] == "slot")
    assert slot["multi"] is True
    assert slot["current"]["value"] == ["stable", "canary"]
    repeated = [p for p in dashboard["panels"] if p.get("repeat") == "slot"]
    assert repeated
    assert all(p["repeatDirection"] == "h" for p in repeated)


def test_agent_view_covers_the_requested_signals():
    dashboard = _load(ROLE / "files" / "dashboards" / "chenu-agent.json")
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "chenu_agent_requests_total",
        "chenu_agent_request_duration_seconds_bucket",
        "chenu_agent_tokens_total",
        "chenu_agent_fallbacks_total",
        "chenu_agent_tool_calls_total",
        "chenu_agent_sandbox_seconds_bucket",
        "chenu_agent_provider_call_duration_seconds_bucket",
        "chenu_agent_provider_calls_total",
        "chenu_agent_llm_answers_total",
    ):
        assert metric in exprs, f"the agent dashboard does not chart {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_datasource_provisioning_matches_the_dashboards():
    config = yaml.safe_load(render_template("grafana/datasource.yml.j2"))
    [datasource] = config["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://127.0.0.1:9090"


def test_dashboard_provider_reads_the_installed_directory():
    config = yaml.safe_load(render_template("grafana/dashboards.yml.j2"))
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/chenu"
