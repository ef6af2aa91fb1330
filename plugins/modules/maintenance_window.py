#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: maintenance_window
short_description: Tell whether now (or a given time) is inside a weekly maintenance window, and when the next opens
version_added: 0.1.0
description:
  - Reads weekly maintenance windows (seed 000 section 5.3), each a day of the week, a start and an end in
    local wall-clock time and an IANA time zone, and answers whether O(at) (default now) is inside one,
    which, and when the next one opens and closes, in UTC and in the window's local time.
  - Changes nothing on the host; playbooks decide what to do with the answer (C(playbooks/maintenance.yml)
    refuses to run outside a window unless forced).
  - A window opens the first time the local clock reads O(windows[].start) or later that day and closes the
    last time it reads O(windows[].end). On the spring-forward Sunday in America/Toronto the clocks skip
    02:00-02:59, so the default window is 03:00-04:00 EDT that day (one hour); on the fall-back Sunday
    01:00-01:59 repeats but 02:00 does not, so the window is 02:00-04:00 EST (two hours).
  - Time zones come from the operating system (C(/usr/share/zoneinfo)) or the C(tzdata) Python package.
author:
  - chenu.agents maintainers (@chenu-agents)
requirements:
  - the chenu_agents Python package (shipped in this collection's C(src/))
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  windows:
    description:
      - The weekly windows. Empty or omitted means the default, Sunday 02:00-04:00 America/Toronto.
      - An O(windows[].end) not after O(windows[].start) is on the next day (the window crosses midnight).
    type: list
    elements: dict
    default: []
    suboptions:
      day:
        description: The day of the week the window opens (monday to sunday, or mon to sun).
        type: str
        required: true
      start:
        description:
          - Local time the window opens, C(HH:MM). Quote it in YAML; an unquoted 02:00 reaches the module
            as the number of minutes (120), which is understood too.
        type: raw
        required: true
      end:
        description: Local time the window closes, C(HH:MM); C(24:00) is midnight.
        type: raw
        required: true
      timezone:
        description: IANA time zone of O(windows[].start) and O(windows[].end), for example C(America/Toronto).
        type: str
        required: true
  at:
    description:
      - The instant to ask about, ISO 8601 with an offset or C(Z) (for example C(2026-03-08T07:30:00Z)).
      - Omitted, the controller's current time.
    type: str
attributes:
  check_mode:
    details: Reads only; runs the same in check mode.
    support: full
  diff_mode:
    details: Nothing changes, so there is no diff.
    support: none
  idempotent:
    details: Never changes anything.
    support: full
notes:
  - Overlapping windows are allowed; O(at) inside any of them is inside.
  - C(docs/operations.md) in this collection describes the maintenance playbooks built on this module.
"""

EXAMPLES = r"""
- name: Where are we relative to the default window (Sunday 02:00-04:00 America/Toronto)?
  chenu.agents.maintenance_window:
  register: __window

- name: Refuse outside the window unless forced
  ansible.builtin.assert:
    that: __window.inside or (force | default(false) | bool)
    fail_msg: "{{ __window.message }}; -e force=true to run anyway"

- name: Two windows, one crossing midnight, checked at a given instant
  chenu.agents.maintenance_window:
    windows:
      - {day: sunday, start: "02:00", end: "04:00", timezone: America/Toronto}
      - {day: saturday, start: "23:00", end: "01:00", timezone: Europe/Paris}
    at: "2026-03-08T07:30:00Z"
"""

RETURN = r"""
inside:
  description: Whether O(at) is inside a window.
  returned: success
  type: bool
  sample: false
window:
  description: The window O(at) is inside, with this occurrence's opening and closing times; null outside.
  returned: success
  type: dict
  sample:
    day: sunday
    start: "02:00"
    end: "04:00"
    timezone: America/Toronto
    opens: "2026-03-08T07:00:00+00:00"
    closes: "2026-03-08T08:00:00+00:00"
    opens_local: "2026-03-08T03:00:00-04:00"
    closes_local: "2026-03-08T04:00:00-04:00"
    duration_s: 3600
seconds_left:
  description: Seconds until the current window closes; 0 outside.
  returned: success
  type: int
next_start:
  description: When the next window opens (the first to open after O(at)), ISO 8601 in UTC.
  returned: success
  type: str
  sample: "2026-11-22T07:00:00+00:00"
next_end:
  description: When that window closes, ISO 8601 in UTC.
  returned: success
  type: str
  sample: "2026-11-22T09:00:00+00:00"
next_start_local:
  description: When the next window opens, in its own time zone.
  returned: success
  type: str
  sample: "2026-11-22T02:00:00-05:00"
next_end_local:
  description: When that window closes, in its own time zone.
  returned: success
  type: str
  sample: "2026-11-22T04:00:00-05:00"
next_window:
  description: The next window, described like RV(window).
  returned: success
  type: dict
seconds_until_next:
  description: Seconds from O(at) to RV(next_start).
  returned: success
  type: int
  sample: 53940
at:
  description: The instant the answer is for, in UTC.
  returned: success
  type: str
windows:
  description: The windows as understood (day, start, end, timezone).
  returned: success
  type: list
  elements: dict
message:
  description: One sentence for a human, naming the window or when the next one opens.
  returned: success
  type: str
  sample: outside every maintenance window; the next opens at 2026-11-22T02:00:00-05:00 (2026-11-22T07:00:00+00:00), in 14 h 59 min
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module


def answer(module):
    from chenu_agents.maintenance import status

    return dict(changed=False, **status(module.params["windows"], module.params["at"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            windows=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    day=dict(type="str", required=True),
                    start=dict(type="raw", required=True),
                    end=dict(type="raw", required=True),
                    timezone=dict(type="str", required=True),
                ),
            ),
            at=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, answer)


if __name__ == "__main__":
    main()
