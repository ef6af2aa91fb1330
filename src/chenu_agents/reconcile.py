"""From the registry's lifecycle states to what serves: each runtime slot and each load balancer frontend.

The decision is pure and works on plain data, so that one table of tests covers it:

- `version_view()` reads what one version's state means for its callers from its audit rows (the
  deprecation announced, its sunset, the replacement to name, the reason of a pause);
- `decide_slot()` compares one slot's report (what it holds, whether it runs, the state it says it
  serves in, its state file) with that view: the state file it must have, whether it must run, and the
  drift (a state the registry did not give it) to report;
- `decide_frontend()` says what a load balancer frontend does for an agent whose slots taking traffic
  all serve versions that take no new task: send it to the fallback agent's backend (paused), or answer
  410 naming the replacement (deprecated, archived, once the slots are stopped).

`chenu.agents.agent_reconcile` reads the reports (state files, `current`, `/admin/status`, HAProxy's
weights), applies the plans and checks that every runtime followed; docs/lifecycle.md tells the story.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from . import lifecycle, semver
from .errors import ChenuError, Problem

NO_NEW_TASKS = ("paused", "deprecated", "archived")
STOPPED = ("deprecated", "archived")  # tasks in flight finish, then the slot stops
PRE_ACTIVE = ("draft", "testing", "staged")
RETRY_AFTER_S = 30


@dataclass(frozen=True)
class VersionView:
    """What the registry says of one version, as its callers see it."""

    state: str
    replacement: str | None = None
    deprecation: str | None = None  # ISO 8601: announced (or deprecated) at
    sunset: str | None = None  # ISO 8601
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(at: datetime | str | None) -> str | None:
    if at is None or isinstance(at, str):
        return at
    return at.isoformat()


def version_view(state: str, entries: Iterable[Any], active_versions: Iterable[str], version: str) -> VersionView:
    """One version's view from its state and its audit rows (oldest first: id, at, action, reason, details)."""
    entries = list(entries)
    others = sorted((v for v in active_versions if v != version), key=functools.cmp_to_key(semver.compare))
    replacement = others[-1] if others else None
    announced = lifecycle.standing_announcement(entries)
    deprecation = sunset = reason = None
    if announced is not None:
        deprecation = _iso(announced.at)
        sunset = announced.details.get("sunset")
        replacement = announced.details.get("replacement") or replacement
    last_move = next((e for e in reversed(entries) if e.to_state == state and e.from_state != state), None)
    if state in STOPPED:
        moved = _iso(last_move.at) if last_move else None
        deprecated = next((e for e in reversed(entries) if e.action == "deprecate"), None)
        deprecation = deprecation or (_iso(deprecated.at) if deprecated else moved)
        sunset = sunset or (_iso(deprecated.at) if deprecated else moved)
    elif state not in ("active", "paused"):
        deprecation = sunset = None  # a version back in draft has nothing to announce
    if state == "paused" and last_move is not None:
        reason = last_move.reason
    if state not in (*STOPPED, "active", "paused"):
        replacement = None
    return VersionView(state, replacement, deprecation, sunset, reason)


def registry_view(registry: Any, agent: str) -> dict[str, Any]:
    """{agent, versions: {version: VersionView dict}, release_in_progress} read from the registry."""
    records = registry.versions(agent)
    rows: dict[str, list[Any]] = {}
    for entry in registry.audit(agent):
        if entry.version:
            rows.setdefault(entry.version, []).append(entry)
    actives = [r.version for r in records if r.state == "active"]
    lock = registry.release_lock(agent)
    in_progress = lock is not None and lock.expires_at > datetime.now(lock.expires_at.tzinfo)
    return {
        "agent": agent,
        "versions": {
            r.version: version_view(r.state, rows.get(r.version, []), actives, r.version).to_dict() for r in records
        },
        "release_in_progress": in_progress,
    }


