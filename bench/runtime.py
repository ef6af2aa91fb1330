"""Runtime overhead: /v1/tasks with the scripted provider against a bare aiohttp handler, same run.

    .venv/bin/python bench/runtime.py [--rate 100] [--seconds 10] [--clients 10] [--saturate-s 5]
    .venv/bin/python bench/runtime.py --agent takeoff --input "Dalle de béton de 10 m x 8 m x 0,15 m" \
        --sandbox-mode pooled      # one tool call per task

Both servers run as their own processes on 127.0.0.1; this process is the load generator
(chenu_agents.loadgen). Phase 1 sends requests at a fixed rate from `--clients` keep-alive clients
sharing one schedule and reports p50, p95, p99 and the throughput achieved; phase 2 runs `--clients`
closed-loop clients for `--saturate-s` seconds for the most each server can answer. Overhead = ours minus bare. The
runtime is the real one: a bundle built from examples/agents/legal_info, signed, verified at start,
bearer token checked, system prompt rendered, scripted LLM chain, metrics recorded. Every loop is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from chenu_agents import bundle, loadgen
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.runtime import hash_token
from chenu_agents.signing import sign_bundle

REPO = Path(__file__).resolve().parents[1]
TOKEN = secrets.token_urlsafe(24)
INPUT = {"text": "Bonjour"}
BARE = """
import sys
from aiohttp import web
ANSWER = {"output": "constant", "tool_calls": [], "usage": {"input_tokens": 0, "output_tokens": 0}}
async def task(request):
    return web.json_response(ANSWER)
