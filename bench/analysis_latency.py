"""How fast the rollout analysis takes out a slower (or failing) canary, at every latency scale.

    .venv/bin/python bench/analysis_latency.py [--rate 56] [--repeat 1]

A private Prometheus (tests/unit/private_prometheus.py, its own port and TSDB, nothing shared) scrapes
synthetic slots every second, and chenu_agents.analysis watches them with the local inventory's
settings (inventories/local/group_vars/all/release.yml: 10 s window, a check every second, 10 requests
for a verdict) through its canary steps (5 % for 20 s, then 25 % for 20 s). Every case is one agent: a
stable slot at 30 ms, 300 ms or 3 s per request (10 % log-normal jitter) and a canary 1.5x, 2x, 3x or
10x slower, no errors; plus an error regression (20 % errors, stable speed). Requests start at the
steps' rates and are observed when they end (a 9 s request is seen 9 s after it started); a request
longer than the LLM timeout (30 s) ends there as an error, as the runtime answers it.

Printed per case: the verdict of the watch (`fail` with the criteria that decided it; `inconclusive` at
the end of a step, which the release also takes out; `pass`) and the seconds from the canary's first
request to that verdict. On the real stack, add what the playbook takes to put the canary at 0 % after a
verdict (bench/release.py measures both ends for the error case).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from chenu_agents import analysis  # noqa: E402
from tests.unit.private_prometheus import Exporter, PrivatePrometheus  # noqa: E402

INVENTORY_RELEASE = REPO / "inventories" / "local" / "group_vars" / "all" / "release.yml"
STABLE_LATENCIES = (0.03, 0.3, 3.0)
FACTORS = (1.5, 2.0, 3.0, 10.0)
TIMEOUT_S = 30.0
STABLE, CANARY = analysis.Slot("blue", "1.0.0"), analysis.Slot("green", "1.1.0")


class Slot(threading.Thread):
    """Requests started at `share` of `rate` per second, each observed when it ends."""

    def __init__(self, metrics, agent, slot, rate, share, latency, error_ratio=0.0, jitter=0.1, seed=0):
        super().__init__(daemon=True)
        self.metrics, self.labels = metrics, {"agent": agent, "version": slot.version, "slot": slot.slot}
        self.rate, self.share, self.latency, self.error_ratio, self.jitter = rate, share, latency, error_ratio, jitter
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.first_start: float | None = None
        for code in ("200", "502"):  # as the runtime does when it loads a version
            metrics.requests.labels(**self.labels, code=code)
        metrics.duration.labels(**self.labels)

    def run(self) -> None:
        pending: list[tuple[float, float, bool]] = []
        credit, last, started = 0.0, time.monotonic(), 0
        while not self.halt.is_set():
            now = time.monotonic()
            credit += (now - last) * self.rate * self.share
            last = now
            while credit >= 1:
                credit -= 1
                started += 1
                if self.first_start is None:
                    self.first_start = time.time()
                duration = self.latency * math.exp(self.rng.gauss(0, self.jitter))
                failed = int(started * self.error_ratio) > int((started - 1) * self.error_ratio)
                if duration > TIMEOUT_S:
                    duration, failed = TIMEOUT_S, True
                heapq.heappush(pending, (now + duration, duration, failed))
            while pending and pending[0][0] <= now:
                _end, duration, failed = heapq.heappop(pending)
                self.metrics.requests.labels(**self.labels, code="502" if failed else "200").inc()
                self.metrics.duration.labels(**self.labels).observe(duration)
                if not failed:
                    self.metrics.tokens.labels(**self.labels, kind="input").inc(80)
                    self.metrics.tokens.labels(**self.labels, kind="output").inc(20)
                    self.metrics.answers.labels(**self.labels, provider="scripted/a").inc()
            self.halt.wait(0.005)


def watch_case(prom_url: str, agent: str, settings: dict, steps: list[dict], slots: dict, out: dict) -> None:
    a = settings["release_analysis"]
    s = analysis.Settings(
        agent=agent, canary=CANARY, baseline=STABLE, window=int(a["window"]), min_requests=int(a["min_requests"]),
        scrape_interval=float(a["scrape_interval"]), max_latency_ratio=float(a.get("max_latency_ratio", 2.0)),
    )  # fmt: skip
    prom = analysis.Prometheus(prom_url)
    for step in steps:
        if not step["pause"]:
            break
        slots["canary"].share, slots["stable"].share = step["weight"] / 100, 1 - step["weight"] / 100
        result = analysis.watch(prom, s, duration=float(step["pause"]), interval=float(a["interval"]))
        if result.verdict != "pass":
            first = slots["canary"].first_start
            out.update(
                verdict=result.verdict,
                decided_by=result.decided_by,
                step=f"{step['weight']} %",
                seconds=round(time.time() - first, 1) if first else None,
                reason=result.reasons[0] if result.reasons else "",
            )
            return
    out.update(verdict="pass", decided_by=[], step="all", seconds=None, reason="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=56.0, help="requests per second, all slots (local: 48 + 4 + 4)")
    parser.add_argument("--warmup", type=float, default=12.0, help="seconds of stable alone before the canary")
    args = parser.parse_args()
    settings = yaml.safe_load(INVENTORY_RELEASE.read_text())
    steps = settings["canary_steps"]
    cases = [(f"lat_{int(s * 1000)}ms_x{f:g}", s, s * f, 0.0) for s in STABLE_LATENCIES for f in FACTORS]
    cases.append(("errors_20pct", 0.003, 0.003, 0.2))
    exporter = Exporter()
    slots: dict[str, dict[str, Slot]] = {}
    for i, (name, stable_s, canary_s, errors) in enumerate(cases):
        agent = name.replace(".", "_")
        slots[name] = {
            "stable": Slot(exporter.metrics, agent, STABLE, args.rate, 1.0, stable_s, seed=2 * i),
            "canary": Slot(exporter.metrics, agent, CANARY, args.rate, 0.0, canary_s, errors, seed=2 * i + 1),
        }
        for slot in slots[name].values():
            slot.start()
    results: dict[str, dict] = {name: {} for name, *_ in cases}
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        prom = PrivatePrometheus(Path(tmp), [f"127.0.0.1:{exporter.port}"])
        try:
            time.sleep(args.warmup)
            watchers = [
                threading.Thread(
                    target=watch_case,
                    args=(prom.url, name.replace(".", "_"), settings, steps, slots[name], results[name]),
                )
                for name, *_ in cases
            ]
            for w in watchers:
                w.start()
            for w in watchers:
                w.join()
        finally:
            prom.stop()
            for pair in slots.values():
                for slot in pair.values():
                    slot.halt.set()
            exporter.close()
    print(json.dumps(results, indent=2))
    a = settings["release_analysis"]
    print(
        f"\n{args.rate:g} requests/s, canary steps {[(s['weight'], s['pause']) for s in steps]}, window {a['window']} s, "
        f"check every {a['interval']} s, {a['min_requests']} requests for a verdict, 1 s scrapes, "
        f"latency limit {a.get('max_latency_ratio', 2.0)}x p95"
    )
    print(f"{'case':<22} {'verdict':<13} {'decided by':<32} {'step':<6} {'s from first canary request':>28}")
    for name, *_ in cases:
        r = results[name]
        print(
            f"{name:<22} {r.get('verdict', '?'):<13} {', '.join(r.get('decided_by') or []) or '-':<32} "
            f"{r.get('step', '-'):<6} {r.get('seconds') if r.get('seconds') is not None else '-':>28}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
