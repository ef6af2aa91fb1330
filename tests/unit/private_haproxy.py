"""A private HAProxy for the traffic tests: its own config, admin socket, ports and tiny slot servers.

Nothing here touches the shared HAProxy (/etc/haproxy, /run/haproxy): the process runs in the
foreground from a config in a temporary directory, and stops with the fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # health checks hang up without reading the answer


class SlotServer:
    """An HTTP server that answers with its slot name, and /health/ready with 200 or 503 as told."""

    def __init__(self, name: str):
        self.name = name
        self.ready = True
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/health/ready":
                    status, body = (200, b"ready") if owner.ready else (503, b"not ready")
                else:
                    status, body = 200, owner.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


CONFIG = """\
global
    stats socket {dir}/admin.sock mode 600 level admin
    stats timeout 10s
    server-state-file {dir}/server-state
    pidfile {dir}/haproxy.pid

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    load-server-state-from-file global

frontend fe_{agent}
    bind 127.0.0.1:{port}
    default_backend be_{agent}

backend be_{agent}
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


@dataclass
class PrivateHAProxy:
    directory: Path
    agent: str
    weights: dict[str, int]
    slots: dict[str, SlotServer] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def state_file(self) -> Path:
        return self.directory / "server-state"

    @property
    def backend(self) -> str:
        return f"be_{self.agent}"

    def write_config(self) -> Path:
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{self.slots[name].port} weight {weight} check"
            for name, weight in self.weights.items()
        )
        path = self.directory / "haproxy.cfg"
        path.write_text(CONFIG.format(dir=self.directory, agent=self.agent, port=self.port, servers=servers))
        return path

    def start(self, timeout_s: float = 10.0) -> None:
        config = self.write_config()
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.process.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not open its admin socket")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def wait_up(self, names: list[str], timeout_s: float = 10.0, up: bool = True) -> None:
        from chenu_agents.traffic import HAProxyTraffic

        traffic = HAProxyTraffic(self.backend, self.socket)
        deadline = time.monotonic() + timeout_s
        while True:
            current = traffic.read()
            if all(current[n].up is up for n in names):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not {'UP' if up else 'DOWN'} in {timeout_s}s: {current}")
            time.sleep(0.1)

    def count(self, requests: int = 200) -> Counter:
        """Which slot answers each of `requests` requests (a new connection each, no keep-alive bias)."""
        seen: Counter = Counter()
        for _ in range(requests):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/task", timeout=5) as answer:
                seen[answer.read().decode()] += 1
        return seen


@contextlib.contextmanager
def private_haproxy(directory: Path, agent: str = "demo", weights: dict[str, int] | None = None):
    weights = weights or {"blue": 100, "green": 0}
    directory.mkdir(parents=True, exist_ok=True)
    # The socket path must fit in sun_path (108 bytes); pytest's tmp_path can be long.
    short = Path(os.path.realpath(directory))
    proxy = PrivateHAProxy(short, agent, dict(weights), {name: SlotServer(name) for name in weights}, free_port())
    try:
        proxy.start()
        proxy.wait_up(list(weights))
        yield proxy
    finally:
        proxy.stop()
        for slot in proxy.slots.values():
            slot.close()