app = web.Application()
app.router.add_post("/v1/tasks", task)
app.router.add_get("/health/ready", lambda r: web.json_response({"status": "ready"}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path, agent: str, sandbox_mode: str) -> Path:
    store = FileKeyStore(work / "keys")
    store.ensure_key()
    store.trust_store().save(work / "trust.json")
    built = bundle.build(REPO / "examples" / "agents" / agent)
    path = work / f"{agent}.tar.zst"
    write_if_changed(path, built.data)
    sign_bundle(path, store, agent=built.agent, version=built.version)
    (work / "tokens.json").write_text(
        json.dumps({"tokens": [{"name": "bench", "role": "caller", "sha256": hash_token(TOKEN)}]})
    )
    config = {
        "bundle": str(path),
        "trust_store": str(work / "trust.json"),
        "accepted_versions": str(work / "accepted.json"),
        "slot": "bench",
        "port": free_port(),
        "tokens_file": str(work / "tokens.json"),
        "work_dir": str(work / "run"),
        "llm_chain": [f"scripted/{agent}"],
        "sandbox_mode": sandbox_mode,
    }
    settings = work / "runtime.json"
    settings.write_text(json.dumps(config))
    return settings


def ms(summary: dict, q: str) -> float:
    value = summary[f"latency_{q}"]
    return float("nan") if value is None else value * 1000


def load(url: str, token: str, **kw: float) -> loadgen.LoadConfig:
    return loadgen.LoadConfig(url=url, token=token, input=INPUT["text"], **kw)


async def fixed_rate(url: str, rate: float, seconds: float, clients: int, token: str = TOKEN) -> dict:
    """`rate` req/s shared by `clients` keep-alive clients, after 50 uncounted warm-up requests."""
    return await loadgen.run(load(url, token, rate=rate, clients=clients, duration=seconds, warmup=50))


async def saturate(url: str, clients: int, seconds: float, token: str = TOKEN) -> float:
    """The most a server answers: `clients` closed-loop clients back to back; 200s per second."""
    return (await loadgen.run(load(url, token, rate=0, clients=clients, duration=seconds)))["ok_throughput"]


async def run_deployed(args: argparse.Namespace) -> None:
    """The deployed stack (scripts/main.sh): the same runtime slot direct, then through HAProxy."""
    token = Path(args.token_file).read_text().strip()
    rows = {}
    for name, url in (("direct", args.direct), ("haproxy", args.through)):
        await loadgen.wait_ready(url)
        rows[name] = await fixed_rate(url, args.rate, args.seconds, args.clients, token)
    print(f"deployed slot, /v1/tasks at {args.rate:g} req/s for {args.seconds:g} s, input {args.input!r}")
    print(f"{'':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
    for name, r in rows.items():
        print(
            f"{name:<10}{ms(r, 'p50'):>9.2f}{ms(r, 'p95'):>9.2f}{ms(r, 'p99'):>9.2f}{r['ok_throughput']:>9.1f}{r['failed']:>8}"
        )
    d, h = rows["direct"], rows["haproxy"]
    print(
        "haproxy   "
        + "".join(f"{ms(h, q) - ms(d, q):>9.2f}" for q in ("p50", "p95", "p99"))
        + "   (added by HAProxy, ms)"
    )
    if args.soak_s > 0:
        r = await loadgen.run(load(args.through, token, rate=0, clients=args.clients, duration=args.soak_s))
        total = r["requests"]
        print(
            f"load through HAProxy: {args.clients} clients for {args.soak_s:g} s: {total} requests, "
            f"{r['failed']} errors ({r['failed'] / max(total, 1):.4%}), {r['throughput']:.0f} req/s, "
            f"p95 {ms(r, 'p95'):.2f} ms, p99 {ms(r, 'p99'):.2f} ms"
        )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="chenu-bench-runtime-") as tmp:
        work = Path(tmp)
        settings = prepare(work, args.agent, args.sandbox_mode)
        ours_url = f"http://127.0.0.1:{json.loads(settings.read_text())['port']}"
        bare_port = free_port()
        bare_url = f"http://127.0.0.1:{bare_port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        procs = {
            "bare": subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=env),
            "ours": subprocess.Popen(
                [sys.executable, "-m", "chenu_agents.runtime", "--config", str(settings), "--log-level", "WARNING"],
                env=env,
            ),
        }
        try:
            await loadgen.wait_ready(bare_url)
            await loadgen.wait_ready(ours_url)
            results = {}
            for name, url in (("bare", bare_url), ("ours", ours_url)):
                results[name] = await fixed_rate(url, args.rate, args.seconds, args.clients)
                if args.saturate_s > 0:
                    results[name]["max"] = await saturate(url, args.clients, args.saturate_s)
                results[name]["rss"] = rss_mib(procs[name].pid)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(10)

    print(
        f"/v1/tasks of {args.agent} at {args.rate:g} req/s for {args.seconds:g} s, scripted provider, "
        f"input {args.input!r}, sandbox {args.sandbox_mode}, 127.0.0.1"
    )
    header = f"{'':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}{'max req/s':>11}{'errors':>8}{'RSS MiB':>9}"
    print(header)
    for name in ("bare", "ours"):
        r = results[name]
        print(
            f"{name:<10}{ms(r, 'p50'):>9.2f}{ms(r, 'p95'):>9.2f}{ms(r, 'p99'):>9.2f}{r['ok_throughput']:>9.1f}"
            f"{r.get('max', float('nan')):>11.0f}{r['failed']:>8}{r['rss']:>9.1f}"
        )
    ours, bare = results["ours"], results["bare"]
    print(
        "overhead  "
        + "".join(f"{ms(ours, q) - ms(bare, q):>9.2f}" for q in ("p50", "p95", "p99"))
        + "   (ours - bare, ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--saturate-s", type=float, default=5.0)
    parser.add_argument("--sandbox-mode", default="pooled", choices=["per_call", "pooled"])
    parser.add_argument("--agent", default="legal_info", choices=["legal_info", "takeoff", "estimator"])
    parser.add_argument("--input", default="Bonjour", help="the task; the default calls no tool")
    parser.add_argument("--through", help="a deployed HAProxy frontend, e.g. http://127.0.0.1:8001 (scripts/main.sh)")
    parser.add_argument("--direct", default="http://127.0.0.1:8101", help="with --through: the same slot, direct")
    parser.add_argument("--token-file", default=str(REPO / ".cache/local/secrets/runtime_caller"))
    parser.add_argument("--soak-s", type=float, default=0.0, help="with --through: closed-loop load for this long")
    args = parser.parse_args()
    INPUT["text"] = args.input
    if not 0 < args.rate <= 2000 or not 0 < args.seconds <= 600 or not 0 <= args.saturate_s <= 600:
        parser.error("rate in (0, 2000], seconds in (0, 600], saturate-s in [0, 600]")
    if not 0 <= args.soak_s <= 900 or not 0 < args.clients <= 100:
        parser.error("soak-s in [0, 900], clients in (0, 100]")
    if args.through and not all(u.startswith(("http://127.", "http://localhost")) for u in (args.through, args.direct)):
        parser.error("--through and --direct must be loopback URLs")
    asyncio.run(run_deployed(args) if args.through else run(args))


if __name__ == "__main__":
    main()
