"""A private Prometheus scraping synthetic runtime slots, for the rollout analysis tests.

Nothing here touches the shared Prometheus (:9090): the process runs in the foreground on a free port
with its configuration and TSDB in a temporary directory, scrapes every second, and stops with the
fixture. The exporter is the runtime's own `Metrics` class, served by prometheus_client in this
process; `Traffic` threads feed it requests at a steady rate with a chosen error ratio and latency.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry, start_http_server

from chenu_agents.runtime.metrics import Metrics

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """The runtime's metric families on a port of their own."""

    def __init__(self):
        self.metrics = Metrics(CollectorRegistry())
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.metrics.registry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Traffic:
    """One slot's requests: `rate` per second, an `error_ratio` of them 500, each taking `latency` s
    (times a log-normal factor of spread `jitter`, seeded). Each answered one used `tokens` LLM tokens
    (a fifth of them output), and a `fallback_ratio` of those were answered by the fallback provider.

    Errors and fallbacks are spread evenly (request n fails when floor(n * ratio) steps up), so the
    numbers are exact rather than random. Change the attributes while it runs to change the slot's
    behaviour.
    """

    metrics: Metrics
    agent: str
    version: str
    slot: str
    rate: float = 20.0
    error_ratio: float = 0.0
    latency: float = 0.03
    jitter: float = 0.0
    tokens: int = 100
    fallback_ratio: float = 0.0
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Traffic:
        self._rng = random.Random(f"{self.agent}/{self.slot}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + self.sent / self.rate if self.rate > 0 else time.monotonic() + 0.1
            wait = due - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, 0.1))
                continue
            n = self.sent
            failed = int((n + 1) * self.error_ratio) > int(n * self.error_ratio)
            labels = dict(agent=self.agent, version=self.version, slot=self.slot)
            self.metrics.requests.labels(**labels, code="500" if failed else "200").inc()
            factor = math.exp(self._rng.gauss(0, self.jitter)) if self.jitter else 1.0
            self.metrics.duration.labels(**labels).observe(self.latency * factor)
            if not failed:
                fallback = int((n + 1) * self.fallback_ratio) > int(n * self.fallback_ratio)
                self.metrics.tokens.labels(**labels, kind="input").inc(self.tokens - self.tokens // 5)
                self.metrics.tokens.labels(**labels, kind="output").inc(self.tokens // 5)
                self.metrics.answers.labels(**labels, provider="scripted/b" if fallback else "scripted/a").inc()
                if fallback:
                    self.metrics.fallbacks.labels(**labels, provider="scripted").inc()
            self.sent += 1

    def wait_for_scrapes(self, count: int, deadline_s: float = 60) -> None:
        """Until every target has been scraped `count` times: a full window of data behind each query."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with contextlib.suppress(requests.RequestException, KeyError, IndexError, ValueError):
                body = requests.get(
                    f"{self.url}/api/v1/query", params={"query": f"min(count_over_time(up[{count + 5}s]))"}, timeout=2
                ).json()
                if float(body["data"]["result"][0]["value"][1]) >= count:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"prometheus did not scrape {count} times within {deadline_s} s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class PrivatePrometheus:
    def __init__(self, work: Path, targets: list[str]):
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = work / "prometheus.yml"
        quoted = ", ".join(f'"{t}"' for t in targets)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: chenu_runtime\n    static_configs:\n      - targets: [{quoted}]\n"
        )
        self.log = (work / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _poll(self, ready, what: str, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.work / 'prometheus.log').read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException, KeyError, IndexError, ValueError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus: {what} within {deadline_s} s")

    def _wait_ready(self, deadline_s: float = 30) -> None:
        self._poll(lambda: requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200, "not ready", deadline_s)

    def wait_for_scrapes(self, count: int, deadline_s: float = 60) -> None:
        """Until every target has been scraped `count` times: a full window of data behind each query."""
        query = {"query": f"min(count_over_time(up[{count + 5}s]))"}

        def scraped() -> bool:
            body = requests.get(f"{self.url}/api/v1/query", params=query, timeout=2).json()
            return float(body["data"]["result"][0]["value"][1]) >= count

        self._poll(scraped, f"fewer than {count} scrapes", deadline_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
