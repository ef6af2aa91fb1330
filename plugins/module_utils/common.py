# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible glue shared by every chenu.agents module: the guarded import of the chenu_agents package,
the key store option group, and the one place where a package error becomes a task failure."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    import chenu_agents  # noqa: F401  # pylint: disable=unused-import
    from chenu_agents.errors import ChenuError
except ImportError:
    HAS_CHENU_AGENTS = False
    CHENU_AGENTS_IMPORT_ERROR = traceback.format_exc()

    class ChenuError(Exception):  # type: ignore[no-redef]
        """Placeholder so that `except ChenuError` stays valid when the package is missing."""

else:
    HAS_CHENU_AGENTS = True
    CHENU_AGENTS_IMPORT_ERROR = None


KEYSTORE_SPEC = dict(
    type="dict",
    no_log=False,
    default={},
    options=dict(
        type=dict(type="str", default="file", choices=["file", "vault"]),
        path=dict(type="path"),
        rotation_period_hours=dict(type="float", default=24.0),
        vault_url=dict(type="str"),
        vault_token=dict(type="str", no_log=True),
        vault_mount=dict(type="str", default="transit"),
        vault_key_name=dict(type="str", default="chenu-agents"),
        vault_verify=dict(type="bool", default=True),
    ),
    required_if=[("type", "vault", ("vault_url", "vault_token"))],
)


def require_chenu_agents(module):
    if not HAS_CHENU_AGENTS:
        module.fail_json(msg=missing_required_lib("chenu_agents"), exception=CHENU_AGENTS_IMPORT_ERROR)


def keystore_from_params(options):
    """The key store the task's `keystore` option names."""
    from datetime import timedelta

    from chenu_agents.errors import KeyStoreError, Problem
    from chenu_agents.keystore import select_keystore

    period = timedelta(hours=options["rotation_period_hours"])
    if options["type"] == "file":
        if not options["path"]:
            raise KeyStoreError(
                "no key store given", [Problem("(task)", "keystore.path", "the directory of the file key store")]
            )
        return select_keystore("file", path=options["path"], rotation_period=period)
    return select_keystore(
        "vault",
        url=options["vault_url"],
        token=options["vault_token"],
        mount=options["vault_mount"],
        key_name=options["vault_key_name"],
        rotation_period=period,
        verify=options["vault_verify"],
    )


def run_module(module, work):
    """Run `work(module) -> dict` and exit; a ChenuError becomes one failure naming every problem."""
    try:
        result = work(module)
    except ChenuError as exc:
        module.fail_json(msg=str(exc), **exc.details())
    module.exit_json(**result)
