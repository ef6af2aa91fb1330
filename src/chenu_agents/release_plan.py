"""What a release will do, decided from what serves, what the registry knows and the version built.

`read_slots` asks the traffic backend (HAProxy's runtime API) for each slot's weight and health and
each slot's runtime for the version it serves (its /metrics `chenu_agent_info`). `decide` turns that,
the registry's states and the candidate version into a `Plan`: a first release, nothing to do (and
why), or which slot is stable and which one receives the candidate. Both are plain functions so the
rules are table-tested; the module `chenu.agents.release_plan` exposes them to playbooks/release.yml.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from chenu_agents import semver
from chenu_agents.errors import ChenuError, Problem
from chenu_agents.semver import VersionError
from chenu_agents.traffic import SlotTraffic, TrafficBackend

STRATEGIES = ("canary", "blue_green", "feature_flag")
# States in which a version has been released already: releasing it again is refused.
RELEASED_STATES = ("active", "paused", "deprecated", "archived")
_INFO = re.compile(r"^chenu_agent_info\{(?P<labels>[^}]*)\}\s+1(?:\.0)?\s*$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ReleasePlanError(ChenuError):
    """The release cannot be planned as asked (strategy, slots, version); nothing was changed."""


@dataclass(frozen=True)
class Slot:
    """One slot of the agent: what the load balancer sends it and what its runtime serves."""

    slot: str
    url: str
    weight: int = 0
    status: str = "absent"
    up: bool = False
    version: str | None = None
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    agent: str
    strategy: str
    version: str
    initial: bool
    stable: Slot | None
    candidate: Slot
    candidate_state: str | None
    stable_state: str | None
    skip_reason: str = ""

    @property
    def skip(self) -> bool:
        return bool(self.skip_reason)

    def summary(self, run_id: str = "") -> str:
        if self.skip:
            return f"Skipped: {self.skip_reason}."
        if self.initial:
            return (
                f"First release of {self.agent}: {self.version} into slot {self.candidate.slot}, then all traffic "
                "there (nothing to compare it with)."
            )
        assert self.stable is not None
        run = f" (run {run_id})" if run_id else ""
        return (
            f"{self.strategy} release of {self.agent} {self.version} into slot {self.candidate.slot}; "
            f"{self.stable.version} keeps serving from slot {self.stable.slot} meanwhile{run}."
        )

    def to_dict(self, run_id: str = "") -> dict[str, Any]:
        candidate = {**self.candidate.to_dict(), "version": self.version}
        return {
            "agent": self.agent,
            "strategy": self.strategy,
            "version": self.version,
            "initial": self.initial,
            "stable": self.stable.to_dict() if self.stable else None,
            "candidate": candidate,
            "candidate_state": self.candidate_state,
            "stable_state": self.stable_state,
            "skip": self.skip,
            "skip_reason": self.skip_reason,
            "summary": self.summary(run_id),
        }


def served_by(metrics_text: str) -> tuple[str | None, str | None]:
    """(version, digest) a runtime's /metrics says it serves, or (None, None)."""
    found = _INFO.search(metrics_text or "")
    if not found:
        return None, None
    labels = dict(_LABEL.findall(found["labels"]))
    return labels.get("version") or None, labels.get("digest") or None


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    """A runtime's /metrics text, or "" when it does not answer (a slot that was never deployed)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as answer:  # noqa: S310
            return answer.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return ""


def read_slots(
    slots: Sequence[Mapping[str, str]],
    traffic: TrafficBackend,
    fetch: Callable[[str], str] = fetch_metrics,
) -> list[Slot]:
    """Each slot ({slot, url}, in the inventory's order) as the load balancer and its runtime see it."""
    seen: Mapping[str, SlotTraffic] = traffic.read()
    out = []
    for entry in slots:
        lb = seen.get(entry["slot"])
        version, digest = served_by(fetch(entry["url"]))
        out.append(
            Slot(
                slot=entry["slot"],
                url=entry["url"],
                weight=lb.weight if lb else 0,
                status=lb.status if lb else "absent",
                up=lb.up if lb else False,
                version=version,
                digest=digest,
            )
        )
    return out


def serving(slots: Sequence[Slot]) -> Slot | None:
    """The slot with the most weight among those that serve a version; None when none takes traffic."""
    live = [s for s in slots if s.weight > 0 and s.version]
    return max(live, key=lambda s: s.weight) if live else None


def decide(
    agent: str,
    strategy: str,
    version: str,
    slots: Sequence[Slot],
    states: Mapping[str, str],
) -> Plan:
    """The release of `agent` `version` by `strategy`, given its slots and the registry's {version: state}."""
    where = f"release of {agent}"
    problems = []
    if strategy not in STRATEGIES:
        problems.append(Problem(where, "strategy", f"one of {', '.join(STRATEGIES)}, got {strategy!r}"))
    if len(slots) != 2:
        problems.append(
            Problem(where, "sandbox_runtime_slots", f"exactly two slots of {agent}, has {[s.slot for s in slots]}")
        )
    try:
        semver.parse(version)
    except VersionError:
        problems.append(Problem(where, "version", f"a semantic version X.Y.Z, got {version!r}"))
    if problems:
        raise ReleasePlanError(f"{where}: cannot be planned", problems)

    stable = serving(slots)
    candidate = next(s for s in slots if s.slot != stable.slot) if stable else slots[0]
    skip = ""
    if stable is not None and stable.version == version:
        known = states.get(version, "not in the registry")
        skip = f"{version} already serves in slot {stable.slot} ({known}): nothing to release"
    elif stable is not None and semver.compare(version, stable.version) < 0:
        skip = (
            f"{version} is older than {stable.version}, which serves now: nothing to release "
            "(a rollback is playbooks/rollback.yml)"
        )
    elif states.get(version) in RELEASED_STATES:
        skip = f"{version} is already {states[version]} in the registry: release a new version"
    return Plan(
        agent=agent,
        strategy=strategy,
        version=version,
        initial=stable is None,
        stable=stable,
        candidate=candidate,
        candidate_state=states.get(version),
        stable_state=states.get(stable.version) if stable and stable.version else None,
        skip_reason=skip,
    )
