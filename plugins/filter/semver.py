# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Semantic-version filters: one implementation, chenu_agents.semver, shared with the modules."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

try:
    from chenu_agents import semver
    from chenu_agents.errors import ChenuError
except ImportError:
    semver = None


def _call(name, *args):
    if semver is None:
        raise AnsibleFilterError(
            "the chenu.agents semver filters need the chenu_agents Python package on the controller"
        )
    try:
        return getattr(semver, name)(*args)
    except ChenuError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def semver_compare(a, b):
    return _call("compare", a, b)


def semver_bump(version, changes):
    return _call("bump", version, changes)


def semver_bump_kind(changes):
    return _call("bump_kind", changes)


def semver_compatibility(agent_version, api_version):
    return _call("compatibility", agent_version, api_version)


class FilterModule:
    def filters(self):
        return {
            "semver_compare": semver_compare,
            "semver_bump": semver_bump,
            "semver_bump_kind": semver_bump_kind,
            "semver_compatibility": semver_compatibility,
        }
