"""Release-flag overhead per task: the same /v1/tasks with no flag, the flag off, the flag evaluated, forwarded.

    .venv/bin/python bench/flags.py [--requests 300] [--rounds 5] [--no-redis]

Runtime processes on 127.0.0.1, each the real runtime serving legal_info (signed bundle, scripted chain):
  base      no feature_flag setting (the reference)
  off       feature_flag set, stage off (file stat + OpenFeature evaluation, no store)
  lru       stage internal, caller not internal, a session per 10 requests: evaluated, sticky in the LRU
  redis     the same, sticky in the local Redis (keys under a bench prefix, deleted at the end)
  forward   stage all: every task forwarded to the variant slot (one more HTTP hop, keep-alive)
  variant   the variant slot forward sends to
One keep-alive client sends requests one after another; configurations take turns each round so that
drift on the shared host hits them alike. Ratios are p50/p95 against base in the same run. Then the
evaluation alone, in process: OpenFeature client -> provider -> LRU, microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from chenu_agents import bundle  # noqa: E402
from chenu_agents.files import write_if_changed  # noqa: E402
from chenu_agents.flags import set_stage  # noqa: E402
from chenu_agents.keystore import FileKeyStore  # noqa: E402
from chenu_agents.loadgen import wait_ready  # noqa: E402
from chenu_agents.runtime import hash_token  # noqa: E402
from chenu_agents.signing import sign_bundle  # noqa: E402

TOKEN = secrets.token_urlsafe(24)
QUESTION = "Comment vérifier la licence RBQ de mon entrepreneur?"
PASSWORD_ENV = "BENCH_REDIS_PASSWORD"  # noqa: S105  # the name of a variable
REDIS_SECRET = REPO / ".cache" / "local" / "secrets" / "redis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def signed_bundle(work: Path, version: str) -> Path:
    store = FileKeyStore(work / "keys")
    store.ensure_key()
    store.trust_store().save(work / "trust.json")
    src = work / "src" / version / "legal_info"
    shutil.copytree(REPO / "examples" / "agents" / "legal_info", src)
    config = src / "config.yaml"
    text = config.read_text()
    current = text.split("version:", 1)[1].split()[0]
    config.write_text(text.replace(f"version: {current}", f"version: {version}", 1))
    path = work / f"legal_info-{version}.tar.zst"
    write_if_changed(path, bundle.build(src, level=3).data)
    sign_bundle(path, store, agent="legal_info", version=version)
    return path


def start(work: Path, name: str, bundle_path: Path, env: dict, **settings) -> tuple[subprocess.Popen, str]:
    port = free_port()
    slot = work / name
    slot.mkdir()
    shutil.copyfile(bundle_path, slot / "agent.tar.zst")
    shutil.copyfile(f"{bundle_path}.sig", slot / "agent.tar.zst.sig")
    config = {
        "bundle": str(slot / "agent.tar.zst"),
        "trust_store": str(work / "trust.json"),
        "accepted_versions": str(slot / "accepted.json"),
        "tokens_file": str(work / "tokens.json"),
        "work_dir": str(slot / "work"),
        "slot": name,
        "port": port,
        "llm_chain": ["scripted/legal_info"],
        **settings,
    }
    (slot / "runtime.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chenu_agents.runtime", "--config", str(slot / "runtime.json"), "--log-level", "ERROR"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def run_requests(http: aiohttp.ClientSession, url: str, n: int, tag: str) -> tuple[list[float], dict]:
    latencies, routes = [], {}
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Chenu-Groups": "customers"}
    for i in range(n):
        body = {"input": QUESTION, "session_id": f"{tag}-{i // 10}"}
        started = time.perf_counter()
        async with http.post(f"{url}/v1/tasks", json=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status}")
            route = r.headers.get("X-Chenu-Flag-Route", "-")
        latencies.append(time.perf_counter() - started)
        routes[route] = routes.get(route, 0) + 1
    return latencies, routes


def micro(work: Path, calls: int) -> dict[str, float]:
    from openfeature import api

    from chenu_agents.flags import FlagSource, LruStickyStore, ReleaseFlagProvider, evaluation_context

    flags = work / "micro.json"
    set_stage(flags, "legal_info", "internal", variant={"slot": "green", "url": "http://127.0.0.1:1"})
    provider = ReleaseFlagProvider(FlagSource(flags), LruStickyStore())
    domain = f"bench-{uuid.uuid4().hex}"
    api.set_provider_and_wait(provider, domain)
    client = api.get_client(domain)
    ctx = evaluation_context("s-1", "u-1", ["customers"])
    out = {}
    for name, fn in {
        "provider_us": lambda: provider.resolve_string_details("legal_info.release", "stable", ctx),
        "openfeature_client_us": lambda: client.get_string_details("legal_info.release", "stable", ctx),
    }.items():
        fn()
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        out[name] = round((time.perf_counter() - started) / calls * 1e6, 2)
    return out


async def main_async(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="chenu-bench-flags-"))
    procs: list[subprocess.Popen] = []
    prefix = f"chenu-bench:flags:{uuid.uuid4().hex[:8]}:"
    password = REDIS_SECRET.read_text().strip() if REDIS_SECRET.exists() else ""
    redis_client = None
    try:
        stable, variant = signed_bundle(work, "1.2.0"), signed_bundle(work, "1.3.0")
        (work / "tokens.json").write_text(
            json.dumps({"tokens": [{"name": "bench", "role": "caller", "sha256": hash_token(TOKEN)}]})
        )
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), PASSWORD_ENV: password}
        proc, variant_url = start(work, "variant", variant, env)
        procs.append(proc)
        vinfo = {"slot": "variant", "version": "1.3.0", "url": variant_url}
        urls = {}
        configs = {"base": None, "off": "off", "lru": "internal", "forward": "all"}
        if not args.no_redis:
            import redis

            redis_client = redis.Redis(host="127.0.0.1", password=password or None, socket_timeout=1)
            try:
                redis_client.ping()
                configs["redis"] = "internal"
            except redis.RedisError as exc:
                print(f"no Redis ({exc}): skipping the redis configuration", file=sys.stderr)
                redis_client = None
        for name, stage in configs.items():
            settings = {}
            if stage is not None:
                flags = work / f"flags-{name}.json"
                set_stage(flags, "legal_info", stage, variant=vinfo)
                settings["feature_flag"] = {"file": str(flags), "sticky_prefix": prefix}
                if name == "redis":
                    settings["feature_flag"].update(
                        redis_url="redis://127.0.0.1:6379/0", redis_password_env=PASSWORD_ENV
                    )
            proc, urls[name] = start(work, name, stable, env, **settings)
            procs.append(proc)
        for url in [variant_url, *urls.values()]:
            await wait_ready(url, path="/health/live", deadline_s=60)
        latencies: dict[str, list[float]] = {name: [] for name in urls}
        routes: dict[str, dict] = {name: {} for name in urls}
        connector = aiohttp.TCPConnector(limit=4, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as http:
            for name, url in urls.items():  # warm-up
                await run_requests(http, url, 30, f"warm-{name}")
            for r in range(args.rounds):
                for name, url in urls.items():
                    lat, rts = await run_requests(http, url, args.requests, f"r{r}-{name}")
                    latencies[name] += lat
                    for k, v in rts.items():
                        routes[name][k] = routes[name].get(k, 0) + v
        base50, base95 = pct(latencies["base"], 0.5), pct(latencies["base"], 0.95)
        table = {}
        for name, lat in latencies.items():
            p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
            table[name] = {
                "requests": len(lat),
                "p50_ms": round(p50 * 1000, 3),
                "p95_ms": round(p95 * 1000, 3),
                "mean_ms": round(statistics.fmean(lat) * 1000, 3),
                "p50_ratio": round(p50 / base50, 3),
                "p95_ratio": round(p95 / base95, 3),
                "p50_overhead_ms": round((p50 - base50) * 1000, 3),
                "routes": routes[name],
            }
        return {"per_request": table, "evaluation_in_process": micro(work, args.micro_calls)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis_client is not None:
            keys = list(redis_client.scan_iter(match=f"{prefix}*"))
            if keys:
                redis_client.delete(*keys)
            redis_client.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per configuration per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--micro-calls", type=int, default=20_000)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(f"{'config':<9} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p50 x':>7} {'p95 x':>7}  routes")
    for name, row in result["per_request"].items():
        print(
            f"{name:<9} {row['requests']:>6} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} "
            f"{row['p50_ratio']:>7.3f} {row['p95_ratio']:>7.3f}  {row['routes']}"
        )
    print("evaluation in process:", result["evaluation_in_process"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
