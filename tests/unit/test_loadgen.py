"""The load generator against a small local aiohttp server: counts, keep-alive, sessions, stopping."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from chenu_agents import loadgen
from tests.conftest import REPO

HAPROXY_503 = (
    b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
)


class Server:
    """An aiohttp server on its own thread: every 5th request a 500, every 7th HAProxy's 503 page,
    every 11th a runtime 503 (JSON), the rest 200; remembers what it saw."""

    def __init__(self):
        self.seen: list[dict] = []
        self.peers: set = set()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def task(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append({"body": body, "headers": dict(request.headers)})
        self.peers.add(request.transport.get_extra_info("peername"))
        n = len(self.seen)
        if n % 5 == 0:
            return web.json_response({"error": "boom"}, status=500)
        if n % 7 == 0:
            return web.Response(status=503, body=HAPROXY_503, content_type="text/html")
        if n % 11 == 0:
            return web.json_response({"error": "paused", "state": "paused"}, status=503)
        return web.json_response({"output": "ok"})

    async def ready_check(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/tasks", self.task)
        app.router.add_get("/health/ready", self.ready_check)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server():
    with Server() as s:
        yield s


def test_fixed_rate_counts_and_keep_alive(server):
    config = loadgen.LoadConfig(url=server.url, token="t0k", rate=100, clients=4, duration=1.5, session=True)
    summary = asyncio.run(loadgen.run(config))
    n = summary["requests"]
    assert n == len(server.seen) and 130 <= n <= 151
    assert summary["by_status"]["500"] == n // 5
    assert summary["no_backend"] == len([i for i in range(1, n + 1) if i % 7 == 0 and i % 5])
    assert summary["by_status"]["503"] == len([i for i in range(1, n + 1) if i % 11 == 0 and i % 5 and i % 7])
    assert summary["ok"] + summary["failed"] == n and summary["ok"] == summary["by_status"]["200"]
    assert summary["connections"] == 4 and len(server.peers) == 4  # one keep-alive connection per client
    assert 80 <= summary["throughput"] <= 110
    assert summary["first_failure_s"] is not None and summary["stopped_by"] == "duration"
    assert sum(ok + failed for _, ok, failed in summary["timeline"]) == n
    assert summary["latency_p50"] <= summary["latency_p95"] <= summary["latency_p99"] <= summary["latency_max"]
    first = server.seen[0]
    assert first["headers"]["Authorization"] == "Bearer t0k"
    sessions = {s["headers"][loadgen.SESSION_HEADER] for s in server.seen}
    assert sessions == {f"loadgen-{i}" for i in range(4)}
    assert all(s["body"]["session_id"] == s["headers"][loadgen.SESSION_HEADER] for s in server.seen)
    assert first["body"]["input"] == "Bonjour"


def test_closed_loop_and_stop_event(server):
    async def go():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        config = loadgen.LoadConfig(url=server.url, rate=0, clients=2, duration=30, attributes={"groups": ["beta"]})
        return await loadgen.run(config, stop)

    started = time.monotonic()
    summary = asyncio.run(go())
    assert time.monotonic() - started < 5
    assert summary["stopped_by"] == "stop" and summary["requests"] > 20 and summary["connections"] == 2
    assert server.seen[0]["body"] == {"input": "Bonjour", "attributes": {"groups": ["beta"]}}
    assert "Authorization" not in server.seen[0]["headers"]


def test_unreachable_target_counts_transport_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = asyncio.run(
        loadgen.run(loadgen.LoadConfig(url=f"http://127.0.0.1:{port}", rate=20, clients=2, duration=0.5))
    )
    assert summary["ok"] == 0 and summary["failed"] == summary["requests"] > 0
    assert sum(summary["transport_errors"].values()) == summary["requests"]


def cli(server: Server, tmp_path: Path, *extra: str) -> subprocess.Popen:
    (tmp_path / "token").write_text("secret-token\n")
    args = [sys.executable, "-m", "chenu_agents.loadgen", "--url", server.url, "--token-file", str(tmp_path / "token")]
    args += ["--rate", "50", "--clients", "3", "--duration", "60", "--out", str(tmp_path / "summary.json"), *extra]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_ends_cleanly_with_the_summary(server, tmp_path):
    proc = cli(server, tmp_path, "--progress", "0.5", "--session-header")
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(out)
    assert summary["stopped_by"] == "signal:SIGTERM" and summary["requests"] == len(server.seen) > 20
    assert summary["elapsed"] < 10 and summary["connections"] == 3
    assert "loadgen t=" in err and server.seen[0]["headers"]["Authorization"] == "Bearer secret-token"


def test_stop_file(server, tmp_path):
    stop = tmp_path / "stop"
    proc = cli(server, tmp_path, "--stop-file", str(stop))
    time.sleep(2)
    stop.touch()
    proc.communicate(timeout=20)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proc.returncode == 0 and summary["stopped_by"] == "stop_file" and summary["elapsed"] < 10


@pytest.mark.parametrize(
    "status,ctype,body,expected",
    [
        (503, "text/html", HAPROXY_503, "no_backend"),
        (503, "application/json", b'{"status": "maintenance", "agent": "a"}', "maintenance"),
        (503, "application/json", b'{"error": "paused"}', "503"),
        (200, "application/json", b"{}", "200"),
        (429, "application/json", b"{}", "429"),
    ],
)
def test_classify(status, ctype, body, expected):
    assert loadgen.classify(status, ctype, body) == expected


@pytest.mark.parametrize(
    "kw,message",
    [({"url": "ftp://x"}, "url"), ({"rate": -1}, "rate"), ({"clients": 0}, "clients"), ({"duration": 0}, "duration")],
)
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        loadgen.LoadConfig(**{"url": "http://127.0.0.1:1", **kw})


def test_url_gets_the_task_path():
    assert loadgen.LoadConfig(url="http://h:1").url == "http://h:1/v1/tasks"
    assert loadgen.LoadConfig(url="http://h:1/other").url == "http://h:1/other"


def test_wait_ready(server):
    asyncio.run(loadgen.wait_ready(server.url, deadline_s=2))
    with pytest.raises(TimeoutError, match="not ready"):
        asyncio.run(loadgen.wait_ready(server.url, path="/nowhere", deadline_s=0.5))
