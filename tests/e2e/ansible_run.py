"""Run a playbook on the local inventory and read its PLAY RECAP (shared by the e2e tests and bench/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL_INVENTORY = REPO / "inventories" / "local"
SECRETS = REPO / ".cache" / "local" / "secrets"
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$", re.MULTILINE)


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def total(self, counter: str) -> int:
        return sum(host.get(counter, 0) for host in self.recap.values())

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """{host: {ok, changed, unreachable, failed, skipped, rescued, ignored}} from the last PLAY RECAP."""
    _, marker, recap = output.rpartition("PLAY RECAP")
    if not marker:
        return {}
    return {
        match["host"]: {k: int(v) for k, v in (pair.split("=") for pair in match["counts"].split())}
        for match in RECAP_LINE.finditer(recap)
    }


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def run_playbook(
    playbook: str = "playbooks/site.yml", *args: str, timeout: int = 3600, inventory: Path = LOCAL_INVENTORY
) -> PlaybookRun:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [_tool("ansible-playbook"), "-i", str(inventory), playbook, *args]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    output = done.stdout + ("\n" + done.stderr if done.stderr else "")
    return PlaybookRun(done.returncode, output, seconds, parse_recap(done.stdout))


def local_secret(name: str) -> str:
    """A secret the local inventory generated on its first run (inventories/local/group_vars/all/passwords.yml)."""
    return (SECRETS / name).read_text(encoding="utf-8").strip()
