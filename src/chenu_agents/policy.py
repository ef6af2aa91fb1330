"""The security policy as data, and its check of an agent folder.

Every violation of every file is collected before anything is raised, so an author fixes them in
one pass. Handlers are checked against an allowlist on their parsed code, not by searching its text;
text is normalised (NFKC, invisible characters removed, lookalike letters folded, white space made
one space) before any pattern runs, and every text file is searched for credentials.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import importlib
import re
import types
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import PolicyViolation, Problem
from .safeload import fold_path, has_control, load_yaml_data
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

    @property
    def secret_patterns(self) -> tuple[Pattern, ...]:
        return _compile(self.data["secrets"]["patterns"])

    @property
    def allowed_imports(self) -> frozenset[str]:
        rules = self.data["handlers"]
        return frozenset([*rules["allowed_imports"], *(rules.get("extra_imports") or [])])


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


_PATTERN_LISTS = (("prompts", "patterns"), ("prompts", "template_patterns"), ("secrets", "patterns"))
_NAME_LISTS = ("allowed_imports", "extra_imports", "forbidden_names", "forbidden_attributes")


def load_policy(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Policy:
    """The shipped default, then a policy file merged over it, then inline overrides."""
    data = load_yaml_data(_default_text(), "policy.yaml", error=PolicyViolation)
    source = str(path or "policy")
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise PolicyViolation(
                f"cannot read the policy file {path}", [Problem(source, "(file)", f"a readable file ({exc.strerror})")]
            ) from None
        extra = load_yaml_data(raw, source, error=PolicyViolation) or {}
        if not isinstance(extra, dict):
            raise PolicyViolation("the policy itself is invalid", [Problem(source, "(root)", "a mapping")])
        data = _merge(data, extra)
    if overrides:
        data = _merge(data, overrides)
    _check_policy(data, source)
    return Policy(data)


def _check_policy(data: dict, source: str) -> None:
    def invalid(field: str, expected: str) -> PolicyViolation:
        return PolicyViolation("the policy itself is invalid", [Problem(source, field, expected)])

    for section, key in _PATTERN_LISTS:
        entries = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if not isinstance(entries, list):
            raise invalid(f"{section}.{key}", "a list of {id, description, regex}")
        for i, pattern in enumerate(entries):
            if not isinstance(pattern, dict) or not isinstance(pattern.get("id"), str):
                raise invalid(f"{section}.{key}[{i}]", "a mapping with an id, a description and a regex")
            try:
                re.compile(pattern["regex"])
            except (re.error, KeyError, TypeError) as exc:
                raise invalid(f"{section}.{key}.{pattern['id']}", f"a valid regex ({exc})") from None
    handlers = data.get("handlers")
    for key in _NAME_LISTS:
        names = handlers.get(key) if isinstance(handlers, dict) else None
        if names is None and key == "extra_imports":
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise invalid(f"handlers.{key}", "a list of names")


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
    max_bytes = policy.limits["max_file_bytes"]
    for path in agent_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            continue  # refused by the limits already
        problems += _check_text(path, rel, policy, prompt=any(fnmatch.fnmatch(rel, pat) for pat in include))
    if problems:
        raise PolicyViolation(f"agent folder {root} breaks the security policy", problems)


def _check_limits(root: Path, policy: Policy) -> list[Problem]:
    limits = policy.limits
    problems = []
    files = agent_files(root)
    total = 0
    folded: dict[str, str] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        # What the bundle reader refuses is refused here first, so a folder never builds a bundle no one loads.
        if has_control(rel):
            problems.append(
                Problem(repr(rel)[1:-1], "(path)", "a name without control or format characters", rule="path_name")
            )
        key = fold_path(rel)
        if key in folded:
            problems.append(
                Problem(
                    rel,
                    "(path)",
                    f"a name distinct from {folded[key]!r} once normalised and case-folded",
                    rule="path_name",
                )
            )
        folded.setdefault(key, rel)
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


# --- handlers ----------------------------------------------------------------------------------------

_ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__doc__"})


def _module(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # an inventory may allow a module this build host lacks: no attribute facts then
        return None


class _HandlerCheck(ast.NodeVisitor):
    """One pass over a handler's tree; every refusal is a Problem naming the line."""

    def __init__(self, rel: str, policy: Policy):
        rules = policy.data["handlers"]
        self.rel = rel
        self.allowed = policy.allowed_imports
        self.forbidden_names = frozenset(rules["forbidden_names"])
        self.forbidden_attrs = frozenset(rules["forbidden_attributes"])
        self.modules: dict[str, str] = {}  # local name -> module it is bound to
        self.module_uses: set[int] = set()  # ids of Name nodes used as module.attribute
        self.problems: list[Problem] = []

    def refuse(self, node: ast.AST, field: str, expected: str, rule: str) -> None:
        self.problems.append(Problem(self.rel, field, expected, getattr(node, "lineno", None), rule=rule))

    # imports
    def _import(self, node: ast.AST, name: str) -> bool:
        if name in self.allowed:
            return True
        self.refuse(
            node,
            f"import {name}",
            "a module of the handler allowlist (policy handlers.allowed_imports, extended by handlers.extra_imports)",
            "forbidden_import",
        )
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._import(node, alias.name):
                if alias.asname:
                    self.modules[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    self.modules[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.refuse(
                node, f"from {'.' * node.level}{node.module or ''} import", "no relative import", "forbidden_import"
            )
            return
        module = node.module or ""
        if not self._import(node, module) or module == "__future__":
            return
        loaded = _module(module)
        for alias in node.names:
            if alias.name == "*":
                self.refuse(node, f"from {module} import *", "names imported one by one", "forbidden_import")
                continue
            if alias.name.startswith("_"):
                self.refuse(node, f"from {module} import {alias.name}", "no private name", "forbidden_import")
                continue
            value = getattr(loaded, alias.name, None) if loaded else None
            if isinstance(value, types.ModuleType):
                full = f"{module}.{alias.name}"
                if self._import(node, full):
                    self.modules[alias.asname or alias.name] = full

    # names and attributes
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.forbidden_names or (
            name.startswith("__") and name.endswith("__") and name not in _ALLOWED_DUNDER_NAMES
        ):
            self.refuse(node, name, "no use of a forbidden builtin or interpreter name", "forbidden_name")
        elif name in self.modules and id(node) not in self.module_uses:
            self.refuse(node, name, "a module used only as module.attribute, never as a value", "module_value")

    def _attribute(self, node: ast.AST, owner: str | None, attr: str) -> None:
        if attr.startswith("_"):
            self.refuse(node, f".{attr}", "no private or special attribute (a leading '_')", "forbidden_attribute")
        elif attr in self.forbidden_attrs:
            self.refuse(node, f".{attr}", "no attribute that reaches interpreter internals", "forbidden_attribute")
        elif owner is not None:
            loaded = _module(owner)
            value = getattr(loaded, attr, None) if loaded else None
            if isinstance(value, types.ModuleType) and f"{owner}.{attr}" not in self.allowed:
                self.refuse(
                    node,
                    f"{owner}.{attr}",
                    f"no module reached through another ({value.__name__} is not in the allowlist)",
                    "forbidden_attribute",
                )

    def _owner_module(self, node: ast.expr) -> str | None:
        """The allowlisted module an expression names (`re`, `collections.abc`), or None."""
        if isinstance(node, ast.Name) and node.id in self.modules:
            self.module_uses.add(id(node))
            return self.modules[node.id]
        if isinstance(node, ast.Attribute):
            owner = self._owner_module(node.value)
            if owner is not None and f"{owner}.{node.attr}" in self.allowed:
                loaded = _module(owner)
                if isinstance(getattr(loaded, node.attr, None), types.ModuleType):
                    return f"{owner}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = self._owner_module(node.value)
        self._attribute(node, owner, node.attr)
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        # `case C(__class__=x)` reads an attribute without an Attribute node.
        for attr in node.kwd_attrs:
            self._attribute(node, None, attr)
        self.generic_visit(node)


def _check_handler(path: Path, rel: str, policy: Policy) -> list[Problem]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        return [Problem(rel, "(code)", f"Python that parses ({exc})", getattr(exc, "lineno", None), rule="syntax")]
    except RecursionError:
        return [Problem(rel, "(code)", "Python nested less deeply", rule="syntax")]
    visitor = _HandlerCheck(rel, policy)
    try:
        visitor.visit(tree)
    except RecursionError:
        return [Problem(rel, "(code)", "Python nested less deeply", rule="syntax")]
    return sorted(visitor.problems, key=lambda p: (p.line or 0, p.field))


# --- text ------------------------------------------------------------------------------------------

# Lookalikes folded to the Latin letter they imitate (Cyrillic, then Greek), applied after NFKC.
_CONFUSABLES = str.maketrans(
    "аАвВеЕёЁһҺіІїЇјЈкКмМнНоОрРсСтТуУхХѕЅԁԛԝүҮɡαΑβΒεΕζΖηΗιΙκΚμΜνΝοΟρΡτΤυΥχΧ",
    "aAbBeEeEhHiIiIjJkKmMhHoOpPcCtTyYxXsSdqwyYgaAbBeEzZnHiIkKuMvNoOpPtTuYxX",
)
_WHITESPACE = re.compile(r"\s+")
_HYPHEN_BREAK = re.compile(r"(?<=\w)[-\u2010\u2011]\s*\n\s*(?=\w)")


def _invisible(ch: str) -> bool:
    # Cf: soft hyphen, zero-width space/joiners, word joiner, BOM, bidi controls, tag characters.
    return unicodedata.category(ch) == "Cf" or "\ufe00" <= ch <= "\ufe0f" or ch in "\u034f\u115f\u1160\u3164\uffa0"


# A non-ASCII run with the character before it (the base letter a combining mark may belong to).
_NON_ASCII = re.compile(r".?[^\x00-\x7f]+", re.S)


def _fold(text: str, start: int, end: int) -> tuple[list[str], list[int]]:
    """NFKC per letter and its combining marks, invisible characters dropped, lookalikes folded."""
    kept = [(text[i], i) for i in range(start, end) if not _invisible(text[i])]
    out: list[str] = []
    where: list[int] = []
    i = 0
    while i < len(kept):
        j = i + 1
        while j < len(kept) and unicodedata.combining(kept[j][0]):
            j += 1  # a letter and its combining marks compose together ("e" + U+0301 -> "é")
        for ch in unicodedata.normalize("NFKC", "".join(c for c, _line in kept[i:j])):
            if not _invisible(ch):
                out.append(ch.translate(_CONFUSABLES))
                where.append(kept[i][1])
        i = j
    return out, where


def normalise_text(text: str) -> tuple[str, list[int]]:
    """Text as the patterns see it, and for each of its characters the offset in `text` it came from."""
    pieces: list[str] = []
    where: list[int] = []
    pos = 0
    for match in _NON_ASCII.finditer(text):  # ASCII needs none of it: copied as it is
        start, end = match.span()
        pieces.append(text[pos:start])
        where.extend(range(pos, start))
        folded, offsets = _fold(text, start, end)
        pieces.extend(folded)
        where.extend(offsets)
        pos = end
    pieces.append(text[pos:])
    where.extend(range(pos, len(text)))
    chars = "".join(pieces)
    parts: list[str] = []
    offsets_out: list[int] = []
    pos = 0
    for start, end, replacement in _joins(chars):
        parts.append(chars[pos:start])
        offsets_out.extend(where[pos:start])
        if replacement:
            parts.append(replacement)
            offsets_out.append(where[start])
        pos = end
    parts.append(chars[pos:])
    offsets_out.extend(where[pos:])
    return "".join(parts), offsets_out


def _joins(chars: str) -> list[tuple[int, int, str]]:
    """Spans to replace: a hyphen at a line end inside a word (removed), runs of white space (one space)."""
    spans = [(m.start(), m.end(), "") for m in _HYPHEN_BREAK.finditer(chars)]
    taken = iter(spans)
    nxt = next(taken, None)
    out: list[tuple[int, int, str]] = []
    for m in _WHITESPACE.finditer(chars):
        while nxt is not None and nxt[1] <= m.start():
            out.append(nxt)
            nxt = next(taken, None)
        if nxt is not None and nxt[0] <= m.start() < nxt[1]:
            continue  # inside a hyphen break, already replaced
        if m.group() != " ":
            out.append((m.start(), m.end(), " "))
    while nxt is not None:
        out.append(nxt)
        nxt = next(taken, None)
    return sorted(out)


def _read_text(path: Path, rel: str, prompt: bool) -> tuple[str | None, list[Problem]]:
    data = path.read_bytes()
    if b"\0" in data and not prompt:
        return None, []  # binary: an image or a data file
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return None, [Problem(rel, "(file)", "UTF-8 text (or a binary file with a NUL byte)", rule="encoding")]


def _check_text(path: Path, rel: str, policy: Policy, *, prompt: bool) -> list[Problem]:
    text, problems = _read_text(path, rel, prompt)
    if text is None:
        return problems
    seen, offsets = normalise_text(text)

    def line(pos: int) -> int:
        return text.count("\n", 0, offsets[pos] if pos < len(offsets) else len(text)) + 1

    for pattern in (*policy.patterns, *policy.secret_patterns) if prompt else policy.secret_patterns:
        for match in pattern.regex.finditer(seen):
            # The match itself is never echoed: it may be a credential.
            problems.append(Problem(rel, "(text)", f"no {pattern.description}", line(match.start()), rule=pattern.id))
    if prompt:
        for expr in _TEMPLATE_EXPR.finditer(seen):
            for pattern in policy.template_patterns:
                if pattern.regex.search(expr.group(0)):
                    problems.append(
                        Problem(
                            rel,
                            expr.group(0)[:60],
                            f"no {pattern.description}",
                            line(expr.start()),
                            rule=pattern.id,
                        )
                    )
    return problems
