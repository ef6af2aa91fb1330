"""Disaster recovery: the RTO and RPO each drill measures, next to seed 000 §7.2's 4 h and 1 h.

    .venv/bin/python bench/dr.py [--json results.json] [-k failover]

Runs the three drills of tests/e2e/test_dr.py on this host against the stack already provisioned
(CHENU_E2E_REUSE=1; each drill builds and removes clusters, an HAProxy, a Redis and a runtime of its own)
and prints, per scenario, the measured RTO and RPO, the objective and the margin. Failover: a crashed
primary (immediate stop) with a heartbeat written every 100 ms through the endpoint; point in time: a
restore to just before a chosen instant; region: PostgreSQL from the S3 repository, Redis from its RDB
snapshot, the runtime from the bundle store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RTO_OBJECTIVE = 4 * 3600
RPO_OBJECTIVE = 3600
SCENARIOS = ("database_failover", "point_in_time_restore", "region_rebuild")


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("-k", default="", help="pytest -k expression (a subset of the drills)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        results_file = Path(scratch) / "dr.json"
        env = {**os.environ, "CHENU_E2E_REUSE": "1", "CHENU_DR_RESULTS": str(results_file)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_dr.py"]
        if args.k:
            command += ["-k", args.k]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        results = json.loads(results_file.read_text()) if results_file.exists() else {}

    print(f"{'scenario':<24}{'RTO':>12}{'objective':>12}{'RPO':>12}{'objective':>12}{'drill':>10}")
    for scenario in SCENARIOS:
        figures = results.get(scenario)
        if not figures:
            print(f"{scenario:<24}{'not run':>12}")
            continue
        print(
            f"{scenario:<24}{_human(figures['rto_seconds']):>12}{'4 h':>12}"
            f"{_human(figures['rpo_seconds']):>12}{'1 h':>12}{_human(figures['drill_seconds']):>10}"
        )
        extra = {k: v for k, v in figures.items() if k not in ("rto_seconds", "rpo_seconds", "drill_seconds")}
        print(f"{'':<24}{json.dumps(extra, sort_keys=True)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
