"""Load generator for releases and benchmarks: POST /v1/tasks from N keep-alive clients at a fixed rate.

    python -m chenu_agents.loadgen --url http://127.0.0.1:8001 --token-file .cache/local/secrets/runtime_caller \
        --rate 50 --clients 10 --duration 60 [--session-header] [--stop-file F] [--progress 5] --out summary.json

Each client holds one keep-alive connection and sends its share of a common schedule (request k of the
run leaves at start + k / rate, client k mod N sends it); a client still waiting for its previous answer
sends late rather than opening a second connection, and the summary counts those as `late`. `--rate 0`
is closed loop: every client sends back to back. Answers are counted by status; HAProxy's own 503 (its
"No server is available" errorfile, a request that found no backend) is told apart from a 503 the
runtime sent (JSON) and from HAProxy's maintenance answer. The run ends after `--duration`, when the stop
file appears, or on SIGTERM/SIGINT; in-flight requests get a grace period, then the summary is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from chenu_agents.files import atomic_write

SESSION_HEADER = "X-Chenu-Session"
HAPROXY_NO_SERVER = b"No server is available"
MAX_DURATION = 24 * 3600.0


@dataclass
class LoadConfig:
    url: str
    token: str | None = None
    rate: float = 10.0
    clients: int = 4
    duration: float = 10.0
    input: str = "Bonjour"
    attributes: dict[str, Any] | None = None
    session: bool = False
    session_prefix: str = "loadgen"
    timeout: float = 30.0
    warmup: int = 0
    grace: float = 5.0
    stop_file: Path | None = None
    progress: float = 0.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: an http(s) URL is expected, got {self.url!r}")
        if parts.path in ("", "/"):
            self.url = self.url.rstrip("/") + "/v1/tasks"
        if not 0 <= self.rate <= 100_000:
            raise ValueError("rate: requests per second in [0, 100000] (0: closed loop)")
        if not 1 <= self.clients <= 1000:
            raise ValueError("clients: between 1 and 1000")
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"duration: seconds in (0, {MAX_DURATION:g}]")

    def body(self, client: int) -> dict[str, Any]:
        data: dict[str, Any] = {"input": self.input}
        if self.session:
            data["session_id"] = self.session_id(client)
        if self.attributes:
            data["attributes"] = self.attributes
        return data

    def headers(self, client: int) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.session:
            headers[SESSION_HEADER] = self.session_id(client)
        return headers

    def session_id(self, client: int) -> str:
        return f"{self.session_prefix}-{client}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else math.nan


def classify(status: int, content_type: str, body: bytes) -> str:
    """`no_backend` for HAProxy's own 503, `maintenance` for its maintenance answer, else the status."""
    if status == 503:
        if HAPROXY_NO_SERVER in body or content_type.startswith("text/html"):
            return "no_backend"
        if b'"status":"maintenance"' in body.replace(b" ", b""):
            return "maintenance"
    return str(status)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class Tally:
    """Everything counted during a run; summary() turns it into the contract's dictionary."""

    started: float = 0.0
    t0: float = 0.0
    by_status: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ok_latencies: list[float] = field(default_factory=list)
    timeline: dict[int, list[int]] = field(default_factory=dict)
    first_failure: float | None = None
    last_failure: float | None = None
    connections: int = 0
    late: int = 0
    stopped_by: str = "duration"

    def record(self, outcome: str, latency: float | None, at: float) -> None:
        ok = outcome == "200"
        offset = at - self.t0
        if outcome.startswith("error:"):
            self.transport_errors[outcome[6:]] += 1
        else:
            self.by_status[outcome] += 1
        if latency is not None:
            self.latencies.append(latency)
            if ok:
                self.ok_latencies.append(latency)
        second = self.timeline.setdefault(int(offset), [0, 0])
        second[0 if ok else 1] += 1
        if not ok:
            self.first_failure = offset if self.first_failure is None else self.first_failure
            self.last_failure = offset

    @property
    def requests(self) -> int:
        return sum(self.by_status.values()) + sum(self.transport_errors.values())

    @property
    def ok(self) -> int:
        return self.by_status.get("200", 0)

    def summary(self, config: LoadConfig, ended: float, elapsed: float) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float | None:
            v = percentile(values, q)
            return None if math.isnan(v) else round(v, 6)

        n = self.requests
        return {
            "url": config.url,
            "rate": config.rate,
            "clients": config.clients,
            "duration": config.duration,
            "requests": n,
            "ok": self.ok,
            "failed": n - self.ok,
            "by_status": dict(sorted(self.by_status.items())),
            "no_backend": self.by_status.get("no_backend", 0),
            "maintenance": self.by_status.get("maintenance", 0),
            "transport_errors": dict(sorted(self.transport_errors.items())),
            "latency_p50": ms(self.latencies, 0.5),
            "latency_p95": ms(self.latencies, 0.95),
            "latency_p99": ms(self.latencies, 0.99),
            "latency_max": round(max(self.latencies), 6) if self.latencies else None,
            "ok_latency_p95": ms(self.ok_latencies, 0.95),
            "throughput": round(n / elapsed, 3) if elapsed > 0 else 0.0,
            "ok_throughput": round(self.ok / elapsed, 3) if elapsed > 0 else 0.0,
            "connections": self.connections,
            "late": self.late,
            "first_failure_s": None if self.first_failure is None else round(self.first_failure, 3),
            "last_failure_s": None if self.last_failure is None else round(self.last_failure, 3),
            "timeline": [[s, *self.timeline[s]] for s in sorted(self.timeline)],
            "started": _iso(self.started),
            "ended": _iso(ended),
            "elapsed": round(elapsed, 3),
            "stopped_by": self.stopped_by,
        }


