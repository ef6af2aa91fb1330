"""What the release e2e tests and bench/release.py share: HAProxy's view of an agent's slots, agent
versions made from an example (good or faulty), and the shared stack's state checked before and after."""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.e2e.ansible_run import REPO, SECRETS, PlaybookRun, local_secret, run_playbook

HAPROXY_SOCKET = "/run/haproxy/admin.sock"
FRONTEND = "http://127.0.0.1:8001"  # inventories/local/group_vars/load_balancer/main.yml
PROMETHEUS = "http://127.0.0.1:9090"
SLOT_PORTS = {"blue": 8101, "green": 8102}  # inventories/local/group_vars/runtime/slots.yml
EXAMPLE = REPO / "examples" / "agents" / "legal_info"
SLOTS_DIR = "/var/lib/chenu-agents/slots/legal_info"
FLAGS_FILE = "/etc/chenu-agents/runtime/flags.json"  # inventories/local/group_vars/all/release.yml
# A Sunday at 03:00 in Toronto: inside seed 000 §5.3's window (inventories/local: chenu_maintenance_windows).
INSIDE_MAINTENANCE_WINDOW = "2026-11-22T03:00:00-05:00"


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


# A bad version (make_version(bad=True)): 20 % of its LLM calls fail, no retries, so about 20 % of its
# requests fail. Its tests are thinned to three scenarios that make one LLM call each, and the fault
# profile's random sequence (seed 11) lets those three calls through: the version passes its gates and
# fails in front of users, the regression a release's analysis is there to catch.
BAD_TESTS = ("edge_hors_champ.yaml", "error_question_incomprehensible.yaml", "security_prompt_injection.yaml")
BAD_FAULTS = {"error_rate": 0.2, "added_latency_ms": 0, "seed": 11}


def make_version(dest: Path, version: str, *, bad: bool = False, src: Path = EXAMPLE) -> Path:
    """A copy of the example agent at `version`, in `<dest>/<version>/<agent>` (deploy.yml's layout)."""
    folder = dest / version / src.name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(src, folder)
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["agent"]["version"] = version
    if bad:
        config["agent"]["llm"]["parameters"]["retries"] = 0
        script_path = folder / "tests" / "scripted.yaml"
        script = yaml.safe_load(script_path.read_text(encoding="utf-8"))
        script["fault_profile"] = dict(BAD_FAULTS)
        script_path.write_text(yaml.safe_dump(script, allow_unicode=True, sort_keys=False), encoding="utf-8")
        shutil.rmtree(folder / "tests" / "integration")
        for case in (folder / "tests" / "scenarios").glob("*.yaml"):
            if case.name not in BAD_TESTS:
                case.unlink()
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


def supervisor_status() -> dict[str, str]:
    done = subprocess.run(["supervisorctl", "status"], capture_output=True, text=True, check=False, timeout=30)
    return {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if len(line.split()) > 1}


def service_running(name: str) -> bool:
    done = subprocess.run(["service", name, "status"], capture_output=True, text=True, check=False, timeout=30)
    return done.returncode == 0


@contextmanager
def local_registry(migrate: bool = False) -> Iterator:
    """The local stack's registry database (inventories/local: chenu_registry), as the registry role."""
    from chenu_agents.registry import Registry

    settings = {"host": "127.0.0.1", "port": 5432, "dbname": "registry", "user": "registry"}
    with Registry({**settings, "password": local_secret("postgresql_registry")}, migrate=migrate) as registry:
        yield registry


def registry_versions(agent: str = "legal_info") -> dict[str, str]:
    """{version: state} from the registry."""
    with local_registry() as registry:
        return {v.version: v.state for v in registry.versions(agent)}


def registry_audit(agent: str, version: str | None) -> list[dict]:
    """The audit trail of one version (version None: the agent's rows without a version, e.g. lock takeovers)."""
    with local_registry() as registry:
        entries = registry.audit(agent, version) if version else registry.audit(agent)
        return [e.to_dict() for e in entries if version or e.version is None]


