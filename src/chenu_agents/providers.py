"""LLM providers behind one interface, and the chain that tries them in order.

Messages use one neutral shape, translated to each wire format:

    {"role": "system" | "user", "content": str}
    {"role": "assistant", "content": str, "tool_calls": [ToolCall, ...]}
    {"role": "tool", "tool_call_id": str, "name": str, "content": dict | str}

Tools are the entries of tools/definitions.yaml: {name, description, input_schema}.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from chenu_agents.errors import ProviderError

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OPENAI_URL = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
RETRYABLE_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    provider: str = ""
    model: str = ""
    stop_reason: str | None = None


class Provider(ABC):
    name: str = ""

    def __init__(self, model: str):
        self.model = model

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.model}"

    @abstractmethod
    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Completion: ...


def _tool_content(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


class _HTTPProvider(Provider):
    # Each wire format names where its server and key come from when the caller gives none.
    default_url: str
    url_env: str
    key_env: str

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        session: requests.Session | None = None,
    ):
        super().__init__(model)
        self.base_url = (base_url or os.environ.get(self.url_env, self.default_url)).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(self.key_env)
        self.session = session or requests.Session()

    def _post(self, url: str, body: dict, headers: dict, timeout_s: float) -> dict:
        try:
            response = self.session.post(url, json=body, headers=headers, timeout=timeout_s)
        except requests.Timeout as exc:
            raise ProviderError(
                f"{self.spec}: no answer within {timeout_s} s", retryable=True, provider=self.spec
            ) from exc
        except requests.ConnectionError as exc:
            raise ProviderError(
                f"{self.spec}: cannot connect to {url}: {exc}", retryable=True, provider=self.spec
            ) from exc
        if response.status_code >= 400:
            raise ProviderError(
                f"{self.spec}: HTTP {response.status_code}: {response.text[:300]}",
                retryable=response.status_code in RETRYABLE_STATUS,
                status=response.status_code,
                provider=self.spec,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.spec}: answer is not JSON", retryable=True, provider=self.spec) from exc


class AnthropicProvider(_HTTPProvider):
    """Anthropic Messages API (POST /v1/messages) with tool_use / tool_result blocks."""

    name = "anthropic"
    default_url = DEFAULT_ANTHROPIC_URL
    url_env = "ANTHROPIC_BASE_URL"
    key_env = "ANTHROPIC_API_KEY"

    def request_body(self, messages: list[dict], tools: list[dict] | None, parameters: dict) -> dict[str, Any]:
        system = [m["content"] for m in messages if m["role"] == "system"]
        wire: list[dict[str, Any]] = []
        for message in messages:
            role = message["role"]
            if role == "system":
                continue
            if role == "tool":
                block = {
                    "type": "tool_result",
                    "tool_use_id": message["tool_call_id"],
                    "content": _tool_content(message["content"]),
                }
                # Consecutive tool results travel together in one user turn.
                if wire and wire[-1]["role"] == "user" and isinstance(wire[-1]["content"], list):
                    wire[-1]["content"].append(block)
                else:
                    wire.append({"role": "user", "content": [block]})
            elif role == "assistant" and message.get("tool_calls"):
                blocks: list[dict[str, Any]] = []
                if message.get("content"):
                    blocks.append({"type": "text", "text": message["content"]})
                blocks += [
                    {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                    for c in message["tool_calls"]
                ]
                wire.append({"role": "assistant", "content": blocks})
            else:
                wire.append({"role": role, "content": message["content"]})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(parameters.get("max_tokens", 1024)),
            "messages": wire,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if "temperature" in parameters:
            body["temperature"] = parameters["temperature"]
        if tools:
            body["tools"] = [
                {"name": t["name"], "description": t.get("description", ""), "input_schema": t["input_schema"]}
                for t in tools
            ]
        return body

    def complete(self, messages, tools=None, parameters=None) -> Completion:
        parameters = parameters or {}
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        data = self._post(
            f"{self.base_url}/v1/messages",
            self.request_body(messages, tools, parameters),
            headers,
            float(parameters.get("timeout_s", 30)),
        )
        try:
            blocks = data["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            calls = tuple(
                ToolCall(b["id"], b["name"], dict(b.get("input") or {})) for b in blocks if b.get("type") == "tool_use"
            )
            usage = data.get("usage") or {}
        except (KeyError, TypeError) as exc:
            raise ProviderError(f"{self.spec}: unexpected answer shape: {exc}", provider=self.spec) from exc
        return Completion(
            text=text,
            tool_calls=calls,
            usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            provider=self.name,
            model=data.get("model", self.model),
            stop_reason=data.get("stop_reason"),
        )


class OpenAICompatibleProvider(_HTTPProvider):
    """OpenAI chat completions (POST {base_url}/chat/completions): Ollama, vLLM, LiteLLM, OpenAI."""

    name = "openai"
    default_url = DEFAULT_OPENAI_URL
    url_env = "OPENAI_BASE_URL"
    key_env = "OPENAI_API_KEY"

    def request_body(self, messages: list[dict], tools: list[dict] | None, parameters: dict) -> dict[str, Any]:
        wire: list[dict[str, Any]] = []
        for message in messages:
            role = message["role"]
            if role == "tool":
                wire.append(
                    {
                        "role": "tool",
                        "tool_call_id": message["tool_call_id"],
                        "content": _tool_content(message["content"]),
                    }
                )
            elif role == "assistant" and message.get("tool_calls"):
                wire.append(
                    {
                        "role": "assistant",
                        "content": message.get("content") or None,
                        "tool_calls": [
                            {
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                            }
                            for c in message["tool_calls"]
                        ],
                    }
                )
            else:
                wire.append({"role": role, "content": message["content"]})
        body: dict[str, Any] = {"model": self.model, "messages": wire}
        for key in ("temperature", "max_tokens"):
            if key in parameters:
                body[key] = parameters[key]
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t["input_schema"],
                    },
                }
                for t in tools
            ]
        return body

    def complete(self, messages, tools=None, parameters=None) -> Completion:
        parameters = parameters or {}
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        data = self._post(
            f"{self.base_url}/chat/completions",
            self.request_body(messages, tools, parameters),
            headers,
            float(parameters.get("timeout_s", 30)),
        )
        try:
            choice = data["choices"][0]
            message = choice["message"]
            calls = []
            for call in message.get("tool_calls") or []:
                arguments = call["function"].get("arguments") or "{}"
                calls.append(
                    ToolCall(
                        call.get("id", ""),
                        call["function"]["name"],
                        json.loads(arguments) if isinstance(arguments, str) else dict(arguments),
                    )
                )
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProviderError(f"{self.spec}: unexpected answer shape: {exc}", provider=self.spec) from exc
        return Completion(
            text=message.get("content") or "",
            tool_calls=tuple(calls),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            provider=self.name,
            model=data.get("model", self.model),
            stop_reason=choice.get("finish_reason"),
        )


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str] | None
    reply: Template
    tool_calls: tuple[dict[str, Any], ...] = ()


class ScriptedProvider(Provider):
    """Deterministic answers from an agent's tests/scripted.yaml (see docs/agent_format.md)."""

    name = "scripted"
    _env = SandboxedEnvironment(autoescape=False)

    def __init__(
        self,
        model: str,
        script: dict[str, Any] | str | Path,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(model)
        if isinstance(script, (str, Path)):
            with open(script, encoding="utf-8") as handle:
                script = yaml.safe_load(handle) or {}
        self.rules = tuple(self._rule(r, f"rules[{i}]") for i, r in enumerate(script.get("rules") or []))
        self.default = self._rule(script.get("default") or {"reply": ""}, "default", needs_match=False)
        profile = script.get("fault_profile") or {}
        self.error_rate = float(profile.get("error_rate", 0.0))
        self.added_latency_ms = float(profile.get("added_latency_ms", 0))
        self._rng = random.Random(profile.get("seed", seed))  # noqa: S311 (fault drills, not secrets)
        self._lock = threading.Lock()
        self._sleep = sleep
        self.calls = 0

    def _rule(self, data: dict[str, Any], where: str, needs_match: bool = True) -> _Rule:
        pattern = None
        if needs_match:
            try:
                pattern = re.compile(data["match"])
            except (KeyError, TypeError, re.error) as exc:
                raise ProviderError(f"scripted.yaml: {where}.match: a Python regex ({exc})") from exc
        calls = tuple(data.get("tool_calls") or ())
        try:
            reply = self._env.from_string(str(data.get("reply", "")))
        except TemplateError as exc:
            raise ProviderError(f"scripted.yaml: {where}.reply: a Jinja2 template ({exc})") from exc
        return _Rule(pattern, reply, calls)

    def complete(self, messages, tools=None, parameters=None) -> Completion:
        parameters = parameters or {}
        with self._lock:
            self.calls += 1
            fail = self.error_rate > 0 and self._rng.random() < self.error_rate
        if self.added_latency_ms:
            timeout_s = float(parameters.get("timeout_s", 30))
            if self.added_latency_ms / 1000 > timeout_s:
                self._sleep(timeout_s)
                raise ProviderError(f"{self.spec}: no answer within {timeout_s} s", retryable=True, provider=self.spec)
            self._sleep(self.added_latency_ms / 1000)
        if fail:
            raise ProviderError(
                f"{self.spec}: injected fault (error_rate {self.error_rate})",
                retryable=True,
                status=503,
                provider=self.spec,
            )

        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        prompt = messages[last_user]["content"] if last_user >= 0 else ""
        rule = next((r for r in self.rules if r.pattern and r.pattern.search(prompt)), self.default)
        results = {m.get("name", ""): m["content"] for m in messages[last_user + 1 :] if m["role"] == "tool"}
        input_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        if rule.tool_calls and not results:
            calls = tuple(
                ToolCall(f"call_{self.calls}_{i}", c["name"], dict(c.get("arguments") or {}))
                for i, c in enumerate(rule.tool_calls)
            )
            return Completion("", calls, Usage(input_tokens, 0), self.name, self.model, stop_reason="tool_use")
        try:
            text = rule.reply.render(tool_results=results, input=prompt)
        except TemplateError as exc:
            raise ProviderError(f"{self.spec}: reply template: {exc}", provider=self.spec) from exc
        return Completion(
            text, (), Usage(input_tokens, len(text.split())), self.name, self.model, stop_reason="end_turn"
        )


def select_provider(
    spec: str,
    *,
    scripted: dict[str, Any] | str | Path | None = None,
    base_urls: dict[str, str] | None = None,
    api_keys: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> Provider:
    """A provider for "<provider>/<model>" (config.yaml's llm.primary and llm.fallback entries)."""
    prefix, _sep, model = spec.partition("/")
    if not model:
        raise ProviderError(f"{spec!r}: expected <provider>/<model>")
    base_urls, api_keys = base_urls or {}, api_keys or {}
    if prefix == "anthropic":
        return AnthropicProvider(model, base_urls.get(prefix), api_keys.get(prefix), session)
    if prefix == "openai":
        return OpenAICompatibleProvider(model, base_urls.get(prefix), api_keys.get(prefix), session)
    if prefix == "scripted":
        if scripted is None:
            raise ProviderError(f"{spec!r}: the scripted provider needs the agent's tests/scripted.yaml")
        return ScriptedProvider(model, scripted)
    raise ProviderError(f"{spec!r}: unknown provider {prefix!r} (anthropic, openai, scripted)")


@dataclass(frozen=True)
class ChainResult:
    completion: Completion
    provider: str  # the spec that answered
    fallbacks_taken: int
    attempts: int
    errors: tuple[str, ...] = ()


class Chain:
    """Primary then fallbacks, each with retries and exponential backoff on retryable errors."""

    def __init__(
        self,
        primary: Provider,
        fallbacks: list[Provider] | tuple[Provider, ...] = (),
        *,
        retries: int = 2,
        timeout_s: float = 30.0,
        backoff_s: float = 0.25,
        backoff_max_s: float = 4.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.providers = (primary, *fallbacks)
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep

    @classmethod
    def from_config(cls, llm: dict[str, Any], **select: Any) -> Chain:
        """From config.yaml's `agent.llm` block; `select` goes to select_provider."""
        parameters = llm.get("parameters") or {}
        fallbacks = llm.get("fallback") or []
        if isinstance(fallbacks, str):
            fallbacks = [fallbacks]
        return cls(
            select_provider(llm["primary"], **select),
            [select_provider(spec, **select) for spec in fallbacks],
            retries=int(parameters.get("retries", 2)),
            timeout_s=float(parameters.get("timeout_s", 30)),
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        parameters: dict[str, Any] | None = None,
        on_call: Callable[[str, bool, float], None] | None = None,
    ) -> ChainResult:
        """The first answer of the chain; `on_call(provider spec, ok, seconds)` hears of every call made,
        retries and fallbacks included (the runtime's per-provider metrics)."""
        parameters = {"timeout_s": self.timeout_s, **(parameters or {})}
        errors: list[str] = []
        attempts = 0
        last: ProviderError | None = None
        for position, provider in enumerate(self.providers):
            for retry in range(self.retries + 1):
                attempts += 1
                started = time.perf_counter()
                try:
                    completion = provider.complete(messages, tools, parameters)
                except ProviderError as exc:
                    if on_call is not None:
                        on_call(provider.spec, False, time.perf_counter() - started)
                    last = exc
                    errors.append(str(exc))
                    if not exc.retryable or retry == self.retries:
                        break
                    self._sleep(min(self.backoff_max_s, self.backoff_s * 2**retry))
                    continue
                if on_call is not None:
                    on_call(provider.spec, True, time.perf_counter() - started)
                return ChainResult(completion, provider.spec, position, attempts, tuple(errors))
        raise ProviderError(
            f"every provider failed after {attempts} attempts: " + " | ".join(errors[-len(self.providers) :]),
            retryable=bool(last and last.retryable),
            status=last.status if last else None,
            provider=last.provider if last else None,
        )
