"""Traffic between an agent's slots: weights and states behind one interface (HAProxy or Kubernetes).

The HAProxy backend talks to the runtime API on the admin UNIX socket. The Ansible collection
community.general has a `haproxy` module (deploy.yml uses it to take one server in or out), but it sets
one server per task and does not write the server state back. A release needs every server of a
backend set consistently, in an order that never leaves the backend without an UP server carrying
weight, with the weights and states saved to the `server-state-file` after each change so that a
reload or a restart (`load-server-state-from-file`) keeps them. Hence this small client.

Weights are percentages: {blue: 95, green: 5} becomes HAProxy weights 95 and 5, {blue: 100, green: 0}
weights 100 and 0. Every server of the backend takes part in the split: a server not named gets 0.
"""

from __future__ import annotations

import csv
import io
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chenu_agents.errors import ChenuError, Problem
from chenu_agents.files import atomic_write

SLOT_STATES = ("ready", "drain", "maint")
MAX_HAPROXY_WEIGHT = 256

# srv_admin_state bits of `show servers state` (HAProxy's SRV_ADMF_*).
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, hostname
_ADMIN_DRAIN = 0x08 | 0x10  # forced, inherited
# srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping.
_OP_RUNNING = 2


class TrafficError(ChenuError):
    """Traffic cannot be moved as asked; nothing was changed unless the message says otherwise."""


class HAProxyError(TrafficError):
    """The HAProxy runtime API is unreachable or refused a command."""


@dataclass(frozen=True)
class SlotTraffic:
    """One slot as the load balancer sees it: its weight, its admin state and its health."""

    weight: int
    state: str  # ready | drain | maint
    up: bool
    status: str = ""  # HAProxy's own words (UP, DOWN, DRAIN, MAINT, UP 1/2...), or a Kubernetes summary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    """What a traffic change did (or would do, in check mode)."""

    before: dict[str, SlotTraffic]
    after: dict[str, SlotTraffic]
    changed: bool
    details: Mapping[str, Any] = field(default_factory=dict)  # what the backend did: commands, files...

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": {slot: s.to_dict() for slot, s in self.before.items()},
            "after": {slot: s.to_dict() for slot, s in self.after.items()},
            "changed": self.changed,
            **self.details,
        }


def validate_request(
    weights: Mapping[str, Any], slot_states: Mapping[str, str] | None, known: list[str], where: str
) -> tuple[dict[str, int], dict[str, str]]:
    """Whole percentages summing to 100 over known slots, and known states; every problem at once."""
    problems: list[Problem] = []
    clean: dict[str, int] = {}
    for slot, value in weights.items():
        if slot not in known:
            problems.append(Problem(where, f"weights.{slot}", f"a slot of {', '.join(known) or 'nothing'}"))
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value != int(value)
            or not 0 <= value <= 100
        ):
            problems.append(Problem(where, f"weights.{slot}", f"a whole percentage 0-100, got {value!r}"))
            continue
        clean[slot] = int(value)
    if not problems and sum(clean.values()) != 100:
        problems.append(Problem(where, "weights", f"percentages summing to 100, got {sum(clean.values())}"))
    states: dict[str, str] = {}
    for slot, state in (slot_states or {}).items():
        if slot not in known:
            problems.append(Problem(where, f"slot_states.{slot}", f"a slot of {', '.join(known) or 'nothing'}"))
        elif state not in SLOT_STATES:
            problems.append(Problem(where, f"slot_states.{slot}", f"one of {', '.join(SLOT_STATES)}, got {state!r}"))
        else:
            states[slot] = state
    if problems:
        raise TrafficError("traffic split refused", problems)
    return {slot: clean.get(slot, 0) for slot in known}, states


def plan_targets(
    current: Mapping[str, SlotTraffic], weights: Mapping[str, int], states: Mapping[str, str]
) -> dict[str, tuple[int, str]]:
    """Each slot's (weight, state) wanted; the state stays as it is unless `states` names it."""
    return {slot: (weights[slot], states.get(slot, now.state)) for slot, now in current.items()}


def refusals(current: Mapping[str, SlotTraffic], targets: Mapping[str, tuple[int, str]], where: str) -> list[Problem]:
    """Slots that would get weight without being able to serve it."""
    problems = []
    for slot, (weight, state) in targets.items():
        if weight <= 0:
            continue
        now = current[slot]
        if state != "ready":
            problems.append(Problem(where, f"weights.{slot}", f"weight only for a ready slot; {slot} would be {state}"))
        elif now.state == "ready" and not now.up:
            problems.append(
                Problem(
                    where, f"weights.{slot}", f"weight only for a slot that is UP; {slot} is {now.status or 'DOWN'}"
                )
            )
    return problems


