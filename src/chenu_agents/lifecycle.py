"""The agent lifecycle (seed 000 §1): the state machine as data, and the transitions of the registry.

The machine lives in `data/lifecycle.yaml` (states with the seed's allowed_actions and transitions_to,
and what every action does); `plan()` is the pure part: given a version's current state and an action
or a target state, the step to take, or a `LifecycleError` naming the allowed actions. `apply()` carries
a request out against the registry: it runs the gates (chenu_agents.agent_tests) before taking the
agent's lock, then, under the lock, checks the state again, writes the new state and one audit row.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from . import semver
from .errors import LifecycleError, Problem

REGISTER = "register"


@cache
def machine() -> dict[str, Any]:
    """The state machine, checked for consistency (each state's lists match the actions)."""
    data = yaml.safe_load(resources.files("chenu_agents").joinpath("data/lifecycle.yaml").read_text("utf-8"))
    check_machine(data)
    return data


def check_machine(data: Mapping[str, Any]) -> None:
    states, actions = data["states"], data["actions"]
    problems = []
    for name, action in actions.items():
        for src in action["from"]:
            if src not in states:
                problems.append(Problem("lifecycle.yaml", f"actions.{name}.from", f"a state, not {src!r}"))
        if action["to"] is not None and action["to"] not in states:
            problems.append(Problem("lifecycle.yaml", f"actions.{name}.to", f"a state, not {action['to']!r}"))
    for name, state in states.items():
        allowed = sorted(a for a, spec in actions.items() if name in spec["from"])
        if sorted(state["allowed_actions"]) != allowed:
            problems.append(
                Problem("lifecycle.yaml", f"states.{name}.allowed_actions", f"the actions from it: {allowed}")
            )
        targets = sorted({spec["to"] for spec in actions.values() if name in spec["from"] and spec["to"]})
        if sorted(state["transitions_to"]) != targets:
            problems.append(Problem("lifecycle.yaml", f"states.{name}.transitions_to", f"the targets: {targets}"))
    for name, state in states.items():
        if state["visibility"] not in data.get("visibility", {}):
            problems.append(
                Problem("lifecycle.yaml", f"states.{name}.visibility", "a key of visibility (the roles it means)")
            )
    if problems:
        raise LifecycleError("inconsistent lifecycle state machine", problems)


def states() -> tuple[str, ...]:
    return tuple(machine()["states"])


def actions() -> tuple[str, ...]:
    return tuple(machine()["actions"])


def allowed_actions(state: str) -> list[str]:
    return list(machine()["states"][state]["allowed_actions"])


def visible_to(state: str) -> list[str]:
    """The token roles that may call the tasks of a version in `state` (its seed visibility)."""
    spec = machine()
    return list(spec["visibility"][spec["states"][state]["visibility"]])


def notice_days(state: str = "deprecated") -> int:
    """The seed's deprecation_notice ("30d") in days."""
    notice = str(machine()["states"][state].get("deprecation_notice", "30d"))
    if not notice.endswith("d") or not notice[:-1].isdigit():
        raise LifecycleError(
            f"deprecation_notice {notice!r}", [Problem("lifecycle.yaml", f"states.{state}.deprecation_notice", "<N>d")]
        )
    return int(notice[:-1])


def retention_days(state: str = "archived") -> int:
    """The seed's retention ("5_years") in days (a year: 365 days)."""
    value = str(machine()["states"][state].get("retention", ""))
    count, _sep, unit = value.partition("_")
    per = {"days": 1, "years": 365}.get(unit)
    if not count.isdigit() or per is None:
        raise LifecycleError(
            f"retention {value!r}", [Problem("lifecycle.yaml", f"states.{state}.retention", "<N>_years or <N>_days")]
        )
    return int(count) * per


def markdown_tables() -> str:
    """The states and the actions as Markdown tables: docs/lifecycle.md carries this text verbatim."""
    spec = machine()
    lines = ["| state | allowed actions | transitions to | visibility |", "| --- | --- | --- | --- |"]
    for name, state in spec["states"].items():
        lines.append(
            f"| `{name}` | {', '.join(state['allowed_actions'])} | {', '.join(state['transitions_to'])} "
            f"| {state['visibility']} |"
        )
    lines += ["", "| action | from | to | gate | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, action in {REGISTER: {"from": ["(none)"], **spec[REGISTER]}, **spec["actions"]}.items():
        does = " ".join(action["does"].split())
        to = action["to"] or ("(removed)" if action.get("removes") else "(same)")
        lines.append(f"| `{name}` | {', '.join(action['from'])} | {to} | {action.get('gate', '')} | {does} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Step:
    """What a request comes to: an action, and the state before and after (None: not registered)."""

    action: str
    from_state: str | None
    to_state: str | None
    noop: bool = False  # the version is already where the request asks it to be

    @property
    def is_transition(self) -> bool:
        return not self.noop and self.from_state != self.to_state

    def transition(self) -> dict[str, str | None] | None:
        if not self.is_transition:
            return None
        return {"action": self.action, "from": self.from_state, "to": self.to_state}


def _refuse(what: str, current: str, reason: str) -> LifecycleError:
    allowed = allowed_actions(current)
    moves = ", ".join(
        f"{a} (to {machine()['actions'][a]['to']})" if machine()["actions"][a]["to"] else a for a in allowed
    )
    return LifecycleError(
        f"{what} is {current}: {reason}; allowed actions in {current}: {moves}",
        [Problem("(request)", "action", f"one of {', '.join(allowed)}")],
    )


def plan(current: str | None, *, action: str | None = None, target: str | None = None, what: str = "version") -> Step:
    """The step for `action` or for the `target` state from `current` (None: not registered yet)."""
    if (action is None) == (target is None):
        raise LifecycleError("give either an action or a target state", [Problem("(request)", "action/state", "one")])
    spec = machine()
    if action is not None and action not in spec["actions"] and action != REGISTER:
        raise LifecycleError(
            f"unknown action {action!r}",
            [Problem("(request)", "action", f"one of {', '.join([*spec['actions'], REGISTER])}")],
        )
    if target is not None and target not in spec["states"]:
        raise LifecycleError(
            f"unknown state {target!r}", [Problem("(request)", "state", f"one of {', '.join(spec['states'])}")]
        )
    if current is None:
        if action in (REGISTER, None) and target in (None, "draft"):
            return Step(REGISTER, None, "draft")
        raise LifecycleError(
            f"{what} is not registered: only {REGISTER} (state=draft with its digest or bundle) applies to it",
            [Problem("(request)", "state", "draft, to register it")],
        )
    if action == REGISTER:
        return Step(REGISTER, current, current, noop=True)
    if target is not None:
        if target == current:
            return Step("none", current, current, noop=True)
        for name in allowed_actions(current):
            if spec["actions"][name]["to"] == target:
                return Step(name, current, target)
        raise _refuse(what, current, f"it cannot go to {target}")
    to = spec["actions"][action]["to"]
    if action not in allowed_actions(current):
        if to is not None and to == current:  # already where this action leads: nothing to do
            return Step(action, current, current, noop=True)
        raise _refuse(what, current, f"{action} is not allowed")
    return Step(action, current, to if to is not None else current)


def default_actor() -> str:
    """AWX's launching user when AWX runs us, else the login name."""
    for name in ("AWX_USER_NAME", "TOWER_USER_NAME", "SUDO_USER"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def default_run_id() -> str:
    """The AWX job id when AWX runs us (it sets JOB_ID), else a fresh id."""
    job = os.environ.get("JOB_ID") or os.environ.get("AWX_JOB_ID")
    return f"awx-job-{job}" if job else f"run-{uuid.uuid4().hex[:12]}"


@dataclass
class Request:
    agent: str
    version: str
    action: str | None = None
    target: str | None = None
    reason: str | None = None
    actor: str | None = None
    run_id: str | None = None
    # registration facts (register, edit, clone, hotfix)
    digest: str | None = None
    key_id: str | None = None
    bundle: str | None = None
    capabilities: list[str] | None = None
    tools: list[str] | None = None
    new_version: str | None = None
    # gate inputs
    approved_capabilities: list[str] = field(default_factory=list)
    approved_tools: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    agent: str
    version: str
    previous_state: str | None
    state: str | None
    transition: dict[str, Any] | None
    action: str
    changed: bool
    audit_id: int | None = None
    gate: dict[str, Any] | None = None
    source_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "agent": self.agent,
            "version": self.version,
            "previous_state": self.previous_state,
            "state": self.state,
            "transition": self.transition,
            "action": self.action,
            "changed": self.changed,
            "audit_id": self.audit_id,
        }
        if self.gate is not None:
            out["gate"] = self.gate
        if self.source_version is not None:
            out["source_version"] = self.source_version
        return out


# A gate: (registry, request, version record, check_mode) -> report dict with "passed": bool.
Gate = Callable[..., dict[str, Any]]


def _facts(request: Request) -> dict[str, Any]:
    return {
        k: getattr(request, k)
        for k in ("digest", "key_id", "bundle", "capabilities", "tools")
        if getattr(request, k) is not None
    }


def _new_version_for(registry: Any, request: Request, step: Step) -> str:
    if request.new_version:
        semver.parse(request.new_version)
        return request.new_version
    if step.action == "hotfix":
        taken = {v.version for v in registry.versions(request.agent)}
        candidate = semver.bump(request.version, "bug_fix")
        while candidate in taken:
            candidate = semver.bump(candidate, "bug_fix")
        return candidate
    raise LifecycleError(
        f"{step.action} makes a new version: name it",
        [Problem("(request)", "new_version", "the semver of the new version")],
    )


def apply(
    registry: Any,
    request: Request,
    *,
    gates: Mapping[str, Gate] | None = None,
    check_mode: bool = False,
) -> Outcome:
    """Carry out one request. Gates run first, outside the lock; the state is checked again under it."""
    semver.parse(request.version)
    what = f"{request.agent} {request.version}"
    actor = request.actor or default_actor()
    run_id = request.run_id or default_run_id()
    record = registry.version(request.agent, request.version)
    step = plan(record.state if record else None, action=request.action, target=request.target, what=what)
    spec = machine()["actions"].get(step.action, {})

    if step.noop:
        if request.digest and record.digest != request.digest:
            raise LifecycleError(
                f"{what} is already registered with digest {record.digest}, not {request.digest}",
                [Problem("(request)", "digest", f"{record.digest}, or action=edit to replace it")],
            )
        return Outcome(request.agent, request.version, record.state, record.state, None, step.action, False)

    if step.action == REGISTER:
        if not request.digest:
            raise LifecycleError(
                f"{what}: registering needs the bundle's digest",
                [Problem("(request)", "digest", "sha256:<hex>, or bundle to read it from its signed statement")],
            )
        if check_mode:
            return Outcome(request.agent, request.version, None, "draft", step.transition(), REGISTER, True)
        with registry.locked(request.agent) as tx:
            raced = tx.version(request.version) is not None  # registered meanwhile: same as a second run
            if not raced:
                tx.insert_version(request.version, state="draft", **_facts(request))
                audit_id = tx.audit(
                    actor,
                    request.version,
                    REGISTER,
                    None,
                    "draft",
                    request.reason,
                    run_id,
                    {**request.details, **_facts(request)},
                )
        if raced:
            return apply(registry, request, gates=gates, check_mode=check_mode)
        return Outcome(request.agent, request.version, None, "draft", step.transition(), REGISTER, True, audit_id)

    gate_report = None
    gate = spec.get("gate")
    if gate and gates and gate in gates:
        gate_report = gates[gate](registry, request, record, check_mode)
        if not gate_report.get("passed", False) and gate != "test":
            raise LifecycleError(
                f"{what}: {step.action} refused by its gate: {gate_report.get('summary', 'failed')}",
                [
                    Problem("(gate)", p.get("field", step.action), p["expected"])
                    for p in gate_report.get("problems", [])
                ],
            )

    if spec.get("new_version"):
        return _make_new_version(registry, request, step, record, actor, run_id, check_mode)

    changed, details = _operation_effect(registry, request, step, record)
    if gate_report is not None:
        details["gate"] = gate_report
    outcome = Outcome(
        request.agent,
        request.version,
        step.from_state,
        None if spec.get("removes") else step.to_state,
        step.transition(),
        step.action,
        changed,
        gate=gate_report,
    )
    if step.action == "scale":
        return _refuse_scale(registry, request, step, changed, details, actor, run_id, check_mode)
    if check_mode or (not changed and step.action != "test"):
        return outcome
    with registry.locked(request.agent) as tx:
        now = tx.version(request.version)
        raced = now is None or now.state != step.from_state  # someone else moved it meanwhile
        if not raced:
            if spec.get("removes"):
                tx.delete_version(request.version)
            elif step.is_transition:
                tx.set_state(request.version, step.to_state)
            elif step.action == "edit":
                tx.update_facts(request.version, **_facts(request))
            outcome.audit_id = tx.audit(
                actor, request.version, step.action, step.from_state, outcome.state, request.reason, run_id, details
            )
    if raced:  # plan again from the state it is in now: refused, nothing to do, or done now
        return apply(registry, request, gates=gates, check_mode=check_mode)
    return outcome


def _operation_effect(registry: Any, request: Request, step: Step, record: Any) -> tuple[bool, dict[str, Any]]:
    """Whether the step changes anything, and the audit details it records."""
    details = dict(request.details)
    if step.action == "edit":
        facts = _facts(request)
        old = {k: getattr(record, k) for k in facts}
        changes = {k: {"from": old[k], "to": v} for k, v in facts.items() if old[k] != v}
        details["changes"] = changes
        return bool(changes), details
    if step.action == "scale":
        if "replicas" not in details:
            raise LifecycleError(
                f"{request.agent} {request.version}: scale needs the replica count",
                [Problem("(request)", "details.replicas", "an integer")],
            )
        last = registry.last_audit(request.agent, request.version, "scale")
        return last is None or last.details.get("replicas") != details["replicas"], details
    if step.action == "test":
        return False, details
    if step.action == "announce_deprecation":
        return _announcement(registry, request, details)
    if step.action == "approve":
        details["approved_capabilities"] = list(request.approved_capabilities)
        details["approved_tools"] = list(request.approved_tools)
    return True, details


def _make_new_version(
    registry: Any, request: Request, step: Step, record: Any, actor: str, run_id: str, check_mode: bool
) -> Outcome:
    """clone (archived -> a new version in draft) and hotfix (a new draft version of an active one)."""
    new_version = _new_version_for(registry, request, step)
    existing = registry.version(request.agent, new_version)
    if existing is not None:
        last = registry.last_audit(request.agent, new_version)
        origin = registry.first_audit(request.agent, new_version)
        if (
            origin is not None
            and origin.action == step.action
            and origin.details.get("source_version") == request.version
        ):
            return Outcome(
                request.agent,
                new_version,
                existing.state,
                existing.state,
                None,
                step.action,
                False,
                last.id if last else None,
                source_version=request.version,
            )
        raise LifecycleError(
            f"{request.agent} {new_version} is already registered ({existing.state}), not as a "
            f"{step.action} of {request.version}",
            [Problem("(request)", "new_version", "a version not yet registered")],
        )
    facts = {k: getattr(record, k) for k in ("digest", "key_id", "bundle", "capabilities", "tools")}
    facts.update(_facts(request))
    from_state = step.from_state if step.action == "clone" else None
    transition = {"action": step.action, "from": from_state, "to": "draft"}
    outcome = Outcome(
        request.agent, new_version, from_state, "draft", transition, step.action, True, source_version=request.version
    )
    if check_mode:
        return outcome
    with registry.locked(request.agent) as tx:
        raced = tx.version(new_version) is not None
        if not raced:
            tx.insert_version(new_version, state="draft", **facts)
            details = {**request.details, "source_version": request.version, **facts}
            outcome.audit_id = tx.audit(
                actor, new_version, step.action, from_state, "draft", request.reason, run_id, details
            )
    if raced:
        return _make_new_version(registry, request, step, record, actor, run_id, check_mode)
    return outcome


SCALE_REFUSED = (
    "scale is recorded but not applied: nothing sets an agent's instance count yet (the scale-out issue); "
    "the replicas asked for are in the audit trail"
)


def _refuse_scale(
    registry: Any, request: Request, step: Step, changed: bool, details: dict[str, Any], actor: str, run_id: str,
    check_mode: bool,
) -> Outcome:  # fmt: skip
    """Record the replica count asked for (once per count), then refuse: never silently ignored."""
    details = {**details, "applied": False, "refused": SCALE_REFUSED}
    audit_id = None
    if changed and not check_mode:
        with registry.locked(request.agent) as tx:
            audit_id = tx.audit(
                actor, request.version, "scale", step.from_state, step.from_state, request.reason, run_id, details
            )
    last = registry.last_audit(request.agent, request.version, "scale")
    where = f"audit #{audit_id or (last.id if last else '?')}"
    raise LifecycleError(
        f"{request.agent} {request.version}: {SCALE_REFUSED} ({where}: replicas {details['replicas']})",
        [Problem("(request)", "action", "not scale until the scale-out issue lands")],
    )


def standing_announcement(entries: list[Any]) -> Any | None:
    """The version's deprecation announcement still in force: its last announce_deprecation row, unless a
    deploy or restore came after it (a restored version starts afresh). `entries`: the version's audit rows."""
    announced = None
    for entry in entries:
        if entry.action == "announce_deprecation":
            announced = entry
        elif entry.action in ("deploy", "restore"):
            announced = None
    return announced


def _announcement(registry: Any, request: Request, details: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    from datetime import UTC, datetime, timedelta

    current = standing_announcement(registry.audit(request.agent, request.version))
    if "sunset" in details:
        try:
            sunset = datetime.fromisoformat(str(details["sunset"]))
        except ValueError:
            raise LifecycleError(
                f"sunset {details['sunset']!r} is not an ISO 8601 time",
                [Problem("(request)", "details.sunset", "an ISO 8601 date or time, e.g. 2027-01-31T00:00:00Z")],
            ) from None
        details["sunset"] = (sunset if sunset.tzinfo else sunset.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    elif current is not None:
        details["sunset"] = current.details.get("sunset")
    else:
        details["sunset"] = (datetime.now(UTC) + timedelta(days=notice_days())).replace(microsecond=0).isoformat()
    if "replacement" not in details:
        actives = [v.version for v in registry.versions(request.agent) if v.state == "active"]
        others = [v for v in actives if v != request.version]
        details["replacement"] = (current.details.get("replacement") if current else None) or (
            others[-1] if others else None
        )
    if current is not None and all(current.details.get(k) == details[k] for k in ("sunset", "replacement")):
        return False, details
    return True, details
