"""site.yml on the local inventory, twice: the cold run's wall time, then the warm run's wall time
and its `changed` count (which must be 0).

    .venv/bin/python bench/site_runtime.py [--json]

"Cold" is the first run of this invocation: truly cold on a fresh host, otherwise it re-converges
whatever the host has drifted to (e.g. the passwords a molecule scenario set).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.ansible_run import run_playbook


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    runs = []
    for label in ("cold", "warm"):
        run = run_playbook("playbooks/site.yml")
        if run.returncode != 0:
            print(f"site.yml {label} run failed (rc={run.returncode}):\n{run.tail()}", file=sys.stderr)
            return 1
        runs.append((label, run))

    result = {
        label: {"seconds": round(run.seconds, 1), "changed": run.total("changed"), "ok": run.total("ok")}
        for label, run in runs
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'run':<6}{'wall time':>12}{'changed':>10}{'ok':>6}")
        for label, row in result.items():
            print(f"{label:<6}{row['seconds']:>11.1f}s{row['changed']:>10}{row['ok']:>6}")
    return 0 if result["warm"]["changed"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
