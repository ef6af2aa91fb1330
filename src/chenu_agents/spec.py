"""The agent source folder: load config.yaml and tools/definitions.yaml, check them against their schemas.

Every problem of a file is reported at once, each with the file, the line where YAML gives one, the
field as a dotted path and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import Problem, SpecError
from .safeload import DEFAULT_BUDGET, Budget, check_agent_name
from .safeload import load_yaml as _load_yaml

CONFIG_FILE = "config.yaml"
TOOLS_FILE = "tools/definitions.yaml"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    handler: str
    entrypoint: str
    input_schema: dict
    permissions: dict
    limits: dict


@dataclass(frozen=True)
class AgentSpec:
    root: Path
    config: dict
    tools: tuple[Tool, ...] = field(default_factory=tuple)

    @property
    def agent(self) -> dict:
        return self.config["agent"]

    @property
    def id(self) -> str:
        return self.agent["id"]

    @property
    def version(self) -> str:
        return self.agent["version"]


@cache
def schema(name: str) -> dict:
    return json.loads(resources.files("chenu_agents.schemas").joinpath(f"{name}.json").read_text())


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


def load_yaml(path: Path, display: str, budget: Budget = DEFAULT_BUDGET) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file into data and its node tree (for line numbers), within the byte and node budget."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(budget.max_bytes + 1)
    except FileNotFoundError:
        raise SpecError(f"{display} is missing", [Problem(display, "(file)", "file must exist")]) from None
    except OSError as exc:
        raise SpecError(
            f"cannot read {display}", [Problem(display, "(file)", f"a readable file ({exc.strerror})")]
        ) from None
    return _load_yaml(raw, display, error=SpecError, budget=budget)


def _line(node: yaml.Node | None, path: list) -> int | None:
    """Line of the deepest node along a JSON path (1-based)."""
    best = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, best = v, k.start_mark.line + 1
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            best = node.start_mark.line + 1
        else:
            return best
    return best


def _dotted(path: list) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(root)"


def _expected(error: ValidationError) -> tuple[list, str]:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [*path, missing], "required field is missing"
    if error.validator == "additionalProperties":
        return path, f"unknown field ({error.message})"
    if error.validator == "enum":
        return path, "one of " + ", ".join(map(str, error.validator_value)) + f" (got {error.instance!r})"
    # A field's schema may say in words what it expects ("x-expected"): `version: 1.2` is a float to
    # YAML, and "a value of type string" alone does not tell the author a semver string is wanted.
    wanted = error.schema.get("x-expected") if isinstance(error.schema, dict) else None
    got = error.instance
    shown = f"{type(got).__name__} {got!r}" if isinstance(got, int | float) else type(got).__name__
    if error.validator == "type":
        if wanted:
            return path, f"{wanted} (got {shown}; quote it in YAML)"
        return path, f"a value of type {error.validator_value} (got {shown})"
    if error.validator == "pattern":
        return path, f"{wanted or 'a string matching ' + str(error.validator_value)} (got {str(got)[:80]!r})"
    return path, error.message


def schema_problems(data: Any, node: yaml.Node | None, schema_name: str, display: str) -> list[Problem]:
    problems = []
    for error in _validator(schema_name).iter_errors(data):
        path, expected = _expected(error)
        problems.append(Problem(display, _dotted(path), expected, _line(node, path)))
    return sorted(problems, key=lambda p: (p.line or 0, p.field))


def load_agent(root: str | Path) -> AgentSpec:
    """Load and check an agent folder; raise SpecError listing every problem of every file."""
    root = Path(root)
    if not root.is_dir():
        raise SpecError(f"{root} is not an agent folder", [Problem(str(root), "(folder)", "a directory")])
    problems: list[Problem] = []

    config, config_node = load_yaml(root / CONFIG_FILE, CONFIG_FILE)
    problems += schema_problems(config, config_node, "agent_config", CONFIG_FILE)
    agent = config.get("agent") if isinstance(config, dict) else None
    agent_id = agent.get("id") if isinstance(agent, dict) else None
    problems += _strict_problems(agent, config_node, problems)
    if isinstance(agent_id, str) and agent_id != root.name:
        problems.append(
            Problem(
                CONFIG_FILE,
                "agent.id",
                f"the folder name {root.name!r} (got {agent_id!r})",
                _line(config_node, ["agent", "id"]),
            )
        )

    tools: list[Tool] = []
    if (root / TOOLS_FILE).exists():
        defs, defs_node = load_yaml(root / TOOLS_FILE, TOOLS_FILE)
        tool_problems = schema_problems(defs, defs_node, "tool_definitions", TOOLS_FILE)
        problems += tool_problems
        if not tool_problems:
            tools, extra = _check_tools(root, defs["tools"], defs_node)
            problems += extra

    if problems:
        raise SpecError(f"agent folder {root} does not match its schema", problems)
    return AgentSpec(root=root, config=config, tools=tuple(tools))


def _strict_problems(agent: Any, node: yaml.Node | None, found: list[Problem]) -> list[Problem]:
    """What JSON Schema's `pattern` lets through: it searches, so `$` accepts a trailing newline."""
    if not isinstance(agent, dict):
        return []
    already = {p.field for p in found}
    problems = []
    agent_id = agent.get("id")
    if isinstance(agent_id, str) and "agent.id" not in already:
        try:
            check_agent_name(agent_id, file=CONFIG_FILE, field="agent.id", error=SpecError)
        except SpecError as exc:
            problems += [replace(p, line=_line(node, ["agent", "id"])) for p in exc.problems]
    version = agent.get("version")
    if isinstance(version, str) and "agent.version" not in already and version != version.strip():
        problems.append(
            Problem(
                CONFIG_FILE,
                "agent.version",
                f"a semantic version string such as 1.2.0, without spaces or line breaks (got {version!r})",
                _line(node, ["agent", "version"]),
            )
        )
    return problems


def _check_tools(root: Path, entries: list[dict], node: yaml.Node | None) -> tuple[list[Tool], list[Problem]]:
    problems: list[Problem] = []
    tools: list[Tool] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name = entry["name"]
        if name in seen:
            problems.append(
                Problem(
                    TOOLS_FILE,
                    f"tools[{i}].name",
                    f"a unique name ({name!r} repeats)",
                    _line(node, ["tools", i, "name"]),
                )
            )
        seen.add(name)
        handler = root / "tools" / entry["handler"]
        if ".." in Path(entry["handler"]).parts or not handler.is_file():
            problems.append(
                Problem(
                    TOOLS_FILE,
                    f"tools[{i}].handler",
                    f"an existing file under tools/ (got {entry['handler']!r})",
                    _line(node, ["tools", i, "handler"]),
                )
            )
        try:
            Draft202012Validator.check_schema(entry["input_schema"])
        except Exception as exc:  # jsonschema raises SchemaError; report its message whatever it is
            problems.append(
                Problem(
                    TOOLS_FILE,
                    f"tools[{i}].input_schema",
                    f"a valid JSON Schema ({getattr(exc, 'message', exc)})",
                    _line(node, ["tools", i, "input_schema"]),
                )
            )
        tools.append(
            Tool(
                name=name,
                description=entry["description"],
                handler=entry["handler"],
                entrypoint=entry.get("entrypoint", "handle"),
                input_schema=entry["input_schema"],
                permissions={"filesystem": "none", "network": "none", "env": [], **entry.get("permissions", {})},
                limits=entry.get("limits", {}),
            )
        )
    return tools, problems
