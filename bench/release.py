"""Releases on the local stack: how fast a bad canary is taken out, what a blue-green switch costs, and
the machinery's overhead on a full canary.

    .venv/bin/python bench/release.py [--rate 20] [--clients 4] [--skip bad,slow,blue_green,canary]

Drives playbooks/release.yml and rollback.yml on inventories/local exactly as an operator would (the
inventory's short steps: canary 5 % and 25 % for 20 s each, a check every second over a 10 s window,
the runtime scraped every second), while this process watches HAProxy's weights every 50 ms on its admin socket:

1. bad version: from the moment the canary takes traffic (its weight goes above 0) to the moment it is
   back at 0, next to the configured analysis interval, and to Argo Rollouts' and Flagger's 60 s default
   intervals (Flagger's documented rollback: interval x threshold, about 10 min). The same for a version
   three times slower than stable and no error (bench/analysis_latency.py covers other scales).
2. blue-green: requests failed while the traffic switches at a fixed load (keep-alive clients), and how
   long the switch takes (the playbook's own measure, and the weights seen flipping), then the switch back.
3. a full good canary: its wall time, and the time from first weight to 100 %, against its pauses' sum.

Needs the stack the e2e tests use (site.yml ran); leaves it serving a good version.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.e2e.ansible_run import run_playbook  # noqa: E402
from tests.e2e.release_support import (  # noqa: E402
    make_version,
    next_version,
    release,
    servers,
    stable_slot,
    start_loadgen,
    stop_loadgen,
)
from tests.e2e.test_release import make_slow_version, stable_p95  # noqa: E402

INVENTORY_RELEASE = REPO / "inventories" / "local" / "group_vars" / "all" / "release.yml"


class WeightWatcher(threading.Thread):
    """Polls `show servers state` every 50 ms and keeps (t, {slot: weight}) on each change."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.changes: list[tuple[float, dict[str, int]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        last = None
        while not self._halt.is_set():
            weights = {slot: s["weight"] for slot, s in servers().items()}
            if weights != last:
                self.changes.append((time.monotonic(), weights))
                last = weights
            time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def first(self, slot: str, test, after: float = 0.0) -> float | None:
        return next((t for t, w in self.changes if t >= after and test(w.get(slot, 0))), None)


def bad_canary(work: Path, settings: dict) -> dict:
    stable = stable_slot()
    candidate = next(s for s in servers() if s != stable)
    watcher = WeightWatcher()
    watcher.start()
    run = release(make_version(work, next_version(), bad=True), "canary")
    watcher.stop()
    on = watcher.first(candidate, lambda w: w > 0)
    off = watcher.first(candidate, lambda w: w == 0, after=on or 0) if on else None
    verdict = re.search(r"(canary step \d/\d: \d+ %: FAIL[^\n]*)", run.output)
    return {
        "rc": run.returncode,
        "taking_traffic_to_zero_s": round(off - on, 2) if on and off else None,
        "playbook_s": round(run.seconds, 1),
        "verdict_line": verdict[1] if verdict else None,
        "analysis": settings["release_analysis"],
    }


def slow_canary(work: Path, settings: dict) -> dict:
    """A version whose every answer takes stable's p95 twice more (its p95 about 3x stable's), no error."""
    stable = stable_slot()
    candidate = next(s for s in servers() if s != stable)
    added_ms = round(2 * stable_p95(stable) * 1000, 2)
    watcher = WeightWatcher()
    watcher.start()
    run = release(make_slow_version(work, next_version(), added_ms), "canary")
    watcher.stop()
    on = watcher.first(candidate, lambda w: w > 0)
    off = watcher.first(candidate, lambda w: w == 0, after=on or 0) if on else None
    verdict = re.search(r"(canary step \d/\d: \d+ %: FAIL[^\n]*)", run.output)
    return {
        "rc": run.returncode,
        "added_latency_ms": added_ms,
        "taking_traffic_to_zero_s": round(off - on, 2) if on and off else None,
        "playbook_s": round(run.seconds, 1),
        "verdict_line": verdict[1] if verdict else None,
    }


