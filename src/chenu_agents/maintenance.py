"""Weekly maintenance windows (seed 000 §5.3): is an instant inside one, and when does the next one open.

A window is a day of the week, a start and an end in local wall-clock time, and a time zone:

    {day: sunday, start: "02:00", end: "04:00", timezone: America/Toronto}     # the default
    {day: saturday, start: "23:00", end: "01:00", timezone: Europe/Paris}     # crosses midnight

`day` is the day the window opens; an `end` not after `start` is on the next day ("24:00" is
midnight). The window **opens the first time the local clock reads `start` or later that day and
closes the last time it reads `end`** (or, if it never reads `end`, the first time it reads later).
Across daylight-saving changes this gives, for the default window in America/Toronto:

- spring forward (second Sunday of March, 02:00 EST -> 03:00 EDT): the clocks never read 02:00-02:59,
  so the window opens at 03:00 EDT (07:00 UTC) and closes at 04:00 EDT (08:00 UTC): **one hour**, and
  "back at 04:00" stays true;
- fall back (first Sunday of November, 02:00 EDT -> 01:00 EST): 01:00-01:59 repeats, 02:00 does not, so
  the window is 02:00-04:00 EST (07:00-09:00 UTC), two hours. A window starting in the repeated hour
  opens at its first occurrence; one ending in it closes at its second (the window is the longer).

A window that is empty on a given day (it would lie entirely in a spring-forward gap) does not happen
that week. Time zones come from the OS (/usr/share/zoneinfo) or the `tzdata` package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chenu_agents.errors import ChenuError, Problem

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_WINDOWS: tuple[dict[str, str], ...] = (
    {"day": "sunday", "start": "02:00", "end": "04:00", "timezone": "America/Toronto"},
)
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_DAY = timedelta(days=1)


class MaintenanceWindowError(ChenuError):
    """A maintenance window or an instant is not understood."""


def _minutes(value: Any, where: str, field: str) -> int:
    """Minutes since midnight from "HH:MM" (or an int: YAML 1.1 reads an unquoted 02:00 as 120)."""
    if isinstance(value, bool):
        raise MaintenanceWindowError(f"{where}: {field}", [Problem(where, field, f"a time HH:MM (got {value!r})")])
    if isinstance(value, int):
        minutes = value
    else:
        match = _TIME.match(str(value).strip())
        if not match or (match.group(3) and match.group(3) != "00"):
            raise MaintenanceWindowError(
                f"{where}: {field}", [Problem(where, field, f"a time HH:MM, e.g. 02:00 (got {value!r})")]
            )
        minutes = int(match.group(1)) * 60 + int(match.group(2))
        if int(match.group(2)) > 59:
            minutes = -1
    if not 0 <= minutes <= 24 * 60:
        raise MaintenanceWindowError(
            f"{where}: {field}", [Problem(where, field, f"a time between 00:00 and 24:00 (got {value!r})")]
        )
    return minutes


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _wall(day: date, minutes: int) -> datetime:
    return datetime.combine(day, time()) + timedelta(minutes=minutes)


def _local_wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _first_at_or_after(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the local clock reads `wall` or later."""
    candidates = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    real = [c for c in candidates if _local_wall(c, zone) == wall]
    if real:
        return min(real)
    # In a gap: the clock jumps over `wall`; find the jump (the bounds are an offset change apart).
    low, high = min(candidates), max(candidates)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _local_wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _last_at(wall: datetime, zone: ZoneInfo) -> datetime:
    """The last instant (UTC) at which the local clock reads `wall` (or the jump over it)."""
    candidates = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    real = [c for c in candidates if _local_wall(c, zone) == wall]
    return max(real) if real else _first_at_or_after(wall, zone)


@dataclass(frozen=True)
class Occurrence:
    window: Window
    opens: datetime  # UTC
    closes: datetime  # UTC

    def contains(self, instant: datetime) -> bool:
        return self.opens <= instant < self.closes

    def describe(self) -> dict[str, Any]:
        zone = self.window.zone
        return {
            **self.window.describe(),
            "opens": self.opens.isoformat(),
            "closes": self.closes.isoformat(),
            "opens_local": self.opens.astimezone(zone).isoformat(),
            "closes_local": self.closes.astimezone(zone).isoformat(),
            "duration_s": int((self.closes - self.opens).total_seconds()),
        }