@dataclass(frozen=True)
class Step:
    slot: str
    kind: str  # weight | state
    value: int | str

    def describe(self) -> str:
        return f"{self.slot} {self.kind} {self.value}"


def order_steps(current: Mapping[str, SlotTraffic], targets: Mapping[str, tuple[int, str]]) -> list[Step]:
    """The changes, in an order that keeps an UP, ready server with weight at every moment.

    Raised weights first (on servers that are serving), then slots brought back to ready (their weight
    set before they can take traffic), then lowered weights, then drain and maintenance last, once the
    others carry the traffic.
    """
    raise_, ready, lower, leave = [], [], [], []
    for slot, (weight, state) in targets.items():
        now = current[slot]
        if state == "ready" and now.state != "ready":
            if weight != now.weight:
                ready.append(Step(slot, "weight", weight))
            ready.append(Step(slot, "state", "ready"))
            continue
        if weight > now.weight:
            raise_.append(Step(slot, "weight", weight))
        elif weight < now.weight:
            lower.append(Step(slot, "weight", weight))
        if state != now.state:
            leave.append(Step(slot, "state", state))
    return raise_ + ready + lower + leave


def expected_after(
    current: Mapping[str, SlotTraffic], targets: Mapping[str, tuple[int, str]]
) -> dict[str, SlotTraffic]:
    out = {}
    for slot, (weight, state) in targets.items():
        now = current[slot]
        status = {"maint": "MAINT", "drain": "DRAIN"}.get(state, now.status if now.state == "ready" else "?")
        out[slot] = SlotTraffic(weight=weight, state=state, up=now.up and state != "maint", status=status)
    return out


class TrafficBackend(ABC):
    """Where an agent's traffic split lives: read it, and change it in a safe order."""

    where: str = "(task)"

    @abstractmethod
    def read(self) -> dict[str, SlotTraffic]: ...

    @abstractmethod
    def apply(
        self, weights: Mapping[str, Any], slot_states: Mapping[str, str] | None = None, *, check_mode: bool = False
    ) -> Split: ...


# ---------------------------------------------------------------------------------------------- HAProxy


