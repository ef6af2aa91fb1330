from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from chenu_agents import bundle
from chenu_agents.errors import RollbackRefused, RuntimeConfigError, TamperedBundle
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.runtime import Runtime, RuntimeConfig, Tokens, create_app, hash_token
from chenu_agents.runtime.config import StateFile
from chenu_agents.sandbox import Sandbox, default_cache_dir
from chenu_agents.signing import sign_bundle

from ..conftest import EXAMPLES, REPO

DISCLAIMER = "pas de conseil juridique"
TOKENS = {"caller": "tok-caller-1", "tester": "tok-tester-1", "operator": "tok-operator-1", "admin": "tok-admin-1"}


@dataclass(frozen=True)
class Signed:
    bundle: Path
    signature: Path
    agent: str
    version: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A key store, its trust store, a tokens file and signed bundles of the example agents."""
    root = tmp_path_factory.mktemp("runtime")
    store = FileKeyStore(root / "keys")
    store.ensure_key()
    trust = root / "trust.json"
    store.trust_store().save(trust)
    tokens = root / "tokens.yaml"
    tokens.write_text(
        json.dumps({"tokens": [{"name": role, "role": role, "sha256": hash_token(t)} for role, t in TOKENS.items()]})
    )

    def signed(agent: str, version: str | None = None, latency_ms: int = 0) -> Signed:
        src = root / "src" / f"{agent}-{version}-{latency_ms}" / agent
        shutil.copytree(EXAMPLES / agent, src)
        config = src / "config.yaml"
        text = config.read_text()
        current = text.split("version:", 1)[1].split()[0]
        version = version or current
        config.write_text(text.replace(f"version: {current}", f"version: {version}", 1))
        if latency_ms:
            scripted = src / "tests" / "scripted.yaml"
            scripted.write_text(scripted.read_text().replace("added_latency_ms: 0", f"added_latency_ms: {latency_ms}"))
        built = bundle.build(src, level=3)
        path = root / "bundles" / f"{agent}-{version}-{latency_ms}.tar.zst"
        write_if_changed(path, built.data)
        sign_bundle(path, store, agent=agent, version=version)
        return Signed(path, Path(f"{path}.sig"), agent, version)

    return {
        "trust": trust,
        "tokens": tokens,
        "legal": signed("legal_info"),
        "legal_slow": signed("legal_info", latency_ms=1500),
        "legal_next": signed("legal_info", "1.3.0"),
        "takeoff": signed("takeoff"),
    }


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(cache_dir=default_cache_dir()) as box:
        yield box


def install(tmp_path: Path, signed: Signed) -> Path:
    """Copy a signed bundle into a slot path, as a deployment does."""
    slot = tmp_path / "slot"
    slot.mkdir(exist_ok=True)
    shutil.copyfile(signed.bundle, slot / "agent.tar.zst")
    shutil.copyfile(signed.signature, slot / "agent.tar.zst.sig")
    return slot / "agent.tar.zst"


def make_config(tmp_path: Path, world: dict, signed: Signed, **overrides) -> RuntimeConfig:
    values = {
        "bundle": install(tmp_path, signed),
        "trust_store": world["trust"],
        "accepted_versions": tmp_path / "accepted.json",
        "slot": "blue",
        "tokens_file": world["tokens"],
        "state_file": tmp_path / "state.json",
        "work_dir": tmp_path / "work",
        "llm_chain": (f"scripted/{signed.agent}",),
        "health_cache_s": 0,
        **overrides,
    }
    return RuntimeConfig(**values)


class Served:
    """The app on 127.0.0.1, an ephemeral port, its own event loop in a thread."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def up() -> tuple[web.AppRunner, int]:
            runner = web.AppRunner(create_app(runtime), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, runner.addresses[0][1]

        self.runner, self.port = asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()

    def post(self, path: str, body: dict | None = None, role: str | None = "caller", **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
        return self.http.post(self.url + path, json=body, headers=headers, timeout=30, **kw)

    def get(self, path: str, role: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
        return self.http.get(self.url + path, headers=headers, timeout=30)

    def metric(self, name: str, **labels: str) -> float | None:
        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def serve(sandbox: Sandbox):
    started: list[Served] = []

    def start(config: RuntimeConfig) -> Served:
        served = Served(Runtime.start(config, sandbox=sandbox))
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


def test_task_answered_with_the_disclaimer(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    answer = srv.post(
        "/v1/tasks", {"input": "Comment vérifier la licence RBQ de mon entrepreneur?", "session_id": "s-1"}
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert DISCLAIMER in data["output"]
    assert (data["agent"], data["version"], data["slot"]) == ("legal_info", "1.2.0", "blue")
    assert data["provider"] == "scripted/legal_info" and data["fallbacks"] == 0
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0
    assert [c["name"] for c in data["tool_calls"]] == ["lookup_legal_topic"]
    assert data["tool_calls"][0]["ok"] and data["tool_calls"][0]["duration_s"] > 0
    assert json.loads((tmp_path / "accepted.json").read_text()) == {"legal_info": "1.2.0"}


def test_tool_calls_run_in_the_sandbox_and_are_measured(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["takeoff"], slot="canary"))
    answer = srv.post("/v1/tasks", {"input": "Calculez le volume de béton pour une dalle de 10 m x 8 m x 0,15 m"})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert "12.6 m³" in data["output"] and "13.0 m³" in data["output"]
    (call,) = data["tool_calls"]
    assert call["name"] == "compute_concrete_volume" and call["ok"]
    assert call["result"]["volume_m3"] == 12.6
    assert call["arguments"]["length_m"] == 10
    labels = {"agent": "takeoff", "version": "1.3.1", "slot": "canary"}
    assert srv.metric("chenu_agent_tool_calls_total", **labels, tool="compute_concrete_volume", outcome="success") == 1
    assert srv.metric("chenu_agent_sandbox_seconds_count", **labels, tool="compute_concrete_volume") == 1
    assert srv.metric("chenu_agent_tokens_total", **labels, kind="output") > 0


def test_invalid_tool_arguments_go_back_to_the_model_as_errors(tmp_path: Path, world: dict, sandbox: Sandbox) -> None:
    runtime = Runtime.start(make_config(tmp_path, world, world["takeoff"]), sandbox=sandbox)
    try:
        from chenu_agents.providers import ToolCall

        agent = runtime.current
        bad = agent.call_tool(ToolCall("c1", "compute_concrete_volume", {"length_m": -1}), sandbox)
        assert (bad.ok, bad.outcome) == (False, "error") and "length_m" in bad.error
        assert bad.for_model() == {"error": bad.error}
        unknown = agent.call_tool(ToolCall("c2", "rm_rf", {}), sandbox)
        assert (unknown.ok, unknown.outcome) == (False, "denied")
        spin = replace(agent.tools["convert_units"], source="def handle(args):\n    while True:\n        pass\n")
        agent.tools["convert_units"] = replace(spin, limits=replace(spin.limits, timeout_ms=200))
        slow = agent.call_tool(
            ToolCall("c3", "convert_units", {"value": 1, "from_unit": "m", "to_unit": "ft"}), sandbox
        )
        assert (slow.ok, slow.outcome) == (False, "timeout")
    finally:
        runtime.close()


def test_authentication_and_roles(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    body = {"input": "Bonjour"}
    assert srv.post("/v1/tasks", body, role=None).status_code == 401
    wrong = srv.http.post(srv.url + "/v1/tasks", json=body, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
    assert srv.post("/admin/reload", role="caller").status_code == 403
    assert srv.post("/admin/reload", role="operator").status_code == 403
    assert srv.get("/admin/status", role="caller").status_code == 403
    assert srv.get("/admin/status", role="operator").json()["serving"]["version"] == "1.2.0"
    for role in ("caller", "operator", "admin"):
        assert srv.post("/v1/tasks", body, role=role).status_code == 200
    assert srv.get("/health/live").status_code == 200
    assert srv.get("/metrics").status_code == 200
    assert srv.post("/v1/tasks", {"input": ""}).status_code == 400
    assert (
        srv.http.post(srv.url + "/v1/tasks", data="{", headers={"Authorization": "Bearer tok-caller-1"}).status_code
        == 400
    )
    assert srv.metric("chenu_agent_requests_total", agent="legal_info", code="401") == 2
    assert srv.metric("chenu_agent_requests_total", agent="legal_info", code="400") == 2


def test_tokens_file_keeps_only_digests(world: dict) -> None:
    text = world["tokens"].read_text()
    assert all(token not in text for token in TOKENS.values())
    assert Tokens.load(world["tokens"]).lookup(TOKENS["admin"]).role == "admin"


def test_readiness_names_every_check_and_fails_over_the_memory_limit(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"], memory_limit_mb=4096))
    ready = srv.get("/health/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert set(checks) == {"bundle", "llm", "memory", "lifecycle"}
    assert all(c["ok"] for c in checks.values())
    assert "verified" in checks["bundle"]["detail"] and "of 4096 MiB" in checks["memory"]["detail"]
    srv.runtime.config = replace(srv.runtime.config, memory_limit_mb=1)
    low = srv.get("/health/ready")
    assert low.status_code == 503
    assert not low.json()["checks"]["memory"]["ok"] and low.json()["status"] == "not_ready"
    assert srv.get("/health/live").status_code == 200


def test_readiness_checks_database_and_queue_when_configured(tmp_path: Path, world: dict, serve) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    srv = serve(
        make_config(
            tmp_path,
            world,
            world["legal"],
            database_dsn=f"postgresql://u:secret@127.0.0.1:{port}/db",
            rabbitmq_url=f"amqp://u:secret@127.0.0.1:{port}/",
            health_timeout_s=0.5,
        )
    )
    ready = srv.get("/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert not checks["database"]["ok"] and not checks["queue"]["ok"]
    assert "secret" not in ready.text


def test_metrics_follow_the_contract(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    assert srv.post("/v1/tasks", {"input": "Bonjour"}).status_code == 200
    labels = {"agent": "legal_info", "version": "1.2.0", "slot": "blue"}
    assert srv.metric("chenu_agent_requests_total", **labels, code="200") == 1
    assert srv.metric("chenu_agent_request_duration_seconds_count", **labels) == 1
    assert srv.metric("chenu_agent_request_duration_seconds_bucket", **labels, le="0.0625") is not None
    assert srv.metric("chenu_agent_tokens_total", **labels, kind="input") > 0
    families = {f.name: f for f in text_string_to_metric_families(srv.get("/metrics").text)}
    for name, kind in {
        "chenu_agent_requests": "counter",
        "chenu_agent_request_duration_seconds": "histogram",
        "chenu_agent_tokens": "counter",
        "chenu_agent_fallbacks": "counter",
        "chenu_agent_tool_calls": "counter",
        "chenu_agent_sandbox_seconds": "histogram",
    }.items():
        assert families[name].type == kind
    assert "process_resident_memory_bytes" in families


def test_fallback_is_counted_by_provider(tmp_path: Path, world: dict, serve) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = make_config(
        tmp_path,
        world,
        world["legal"],
        llm_chain=("openai/llama3.1:8b", "scripted/legal_info"),
        llm_parameters={"retries": 0, "timeout_s": 1},
        provider_base_urls={"openai": f"http://127.0.0.1:{port}/v1"},
    )
    srv = serve(config)
    data = srv.post("/v1/tasks", {"input": "Bonjour"}).json()
    assert (data["provider"], data["fallbacks"]) == ("scripted/legal_info", 1)
    assert srv.metric("chenu_agent_fallbacks_total", agent="legal_info", provider="scripted") == 1
    # Per provider: the primary's failed call, the fallback's answer, and who answered the task.
    assert srv.metric("chenu_agent_provider_calls_total", provider="openai/llama3.1:8b", outcome="error") == 1
    assert srv.metric("chenu_agent_provider_calls_total", provider="scripted/legal_info", outcome="ok") == 1
    assert srv.metric("chenu_agent_provider_call_duration_seconds_count", provider="openai/llama3.1:8b") == 1
    assert srv.metric("chenu_agent_llm_answers_total", provider="scripted/legal_info") == 1
    assert srv.get("/health/ready").json()["checks"]["llm"]["ok"]  # the scripted fallback is loaded


def test_paused_and_deprecated_agents(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"state": "paused", "fallback_agent": "legal_info_backup"}))
    paused = srv.post("/v1/tasks", {"input": "Bonjour"})
    assert paused.status_code == 503
    assert paused.json()["fallback_agent"] == "legal_info_backup"
    state.write_text(json.dumps({"state": "deprecated", "fallback_agent": None, "note": "x"}))
    assert srv.post("/v1/tasks", {"input": "Bonjour"}).status_code == 410
    state.write_text("{broken")
    ready = srv.get("/health/ready").json()
    assert not ready["checks"]["lifecycle"]["ok"] and ready["state"] == "deprecated"  # last good state holds
    state.unlink()
    assert srv.post("/v1/tasks", {"input": "Bonjour"}).status_code == 200


def test_announced_deprecation_headers_and_callers_counted(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    state = tmp_path / "state.json"
    announced = {"state": "active", "version": "1.2.0", "deprecation": "2026-11-02T12:00:00+00:00",
                 "sunset": "2026-12-02T12:00:00+00:00", "replacement": "1.3.0"}  # fmt: skip
    state.write_text(json.dumps(announced))
    answer = srv.post("/v1/tasks", {"input": "Bonjour"})
    assert answer.status_code == 200
    # RFC 9745 (a structured date, seconds since the epoch) and RFC 8594 (an HTTP date).
    assert answer.headers["Deprecation"] == "@1793620800"
    assert answer.headers["Sunset"] == "Wed, 02 Dec 2026 12:00:00 GMT"
    srv.post("/v1/tasks", {"input": "Bonjour"}, role="operator")
    assert srv.metric("chenu_agent_deprecated_calls_total", version="1.2.0", caller="caller") == 1
    assert srv.metric("chenu_agent_deprecated_calls_total", version="1.2.0", caller="operator") == 1

    state.write_text(json.dumps({**announced, "state": "deprecated"}))
    gone = srv.post("/v1/tasks", {"input": "Bonjour"})
    assert gone.status_code == 410 and gone.headers["Sunset"] == "Wed, 02 Dec 2026 12:00:00 GMT"
    assert gone.json()["replacement"] == "1.3.0" and "use legal_info 1.3.0" in gone.json()["error"]
    assert srv.metric("chenu_agent_deprecated_calls_total", version="1.2.0", caller="caller") == 2

    state.write_text(json.dumps({"state": "active", "version": "1.2.0"}))  # restored: no more headers
    answer = srv.post("/v1/tasks", {"input": "Bonjour"})
    assert answer.status_code == 200 and "Deprecation" not in answer.headers and "Sunset" not in answer.headers


@pytest.mark.parametrize(
    ("content", "status", "checks"),
    [
        ({"state": "paused", "version": "1.2.0", "reason": "incident 42", "retry_after": 45}, 503,
         {"Retry-After": "45", "reason": "incident 42", "fallback_agent": None}),
        ({"state": "paused", "version": "1.2.0", "fallback_agent": "estimator"}, 503,
         {"Retry-After": "30", "reason": "paused by its operators", "fallback_agent": "estimator"}),
        ({"state": "archived", "version": "1.2.0", "visible_to": ["admin"]}, 410, {"replacement": None}),
        # a state written for another version does not apply to the one this slot serves now
        ({"state": "deprecated", "version": "1.1.0"}, 200, {}),
    ],
)  # fmt: skip
def test_lifecycle_answers(tmp_path: Path, world: dict, serve, content, status, checks) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    (tmp_path / "state.json").write_text(json.dumps(content))
    answer = srv.post("/v1/tasks", {"input": "Bonjour"})
    assert answer.status_code == status, answer.text
    for key, value in checks.items():
        assert (answer.headers.get(key) if key[0].isupper() else answer.json()[key]) == value
    status_report = srv.get("/admin/status", role="operator").json()
    assert status_report["state"] == ("active" if status == 200 else content["state"])
    assert status_report["state_version"] == content["version"]


@pytest.mark.parametrize(
    ("state", "visible_to", "allowed"),
    [
        ("staged", ["operator", "admin"], {"operator", "admin"}),
        ("testing", ["developer", "tester", "admin"], {"tester", "admin"}),
        ("draft", ["developer", "admin"], {"admin"}),
        ("active", None, {"caller", "tester", "operator", "admin"}),
    ],
)
def test_visibility_by_token_role(tmp_path: Path, world: dict, serve, state, visible_to, allowed) -> None:
    srv = serve(make_config(tmp_path, world, world["legal"]))
    content = {"state": state, "version": "1.2.0"} | ({"visible_to": visible_to} if visible_to else {})
    (tmp_path / "state.json").write_text(json.dumps(content))
    for role in TOKENS:
        answer = srv.post("/v1/tasks", {"input": "Bonjour"}, role=role)
        assert answer.status_code == (200 if role in allowed else 403), (role, answer.text)
        if role not in allowed:
            assert f"is {state}: its tasks are for" in answer.json()["error"]


def test_deprecation_lets_the_request_in_flight_finish(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal_slow"]))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(srv.post, "/v1/tasks", {"input": "Bonjour"})
        time.sleep(0.4)
        (tmp_path / "state.json").write_text(json.dumps({"state": "deprecated"}))
        assert srv.post("/v1/tasks", {"input": "Bonjour"}).status_code == 410
        assert slow.result(10).status_code == 200


def test_tampered_bundle_refuses_to_start(tmp_path: Path, world: dict) -> None:
    config = make_config(tmp_path, world, world["legal"])
    data = bytearray(config.bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    config.bundle.write_bytes(bytes(data))
    with pytest.raises(TamperedBundle):
        Runtime.start(config)
    assert not (tmp_path / "accepted.json").exists()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = tmp_path / "runtime.yaml"
    settings.write_text(
        json.dumps(
            {
                "bundle": str(config.bundle),
                "trust_store": str(config.trust_store),
                "accepted_versions": str(config.accepted_versions),
                "slot": "blue",
                "port": port,
                "llm_chain": ["scripted/legal_info"],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(
        [sys.executable, "-m", "chenu_agents.runtime", "--config", str(settings)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 2
    assert "refusing to serve" in run.stderr and "hashes to" in run.stderr
    with socket.socket() as client, pytest.raises(OSError):
        client.settimeout(0.5)
        client.connect(("127.0.0.1", port))


def test_entry_point_check_mode_verifies(tmp_path: Path, world: dict) -> None:
    config = make_config(tmp_path, world, world["legal"])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "CHENU_RUNTIME_BUNDLE": str(config.bundle),
        "CHENU_RUNTIME_TRUST_STORE": str(config.trust_store),
        "CHENU_RUNTIME_ACCEPTED_VERSIONS": str(config.accepted_versions),
        "CHENU_RUNTIME_SLOT": "green",
        "CHENU_RUNTIME_LLM_CHAIN": '["scripted/legal_info"]',
    }
    run = subprocess.run(
        [sys.executable, "-m", "chenu_agents.runtime", "--check"], capture_output=True, text=True, timeout=60, env=env
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["version"] == "1.2.0"


def test_reload_swaps_while_the_request_in_flight_completes_on_the_old_version(
    tmp_path: Path, world: dict, serve
) -> None:
    srv = serve(make_config(tmp_path, world, world["legal_slow"]))
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        slow = pool.submit(srv.post, "/v1/tasks", {"input": "Bonjour"})
        time.sleep(0.4)
        install(tmp_path, world["legal_next"])
        reloaded = srv.post("/admin/reload", role="admin")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["serving"]["version"] == "1.3.0"
        fresh = srv.post("/v1/tasks", {"input": "Bonjour"})
        assert fresh.status_code == 200 and fresh.json()["version"] == "1.3.0"
        assert not slow.done()  # the new version answered while the old one still works
        old = slow.result(10)
    assert old.status_code == 200 and old.json()["version"] == "1.2.0"
    assert time.monotonic() - started >= 1.5
    assert srv.metric("chenu_agent_requests_total", version="1.2.0", code="200") == 1
    assert srv.metric("chenu_agent_requests_total", version="1.3.0", code="200") == 1
    assert srv.metric("chenu_agent_info", version="1.3.0") == 1
    assert srv.metric("chenu_agent_info", version="1.2.0") is None


def test_reload_refuses_a_rollback_and_a_tampered_bundle(tmp_path: Path, world: dict, serve) -> None:
    srv = serve(make_config(tmp_path, world, world["legal_next"]))
    install(tmp_path, world["legal"])
    refused = srv.post("/admin/reload", role="admin")
    assert refused.status_code == 409
    assert "lower than 1.3.0" in refused.json()["error"]
    assert refused.json()["serving"]["version"] == "1.3.0"
    assert srv.post("/v1/tasks", {"input": "Bonjour"}).json()["version"] == "1.3.0"
    ready = srv.get("/health/ready").json()
    assert ready["checks"]["bundle"]["ok"] and "last reload refused" in ready["checks"]["bundle"]["detail"]
    with pytest.raises(RollbackRefused):
        Runtime.start(srv.runtime.config)

    path = install(tmp_path, world["legal_next"])
    path.write_bytes(path.read_bytes()[:-10])
    assert srv.post("/admin/reload", role="admin").status_code == 409
    install(tmp_path, world["legal_next"])
    assert srv.post("/admin/reload", role="admin").status_code == 200
    assert srv.metric("chenu_agent_reloads_total", outcome="refused") == 2


def test_config_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "runtime.yaml"
    path.write_text(
        "bundle: /b\ntrust_store: /t\naccepted_versions: /a\nslot: blue\nport: 8101\nmemory_limit_mb: 512\n"
    )
    config = RuntimeConfig.load(path, environ={"CHENU_RUNTIME_PORT": "8102", "CHENU_RUNTIME_ALLOW_ROLLBACK": "true"})
    assert (config.port, config.memory_limit_mb, config.allow_rollback) == (8102, 512, True)
    assert config.signature_path == Path("/b.sig")
    assert config.api_keys({"ANTHROPIC_API_KEY": "k"}) == {"anthropic": "k"}
    with pytest.raises(RuntimeConfigError, match="unknown settings"):
        RuntimeConfig.load(path, environ={}).from_mapping({"bogus": 1})
    with pytest.raises(RuntimeConfigError, match="missing"):
        RuntimeConfig.load(None, environ={"CHENU_RUNTIME_SLOT": "x"})
    with pytest.raises(RuntimeConfigError, match="sandbox_mode"):
        RuntimeConfig.load(path, environ={"CHENU_RUNTIME_SANDBOX_MODE": "magic"})


def test_state_file_reads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    states = StateFile(path)
    assert states.current().state == "active"
    path.write_text('{"state": "paused", "fallback_agent": "other"}')
    assert (states.current().state, states.current().fallback_agent) == ("paused", "other")
    path.write_text('{"state": "sleeping"}')
    assert states.current().state == "paused" and "sleeping" in states.current().error
    path.write_text('{"state": "staged", "visible_to": ["operator", "nobody"]}')
    assert states.current().state == "paused" and "visible_to" in states.current().error
    path.write_text('{"state": "active", "colour": "blue"}')
    assert "unknown keys ['colour']" in states.current().error


def test_pooled_sandbox_mode_serves_tool_calls(tmp_path: Path, world: dict) -> None:
    runtime = Runtime.start(make_config(tmp_path, world, world["takeoff"], sandbox_mode="pooled"))
    srv = Served(runtime)
    try:
        durations = []
        for _ in range(3):
            data = srv.post("/v1/tasks", {"input": "Dalle de béton de 10 m x 8 m x 0,15 m"}).json()
            assert data["tool_calls"][0]["result"]["volume_m3"] == 12.6
            durations.append(data["tool_calls"][0]["duration_s"])
        assert min(durations[1:]) < 0.02  # warm: no interpreter start
        assert srv.get("/admin/status", role="operator").json()["sandbox_mode"] == "pooled"
    finally:
        srv.close()


def test_entry_point_serves_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path, world: dict) -> None:
    config = make_config(tmp_path, world, world["legal"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = tmp_path / "runtime.json"
    settings.write_text(
        json.dumps(
            {
                "bundle": str(config.bundle),
                "trust_store": str(config.trust_store),
                "accepted_versions": str(config.accepted_versions),
                "tokens_file": str(config.tokens_file),
                "work_dir": str(tmp_path / "work"),
                "slot": "green",
                "port": port,
                "llm_chain": ["scripted/legal_info"],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chenu_agents.runtime", "--config", str(settings)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def version(deadline_s: float = 20) -> str | None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                return requests.get(f"{url}/health/ready", timeout=2).json()["version"]
            except requests.ConnectionError:
                time.sleep(0.1)
        return None

    try:
        assert version() == "1.2.0"
        install(tmp_path, world["legal_next"])
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 10
        while version() != "1.3.0" and time.monotonic() < end:
            time.sleep(0.05)
        assert version() == "1.3.0"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "serving legal_info 1.2.0" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_traces_a_span_per_task_with_llm_and_tool_children(tmp_path: Path, world: dict, sandbox: Sandbox) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    config = make_config(tmp_path, world, world["takeoff"], slot="canary")
    srv = Served(Runtime.start(config, sandbox=sandbox, span_exporter=exporter))
    try:
        answer = srv.post("/v1/tasks", {"input": "Calculez le volume de béton pour une dalle de 10 m x 8 m x 0,15 m"})
        assert answer.status_code == 200, answer.text
        assert srv.get("/admin/status", "operator").json()["tracing"] == "InMemorySpanExporter"
    finally:
        srv.close()
    spans = exporter.get_finished_spans()
    (task,) = [s for s in spans if s.name == "task"]
    assert dict(task.attributes) == {"agent": "takeoff", "version": "1.3.1", "slot": "canary", "transport": "http"}
    llm = [s for s in spans if s.name == "llm.complete"]
    tools = [s for s in spans if s.name == "tool.call"]
    assert len(llm) == answer.json()["rounds"] == 2 and len(tools) == 1
    assert all(s.parent is not None and s.parent.span_id == task.context.span_id for s in llm + tools)
    assert {s.context.trace_id for s in spans} == {task.context.trace_id}
    assert llm[0].attributes["provider"] == "scripted/takeoff" and llm[0].attributes["round"] == 1
    assert (llm[0].attributes["agent"], llm[0].attributes["version"]) == ("takeoff", "1.3.1")
    assert tools[0].attributes["tool"] == "compute_concrete_volume" and tools[0].attributes["outcome"] == "success"
    assert task.resource.attributes["service.name"] == "chenu-agent-takeoff"


def test_tracing_is_off_by_default_and_never_touches_the_sdk(
    tmp_path: Path, world: dict, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk import trace as sdk_trace

    def refused(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a TracerProvider was created with tracing off")

    monkeypatch.setattr(sdk_trace.TracerProvider, "__init__", refused)
    srv = serve(make_config(tmp_path, world, world["legal"]))
    assert srv.post("/v1/tasks", {"input": "Bonjour"}).status_code == 200
    assert srv.get("/admin/status", "operator").json()["tracing"] == "off"
    with pytest.raises(RuntimeConfigError, match="tracing"):
        make_config(tmp_path, world, world["legal"], tracing="jaeger")


def test_tracing_exporters_from_settings(tmp_path: Path, world: dict) -> None:
    from chenu_agents.runtime.tracing import span_factory

    otlp = span_factory("otlp_http", "svc", endpoint="http://127.0.0.1:9/v1/traces")
    console = span_factory("console", "svc")
    try:
        assert otlp.description == "otlp_http http://127.0.0.1:9/v1/traces" and console.description == "console"
    finally:
        otlp.shutdown()
        console.shutdown()
    config = RuntimeConfig.from_mapping(
        {"bundle": "b", "trust_store": "t", "accepted_versions": "a", "slot": "blue", "tracing": "otlp_http",
         "tracing_endpoint": "http://collector:4318/v1/traces",
         "queue": {"url": "amqp://runtime@127.0.0.1:5672/chenu", "prefetch": 8, "password_env": "MQ_PW"}}
    )  # fmt: skip
    assert config.tracing_endpoint == "http://collector:4318/v1/traces"
    assert config.queue is not None and config.queue.prefetch == 8 and config.queue.queue_name("x") == "chenu.tasks.x"
    assert config.queue.connection_url({"MQ_PW": "p@ss/w"}) == "amqp://runtime:p%40ss%2Fw@127.0.0.1:5672/chenu"
    with pytest.raises(RuntimeConfigError, match="queue"):
        RuntimeConfig.from_mapping({"bundle": "b", "trust_store": "t", "accepted_versions": "a", "slot": "blue",
                                    "queue": {"url": "http://nope"}})  # fmt: skip