@dataclass(frozen=True)
class Window:
    day: int  # 0 = Monday
    start: int  # minutes since local midnight
    end: int
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    @classmethod
    def from_mapping(cls, data: Any, where: str = "windows[0]") -> Window:
        if not isinstance(data, Mapping):
            raise MaintenanceWindowError(
                f"{where}: not a mapping", [Problem(where, "(window)", "a mapping {day, start, end, timezone}")]
            )
        unknown = sorted(set(data) - {"day", "start", "end", "timezone"})
        problems = [Problem(where, key, "one of day, start, end, timezone") for key in unknown]
        day_name = str(data.get("day", "")).strip().lower()
        day = next((i for i, name in enumerate(DAYS) if day_name in (name, name[:3])), None)
        if day is None:
            problems.append(Problem(where, "day", f"a day of the week, e.g. sunday (got {data.get('day')!r})"))
        timezone = str(data.get("timezone") or "")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(Problem(where, "timezone", f"an IANA time zone, e.g. America/Toronto (got {timezone!r})"))
        bounds = {}
        for field in ("start", "end"):
            if field not in data:
                problems.append(Problem(where, field, "a time HH:MM"))
                continue
            try:
                bounds[field] = _minutes(data[field], where, field)
            except MaintenanceWindowError as exc:
                problems.extend(exc.problems)
        if len(bounds) == 2:
            if bounds["start"] == 24 * 60:
                problems.append(Problem(where, "start", "before 24:00"))
            elif bounds["start"] == bounds["end"] % (24 * 60):
                problems.append(Problem(where, "end", f"a time other than start ({_hhmm(bounds['start'])})"))
        if problems:
            raise MaintenanceWindowError(f"invalid maintenance window {where}", problems)
        end = bounds["end"] % (24 * 60) if bounds["end"] == 24 * 60 else bounds["end"]
        return cls(day=day, start=bounds["start"], end=end, timezone=timezone)  # type: ignore[arg-type]

    def describe(self) -> dict[str, str]:
        return {"day": DAYS[self.day], "start": _hhmm(self.start), "end": _hhmm(self.end), "timezone": self.timezone}

    def occurrence(self, day: date) -> Occurrence | None:
        """This window on the local date `day` (which must be its weekday); None when empty that day."""
        if day.weekday() != self.day:
            raise ValueError(f"{day} is not a {DAYS[self.day]}")
        zone = self.zone
        end_day = day + _DAY if self.crosses_midnight else day
        opens = _first_at_or_after(_wall(day, self.start), zone)
        closes = _last_at(_wall(end_day, self.end), zone)
        return Occurrence(self, opens, closes) if closes > opens else None

    def occurrences(self, around: datetime, weeks_before: int = 1, weeks_after: int = 2) -> list[Occurrence]:
        local = around.astimezone(self.zone).date()
        monday = local - timedelta(days=local.weekday())
        found = []
        for week in range(-weeks_before, weeks_after + 1):
            occurrence = self.occurrence(monday + timedelta(days=7 * week + self.day))
            if occurrence is not None:
                found.append(occurrence)
        return found


def parse_windows(data: Iterable[Any] | None) -> tuple[Window, ...]:
    """Windows from a list of mappings; None or an empty list gives the default (Sunday 02:00-04:00 Toronto)."""
    items = list(data) if data else list(DEFAULT_WINDOWS)
    windows, problems = [], []
    for index, item in enumerate(items):
        try:
            windows.append(Window.from_mapping(item, f"windows[{index}]"))
        except MaintenanceWindowError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MaintenanceWindowError("invalid maintenance windows", problems)
    return tuple(windows)