def state_file_for(
    agent: str,
    version: str,
    view: Mapping[str, Any],
    *,
    fallback_agent: str | None = None,
    takes_traffic: bool = False,
    release_in_progress: bool = False,
    retry_after: int = RETRY_AFTER_S,
) -> dict[str, Any]:
    """The state file a slot serving `version` must have (keys with no value left out: the file is stable)."""
    state = view["state"]
    content: dict[str, Any] = {"state": state, "version": version}
    if state == "paused":
        content.update(fallback_agent=fallback_agent, reason=view.get("reason"), retry_after=retry_after)
    if state in STOPPED or (state in ("active", "paused") and view.get("deprecation")):  # announced
        content.update({k: view.get(k) for k in ("replacement", "deprecation", "sunset")})
    if state in STOPPED and fallback_agent:
        content["fallback_agent"] = fallback_agent
    # A version not yet deployed is for the roles its visibility names, unless a release is putting it in
    # front of callers (a canary or a flag's variant takes traffic while it is still staged).
    if state in PRE_ACTIVE and not (takes_traffic or release_in_progress):
        content["visible_to"] = lifecycle.visible_to(state)
    elif state == "archived":
        content["visible_to"] = lifecycle.visible_to(state)
    return {k: v for k, v in content.items() if v is not None}


@dataclass(frozen=True)
class SlotReport:
    """One slot as its host sees it."""

    agent: str
    slot: str
    host: str = "localhost"
    installed: str | None = None  # the version whose bundle `current` holds (None: no bundle)
    running: bool = False  # the process answers /admin/status
    serving: str | None = None  # the version it says it serves
    state: str | None = None  # the lifecycle state it says that version is in
    in_flight: int = 0
    file: Mapping[str, Any] | None = None  # the state file as it is (None: absent or unreadable)
    weight: int | None = None  # the load balancer's weight for it (None: unknown)

    @property
    def version(self) -> str | None:
        return self.serving or self.installed


@dataclass
class SlotPlan:
    agent: str
    slot: str
    host: str
    version: str | None
    registry_state: str | None
    state_file: dict[str, Any] | None  # what it must say; None: leave the slot alone
    write: bool = False
    start: bool = False
    stop: bool = False  # once its tasks in flight are done
    drift: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.write or self.start or self.stop

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changes": self.changes}


def decide_slot(
    report: SlotReport,
    view: Mapping[str, Any],
    *,
    fallback_agent: str | None = None,
    transition: Mapping[str, Any] | None = None,
    retry_after: int = RETRY_AFTER_S,
) -> SlotPlan:
    """What one slot must become. `view`: registry_view(); `transition`: the one this run made, if any
    ({version, from, to}): a slot still in its `from` state is following it, not drifting."""
    where = f"{report.agent}-{report.slot} on {report.host}"
    version = report.version
    plan = SlotPlan(report.agent, report.slot, report.host, version, None, None)
    if version is None:
        return plan  # nothing deployed: nothing to serve or to stop
    known = view["versions"].get(version)
    if known is None:
        plan.drift.append(f"{where} serves {report.agent} {version}, which the registry does not know: left as it is")
        return plan
    state = known["state"]
    plan.registry_state = state
    plan.state_file = state_file_for(
        report.agent,
        version,
        known,
        fallback_agent=fallback_agent,
        takes_traffic=bool(report.weight),
        release_in_progress=bool(view.get("release_in_progress")),
        retry_after=retry_after,
    )
    plan.write = dict(report.file or {}) != plan.state_file
    must_run = state not in STOPPED
    plan.start = must_run and not report.running
    plan.stop = not must_run and report.running
    following = (
        transition is not None and transition.get("version") == version and transition.get("from") == report.state
    )
    if report.running and report.state != state and not following:
        plan.drift.append(f"{where} serves {version} as {report.state}; the registry says {state}")
    if not report.running and must_run and report.installed is not None:
        follows_restore = transition is not None and transition.get("version") == version
        if not follows_restore:
            plan.drift.append(f"{where} holds {version} but does not run; the registry says {state}")
    return plan


