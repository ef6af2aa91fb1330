from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chenu_agents.errors import ProviderError
from chenu_agents.providers import (
    AnthropicProvider,
    Chain,
    OpenAICompatibleProvider,
    ScriptedProvider,
    ToolCall,
    select_provider,
)

TOOLS = [
    {
        "name": "compute_concrete_volume",
        "description": "Volume of a slab",
        "input_schema": {
            "type": "object",
            "properties": {"length_m": {"type": "number"}},
            "required": ["length_m"],
        },
    }
]

ANTHROPIC_TOOL_USE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "Je calcule."},
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "compute_concrete_volume",
            "input": {"length_m": 10},
        },
    ],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 42, "output_tokens": 17},
}

OPENAI_TOOL_CALLS = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "llama3.1:8b",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "compute_concrete_volume",
                            "arguments": '{"length_m": 10}',
                        },
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
}


def openai_text(text: str) -> dict:
    return {
        "model": "llama3.1:8b",
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }


class FakeLLMServer(ThreadingHTTPServer):
    """Answers POSTs from a per-path queue of (status, body); the last answer repeats."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, list[tuple[int, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def answer(self, path: str, *answers: tuple[int, Any]) -> None:
        self.answers[path] = list(answers)


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLMServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        queue = self.server.answers.get(self.path) or [(404, {"error": "no such path"})]
        status, payload = queue.pop(0) if len(queue) > 1 else queue[0]
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server():
    srv = FakeLLMServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Tu es un estimateur."},
        {"role": "user", "content": "Volume de béton pour 10 m ?"},
    ]


def test_anthropic_wire_format_and_tool_use(server: FakeLLMServer) -> None:
    server.answer("/v1/messages", (200, ANTHROPIC_TOOL_USE))
    provider = AnthropicProvider("claude-sonnet-4-5", base_url=server.url, api_key="sk-test")
    completion = provider.complete(conversation(), TOOLS, {"max_tokens": 256, "temperature": 0.2})
    assert completion.text == "Je calcule."
    assert completion.tool_calls == (ToolCall("toolu_1", "compute_concrete_volume", {"length_m": 10}),)
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (42, 17)
    assert (completion.provider, completion.model, completion.stop_reason) == (
        "anthropic",
        "claude-sonnet-4-5",
        "tool_use",
    )
    sent = server.requests[0]
    assert sent["headers"]["x-api-key"] == "sk-test"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"]["system"] == "Tu es un estimateur."
    assert sent["body"]["max_tokens"] == 256 and sent["body"]["temperature"] == 0.2
    assert sent["body"]["messages"] == [{"role": "user", "content": "Volume de béton pour 10 m ?"}]
    assert sent["body"]["tools"][0]["input_schema"]["required"] == ["length_m"]


def test_anthropic_sends_tool_results_back_as_blocks(server: FakeLLMServer) -> None:
    answer = {
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "12 m³"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 60, "output_tokens": 3},
    }
    server.answer("/v1/messages", (200, answer))
    call = ToolCall("toolu_1", "compute_concrete_volume", {"length_m": 10})
    messages = [
        *conversation(),
        {"role": "assistant", "content": "Je calcule.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": call.name, "content": {"volume_m3": 12}},
    ]
    completion = AnthropicProvider("claude-sonnet-4-5", base_url=server.url, api_key="k").complete(messages, TOOLS)
    assert completion.text == "12 m³" and completion.tool_calls == ()
    wire = server.requests[0]["body"]["messages"]
    assert wire[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Je calcule."},
            {"type": "tool_use", "id": "toolu_1", "name": call.name, "input": {"length_m": 10}},
        ],
    }
    assert wire[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"volume_m3": 12}'}],
    }


def test_openai_wire_format_and_tool_calls(server: FakeLLMServer) -> None:
    server.answer("/v1/chat/completions", (200, OPENAI_TOOL_CALLS))
    provider = OpenAICompatibleProvider("llama3.1:8b", base_url=f"{server.url}/v1", api_key="key")
    completion = provider.complete(conversation(), TOOLS, {"temperature": 0})
    assert completion.text == ""
    assert completion.tool_calls == (ToolCall("call_1", "compute_concrete_volume", {"length_m": 10}),)
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (30, 9)
    assert completion.stop_reason == "tool_calls"
    sent = server.requests[0]
    assert sent["headers"]["authorization"] == "Bearer key"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Tu es un estimateur."}
    assert sent["body"]["tools"][0] == {
        "type": "function",
        "function": {
            "name": "compute_concrete_volume",
            "description": "Volume of a slab",
            "parameters": TOOLS[0]["input_schema"],
        },
    }
    call = completion.tool_calls[0]
    server.answer("/v1/chat/completions", (200, openai_text("12 m³")))
    followup = provider.complete(
        [
            *conversation(),
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "name": call.name, "content": {"v": 12}},
        ],
        TOOLS,
    )
    assert followup.text == "12 m³"
    wire = server.requests[1]["body"]["messages"]
    assert wire[2]["tool_calls"][0]["function"] == {
        "name": "compute_concrete_volume",
        "arguments": '{"length_m": 10}',
    }
    assert wire[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"v": 12}'}


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (529, True), (400, False), (401, False)])
def test_http_errors_say_whether_to_retry(server: FakeLLMServer, status: int, retryable: bool) -> None:
    server.answer("/v1/messages", (status, {"error": {"type": "x"}}))
    with pytest.raises(ProviderError) as caught:
        AnthropicProvider("m", base_url=server.url, api_key="k").complete(conversation())
    assert caught.value.status == status
    assert caught.value.retryable is retryable


def test_timeout_is_retryable(server: FakeLLMServer) -> None:
    server.answer("/chat/completions", (200, openai_text("late")))
    server.delay_s = 0.5
    with pytest.raises(ProviderError, match="no answer within") as caught:
        OpenAICompatibleProvider("m", base_url=server.url).complete(conversation(), None, {"timeout_s": 0.1})
    assert caught.value.retryable


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(ProviderError, match="cannot connect") as caught:
        OpenAICompatibleProvider("m", base_url="http://127.0.0.1:9").complete(conversation())
    assert caught.value.retryable


def test_chain_retries_429_then_succeeds(server: FakeLLMServer) -> None:
    server.answer("/chat/completions", (429, {"error": "slow down"}), (200, openai_text("bonjour")))
    pauses: list[float] = []
    chain = Chain(
        OpenAICompatibleProvider("llama3.1:8b", base_url=server.url),
        [ScriptedProvider("fallback", {"default": {"reply": "secours"}})],
        retries=2,
        sleep=pauses.append,
    )
    result = chain.complete(conversation())
    assert result.completion.text == "bonjour"
    assert (result.provider, result.fallbacks_taken, result.attempts) == ("openai/llama3.1:8b", 0, 2)
    assert pauses == [0.25]
    assert "HTTP 429" in result.errors[0]


def test_chain_takes_fallback_when_primary_fails_forever(server: FakeLLMServer) -> None:
    server.answer("/v1/messages", (500, {"error": "boom"}))
    server.answer("/v1/chat/completions", (503, {"error": "down"}))
    pauses: list[float] = []
    chain = Chain(
        AnthropicProvider("claude-sonnet-4-5", base_url=server.url, api_key="k"),
        [
            OpenAICompatibleProvider("llama3.1:8b", base_url=f"{server.url}/v1"),
            ScriptedProvider("estimator", {"default": {"reply": "réponse de secours"}}),
        ],
        retries=2,
        sleep=pauses.append,
    )
    result = chain.complete(conversation())
    assert result.completion.text == "réponse de secours"
    assert (result.provider, result.fallbacks_taken, result.attempts) == ("scripted/estimator", 2, 7)
    assert pauses == [0.25, 0.5, 0.25, 0.5]
    assert sum(r["path"] == "/v1/messages" for r in server.requests) == 3


def test_chain_does_not_retry_a_client_error(server: FakeLLMServer) -> None:
    server.answer("/v1/messages", (401, {"error": "bad key"}))
    chain = Chain(
        AnthropicProvider("m", base_url=server.url, api_key="wrong"),
        [ScriptedProvider("s", {"default": {"reply": "ok"}})],
        sleep=lambda _: None,
    )
    result = chain.complete(conversation())
    assert (result.fallbacks_taken, result.attempts) == (1, 2)


def test_chain_raises_when_everything_fails(server: FakeLLMServer) -> None:
    server.answer("/v1/messages", (500, {}))
    chain = Chain(AnthropicProvider("m", base_url=server.url, api_key="k"), retries=1, sleep=lambda _: None)
    with pytest.raises(ProviderError, match="every provider failed after 2 attempts") as caught:
        chain.complete(conversation())
    assert caught.value.retryable and caught.value.status == 500


def test_chain_per_call_timeout_reaches_the_provider(server: FakeLLMServer) -> None:
    server.answer("/v1/messages", (200, ANTHROPIC_TOOL_USE))
    server.delay_s = 0.5
    chain = Chain(
        AnthropicProvider("m", base_url=server.url, api_key="k"),
        [ScriptedProvider("s", {"default": {"reply": "vite"}})],
        retries=0,
        timeout_s=0.1,
    )
    started = time.perf_counter()
    result = chain.complete(conversation())
    assert result.completion.text == "vite" and result.fallbacks_taken == 1
    assert time.perf_counter() - started < 0.45


SCRIPT = {
    "rules": [
        {
            "match": "(?i)béton|concrete",
            "tool_calls": [{"name": "compute_concrete_volume", "arguments": {"length_m": 10, "width_m": 8}}],
            "reply": "Volume de béton : {{ tool_results.compute_concrete_volume.volume_m3 }} m³",
        },
        {"match": "(?i)bonjour", "reply": "Bonjour ! Vous avez dit : {{ input }}"},
    ],
    "default": {"reply": "Je ne sais pas."},
}


def test_scripted_rules_tool_calls_then_rendered_reply() -> None:
    provider = ScriptedProvider("estimator", SCRIPT)
    messages = [{"role": "user", "content": "Combien de béton ?"}]
    first = provider.complete(messages, TOOLS)
    assert first.text == "" and first.stop_reason == "tool_use"
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("compute_concrete_volume", {"length_m": 10, "width_m": 8})
    ]
    messages += [
        {"role": "assistant", "content": "", "tool_calls": list(first.tool_calls)},
        {
            "role": "tool",
            "tool_call_id": first.tool_calls[0].id,
            "name": "compute_concrete_volume",
            "content": {"volume_m3": 12.0},
        },
    ]
    second = provider.complete(messages, TOOLS)
    assert second.text == "Volume de béton : 12.0 m³"
    assert second.tool_calls == () and second.usage.output_tokens == 6
    assert provider.complete([{"role": "user", "content": "bonjour toi"}]).text == (
        "Bonjour ! Vous avez dit : bonjour toi"
    )
    assert provider.complete([{"role": "user", "content": "autre"}]).text == "Je ne sais pas."


def test_scripted_matches_only_the_latest_user_message() -> None:
    provider = ScriptedProvider("s", SCRIPT)
    messages = [
        {"role": "user", "content": "bonjour"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "et ensuite ?"},
    ]
    assert provider.complete(messages).text == "Je ne sais pas."


def test_scripted_reply_template_is_sandboxed() -> None:
    script = {"default": {"reply": "{{ input.__class__.__mro__[1].__subclasses__() }}"}}
    with pytest.raises(ProviderError, match="reply template"):
        ScriptedProvider("s", script).complete([{"role": "user", "content": "x"}])


def test_scripted_is_deterministic() -> None:
    runs = [ScriptedProvider("s", SCRIPT).complete([{"role": "user", "content": "bonjour"}]) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("rule", "where"),
    [({"match": "(", "reply": ""}, r"rules\[0\]\.match"), ({"match": "x", "reply": "{{"}, r"rules\[0\]\.reply")],
)
def test_scripted_bad_rule_is_refused_at_load(rule: dict, where: str) -> None:
    with pytest.raises(ProviderError, match=where):
        ScriptedProvider("s", {"rules": [rule]})


def test_scripted_loads_from_yaml_file(tmp_path) -> None:
    path = tmp_path / "scripted.yaml"
    path.write_text("rules:\n  - match: hi\n    reply: hello\ndefault: {reply: '?'}\n", encoding="utf-8")
    assert ScriptedProvider("s", path).complete([{"role": "user", "content": "hi"}]).text == "hello"


def fault_outcomes(seed: int, rate: float, calls: int = 1000) -> list[bool]:
    script = {"default": {"reply": "ok"}, "fault_profile": {"error_rate": rate, "added_latency_ms": 0}}
    provider = ScriptedProvider("s", script, seed=seed)
    outcomes = []
    for _ in range(calls):
        try:
            provider.complete([{"role": "user", "content": "x"}])
            outcomes.append(True)
        except ProviderError as exc:
            assert exc.retryable and exc.status == 503
            outcomes.append(False)
    return outcomes


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_fault_profile_rate_is_seeded_and_within_tolerance(rate: float) -> None:
    outcomes = fault_outcomes(seed=7, rate=rate)
    failures = outcomes.count(False) / len(outcomes)
    assert abs(failures - rate) < 0.04
    assert fault_outcomes(seed=7, rate=rate) == outcomes
    assert fault_outcomes(seed=8, rate=rate) != outcomes


def test_fault_profile_latency_and_timeout() -> None:
    slept: list[float] = []
    script = {"default": {"reply": "ok"}, "fault_profile": {"added_latency_ms": 250}}
    provider = ScriptedProvider("s", script, sleep=slept.append)
    assert provider.complete([{"role": "user", "content": "x"}]).text == "ok"
    with pytest.raises(ProviderError, match="no answer within") as caught:
        provider.complete([{"role": "user", "content": "x"}], None, {"timeout_s": 0.1})
    assert caught.value.retryable
    assert slept == [0.25, 0.1]


def test_a_faulty_scripted_primary_falls_back() -> None:
    bad = ScriptedProvider("bad", {"default": {"reply": "x"}, "fault_profile": {"error_rate": 1.0}})
    good = ScriptedProvider("good", {"default": {"reply": "stable"}})
    result = Chain(bad, [good], retries=1, sleep=lambda _: None).complete([{"role": "user", "content": "x"}])
    assert (result.completion.text, result.fallbacks_taken, result.attempts) == ("stable", 1, 3)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("anthropic/claude-sonnet-4-5", AnthropicProvider),
        ("openai/llama3.1:8b", OpenAICompatibleProvider),
        ("scripted/legal_info", ScriptedProvider),
    ],
)
def test_select_provider_by_prefix(spec: str, kind: type) -> None:
    provider = select_provider(spec, scripted=SCRIPT, base_urls={"openai": "http://127.0.0.1:1/v1"})
    assert isinstance(provider, kind)
    assert provider.spec == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gemini/pro", "unknown provider"), ("anthropic", "expected <provider>/<model>"), ("scripted/x", "scripted.yaml")],
)
def test_select_provider_refuses(spec: str, message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        select_provider(spec)


def test_chain_from_agent_config() -> None:
    llm = {
        "primary": "anthropic/claude-sonnet-4-5",
        "fallback": ["openai/llama3.1:8b", "scripted/legal_info"],
        "parameters": {"temperature": 0.2, "max_tokens": 1024, "timeout_s": 12, "retries": 1},
    }
    chain = Chain.from_config(llm, scripted=SCRIPT)
    assert [p.spec for p in chain.providers] == [
        "anthropic/claude-sonnet-4-5",
        "openai/llama3.1:8b",
        "scripted/legal_info",
    ]
    assert (chain.retries, chain.timeout_s) == (1, 12.0)


def test_every_provider_call_is_reported_with_its_outcome_and_time() -> None:
    """on_call hears of each attempt, retries and fallbacks included: the runtime's per-provider metrics."""
    bad = ScriptedProvider("bad", {"default": {"reply": "x"}, "fault_profile": {"error_rate": 1.0}})
    slow = ScriptedProvider("slow", {"default": {"reply": "late"}, "fault_profile": {"added_latency_ms": 20}})
    calls: list[tuple[str, bool, float]] = []
    result = Chain(bad, [slow], retries=1, sleep=lambda _: None).complete(
        [{"role": "user", "content": "x"}], on_call=lambda *call: calls.append(call)
    )
    assert result.provider == "scripted/slow"
    assert [(spec, ok) for spec, ok, _s in calls] == [("scripted/bad", False)] * 2 + [("scripted/slow", True)]
    assert calls[-1][2] >= 0.02 and all(s < 0.02 for _spec, _ok, s in calls[:2])
    calls.clear()
    with pytest.raises(ProviderError):
        Chain(bad, retries=0).complete([{"role": "user", "content": "x"}], on_call=lambda *call: calls.append(call))
    assert [(spec, ok) for spec, ok, _s in calls] == [("scripted/bad", False)]