def parse_instant(value: str | datetime | None) -> datetime:
    """An aware instant from an ISO 8601 string with an offset (or Z); now when None."""
    if value is None or value == "":
        return datetime.now(UTC)
    if isinstance(value, datetime):
        instant = value
    else:
        try:
            instant = datetime.fromisoformat(str(value).strip())
        except ValueError:
            instant = None
        if instant is None:
            raise MaintenanceWindowError(
                "at: not an ISO 8601 time",
                [
                    Problem(
                        "(task)", "at", f"an ISO 8601 time with an offset, e.g. 2026-03-08T07:30:00Z (got {value!r})"
                    )
                ],
            )
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise MaintenanceWindowError(
            "at: no offset",
            [Problem("(task)", "at", f"an ISO 8601 time with an offset or Z, not a local time (got {value!r})")],
        )
    return instant.astimezone(UTC)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"]
    return " ".join(parts)


def status(windows: Iterable[Any] | None = None, at: str | datetime | None = None) -> dict[str, Any]:
    """Whether `at` (default now) is inside a window, the current occurrence, and the next one to open.

    The next window is the first to open strictly after `at` (inside a window: the one after it).
    """
    items = list(windows or ())
    parsed = tuple(items) if items and all(isinstance(w, Window) for w in items) else parse_windows(items)
    instant = parse_instant(at)
    occurrences = sorted(
        (o for w in parsed for o in w.occurrences(instant)),
        key=lambda o: (o.opens, o.closes),
    )
    current = next((o for o in occurrences if o.contains(instant)), None)
    upcoming = next(o for o in occurrences if o.opens > instant)
    seconds = (upcoming.opens - instant).total_seconds()
    zone = upcoming.window.zone
    result: dict[str, Any] = {
        "at": instant.isoformat(),
        "inside": current is not None,
        "window": current.describe() if current else None,
        "seconds_left": int((current.closes - instant).total_seconds()) if current else 0,
        "next_window": upcoming.describe(),
        "next_start": upcoming.opens.isoformat(),
        "next_end": upcoming.closes.isoformat(),
        "next_start_local": upcoming.opens.astimezone(zone).isoformat(),
        "next_end_local": upcoming.closes.astimezone(zone).isoformat(),
        "seconds_until_next": int(seconds),
        "windows": [w.describe() for w in parsed],
    }
    if current:
        result["message"] = (
            f"inside the maintenance window {current.window.describe()['day']} "
            f"{current.window.describe()['start']}-{current.window.describe()['end']} {current.window.timezone} "
            f"until {current.closes.astimezone(current.window.zone).isoformat()} ({_duration(result['seconds_left'])} left)"
        )
    else:
        result["message"] = (
            f"outside every maintenance window; the next opens at {result['next_start_local']} "
            f"({result['next_start']}), in {_duration(seconds)}"
        )
    return result


# The scheduled maintenance's choices (playbooks/maintenance.yml, through the chenu.agents.maintenance_*
# filters): which indexes to rebuild, which updates are security updates.

_SECURITY_INST = re.compile(r"^Inst (\S+) .*-security")


def bloated_indexes(measured: Iterable[Any], max_leaf_density: float = 50.0, min_bytes: int = 8 * 8192) -> list[dict]:
    """The B-tree indexes worth a REINDEX: leaf density (pgstatindex) under `max_leaf_density` % in an
    index of at least `min_bytes` that has leaf pages (a fresh B-tree is about 90 % full).

    `measured`: rows {database, index, bytes, leaf_density, leaf_pages}, or postgresql_query results
    (each with a `query_result` list of such rows), as the playbook registers them.
    """
    rows: list[Mapping] = []
    for entry in measured or []:
        if isinstance(entry, Mapping) and "query_result" in entry:
            rows += [row for row in entry["query_result"] or [] if isinstance(row, Mapping)]
        elif isinstance(entry, Mapping):
            rows.append(entry)
    return [
        dict(row)
        for row in rows
        if (row.get("leaf_pages") or 0) > 0
        and (row.get("bytes") or 0) >= int(min_bytes)
        and row.get("leaf_density") is not None
        and float(row["leaf_density"]) < float(max_leaf_density)
    ]


def security_upgrades(simulation: Iterable[str] | str) -> list[str]:
    """The packages `apt-get --simulate upgrade` would take from a `*-security` origin, in its order."""
    lines = simulation.splitlines() if isinstance(simulation, str) else simulation or []
    found = []
    for line in lines:
        match = _SECURITY_INST.match(line)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found
