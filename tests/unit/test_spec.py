from __future__ import annotations

import pytest

from chenu_agents.errors import SpecError
from chenu_agents.spec import load_agent
from tests.conftest import write_agent


def test_valid_agent_loads(agent_dir):
    spec = load_agent(agent_dir)
    assert (spec.id, spec.version) == ("sample_agent", "1.0.0")
    assert [t.name for t in spec.tools] == ["area"]
    assert spec.tools[0].permissions == {"filesystem": "none", "network": "none", "env": []}


def test_all_errors_of_a_file_at_once_with_file_line_field(tmp_path):
    config = """\
agent:
  id: sample_agent
  name: Sample
  version: 1.0
  type: wizard
  level: 7
  department: estimation
  llm:
    primary: gpt4
  capabilities: []
  constraints: []
  dependencies: {}
  metadata: {author: me, created_at: 2026-01-01T00:00:00Z, updated_at: 2026-01-02}
"""
    folder = write_agent(tmp_path, files={"config.yaml": config})
    with pytest.raises(SpecError) as info:
        load_agent(folder)
    found = {(p.file, p.field, p.line) for p in info.value.problems}
    assert ("config.yaml", "agent.version", 4) in found
    assert ("config.yaml", "agent.type", 5) in found
    assert ("config.yaml", "agent.level", 6) in found
    assert ("config.yaml", "agent.llm.primary", 9) in found
    by_field = {p.field: p.expected for p in info.value.problems}
    assert "semantic version string" in by_field["agent.version"]
    assert "got float 1.0" in by_field["agent.version"]
    assert "guardian" in by_field["agent.type"]
    assert "config.yaml:5: agent.type" in str(info.value)


def test_missing_required_field_is_named(tmp_path):
    folder = write_agent(tmp_path, files={"config.yaml": "agent:\n  id: sample_agent\n"})
    with pytest.raises(SpecError) as info:
        load_agent(folder)
    fields = {p.field for p in info.value.problems}
    assert {"agent.name", "agent.version", "agent.llm", "agent.metadata"} <= fields
    assert all(p.expected == "required field is missing" for p in info.value.problems)


def test_id_must_match_folder(tmp_path):
    folder = write_agent(tmp_path, agent_id="other_name")
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("other_name", "sample_agent"))
    with pytest.raises(SpecError, match="folder name 'other_name'"):
        load_agent(folder)


def test_tool_errors_reported_with_config_errors(tmp_path):
    tools = """\
tools:
  - name: area
    description: a
    handler: handlers/missing.py
    input_schema: {type: object, properties: {w: {type: nonsense}}}
  - name: area
    description: b
    handler: handlers/area.py
    input_schema: {type: object}
"""
    folder = write_agent(tmp_path, files={"tools/definitions.yaml": tools})
    with pytest.raises(SpecError) as info:
        load_agent(folder)
    found = {(p.file, p.field, p.line) for p in info.value.problems}
    assert ("tools/definitions.yaml", "tools[0].handler", 4) in found
    assert ("tools/definitions.yaml", "tools[0].input_schema", 5) in found
    assert ("tools/definitions.yaml", "tools[1].name", 6) in found


def test_handler_outside_tools_refused(tmp_path):
    tools = (
        "tools:\n  - {name: area, description: a, handler: handlers/../../config.py, input_schema: {type: object}}\n"
    )
    folder = write_agent(tmp_path, files={"tools/definitions.yaml": tools, "config.py": "x = 1\n"})
    with pytest.raises(SpecError, match="handler"):
        load_agent(folder)


def test_invalid_yaml_names_line(tmp_path):
    folder = write_agent(tmp_path, files={"config.yaml": "agent:\n  id: [unclosed\n"})
    with pytest.raises(SpecError) as info:
        load_agent(folder)
    assert info.value.problems[0].file == "config.yaml"
    assert info.value.problems[0].line is not None


def test_missing_config(tmp_path):
    folder = write_agent(tmp_path)
    (folder / "config.yaml").unlink()
    with pytest.raises(SpecError, match=r"config\.yaml is missing"):
        load_agent(folder)
