"""Issue 13, classes 1, 4, 5 and 9: YAML and JSON read within bounds, agent names checked where they enter,
messages that say what is expected. Each hostile input is refused with the package's own error, naming
the file, the field and the expectation, before anything is built from it."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml

from chenu_agents import safeload, spec
from chenu_agents.errors import BundleError, RuntimeConfigError, SpecError, VerificationError
from chenu_agents.runtime.config import RuntimeConfig
from tests.conftest import CONFIG, write_agent


def _bomb(levels: int = 9, width: int = 9) -> str:
    """Nested anchors: `levels` levels of `width` aliases each, width**levels leaves once expanded."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _config_with_bomb() -> str:
    # metadata accepts extra keys, so the bomb passes the schema; the document is about 1.4 KB
    config = yaml.safe_dump(CONFIG, sort_keys=False)
    bomb = _bomb().replace("\n", "\n    ")
    return config.replace("  metadata:\n", "  metadata:\n    " + bomb + "\n    lols: *l8\n", 1)


def test_the_alias_bomb_is_small_and_real():
    text = _config_with_bomb()
    assert len(text.encode()) < 2048
    # the leaves it stands for, counted without building them: 9**9
    assert 9**9 > 300_000_000


def test_alias_bomb_in_config_refused_within_time_and_memory(tmp_path):
    folder = write_agent(tmp_path, files={"config.yaml": _config_with_bomb()})
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            spec.load_agent(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5
    assert peak < 32 * 1024 * 1024
    problem = info.value.problems[0]
    assert problem.file == "config.yaml"
    assert "aliases are expanded" in problem.expected
    assert problem.line is not None


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("a: &a [*a]\n", "(document)", "no recursive alias"),
        ("a: 1\nb: 2\na: 3\n", "a", "a key given once"),
        ("agent:\n  id: x\n  id: y\n", "agent.id", "a key given once"),
        ("[" * 100 + "]" * 100, "(document)", "nesting of at most"),
        ("x: " + "y" * (1024 * 1024), "(size)", "at most 1048576 bytes"),
        ("a: [unclosed\n", "(file)", "valid YAML"),
        (b"a: \xff\n", "(file)", "UTF-8 text"),
        ("a: !!python/object/apply:os.system [echo]\n", "(file)", "valid YAML"),
    ],
    ids=["recursive alias", "duplicate key", "nested duplicate key", "depth", "bytes", "syntax", "utf-8", "tag"],
)
def test_yaml_refusals_name_file_field_expectation(text, field, expected):
    with pytest.raises(SpecError) as info:
        safeload.load_yaml(text, "f.yaml", error=SpecError)
    problem = info.value.problems[0]
    assert (problem.file, problem.field) == ("f.yaml", field)
    assert expected in problem.expected


def test_a_large_flat_document_stops_at_the_node_budget():
    text = "x:\n" + "- 1\n" * 250_000  # 1 MB, 250 000 nodes, no alias
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        safeload.load_yaml(text, "f.yaml", error=SpecError)
    assert time.perf_counter() - started < 10  # composing stops at 20 000 nodes (about 1 s here)
    assert info.value.problems[0].expected == "at most 20000 nodes"


def test_yaml_anchors_within_the_budget_still_work():
    data, node = safeload.load_yaml("base: &b {x: 1}\nuse: *b\nmerged: {<<: *b, y: 2}\n", "f", error=SpecError)
    assert data == {"base": {"x": 1}, "use": {"x": 1}, "merged": {"x": 1, "y": 2}}
    assert node is not None


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        (b'{"a": 1, "a": 2}', "a", "a key given once"),
        (b"[" * 65 + b"]" * 65, "(document)", "nested at most 64"),
        (b'{"x": NaN}', "(file)", "valid JSON"),
        (b'{"x": "\\"[[[[[[["}', None, None),  # brackets inside strings are not nesting
        (b"{nope", "(file)", "valid JSON"),
        (b'"' + b'\\"' * 50_000, "(file)", "valid JSON"),  # an unterminated string: one pass, no blow-up
    ],
    ids=["duplicate", "depth", "nan", "brackets in strings", "syntax", "unterminated"],
)
def test_json_refusals(data, field, expected):
    if field is None:
        assert safeload.load_json(data, "f.json", error=VerificationError) == {"x": '"[[[[[[['}
        return
    started = time.perf_counter()
    with pytest.raises(VerificationError) as info:
        safeload.load_json(data, "f.json", error=VerificationError)
    assert time.perf_counter() - started < 1
    problem = info.value.problems[0]
    assert (problem.file, problem.field) == ("f.json", field)
    assert expected in problem.expected


def test_runtime_config_refuses_an_alias_bomb(tmp_path):
    path = tmp_path / "runtime.yaml"
    path.write_text("bundle: /b\ntrust_store: /t\naccepted_versions: /a\nslot: blue\n" + _bomb())
    with pytest.raises(RuntimeConfigError) as info:
        RuntimeConfig.load(path, environ={})
    assert info.value.problems[0].file == str(path)
    assert "aliases are expanded" in info.value.problems[0].expected


def test_runtime_bundle_yaml_is_bounded():
    from chenu_agents.runtime.agent import _yaml

    with pytest.raises(BundleError, match=r"tests/scripted\.yaml"):
        _yaml({"tests/scripted.yaml": _bomb().encode()}, "tests/scripted.yaml")


# --- agent names: one pattern, everywhere ----------------------------------------------------------------

HOSTILE_NAMES = ["../../etc", "abc\n", "\u0430bc", "ab", "Abc", "abc/def", "abc\x00", "a" * 65, "", "x y z"]


def test_the_schema_and_the_code_hold_the_same_pattern():
    assert spec.schema("agent_config")["$defs"]["agent_name"]["pattern"] == safeload.AGENT_NAME.pattern


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_refused(name):
    assert not safeload.is_agent_name(name)
    with pytest.raises(SpecError) as info:
        safeload.check_agent_name(name, file="f", field="agent", error=SpecError)
    assert "an agent name" in info.value.problems[0].expected


def test_config_id_with_trailing_newline_refused_although_the_schema_pattern_searches(tmp_path):
    # JSON Schema's pattern uses search, and Python's `$` matches before a final newline
    folder = write_agent(tmp_path, agent_id="abc\n")
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("id: 'abc\n\n'", 'id: "abc\\n"'))
    data = yaml.safe_load(config.read_text())
    assert data["agent"]["id"] == "abc\n"
    with pytest.raises(SpecError) as info:
        spec.load_agent(folder)
    assert any(p.field == "agent.id" and "an agent name" in p.expected for p in info.value.problems)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2", "semantic version string such as"),
        ("1.2.0\n", "without spaces or line breaks"),
        ("v1", "semantic version string such as"),
    ],
)
def test_version_messages_say_a_semver_string_is_expected(tmp_path, value, expected):
    folder = write_agent(tmp_path)
    config = folder / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["agent"]["version"] = float(value) if value == "1.2" else value
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        spec.load_agent(folder)
    by_field = {p.field: p.expected for p in info.value.problems}
    assert expected in by_field["agent.version"]
