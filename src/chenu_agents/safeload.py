"""Untrusted text read within bounds: YAML, JSON, and the agent names that reach paths and records.

YAML: a byte budget, then the node tree is composed (aliases are shared nodes there, nothing is
expanded yet) and measured as if every alias were expanded; a document over the node or depth budget,
with a recursive alias, or with a key twice in one mapping is refused before a single Python object
is built. JSON: a byte budget, nesting depth counted on the raw text before parsing, and duplicate keys
refused (Python's json keeps the last one silently, another parser the first).

Every refusal is the caller's own error class (SpecError, BundleError, VerificationError...), naming the
file, the field and what was expected.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import ChenuError, Problem

# One pattern for agent names, wherever they enter: config.yaml (its schema holds the same text, a test
# keeps them equal), the bundle manifest, the signed statement, the verifier, the registry.
AGENT_NAME = re.compile(r"^[a-z][a-z0-9_]{2,63}$")
AGENT_NAME_EXPECTED = "an agent name: a lowercase letter, then 2 to 63 lowercase letters, digits or '_'"


@dataclass(frozen=True)
class Budget:
    """What one document may cost: 1 MiB (an agent file's limit), 20 000 nodes with aliases expanded (the
    largest YAML file of the examples has about 400; PyYAML composes some 10 000 nodes a second), 64 levels."""

    max_bytes: int = 1024 * 1024
    max_nodes: int = 20_000
    max_depth: int = 64


DEFAULT_BUDGET = Budget()


def check_agent_name(name: Any, *, file: str, field: str, error: type[ChenuError], message: str | None = None) -> str:
    """`name` if it is an agent name (whole string, no trailing newline), else `error`."""
    if isinstance(name, str) and AGENT_NAME.fullmatch(name):
        return name
    shown = repr(name) if isinstance(name, str) else type(name).__name__
    raise error(
        message or f"{file}: {field} is not an agent name",
        [Problem(file, field, f"{AGENT_NAME_EXPECTED} (got {shown[:80]})")],
    )


def is_agent_name(name: Any) -> bool:
    return isinstance(name, str) and AGENT_NAME.fullmatch(name) is not None


def has_control(path: str) -> bool:
    """A control, format (bidi, zero-width), private-use or undecodable character in a file name."""
    return any(unicodedata.category(ch)[0] == "C" for ch in path)


def fold_path(path: str) -> str:
    """The key two file names collide on: equal once NFC-normalised and case-folded (as on macOS, Windows)."""
    return unicodedata.normalize("NFC", path).casefold()


# --- YAML ------------------------------------------------------------------------------------------


class _OverBudget(yaml.YAMLError):
    def __init__(self, expected: str, mark: yaml.Mark | None):
        super().__init__(expected)
        self.expected, self.problem_mark = expected, mark


class SafeYamlLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the strings the author wrote (schemas check them), and
    stops composing at the node or depth budget, so a large flat document costs no more than that."""

    budget: Budget = DEFAULT_BUDGET
    _composed = 0
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._composed += 1
        self._depth += 1
        try:
            if self._composed > self.budget.max_nodes:
                raise _OverBudget(f"at most {self.budget.max_nodes} nodes", self.peek_event().start_mark)
            if self._depth > self.budget.max_depth:
                raise _OverBudget(f"nesting of at most {self.budget.max_depth} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


SafeYamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse(error: type[ChenuError], file: str, field: str, expected: str, line: int | None = None) -> ChenuError:
    return error(f"{file} is refused: {expected}", [Problem(file, field, expected, line)])


def _measure(root: yaml.Node, budget: Budget, error: type[ChenuError], file: str) -> int:
    """Nodes of the document once every alias is expanded, computed without expanding anything."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    open_: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in open_:
            raise _refuse(error, file, "(document)", "no recursive alias", node.start_mark.line + 1)
        if depth > budget.max_depth:
            raise _refuse(
                error, file, "(document)", f"nesting of at most {budget.max_depth} levels", node.start_mark.line + 1
            )
        if key in sizes and depths[key] >= depth:
            return sizes[key]
        if isinstance(node, yaml.ScalarNode):
            size = 1
        else:
            open_.add(key)
            children = (
                [item for pair in node.value for item in pair]
                if isinstance(node, yaml.MappingNode)
                else list(node.value)
            )
            size = 1
            for child in children:
                size += visit(child, depth + 1)
                if size > budget.max_nodes:
                    raise _refuse(
                        error,
                        file,
                        "(document)",
                        f"at most {budget.max_nodes} nodes once aliases are expanded",
                        node.start_mark.line + 1,
                    )
            open_.discard(key)
        sizes[key], depths[key] = size, depth
        return size

    return visit(root, 0)


def _duplicate_keys(root: yaml.Node, error: type[ChenuError], file: str) -> None:
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    ident = (k.tag, k.value)
                    if ident in keys:
                        where = f"{path}.{k.value}" if path else str(k.value)
                        raise _refuse(error, file, where, "a key given once (it repeats)", k.start_mark.line + 1)
                    keys.add(ident)
                    stack.append((v, f"{path}.{k.value}" if path else str(k.value)))
                else:
                    stack.append((v, path))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))


def load_yaml(
    text: str | bytes,
    file: str,
    *,
    error: type[ChenuError],
    budget: Budget = DEFAULT_BUDGET,
    loader: type[yaml.SafeLoader] = SafeYamlLoader,
) -> tuple[Any, yaml.Node | None]:
    """Data and node tree (for line numbers) of one YAML document, within `budget`, or `error`."""
    if isinstance(text, bytes):
        if len(text) > budget.max_bytes:
            raise _refuse(error, file, "(size)", f"at most {budget.max_bytes} bytes (got {len(text)})")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(error, file, "(file)", f"UTF-8 text ({exc.reason})") from None
    if len(text) > budget.max_bytes or len(text.encode("utf-8", "surrogatepass")) > budget.max_bytes:
        raise _refuse(error, file, "(size)", f"at most {budget.max_bytes} bytes")
    parser = None
    try:
        parser = loader(text)  # the reader refuses control characters here already
        parser.budget = budget
        node = parser.get_single_node()
        if node is None:
            return None, None
        _measure(node, budget, error, file)
        _duplicate_keys(node, error, file)
        data = parser.construct_document(node)
    except _OverBudget as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise _refuse(error, file, "(document)", exc.expected, line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise _refuse(error, file, "(file)", f"valid YAML ({_first_line(exc)})", line) from None
    except RecursionError:
        raise _refuse(error, file, "(document)", f"nesting of at most {budget.max_depth} levels") from None
    finally:
        if parser is not None:
            parser.dispose()
    return data, node


def load_yaml_data(text: str | bytes, file: str, *, error: type[ChenuError], budget: Budget = DEFAULT_BUDGET) -> Any:
    return load_yaml(text, file, error=error, budget=budget)[0]


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


# --- JSON ------------------------------------------------------------------------------------------

# An unterminated string runs to the end (json.loads then says why): one pass, never quadratic.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.S)


def json_depth(data: bytes) -> int:
    """Deepest nesting of [ and { in JSON text (strings skipped); no parse, no recursion."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: str | bytes, file: str, *, error: type[ChenuError], budget: Budget = DEFAULT_BUDGET) -> Any:
    """One JSON document within `budget`: no duplicate key, no NaN/Infinity, bounded depth; or `error`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > budget.max_bytes:
        raise _refuse(error, file, "(size)", f"at most {budget.max_bytes} bytes (got {len(raw)})")
    depth = json_depth(raw)
    if depth > budget.max_depth:
        raise _refuse(error, file, "(document)", f"JSON nested at most {budget.max_depth} levels (got {depth})")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise _refuse(error, file, str(exc), "a key given once in its object (it repeats)") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _refuse(error, file, "(file)", f"valid JSON ({_first_line(exc)})") from None
