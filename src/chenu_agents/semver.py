"""Semantic versions as seed 000 §6.1 uses them: parse, compare, bump by kind of change, compatibility."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ChenuError

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# Seed 000 §6.1: which kind of change moves which part of the version.
CHANGE_KINDS: dict[str, str] = {
    "breaking_api_change": "major",
    "incompatible_prompt_change": "major",
    "capability_removal": "major",
    "new_capability": "minor",
    "new_tool": "minor",
    "backward_compatible_change": "minor",
    "bug_fix": "patch",
    "performance_improvement": "patch",
    "documentation_update": "patch",
}
_RANK = {"patch": 0, "minor": 1, "major": 2}


class VersionError(ChenuError):
    """A version string is not semver, or a change kind is unknown."""


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    def _key(self) -> tuple:
        # A release sorts after its prereleases; numeric identifiers sort below alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)


def parse(text: str | Version) -> Version:
    if isinstance(text, Version):
        return text
    match = _SEMVER.match(str(text).strip())
    if not match:
        raise VersionError(f"{text!r} is not a semantic version (expected MAJOR.MINOR.PATCH[-pre][+build])")
    major, minor, patch, pre, build = match.groups()
    return Version(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or "")


def compare(a: str | Version, b: str | Version) -> int:
    """-1, 0 or 1 as a is lower than, equal to or higher than b (build metadata ignored)."""
    ka, kb = parse(a)._key(), parse(b)._key()
    return (ka > kb) - (ka < kb)


def bump_kind(changes: list[str] | str) -> str:
    """The largest bump a list of change kinds calls for (seed 000 §6.1)."""
    if isinstance(changes, str):
        changes = [changes]
    if not changes:
        raise VersionError("no change given: name at least one of " + ", ".join(sorted(CHANGE_KINDS)))
    kinds = []
    for change in changes:
        if change in _RANK:
            kinds.append(change)
        elif change in CHANGE_KINDS:
            kinds.append(CHANGE_KINDS[change])
        else:
            allowed = ", ".join(sorted([*CHANGE_KINDS, *_RANK]))
            raise VersionError(f"unknown change kind {change!r}; expected one of: {allowed}")
    return max(kinds, key=_RANK.__getitem__)


def bump(version: str | Version, changes: list[str] | str) -> str:
    v = parse(version)
    kind = bump_kind(changes)
    if kind == "major":
        return str(Version(v.major + 1, 0, 0))
    if kind == "minor":
        return str(Version(v.major, v.minor + 1, 0))
    # A patch bump of a prerelease releases it, as npm and semver tools do.
    return str(Version(v.major, v.minor, v.patch if v.prerelease else v.patch + 1))


def compatibility(agent_version: str | Version, api_version: str | Version) -> str:
    """Seed 000 §6.1 matrix: same major 'yes'; agent newer than the API 'limited'; older 'no'."""
    a, b = parse(agent_version).major, parse(api_version).major
    if a == b:
        return "yes"
    return "limited" if a > b else "no"
