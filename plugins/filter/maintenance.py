# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scheduled maintenance's choices: one implementation, chenu_agents.maintenance."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

try:
    from chenu_agents import maintenance
except ImportError:
    maintenance = None


def _call(name, *args):
    if maintenance is None:
        raise AnsibleFilterError(
            "the chenu.agents maintenance filters need the chenu_agents Python package on the controller"
        )
    try:
        return getattr(maintenance, name)(*args)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"{name}: {exc}") from exc


def maintenance_bloated_indexes(measured, max_leaf_density=50.0, min_bytes=65536):
    return _call("bloated_indexes", measured, max_leaf_density, min_bytes)


def maintenance_security_upgrades(simulation):
    return _call("security_upgrades", simulation)


class FilterModule:
    def filters(self):
        return {
            "maintenance_bloated_indexes": maintenance_bloated_indexes,
            "maintenance_security_upgrades": maintenance_security_upgrades,
        }