class HAProxyRuntime:
    """The runtime API over the admin socket: one command per connection (non-interactive mode)."""

    def __init__(self, socket_path: str | Path, timeout_s: float = 5.0):
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        if "\n" in line:
            raise HAProxyError(f"one command at a time, got {line!r}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(self.socket_path)
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise HAProxyError(
                f"HAProxy runtime API at {self.socket_path} does not answer: {exc}",
                [Problem("(task)", "socket", "the admin socket of a running HAProxy (stats socket ... level admin)")],
            ) from exc
        return b"".join(chunks).decode(errors="replace")

    def servers_state(self, backend: str | None = None) -> str:
        """`show servers state` as HAProxy prints it (the server-state-file format)."""
        text = self.command("show servers state" + (f" {backend}" if backend else ""))
        if text.splitlines()[:1] != ["1"]:
            problems = [Problem("(task)", "haproxy_backend", f"a backend of this HAProxy, not {backend}")]
            raise HAProxyError(
                f"show servers state: unexpected answer: {text.strip()[:200]}",
                problems if backend and "backend" in text.lower() else [],
            )
        return text

    def stat(self) -> list[dict[str, str]]:
        """`show stat` rows as dicts (pxname, svname, status, weight, check_status...)."""
        text = self.command("show stat")
        if not text.startswith("# "):
            raise HAProxyError(f"show stat: unexpected answer: {text.strip()[:200]}")
        return list(csv.DictReader(io.StringIO(text[2:])))

    def set_server(self, backend: str, server: str, what: str, value: int | str) -> str:
        line = f"set server {backend}/{server} {what} {value}"
        answer = self.command(line).strip()
        # Success is silent, except for "set server ... state" on some versions which stays silent too.
        if answer:
            raise HAProxyError(f"{line}: {answer}")
        return line


def parse_servers_state(text: str, backend: str) -> dict[str, dict[str, str]]:
    """Rows of one backend of a `show servers state` dump, by server name, keyed by the header's names."""
    lines = text.splitlines()
    header = next((line[2:].split() for line in lines if line.startswith("# ")), None)
    if not lines or lines[0].strip() != "1" or header is None:
        raise HAProxyError(f"not a version 1 server state dump: {text.strip()[:200]}")
    rows = {}
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") == backend:
            rows[row["srv_name"]] = row
    return rows


def slot_from_state(row: Mapping[str, str], status: str = "") -> SlotTraffic:
    admin = int(row["srv_admin_state"])
    state = "maint" if admin & _ADMIN_MAINT else "drain" if admin & _ADMIN_DRAIN else "ready"
    up = int(row["srv_op_state"]) == _OP_RUNNING
    if not status:
        status = "MAINT" if state == "maint" else ("DRAIN" if state == "drain" and up else "UP" if up else "DOWN")
    return SlotTraffic(weight=int(row["srv_uweight"]), state=state, up=up, status=status)


class HAProxyTraffic(TrafficBackend):
    """One backend (be_<agent>) whose servers are named by slot."""

    def __init__(
        self,
        backend: str,
        socket_path: str | Path = "/run/haproxy/admin.sock",
        *,
        server_state_file: str | Path | None = None,
        wait_timeout_s: float = 0.0,
        poll_s: float = 0.5,
        runtime: HAProxyRuntime | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.backend = backend
        self.runtime = runtime or HAProxyRuntime(socket_path)
        self.server_state_file = Path(server_state_file) if server_state_file else None
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.sleep = sleep
        self.where = f"haproxy {backend}"

    def read(self) -> dict[str, SlotTraffic]:
        rows = parse_servers_state(self.runtime.servers_state(self.backend), self.backend)
        if not rows:
            raise HAProxyError(
                f"backend {self.backend} has no servers",
                [Problem(self.where, "haproxy_backend", "a backend with servers")],
            )
        status = {r["svname"]: r["status"] for r in self.runtime.stat() if r["pxname"] == self.backend}
        return {name: slot_from_state(row, status.get(name, "")) for name, row in rows.items()}

    def _wait_up(self, slots: list[str]) -> dict[str, SlotTraffic]:
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            current = self.read()
            if all(current[s].up for s in slots) or time.monotonic() >= deadline:
                return current
            self.sleep(self.poll_s)

    def apply(
        self, weights: Mapping[str, Any], slot_states: Mapping[str, str] | None = None, *, check_mode: bool = False
    ) -> Split:
        before = self.read()
        weights_, states = validate_request(weights, slot_states, sorted(before), self.where)
        for slot, weight in weights_.items():
            if weight > MAX_HAPROXY_WEIGHT:
                raise TrafficError(f"weight {weight} for {slot} is above HAProxy's {MAX_HAPROXY_WEIGHT}")
        targets = plan_targets(before, weights_, states)
        # A slot that is merely slow to pass its health checks gets the wait; one that stays down, a refusal.
        waiting = [s for s, (w, st) in targets.items() if w > 0 and st == "ready" and before[s].state == "ready"]
        if not check_mode and self.wait_timeout_s > 0 and any(not before[s].up for s in waiting):
            before = self._wait_up(waiting)
        problems = refusals(before, targets, self.where)
        if problems:
            raise TrafficError("traffic split refused, nothing changed", problems)
        steps = order_steps(before, targets)
        if check_mode or not steps:
            commands = [f"set server {self.backend}/{s.slot} {s.kind} {s.value}" for s in steps]
            return Split(
                before, expected_after(before, targets), bool(steps), {"commands": commands, "state_file": None}
            )

        done: list[str] = []
        readied = [s.slot for s in steps if s.kind == "state" and s.value == "ready"]
        try:
            for step in steps:
                if step.kind == "weight" and step.slot not in readied and int(step.value) < before[step.slot].weight:
                    # About to lower a weight: slots brought back from drain/maint must be UP first.
                    self._ensure_up([s for s in readied if targets[s][0] > 0], done)
                    readied = []
                done.append(self.runtime.set_server(self.backend, step.slot, step.kind, step.value))
            self._ensure_up([s for s in readied if targets[s][0] > 0], done)
        finally:
            state_file = self._save_state() if done else None
        return Split(before, self.read(), True, {"commands": done, "state_file": state_file})

    def _ensure_up(self, slots: list[str], done: list[str]) -> None:
        if not slots:
            return
        current = self._wait_up(slots)
        down = [s for s in slots if not current[s].up]
        if down:
            raise TrafficError(
                "traffic split stopped: slots brought back to ready did not come UP; weights of the other "
                f"slots left as they were. Done so far: {'; '.join(done)}",
                [
                    Problem(self.where, f"weights.{s}", f"UP within {self.wait_timeout_s:g}s, is {current[s].status}")
                    for s in down
                ],
            )

    def _save_state(self) -> str | None:
        """Every backend's state (the file is global), written whole, so a reload or restart keeps it."""
        if self.server_state_file is None:
            return None
        atomic_write(self.server_state_file, self.runtime.servers_state().encode(), 0o644)
        return str(self.server_state_file)


def select_backend(kind: str, **options: Any) -> TrafficBackend:
    if kind == "haproxy":
        return HAProxyTraffic(**options)
    if kind == "kubernetes":
        from chenu_agents.kube import KubernetesTraffic

        return KubernetesTraffic(**options)
    raise TrafficError(f"unknown traffic backend {kind!r}", [Problem("(task)", "backend", "haproxy or kubernetes")])
