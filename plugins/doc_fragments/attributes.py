# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # What each attribute means, once; a module says only its support and, where it helps, the details.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing it.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
  idempotent:
    description: A second run with the same arguments reports no change.
"""
