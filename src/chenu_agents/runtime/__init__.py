"""The agent runtime: one process serves one verified agent version in one slot.

    python -m chenu_agents.runtime --config /etc/chenu/runtime/legal_info-blue.yaml

See `config.RuntimeConfig` for the settings, `app` for the HTTP API and `agent` for how a bundle is
verified and loaded.
"""

from __future__ import annotations

from .agent import LoadedAgent, TaskResult, ToolCallRecord, load_agent
from .app import Runtime, create_app
from .config import LifecycleState, RuntimeConfig, Tokens, hash_token

__all__ = [
    "LifecycleState",
    "LoadedAgent",
    "Runtime",
    "RuntimeConfig",
    "TaskResult",
    "Tokens",
    "ToolCallRecord",
    "create_app",
    "hash_token",
    "load_agent",
]
