"""Every role documents its whole contract: defaults/main.yml and meta/argument_specs.yml agree.

For each role under roles/ with a defaults/main.yml, the keys of the defaults and the options of the
`main` entry point are the same set, and a literal default (one without Jinja) is the default the
specification declares, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_DIRS = sorted(p.parent.parent for p in ROLES.glob("*/defaults/main.yml"))


def _load(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _options(role: Path) -> dict:
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role.name}: meta/argument_specs.yml is missing"
    specs = _load(spec_file).get("argument_specs", {})
    assert "main" in specs, f"{spec_file}: no `main` entry point"
    return specs["main"].get("options") or {}


def _templated(value: object) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


@pytest.mark.parametrize("role", ROLE_DIRS, ids=[r.name for r in ROLE_DIRS])
def test_every_default_is_specified_and_every_option_has_a_default(role: Path) -> None:
    defaults = set(_load(role / "defaults" / "main.yml"))
    options = _options(role)
    undocumented = sorted(defaults - set(options))
    assert not undocumented, f"{role.name}: defaults missing from meta/argument_specs.yml: {undocumented}"
    # An option without a default is fine only when it is required (the caller must set it).
    spare = sorted(k for k in set(options) - defaults if not options[k].get("required"))
    assert not spare, f"{role.name}: argument_specs options with no default in defaults/main.yml: {spare}"


@pytest.mark.parametrize("role", ROLE_DIRS, ids=[r.name for r in ROLE_DIRS])
def test_literal_defaults_match_the_specification(role: Path) -> None:
    defaults = _load(role / "defaults" / "main.yml")
    options = _options(role)
    drift = {
        key: {"defaults/main.yml": value, "argument_specs": options[key]["default"]}
        for key, value in defaults.items()
        if key in options
        and "default" in options[key]
        and not _templated(value)
        and not _templated(options[key]["default"])
        and value != options[key]["default"]
    }
    assert not drift, f"{role.name}: defaults differ from their documented default: {drift}"


@pytest.mark.parametrize("role", ROLE_DIRS, ids=[r.name for r in ROLE_DIRS])
def test_every_option_is_described(role: Path) -> None:
    missing = sorted(k for k, v in _options(role).items() if not v.get("description"))
    assert not missing, f"{role.name}: options without a description: {missing}"
