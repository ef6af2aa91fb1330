"""What the release e2e tests and bench/release.py share: HAProxy's view of an agent's slots, agent
versions made from an example (good or faulty), and the shared stack's state checked before and after."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import yaml

from tests.e2e.ansible_run import REPO

HAPROXY_SOCKET = "/run/haproxy/admin.sock"
FRONTEND = "http://127.0.0.1:8001"  # inventories/local/group_vars/load_balancer/main.yml
PROMETHEUS = "http://127.0.0.1:9090"
SLOT_PORTS = {"blue": 8101, "green": 8102}  # inventories/local/group_vars/runtime/slots.yml
EXAMPLE = REPO / "examples" / "agents" / "legal_info"


def haproxy(command: str, sock: str = HAPROXY_SOCKET) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def servers(backend: str = "be_legal_info") -> dict[str, dict[str, int]]:
    """{slot: {weight, op_state (2 = up), admin_state (0 = ready)}} from `show servers state`."""
    out = {}
    for line in haproxy(f"show servers state {backend}").splitlines():
        fields = line.split()
        if len(fields) > 8 and fields[1] == backend:
            out[fields[3]] = {"weight": int(fields[7]), "op_state": int(fields[5]), "admin_state": int(fields[6])}
    return out


def stable_slot(backend: str = "be_legal_info") -> str:
    """The slot taking the traffic (highest weight)."""
    state = servers(backend)
    return max(state, key=lambda slot: state[slot]["weight"])


def set_weights(weights: dict[str, int], backend: str = "be_legal_info") -> None:
    for slot, weight in weights.items():
        haproxy(f"set server {backend}/{slot} weight {weight}")


def make_version(
    dest: Path, version: str, *, error_rate: float = 0.0, added_latency_ms: int = 0, src: Path = EXAMPLE
) -> Path:
    """A copy of the example agent at `version`; a fault profile makes a bad one (no provider retries, so
    the injected faults reach the caller: docs/agent_format.md, providers.Chain)."""
    folder = dest / f"{src.name}-{version}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(src, folder)
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["agent"]["version"] = version
    if error_rate or added_latency_ms:
        config["agent"]["llm"]["parameters"]["retries"] = 0
        script_path = folder / "tests" / "scripted.yaml"
        script = yaml.safe_load(script_path.read_text(encoding="utf-8"))
        script["fault_profile"] = {"error_rate": error_rate, "added_latency_ms": added_latency_ms}
        script_path.write_text(yaml.safe_dump(script, allow_unicode=True, sort_keys=False), encoding="utf-8")
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


def supervisor_status() -> dict[str, str]:
    done = subprocess.run(["supervisorctl", "status"], capture_output=True, text=True, check=False, timeout=30)
    return {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if len(line.split()) > 1}


def service_running(name: str) -> bool:
    done = subprocess.run(["service", name, "status"], capture_output=True, text=True, check=False, timeout=30)
    return done.returncode == 0
