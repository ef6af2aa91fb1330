"""One tool call in the WASI sandbox, cold and warm, against the same handler called natively.

    .venv/bin/python bench/sandbox.py [--calls 30]

Cold (compile) is the first call ever on a host: the interpreter is compiled and cached. Cold (cache)
is the first call of a new process once the cache exists. Warm is every later call in that process.
Native in-process is the handler called directly; native subprocess is the same runner in a fresh
host CPython, the nearest native equivalent of a fresh interpreter per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from chenu_agents.sandbox import _RUNNER, Sandbox

HANDLER = """
import math

def handle(args):
    volume = args["length_m"] * args["width_m"] * args["thickness_m"]
    bags = math.ceil(volume * 1000 / 25 / 1.2)
    return {"volume_m3": round(volume, 3), "bags": bags}
"""
ARGS = {"length_m": 10, "width_m": 8, "thickness_m": 0.15}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30)
    calls = parser.parse_args().calls
    rows: list[tuple[str, list[float], str]] = []

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        box = Sandbox(cache_dir=cache)
        result = box.run(HANDLER, ARGS)
        cold_compile = time.perf_counter() - started
        assert result.ok, result.error
        rows.append(("sandbox cold (compile + call)", [cold_compile], f"compile {box.load_s * 1000:.0f} ms"))
        box.close()

        started = time.perf_counter()
        box = Sandbox(cache_dir=cache)
        result = box.run(HANDLER, ARGS)
        cold_cache = time.perf_counter() - started
        rows.append(("sandbox cold (cached module)", [cold_cache], f"load {box.load_s * 1000:.1f} ms"))

        warm = []
        for _ in range(calls):
            started = time.perf_counter()
            result = box.run(HANDLER, ARGS)
            warm.append(time.perf_counter() - started)
            assert result.ok and result.result == {"volume_m3": 12.0, "bags": 400}, result
        rows.append(("sandbox warm", warm, ""))
        box.close()

    namespace: dict = {}
    exec(compile(HANDLER, "handler.py", "exec"), namespace)  # noqa: S102 (the native baseline)
    native = []
    for _ in range(max(calls, 1000)):
        started = time.perf_counter()
        namespace["handle"](json.loads(json.dumps(ARGS)))
        native.append(time.perf_counter() - started)
    rows.append(("native in-process", native, "same handler, JSON round trip"))

    process = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-S", "-I", "-c", _RUNNER, "n", "handle", HANDLER, json.dumps(ARGS)],
            check=True,
            capture_output=True,
        )
        process.append(time.perf_counter() - started)
    rows.append(("native subprocess", process, "fresh host CPython per call"))

    base = statistics.median(native)
    print(f"{'case':32} {'median ms':>10} {'p95 ms':>10} {'x native':>10}  note")
    for name, values, note in rows:
        median = statistics.median(values)
        p95 = percentile(values, 0.95)
        print(f"{name:32} {median * 1000:10.3f} {p95 * 1000:10.3f} {median / base:10.0f}  {note}")
    ratio = statistics.median(warm) / statistics.median(process)
    print(f"\nsandbox warm / native subprocess: {ratio:.2f}")


if __name__ == "__main__":
    main()