@dataclass(frozen=True)
class FrontendPlan:
    agent: str
    route: str | None = None  # the backend new tasks go to instead (the fallback agent's)
    gone: str | None = None  # answer 410 with this message
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backend_name(agent: str) -> str:
    """roles/load_balancer: one backend be_<agent> per agent."""
    return f"be_{agent}"


def decide_frontend(
    agent: str,
    slots: Iterable[Mapping[str, Any]],
    view: Mapping[str, Any],
    *,
    fallback_agent: str | None = None,
    backends: Iterable[str] = (),
) -> FrontendPlan:
    """What the agent's frontend does. `slots`: {slot, version, weight} of its backend's servers (version None:
    unknown); `backends`: the load balancer's backends (the fallback agent's must be among them)."""
    taking = [s for s in slots if s.get("weight")]
    states = {view["versions"].get(s.get("version"), {}).get("state") for s in taking}
    if not taking or not states <= set(NO_NEW_TASKS):
        why = "no slot takes traffic" if not taking else "a slot taking traffic serves new tasks"
        return FrontendPlan(agent, reason=why)
    if "paused" in states:
        if fallback_agent and backend_name(fallback_agent) in set(backends):
            return FrontendPlan(agent, route=backend_name(fallback_agent), reason=f"paused: to {fallback_agent}")
        why = f"paused, no fallback backend {backend_name(fallback_agent)}" if fallback_agent else "paused, no fallback"
        return FrontendPlan(agent, reason=f"{why}: the runtime answers 503 with Retry-After")
    serving = sorted({s["version"] for s in taking}, key=functools.cmp_to_key(semver.compare))
    versions = [view["versions"][v] for v in serving]
    replacement = next((v["replacement"] for v in versions if v.get("replacement")), None)
    what = ", ".join(f"{v} {view['versions'][v]['state']}" for v in serving)
    message = f"{agent} {what}" + (f"; use {agent} {replacement}" if replacement else "; no replacement")
    return FrontendPlan(agent, gone=message, reason="every slot taking traffic is deprecated or archived")


def canonical(content: Mapping[str, Any]) -> str:
    """The state file's bytes: one JSON line, sorted keys (what is compared and written)."""
    return json.dumps(dict(content), sort_keys=True, ensure_ascii=False) + "\n"


# -- carrying it out: on a runtime host, on a load balancer -----------------------------------------------


