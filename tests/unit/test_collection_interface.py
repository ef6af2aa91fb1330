"""The collection's interface: every module documents its attributes through the shared fragment, and the
action groups gather modules by the option group they share, so `module_defaults` on a group can carry
that option (kubernetes.core guards its groups the same way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MODULES = sorted((REPO / "plugins" / "modules").glob("*.py"))
ATTRIBUTES = ("check_mode", "diff_mode", "idempotent")
# Action group -> the doc fragment (option group) every member extends.
SHARED_OPTION_GROUPS = {"registry": "chenu.agents.registry", "keystore": "chenu.agents.keystore"}


def documentation(path: Path) -> dict:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DOCUMENTATION" for t in node.targets):
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{path}: no DOCUMENTATION")


def action_groups() -> dict[str, list[str]]:
    return yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))["action_groups"]


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_attributes_come_from_the_fragment(path):
    doc = documentation(path)
    assert "chenu.agents.attributes" in doc.get("extends_documentation_fragment", []), path.name
    attributes = doc["attributes"]
    assert set(ATTRIBUTES) <= set(attributes), path.name
    for name in ATTRIBUTES:
        assert attributes[name]["support"] in ("full", "partial", "none"), (path.name, name)
        # The meaning is the fragment's; a module says how it supports it (details), not what it means.
        assert "description" not in attributes[name], (path.name, name)


def test_every_module_is_in_the_agents_group():
    assert sorted(action_groups()["agents"]) == sorted(p.stem for p in MODULES)


@pytest.mark.parametrize("group, fragment", SHARED_OPTION_GROUPS.items())
def test_a_shared_option_group_is_an_action_group(group, fragment):
    members = sorted(p.stem for p in MODULES if fragment in documentation(p).get("extends_documentation_fragment", []))
    assert members, fragment
    assert sorted(action_groups()[group]) == members
