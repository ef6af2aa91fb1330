"""The security policy as data, and its check of an agent folder.

Every violation of every file is collected before anything is raised, so an author fixes them in
one pass. Handler imports and calls are found by parsing the code, not by searching its text.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import PolicyViolation, Problem
from .spec import TOOLS_FILE, AgentSpec

_TEMPLATE_EXPR = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


@dataclass(frozen=True)
class Pattern:
    id: str
    description: str
    regex: re.Pattern


@dataclass(frozen=True)
class Policy:
    data: dict

    @property
    def limits(self) -> dict:
        return self.data["limits"]

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        return _compile(self.data["prompts"]["patterns"])

    @property
    def template_patterns(self) -> tuple[Pattern, ...]:
        return _compile(self.data["prompts"]["template_patterns"])


def _compile(entries: list[dict]) -> tuple[Pattern, ...]:
    return tuple(Pattern(e["id"], e.get("description", e["id"]), re.compile(e["regex"])) for e in entries)


@cache
def _default_text() -> str:
    return resources.files("chenu_agents.data").joinpath("policy.yaml").read_text(encoding="utf-8")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_policy(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Policy:
    """The shipped default, then a policy file merged over it, then inline overrides."""
    data = yaml.safe_load(_default_text())
    if path:
        data = _merge(data, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    if overrides:
        data = _merge(data, overrides)
    for pattern in (*data["prompts"]["patterns"], *data["prompts"]["template_patterns"]):
        try:
            re.compile(pattern["regex"])
        except (re.error, KeyError, TypeError) as exc:
            raise PolicyViolation(
                "the policy itself is invalid",
                [
                    Problem(
                        str(path or "policy"), f"prompts.patterns.{pattern.get('id', '?')}", f"a valid regex ({exc})"
                    )
                ],
            ) from None
    return Policy(data)


# Build outputs a developer's tree may hold; never part of an agent version.
EXCLUDED_PARTS = frozenset({"__pycache__", ".pytest_cache", ".git", ".DS_Store"})
EXCLUDED_SUFFIXES = frozenset({".pyc", ".pyo"})


def agent_files(root: Path) -> list[Path]:
    """Every source file of an agent folder, sorted by relative path (links too, to be refused)."""
    found = (
        p
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink())
        and not (EXCLUDED_PARTS & set(p.relative_to(root).parts))
        and p.suffix not in EXCLUDED_SUFFIXES
    )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def check(spec: AgentSpec, policy: Policy) -> None:
    """Raise PolicyViolation listing every offending file and rule, or return None."""
    root = spec.root
    problems: list[Problem] = []
    problems += _check_limits(root, policy)
    for i, tool in enumerate(spec.tools):
        if tool.name in policy.data["forbidden_tools"]:
            problems.append(
                Problem(TOOLS_FILE, f"tools[{i}].name", f"not a forbidden tool ({tool.name})", rule="forbidden_tool")
            )
        handler = root / "tools" / tool.handler
        if handler.is_file():
            problems += _check_handler(handler, f"tools/{tool.handler}", policy)
    include = policy.data["prompts"]["include"]
    for path in agent_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in include):
            problems += _check_prompt(path, rel, policy)
    if problems:
        raise PolicyViolation(f"agent folder {root} breaks the security policy", problems)


def _check_limits(root: Path, policy: Policy) -> list[Problem]:
    limits = policy.limits
    problems = []
    files = agent_files(root)
    total = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(Problem(rel, "(file)", "a regular file, not a link", rule="no_links"))
            continue
        size = path.stat().st_size
        total += size
        if size > limits["max_file_bytes"]:
            problems.append(
                Problem(rel, "(size)", f"at most {limits['max_file_bytes']} bytes (got {size})", rule="max_file_bytes")
            )
        if len(rel) > limits["max_path_length"]:
            problems.append(
                Problem(
                    rel, "(path)", f"a path of at most {limits['max_path_length']} characters", rule="max_path_length"
                )
            )
    if len(files) > limits["max_files"]:
        problems.append(
            Problem(".", "(folder)", f"at most {limits['max_files']} files (got {len(files)})", rule="max_files")
        )
    if total > limits["max_total_bytes"]:
        problems.append(
            Problem(
                ".",
                "(folder)",
                f"at most {limits['max_total_bytes']} bytes in all (got {total})",
                rule="max_total_bytes",
            )
        )
    return problems


def _check_handler(path: Path, rel: str, policy: Policy) -> list[Problem]:
    rules = policy.data["handlers"]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    except (SyntaxError, UnicodeDecodeError) as exc:
        return [Problem(rel, "(code)", f"Python that parses ({exc})", getattr(exc, "lineno", None), rule="syntax")]
    forbidden_imports = set(rules["forbidden_imports"])
    forbidden_calls = set(rules["forbidden_calls"])
    forbidden_attrs = set(rules["forbidden_attributes"])
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        else:
            names = []
        for name in names:
            if name.split(".")[0] in forbidden_imports:
                problems.append(
                    Problem(rel, f"import {name}", "no forbidden import", node.lineno, rule="forbidden_import")
                )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in forbidden_calls:
            problems.append(
                Problem(rel, f"{node.func.id}()", "no call to a forbidden builtin", node.lineno, rule="forbidden_call")
            )
        if isinstance(node, ast.Attribute) and node.attr in forbidden_attrs:
            problems.append(
                Problem(
                    rel, f".{node.attr}", "no access to interpreter internals", node.lineno, rule="forbidden_attribute"
                )
            )
    return problems


def _check_prompt(path: Path, rel: str, policy: Policy) -> list[Problem]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [Problem(rel, "(file)", "UTF-8 text", rule="encoding")]
    problems = []
    for pattern in policy.patterns:
        for match in pattern.regex.finditer(text):
            problems.append(
                Problem(
                    rel, "(text)", f"no {pattern.description}", text.count("\n", 0, match.start()) + 1, rule=pattern.id
                )
            )
    for expr in _TEMPLATE_EXPR.finditer(text):
        for pattern in policy.template_patterns:
            if pattern.regex.search(expr.group(0)):
                problems.append(
                    Problem(
                        rel,
                        expr.group(0)[:60],
                        f"no {pattern.description}",
                        text.count("\n", 0, expr.start()) + 1,
                        rule=pattern.id,
                    )
                )
    return problems
