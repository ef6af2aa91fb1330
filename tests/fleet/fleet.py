"""The fleet of containers (inventories/fleet, scripts/fleet.sh): hosts, addresses, commands inside them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import requests
import yaml

from tests.e2e.ansible_run import REPO

INVENTORY = REPO / "inventories" / "fleet"
SECRETS = REPO / ".cache" / "fleet" / "secrets"
FLEET_SH = REPO / "scripts" / "fleet.sh"
T = TypeVar("T")
# What a probe raises while a service is still down: a refused connection, a command that failed, an
# answer that is not the JSON it will be.
RETRIED = (AssertionError, OSError, ValueError, KeyError, requests.RequestException, subprocess.SubprocessError)


def _hosts(group: dict) -> dict[str, dict]:
    found = dict(group.get("hosts") or {})
    for child in (group.get("children") or {}).values():
        found.update(_hosts(child or {}))
    return {name: (hostvars or {}) for name, hostvars in found.items()}


def inventory() -> dict:
    return yaml.safe_load((INVENTORY / "hosts.yml").read_text(encoding="utf-8"))


def address(host: str) -> str:
    """The host's fixed address on the fleet network (hosts.yml, fleet_address)."""
    return _hosts(inventory()["all"])[host]["fleet_address"]


def group(name: str) -> list[str]:
    def find(node: dict) -> dict | None:
        for child_name, child in (node.get("children") or {}).items():
            if child_name == name:
                return child or {}
            found = find(child or {})
            if found is not None:
                return found
        return None

    found = find(inventory()["all"])
    assert found is not None, f"inventories/fleet has no group {name}"
    return sorted(_hosts(found))


def group_vars(group_name: str, file: str = "main.yml") -> dict:
    return yaml.safe_load((INVENTORY / "group_vars" / group_name / file).read_text(encoding="utf-8"))


def secret(name: str) -> str:
    """A secret the fleet inventory generated on its first run (group_vars/all/passwords.yml)."""
    return (SECRETS / name).read_text(encoding="utf-8").strip()


def podman(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def sh(host: str, command: str, check: bool = True, timeout: int = 120) -> str:
    """Run a shell command inside a fleet container as root; its standard output."""
    done = podman("exec", host, "/bin/sh", "-c", command, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{host}: `{command}` exited {done.returncode}: {done.stderr or done.stdout}")
    return done.stdout


def psql(host: str, sql: str, db: str = "postgres") -> str:
    """One statement as the postgres superuser over the local socket of a PostgreSQL host; -At output."""
    quoted = sql.replace("'", "'\"'\"'")
    return sh(host, f"runuser -u postgres -- psql -X -At -d {db} -c '{quoted}'").strip()


def wait_until(probe: Callable[[], T | None], timeout: float, interval: float = 0.5, what: str = "") -> T:
    """The first truthy result of probe() within timeout seconds (bounded: fails after that)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except RETRIED as exc:  # a probe that cannot connect yet is retried like a falsy one
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last error: {last})")
        time.sleep(interval)