def read_state_file(path: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def slot_status(url: str, token: str | None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The runtime's own report (GET /admin/status, an operator token); None when nothing answers."""
    from .deploy import _http

    try:
        status, body = _http("GET", f"{url}/admin/status", token=token, timeout_s=timeout_s)
    except OSError:
        return None
    if status != 200:
        raise ReconcileError(
            f"{url}/admin/status answered {status}: {body.strip()[:200]}",
            [Problem("(task)", "token", "an operator or admin token of the runtime")],
        )
    return json.loads(body)


def read_slot(slot: Any, *, host: str, token: str | None, weight: int | None = None) -> SlotReport:
    """`slot`: a chenu_agents.deploy.Slot (its settings file: URL, state file, `current`)."""
    installed = slot.installed()
    status = slot_status(slot.url, token)
    serving = status["serving"] if status else None
    return SlotReport(
        agent=slot.config.agent or (installed.agent if installed else "?"),
        slot=slot.config.slot,
        host=host,
        installed=installed.version if installed else None,
        running=status is not None,
        serving=serving.get("version") if serving else None,
        state=status.get("state") if status else None,
        in_flight=int(status.get("in_flight") or 0) if status else 0,
        file=read_state_file(slot.config.state_file) if slot.config.state_file else None,
        weight=weight,
    )


def write_state_file(path: Any, content: Mapping[str, Any]) -> bool:
    """Atomically, keeping the owner, group and mode the file had (the runtime's group reads it)."""
    import os

    from .files import write_if_changed

    try:
        st = path.stat()
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o644, None
    changed = write_if_changed(path, canonical(content).encode(), mode)
    if changed and owner is not None and hasattr(os, "chown"):
        try:
            os.chown(path, *owner)
        except PermissionError:
            pass  # not root: the file keeps the writer's owner, as any file it writes
    return changed


class ReconcileError(ChenuError):
    """A runtime or load balancer did not become what the registry says."""


def apply_slot(
    plan: SlotPlan,
    slot: Any,
    control: Any,
    *,
    token: str | None,
    stop: bool,
    timeout_s: float = 30.0,
    drain_timeout_s: float = 300.0,
    poll_s: float = 0.2,
    sleep: Any = None,
    clock: Any = None,
) -> dict[str, Any]:
    """Write the state file, start or (with `stop`, once drained) stop the slot, and check what it reports.

    Returns {wrote, started, stopped, status}; raises ReconcileError naming the slot when it did not follow.
    """
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    where = f"{plan.agent}-{plan.slot} on {plan.host}"
    done = {"wrote": False, "started": False, "stopped": False, "drained_in_s": None, "status": None}
    if plan.state_file is None:
        return done
    if plan.write and slot.config.state_file is None:
        raise ReconcileError(
            f"{where}: its settings name no state_file", [Problem(str(slot.settings), "state_file", "a path")]
        )
    if plan.write:
        done["wrote"] = write_state_file(slot.config.state_file, plan.state_file)
    if plan.start:
        control.start()
        done["started"] = True

    def wait(what: str, ok: Any, limit: float) -> dict[str, Any] | None:
        deadline = clock() + limit
        last: Any = None
        while True:
            last = slot_status(slot.url, token)
            if ok(last):
                return last
            if clock() >= deadline:
                seen = "no answer" if last is None else f"state {last.get('state')}, in flight {last.get('in_flight')}"
                raise ReconcileError(
                    f"{where} did not follow the registry: {what} within {limit:g} s ({seen})",
                    [Problem(plan.host, f"{plan.agent}-{plan.slot}", what)],
                )
            sleep(poll_s)

    want = plan.state_file["state"]
    running = plan.start or slot_status(slot.url, token) is not None
    if running:
        status = wait(
            f"report {plan.version} as {want}",
            lambda s: (
                s is not None and s.get("state") == want and (s.get("serving") or {}).get("version") == plan.version
            ),
            timeout_s,
        )
        done["status"] = status
    if stop and plan.stop and running:
        started = clock()
        wait("finish its tasks in flight", lambda s: s is None or int(s.get("in_flight") or 0) == 0, drain_timeout_s)
        done["drained_in_s"] = round(clock() - started, 3)
        control.stop()
        wait("stop", lambda s: s is None, timeout_s)
        done["stopped"] = True
        done["status"] = None
    return done


class FrontendMaps:
    """The two lifecycle maps of roles/load_balancer: agent -> fallback backend, agent -> 410 message.

    The files are the persistent state (read at start and reload); the running process gets the same
    entries through the runtime API (`set map`/`add map`/`del map`), so nothing reloads.
    """

    def __init__(self, runtime: Any, fallback_map: Any, gone_map: Any):
        self.runtime = runtime
        self.maps = {"route": fallback_map, "gone": gone_map}

    @staticmethod
    def _read(path: Any) -> dict[str, str]:
        entries = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _sep, value = line.partition(" ")
                entries[key] = value.strip()
        return entries

    def current(self, agent: str) -> dict[str, str | None]:
        return {kind: self._read(path).get(agent) for kind, path in self.maps.items()}

    def backends(self) -> list[str]:
        """The backends of the running HAProxy (`show backend`)."""
        return [line.strip() for line in self.runtime.command("show backend").splitlines()[1:] if line.strip()]

    def weights(self, agent: str) -> dict[str, int]:
        from .traffic import parse_servers_state

        backend = backend_name(agent)
        rows = parse_servers_state(self.runtime.servers_state(backend), backend)
        return {name: int(row["srv_uweight"]) for name, row in rows.items()}

    def apply(self, plan: FrontendPlan, check_mode: bool = False) -> dict[str, dict[str, str | None]]:
        """Make both maps say what `plan` says of its agent; returns {kind: {before, after}} of what changed."""
        import re

        from .files import write_if_changed

        changes = {}
        for kind, path in self.maps.items():
            entries = self._read(path)
            before, after = entries.get(plan.agent), getattr(plan, kind)
            after = " ".join(after.split()) if after else None
            if before == after:
                continue
            changes[kind] = {"before": before, "after": after}
            if check_mode:
                continue
            if after is None:
                entries.pop(plan.agent)
            else:
                entries[plan.agent] = after
            header = "# agent value; written by chenu.agents.agent_reconcile (chenu_agents.reconcile)\n"
            write_if_changed(path, (header + "".join(f"{k} {v}\n" for k, v in entries.items())).encode(), 0o644)
            self.runtime.command(f"del map {path} {plan.agent}")
            if after is not None:
                escaped = re.sub(r"([\\ ;])", r"\\\1", after)
                answer = self.runtime.command(f"add map {path} {plan.agent} {escaped}").strip()
                if answer:
                    raise ReconcileError(f"add map {path} {plan.agent}: {answer}")
        return changes


def reconcile_slots(
    slots: Iterable[tuple[Any, Any]],
    view: Mapping[str, Any],
    *,
    host: str,
    token: str | None,
    fallback_agent: str | None = None,
    stop: bool = False,
    check_mode: bool = False,
    timeout_s: float = 30.0,
    drain_timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Every slot of one host: read, decide, carry out (not in check mode), check.

    `slots`: (deploy.Slot, service control) pairs. Returns {slots: [plan + done], drift, changed}; raises one
    ReconcileError naming every slot that did not follow, after trying them all.
    """
    results, failures = [], []
    for slot, control in slots:
        report = read_slot(slot, host=host, token=token)
        plan = decide_slot(report, view, fallback_agent=fallback_agent, transition=view.get("transition"))
        entry = {**plan.to_dict(), "before": dict(report.file or {}) or None, "running": report.running}
        entry["stop"] = plan.stop and stop
        entry["pending_stop"] = plan.stop and not stop
        if not check_mode:
            try:
                entry["done"] = apply_slot(
                    plan, slot, control, token=token, stop=stop, timeout_s=timeout_s, drain_timeout_s=drain_timeout_s
                )
            except ChenuError as exc:  # a service that would not start or stop, a runtime that did not follow
                failures.append(exc)
                entry["error"] = str(exc)
        results.append(entry)
    if failures:
        problems = [p for exc in failures for p in exc.problems]
        raise ReconcileError("; ".join(str(exc).splitlines()[0] for exc in failures), problems)
    changed = any(e["write"] or e["start"] or e["stop"] for e in results)
    return {"slots": results, "drift": [d for e in results for d in e["drift"]], "changed": changed}


def reconcile_frontend(
    maps: FrontendMaps,
    agent: str,
    view: Mapping[str, Any],
    slot_versions: Mapping[str, str | None],
    *,
    fallback_agent: str | None = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """One load balancer: the agent's frontend routed to the fallback, answering 410, or left to its slots."""
    weights = maps.weights(agent)
    slots = [{"slot": name, "weight": weight, "version": slot_versions.get(name)} for name, weight in weights.items()]
    plan = decide_frontend(agent, slots, view, fallback_agent=fallback_agent, backends=maps.backends())
    before = maps.current(agent)
    changes = maps.apply(plan, check_mode=check_mode)
    return {"frontend": plan.to_dict(), "slots": slots, "before": before, "changes": changes, "changed": bool(changes)}
