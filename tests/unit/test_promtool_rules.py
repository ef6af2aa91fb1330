"""The monitoring role's Prometheus rules: rendered from the role's templates with its defaults
(through Ansible's own templating, so filters and lookups behave as in a play), checked by
`promtool check rules`, then unit-tested by `promtool test rules` with the role's test files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "monitoring"
RULE_TEMPLATES = sorted((ROLE / "templates" / "rules").glob("*.yml.j2"))
PROMTOOL_TESTS = sorted((ROLE / "files" / "tests").glob("*_test.yml"))


def _trust(value):
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: _trust(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trust(item) for item in value]
    return value


def render_template(name: str, overrides: dict | None = None) -> str:
    """Render one of the role's templates as the role would with its defaults (and overrides)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    loader = DataLoader()
    variables: dict = {}
    for source in ("defaults/main.yml", "vars/main.yml"):
        variables.update(_trust(loader.load_from_file(str(ROLE / source))))
    variables.update({"ansible_managed": "Ansible managed", "groups": {"all": []}, "group_names": [], "hostvars": {}})
    variables.update(_trust(overrides or {}))
    templar = Templar(loader=loader, variables=variables)
    # escape_backslashes=False: what ansible.builtin.template's action plugin passes.
    return templar.template(trust_as_template((ROLE / "templates" / name).read_text()), escape_backslashes=False)


def render_rules(dest: Path, overrides: dict | None = None) -> list[Path]:
    """Render every rule template of the role into dest."""
    rendered = []
    for template in RULE_TEMPLATES:
        target = dest / template.name.removesuffix(".j2")
        target.write_text(render_template(f"rules/{template.name}", overrides))
        rendered.append(target)
    return rendered


def _apt_install_prometheus() -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", "prometheus"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
        capture_output=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from Debian's prometheus package, installed here if missing and we may."""
    if not shutil.which("promtool"):
        _apt_install_prometheus()
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool is absent (Debian package prometheus) and could not be installed")
    return path


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("rules")
    render_rules(dest)
    return dest


def test_rule_templates_and_tests_exist():
    assert {t.name for t in RULE_TEMPLATES} == {"chenu_slo.rules.yml.j2", "chenu_platform.rules.yml.j2"}
    assert len(PROMTOOL_TESTS) >= 3


def test_rendered_rules_pass_promtool_check(promtool, rules_dir):
    result = subprocess.run(
        [promtool, "check", "rules", *sorted(str(p) for p in rules_dir.glob("*.yml"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests(promtool, rules_dir, test_file, tmp_path):
    # promtool resolves rule_files relative to the test file: put both side by side.
    for rules in rules_dir.glob("*.yml"):
        shutil.copy(rules, tmp_path / rules.name)
    shutil.copy(test_file, tmp_path / test_file.name)
    result = subprocess.run(
        [promtool, "test", "rules", test_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_slo_rules_follow_the_seed_objectives(rules_dir):
    groups = yaml.safe_load((rules_dir / "chenu_slo.rules.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    windows = {
        name: (alert["labels"]["burn_rate"], alert["labels"]["long_window"], alert["labels"]["short_window"])
        for name, alert in alerts.items()
        if alert["labels"]["slo"] == "availability"
    }
    assert windows == {
        "ChenuAgentErrorBudgetBurnFast": ("14.4", "1h", "5m"),
        "ChenuAgentErrorBudgetBurnMedium": ("6", "6h", "30m"),
        "ChenuAgentErrorBudgetBurnSlow": ("1", "3d", "6h"),
    }
    assert [alerts[n]["labels"]["severity"] for n in sorted(windows)] == ["page", "page", "ticket"]
    records = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}
    assert "+ 0.9995" in records["chenu:agent_slo:availability_target"]
    assert "+ 0.0005" in records["chenu:agent_slo:error_budget_ratio"]
    thresholds = {
        rule["labels"]["objective"]: rule["expr"].rsplit("+", 1)[1].strip()
        for rule in rules
        if rule.get("record") == "chenu:agent_slo:latency_threshold_seconds"
    }
    assert thresholds == {"p50": "1", "p95": "3", "p99": "5"}
    assert "chenu:agent_request_errors:ratio_rate30d" in records


def test_overrides_render_valid_rules(promtool, tmp_path):
    render_rules(
        tmp_path,
        {
            "monitoring_slo_agents": {
                "estimator": {"availability_target": 99.9, "latency_thresholds_seconds": {"p95": 2}}
            },
            "monitoring_slo_error_code_regex": r"5\d\d|429",
        },
    )
    text = (tmp_path / "chenu_slo.rules.yml").read_text()
    assert 'agent!~"estimator"' in text
    assert 'agent="estimator"}) + 0.001' in text
    assert r'code=~"5\\d\\d|429"' in text
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "chenu_slo.rules.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
