"""Shared fixtures: paths, and a factory for small agent folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "agents"

CONFIG = {
    "agent": {
        "id": "sample_agent",
        "name": "Sample agent",
        "version": "1.0.0",
        "type": "analyzer",
        "level": 2,
        "department": "estimation",
        "llm": {
            "primary": "anthropic/claude-sonnet-4-5",
            "fallback": ["scripted/sample_agent"],
            "parameters": {"temperature": 0.2, "max_tokens": 512},
        },
        "capabilities": ["area_calculation"],
        "constraints": ["metric_units"],
        "dependencies": {"agents": [], "apis": []},
        "metadata": {"author": "tests", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z"},
    }
}
TOOLS = {
    "tools": [
        {
            "name": "area",
            "description": "Area of a rectangle",
            "handler": "handlers/area.py",
            "input_schema": {"type": "object", "properties": {"w": {"type": "number"}, "h": {"type": "number"}}},
        }
    ]
}
HANDLER = "import math\n\n\ndef handle(args):\n    return {'area': math.prod([args['w'], args['h']])}\n"


def write_agent(root: Path, agent_id: str = "sample_agent", files: dict[str, str | bytes] | None = None) -> Path:
    folder = root / agent_id
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["agent"]["id"] = agent_id
    base: dict[str, str | bytes] = {
        "config.yaml": yaml.safe_dump(config, sort_keys=False),
        "prompts/system.md": "You compute areas of rooms in square metres.\n",
        "prompts/templates/answer.j2": "Area: {{ area }} m2\n",
        "tools/definitions.yaml": yaml.safe_dump(TOOLS, sort_keys=False),
        "tools/handlers/area.py": HANDLER,
        "docs/README.md": "# Sample\n",
    }
    base.update(files or {})
    for rel, content in base.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return write_agent(tmp_path / "src")