def next_version(agent: str = "legal_info") -> str:
    """A patch version above every version the registry or a slot of the agent has seen."""
    from chenu_agents import semver

    seen = list(registry_versions(agent))
    for accepted in Path(SLOTS_DIR).glob("*/runtime/accepted_versions.json"):
        seen += [v for a, v in json.loads(accepted.read_text()).items() if a == agent]
    highest = max(seen or ["1.2.0"], key=functools.cmp_to_key(semver.compare))
    return semver.bump(highest, "bug_fix")


def served_version(slot: str) -> str | None:
    import requests

    try:
        text = requests.get(f"http://127.0.0.1:{SLOT_PORTS[slot]}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    found = re.search(r'chenu_agent_info\{[^}]*version="([^"]+)"[^}]*\} 1', text)
    return found[1] if found else None


def start_loadgen(out: Path, rate: int = 20, clients: int = 4, duration: int = 600) -> subprocess.Popen:
    """Keep-alive clients through the frontend (python -m chenu_agents.loadgen) until stop_loadgen."""
    return subprocess.Popen(
        [sys.executable, "-m", "chenu_agents.loadgen", "--url", FRONTEND, "--token-file", str(SECRETS / "runtime_caller"),
         "--rate", str(rate), "--clients", str(clients), "--duration", str(duration), "--session-header",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_loadgen(proc: subprocess.Popen, out: Path) -> dict:
    """SIGTERM ends the load cleanly; its summary is then read back."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return json.loads(out.read_text())


def ensure_serving() -> None:
    """Both slots running and one of them taking the traffic, whatever earlier runs left (on a machine
    where nothing was ever deployed, neither slot runs): a slot that does not run gets the example
    through deploy.yml, which also routes the traffic to it."""
    status = supervisor_status()
    for slot in SLOT_PORTS:
        if status.get(f"chenu-agent-legal_info-{slot}") != "RUNNING":
            run = run_playbook("playbooks/deploy.yml", "-e", f"slot={slot}", "-e", "allow_rollback=true")
            if run.returncode != 0:
                pytest.fail(f"deploy.yml into {slot} failed (rc={run.returncode}):\n{run.tail()}", pytrace=False)
    state = servers()
    stable = stable_slot()
    if state[stable]["weight"] == 0:
        set_weights({stable: 100})


@pytest.fixture
def stack_serving(site_run):
    """Before and after a test: both slots run, HAProxy sends everything to one of them, up. Release test
    modules use it as `pytestmark = pytest.mark.usefixtures("stack_serving")`; before the test, it
    makes that so when nothing was deployed yet."""
    ensure_serving()
    for when in ("before", "after"):
        status = supervisor_status()
        assert all(status.get(f"chenu-agent-legal_info-{s}") == "RUNNING" for s in ("blue", "green")), (when, status)
        state = servers()
        stable = stable_slot()
        assert state[stable]["weight"] == 100 and state[stable]["op_state"] == 2, (when, state)
        assert served_version(stable) is not None, (when, stable)
        if when == "before":
            yield


def release_args(folder: Path, strategy: str = "canary", *extra: str) -> list[str]:
    return [
        "playbooks/release.yml",
        "-e",
        "agent=legal_info",
        "-e",
        f"release_strategy={strategy}",
        "-e",
        f"source={folder}",
        *extra,
    ]


def release(folder: Path, strategy: str = "canary", *extra: str) -> PlaybookRun:
    """playbooks/release.yml of the agent folder on the local inventory, waited for."""
    return run_playbook(*release_args(folder, strategy, *extra))


def start_release(folder: Path, log: Path, strategy: str = "canary", *extra: str) -> subprocess.Popen:
    """The same, in the background, its output in `log` (for tests that act while it runs)."""
    command = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "inventories/local",
               *release_args(folder, strategy, *extra)]  # fmt: skip
    env = {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin:/usr/sbin:/sbin",
    }
    with log.open("w") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)


def load_summary(output: str) -> dict:
    """The release's synthetic load (inventories/local: release_synthetic_load), summed over its profiles."""
    files = sorted(set(re.findall(r"(/\S+/reports/load/[^/\s']+/load-\d+\.json)", output)))
    assert files, output[-3000:]
    summaries = [json.loads(Path(f).read_text()) for f in files]
    return {k: sum(s[k] for s in summaries) for k in ("requests", "ok", "failed", "no_backend")}