def blue_green(work: Path, rate: int, clients: int) -> dict:
    before = stable_slot()
    out = work / "bg-load.json"
    proc = start_loadgen(out, rate, clients, duration=900)
    watcher = WeightWatcher()
    watcher.start()
    try:
        time.sleep(3)
        run = release(make_version(work, next_version()), "blue_green", "-e", "release_synthetic_load=false")
        time.sleep(3)
        back = run_playbook("playbooks/rollback.yml", "-e", "agent=legal_info", "-e", '{"reason": "bench switch-back"}')
        time.sleep(3)
    finally:
        summary = stop_loadgen(proc, out)
        watcher.stop()
    switch = re.search(r"switched to slot \w+ in ([\d.]+) s", run.output)
    switch_back = re.search(r"rolled back from .*? in ([\d.]+) s", back.output, re.S)
    flips = [(t, w) for t, w in watcher.changes]
    # Weights seen by the watcher: the switch is from the first change that raised the new slot to the
    # change that left the old one at 0 (traffic_split raises first, lowers last).
    new = next(s for s in servers() if s != before)
    up = watcher.first(new, lambda w: w == 100)
    down = watcher.first(before, lambda w: w == 0, after=(up or 0) - 5)
    return {
        "rc": (run.returncode, back.returncode),
        "load": {k: summary[k] for k in ("requests", "ok", "failed", "no_backend")}
        | {"rate": rate, "clients": clients},
        "switch_s_playbook": float(switch[1]) if switch else None,
        "switch_back_s_playbook": float(switch_back[1]) if switch_back else None,
        "switch_s_seen": round(abs(down - up), 3) if up and down else None,
        "weight_changes_seen": len(flips),
    }


def good_canary(work: Path, settings: dict) -> dict:
    stable = stable_slot()
    candidate = next(s for s in servers() if s != stable)
    watcher = WeightWatcher()
    watcher.start()
    run = release(make_version(work, next_version()), "canary")
    watcher.stop()
    first = watcher.first(candidate, lambda w: w > 0)
    full = watcher.first(candidate, lambda w: w == 100, after=first or 0) if first else None
    pauses = sum(step["pause"] for step in settings["canary_steps"])
    return {
        "rc": run.returncode,
        "playbook_s": round(run.seconds, 1),
        "first_weight_to_100_s": round(full - first, 2) if first and full else None,
        "pauses_s": pauses,
        "overhead_in_steps_s": round(full - first - pauses, 2) if first and full else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip", default="")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    settings = yaml.safe_load(INVENTORY_RELEASE.read_text())
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        work = Path(tmp)
        if "bad" not in skip:
            results["bad_canary"] = bad_canary(work, settings)
        if "slow" not in skip:
            results["slow_canary"] = slow_canary(work, settings)
        if "blue_green" not in skip:
            results["blue_green"] = blue_green(work, args.rate, args.clients)
        if "canary" not in skip:
            results["good_canary"] = good_canary(work, settings)
    interval = settings["release_analysis"]["interval"]
    print(json.dumps(results, indent=2))
    if "bad_canary" in results:
        r = results["bad_canary"]
        print(
            f"\nbad version taking traffic -> canary at 0 %: {r['taking_traffic_to_zero_s']} s "
            f"(analysis every {interval} s over {settings['release_analysis']['window']} s, scrape "
            f"{settings['monitoring_runtime_scrape_interval']}); Argo Rollouts / Flagger default interval 60 s, "
            "Flagger rollback ~ interval x threshold ~ 10 min"
        )
    if "slow_canary" in results:
        r = results["slow_canary"]
        print(
            f"version 3x slower (+{r['added_latency_ms']} ms an answer, no error) taking traffic -> canary at 0 %: "
            f"{r['taking_traffic_to_zero_s']} s; {(r['verdict_line'] or 'no FAIL line')[:160]}"
        )
    if "blue_green" in results:
        r = results["blue_green"]
        print(
            f"blue-green at {r['load']['rate']} req/s ({r['load']['clients']} keep-alive clients): "
            f"{r['load']['failed']} failed / {r['load']['requests']} requests ({r['load']['no_backend']} without a backend); "
            f"switch {r['switch_s_playbook']} s (weights seen flipping within {max(r['switch_s_seen'] or 0, 0.05)} s), "
            f"switch back {r['switch_back_s_playbook']} s"
        )
    if "good_canary" in results:
        r = results["good_canary"]
        print(
            f"full canary: {r['playbook_s']} s wall (build, sign, gates, deploy, steps, report); "
            f"first weight -> 100 %: {r['first_weight_to_100_s']} s for {r['pauses_s']} s of pauses "
            f"(overhead {r['overhead_in_steps_s']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
