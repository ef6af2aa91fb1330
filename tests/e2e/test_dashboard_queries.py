"""Every query of the monitoring role's Grafana dashboards, run against the real Prometheus that
site.yml (or the monitoring molecule scenario) provisioned on this host. Grafana is not installed
here, so this is the nearest real check: a query Prometheus rejects would be a broken panel.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "roles" / "monitoring" / "files" / "dashboards").glob("*.json"))
PROMETHEUS = "http://127.0.0.1:9090"
# What Grafana would put in place of its built-in variables for a 6-hour view.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
    "__range_s": "21600",
    "__interval_ms": "15000",
}
VARIABLE = re.compile(r"\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def _get(path: str, params: dict | list) -> dict:
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (fixed loopback URL)
            return json.load(response)
    except urllib.error.HTTPError as error:  # 400/422 carry Prometheus's own error body
        return json.load(error)


@pytest.fixture(scope="module", autouse=True)
def prometheus_ready():
    try:
        with urllib.request.urlopen(f"{PROMETHEUS}/-/ready", timeout=5) as response:  # noqa: S310
            assert response.status == 200
    except (OSError, AssertionError) as error:
        pytest.fail(f"Prometheus is not ready at {PROMETHEUS} ({error}): provision the local stack first")


def _values(dashboard: dict) -> dict[str, list[str]]:
    """Each dashboard variable's current value(s), as Grafana would substitute them."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value", [])
        current = current if isinstance(current, list) else [current]
        values[variable["name"]] = [variable.get("allValue", ".*") if v == "$__all" else v for v in current]
    return values


def _substitute(text: str, values: dict[str, list[str]], repeat: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in repeat:
            return repeat[name]
        chosen = values[name]
        return chosen[0] if len(chosen) == 1 else "(" + "|".join(chosen) + ")"

    return VARIABLE.sub(one, text)


def _queries():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        values = _values(dashboard)
        for panel in dashboard["panels"]:
            repeats = [{}]
            if panel.get("repeat"):
                repeats = [{panel["repeat"]: value} for value in values[panel["repeat"]]]
            for repeat in repeats:
                for target in panel["targets"]:
                    expr = _substitute(target["expr"], values, repeat)
                    suffix = f" [{', '.join(f'{k}={v}' for k, v in repeat.items())}]" if repeat else ""
                    yield pytest.param(expr, id=f"{path.stem}:{panel['id']}:{target['refId']}{suffix}")


def _variable_queries():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        values = _values(dashboard)
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                yield pytest.param(_substitute(query, values, {}), id=f"{path.stem}:${variable['name']}")


@pytest.mark.parametrize("expr", list(_queries()))
def test_panel_query_runs(expr):
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    answer = _get("/api/v1/query", {"query": expr})
    assert answer["status"] == "success", f"{expr}: {answer.get('errorType')}: {answer.get('error')}"


@pytest.mark.parametrize("query", list(_variable_queries()))
def test_variable_query_runs(query):
    match = LABEL_VALUES.match(query)
    assert match, f"unsupported variable query {query}"
    params = [("match[]", match["selector"])] if match["selector"] else []
    answer = _get(f"/api/v1/label/{match['label']}/values", params)
    assert answer["status"] == "success", f"{query}: {answer.get('errorType')}: {answer.get('error')}"


def test_every_dashboard_was_queried():
    assert {p.stem for p in DASHBOARDS} == {"chenu-fleet", "chenu-agent", "chenu-release"}
    assert len(list(_queries())) >= 40