async def _one(session: aiohttp.ClientSession, config: LoadConfig, client: int, tally: Tally | None) -> None:
    started = time.perf_counter()
    try:
        async with session.post(config.url, json=config.body(client), headers=config.headers(client)) as r:
            body = await r.read()
            outcome = classify(r.status, r.headers.get("Content-Type", ""), body)
    except (TimeoutError, aiohttp.ClientError) as exc:
        if tally is not None:
            tally.record(f"error:{type(exc).__name__}", None, time.perf_counter())
        return
    if tally is not None:
        now = time.perf_counter()
        tally.record(outcome, now - started, now)


async def wait_ready(url: str, path: str = "/health/ready", deadline_s: float = 30) -> None:
    """Until `url` + `path` answers 200 (a slot or a frontend ready to take the load)."""
    end = time.monotonic() + deadline_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url.rstrip('/')}{path}") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url}{path} not ready within {deadline_s} s")


def _progress_line(tally: Tally, now: float) -> str:
    elapsed = now - tally.t0
    p95 = percentile(tally.latencies[-5000:], 0.95)
    return (
        f"loadgen t={elapsed:.1f}s requests={tally.requests} ok={tally.ok} failed={tally.requests - tally.ok} "
        f"no_backend={tally.by_status.get('no_backend', 0)} rate={tally.requests / max(elapsed, 1e-9):.1f}/s "
        f"p95={p95 * 1000:.1f}ms"
    )


async def run(
    config: LoadConfig,
    stop: asyncio.Event | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the load and return its summary. Setting `stop` ends it early (stopped_by "stop")."""
    stop = stop or asyncio.Event()
    tally = Tally()
    trace = aiohttp.TraceConfig()

    async def opened(*_: Any) -> None:
        tally.connections += 1

    trace.on_connection_create_end.append(opened)
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=False), timeout=timeout, trace_configs=[trace]
        )
        for _client in range(config.clients)
    ]
    try:
        for k in range(config.warmup):
            await _one(sessions[k % config.clients], config, k % config.clients, None)
        tally.started, tally.t0 = time.time(), time.perf_counter()
        end = tally.t0 + config.duration

        async def client(i: int) -> None:
            session = sessions[i]
            for k in range(i, 1 << 62, config.clients):
                if config.rate > 0:
                    due = tally.t0 + k / config.rate
                    now = time.perf_counter()
                    if due >= end:
                        return
                    if due > now:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), due - now)
                    elif now - due > max(1 / config.rate, 0.05):
                        tally.late += 1
                if stop.is_set() or time.perf_counter() >= end:
                    return
                await _one(session, config, i, tally)

        async def watcher() -> None:
            next_line = tally.t0 + config.progress if config.progress > 0 else math.inf
            while not stop.is_set():
                now = time.perf_counter()
                if config.stop_file is not None and config.stop_file.exists():
                    tally.stopped_by = "stop_file"
                    stop.set()
                    return
                if now >= next_line and progress is not None:
                    progress(_progress_line(tally, now))
                    next_line += config.progress
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)

        watch = asyncio.create_task(watcher())
        workers = [asyncio.create_task(client(i)) for i in range(config.clients)]
        done_all = asyncio.gather(*workers)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({done_all, stopped}, timeout=config.duration + config.timeout + 5,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if stop.is_set() and tally.stopped_by == "duration":
            tally.stopped_by = "stop"
        # Stopped: no new request leaves; those in flight get `grace` seconds to answer.
        stop.set()
        pending = (await asyncio.wait(workers, timeout=config.grace))[1]
        for task in pending:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(done_all, watch, stopped, return_exceptions=True)
        ended_at, elapsed = time.time(), time.perf_counter() - tally.t0
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return tally.summary(config, ended_at, elapsed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chenu_agents.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the task endpoint; a bare http://host:port gets /v1/tasks")
    p.add_argument("--token-file", type=Path, help="file holding the caller's bearer token")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second in all (0: closed loop)")
    p.add_argument("--clients", type=int, default=4, help="keep-alive clients (one connection each)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--input", default="Bonjour", help="the task's input text")
    p.add_argument("--attributes", type=json.loads, help="JSON object sent as the task's attributes")
    p.add_argument("--session-header", action="store_true", help=f"a session per client: {SESSION_HEADER} + body")
    p.add_argument("--session-prefix", default="loadgen", help="session ids are <prefix>-<client>")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--warmup", type=int, default=0, help="requests sent, not counted, before the run")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight requests get once stopped")
    p.add_argument("--stop-file", type=Path, help="stop cleanly as soon as this file exists")
    p.add_argument("--progress", type=float, default=0.0, help="a progress line on stderr every N seconds")
    p.add_argument("--out", type=Path, help="write the JSON summary here too (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None
    try:
        config = LoadConfig(
            url=args.url, token=token, rate=args.rate, clients=args.clients, duration=args.duration,
            input=args.input, attributes=args.attributes, session=args.session_header,
            session_prefix=args.session_prefix, timeout=args.timeout, warmup=args.warmup, grace=args.grace,
            stop_file=args.stop_file, progress=args.progress,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))

    async def main_async() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signalled: list[str] = []

        def on_signal(name: str) -> None:
            signalled.append(name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        summary = await run(config, stop, progress=lambda line: print(line, file=sys.stderr, flush=True))
        if signalled:
            summary["stopped_by"] = f"signal:{signalled[0]}"
        return summary

    summary = asyncio.run(main_async())
    text = json.dumps(summary, indent=2) + "\n"
    if args.out:
        atomic_write(args.out, text.encode())
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
