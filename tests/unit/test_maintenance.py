"""Maintenance windows: inside/outside, next window, crossing midnight, and both daylight-saving weekends."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from chenu_agents.maintenance import (
    MaintenanceWindowError,
    Window,
    bloated_indexes,
    parse_instant,
    parse_windows,
    security_upgrades,
    status,
)

TORONTO = {"day": "sunday", "start": "02:00", "end": "04:00", "timezone": "America/Toronto"}


@pytest.mark.parametrize(
    ("at", "inside", "next_start_local"),
    [
        # An ordinary winter Sunday: 02:00-04:00 EST is 07:00-09:00 UTC.
        ("2026-11-22T06:59:59Z", False, "2026-11-22T02:00:00-05:00"),
        ("2026-11-22T07:00:00Z", True, "2026-11-29T02:00:00-05:00"),
        ("2026-11-22T08:59:59Z", True, "2026-11-29T02:00:00-05:00"),
        ("2026-11-22T09:00:00Z", False, "2026-11-29T02:00:00-05:00"),
        # An ordinary summer Sunday: EDT, 06:00-08:00 UTC.
        ("2026-07-12T05:59:00Z", False, "2026-07-12T02:00:00-04:00"),
        ("2026-07-12T06:00:00Z", True, "2026-07-19T02:00:00-04:00"),
        ("2026-07-12T08:00:00Z", False, "2026-07-19T02:00:00-04:00"),
        # Saturday afternoon, Toronto: next is tomorrow.
        ("2026-11-21T16:00:00-05:00", False, "2026-11-22T02:00:00-05:00"),
    ],
)
def test_default_window_inside_outside_and_next(at, inside, next_start_local):
    result = status(None, at)
    assert result["inside"] is inside
    assert result["next_start_local"] == next_start_local
    assert (result["window"] is not None) is inside
    assert result["windows"] == [TORONTO]


def test_spring_forward_sunday_opens_when_the_clock_jumps_and_lasts_one_hour():
    # 2026-03-08: 02:00 EST becomes 03:00 EDT; the clocks never read 02:00-02:59.
    before = status([TORONTO], "2026-03-08T06:59:59Z")
    assert not before["inside"]
    assert before["next_start"] == "2026-03-08T07:00:00+00:00"
    assert before["next_start_local"] == "2026-03-08T03:00:00-04:00"
    assert before["next_end_local"] == "2026-03-08T04:00:00-04:00"
    assert before["next_window"]["duration_s"] == 3600
    assert before["seconds_until_next"] == 1
    inside = status([TORONTO], "2026-03-08T07:30:00Z")
    assert inside["inside"] and inside["seconds_left"] == 1800
    assert not status([TORONTO], "2026-03-08T08:00:00Z")["inside"]
    # The Sunday before is still EST, the one after EDT, both two hours long.
    assert status([TORONTO], "2026-03-01T08:30:00Z")["inside"]
    assert status([TORONTO], "2026-03-15T07:30:00Z")["inside"]
    assert not status([TORONTO], "2026-03-15T08:30:00Z")["inside"]


def test_fall_back_sunday_is_two_hours_of_est():
    # 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00-01:59 repeats, 02:00 happens once (EST).
    before = status([TORONTO], "2026-11-01T06:00:00Z")  # 01:00 EST, the repeated hour's second pass
    assert not before["inside"]
    assert before["next_start"] == "2026-11-01T07:00:00+00:00"
    assert before["next_end"] == "2026-11-01T09:00:00+00:00"
    assert before["next_window"]["duration_s"] == 7200
    assert status([TORONTO], "2026-11-01T08:59:59Z")["inside"]
    assert not status([TORONTO], "2026-11-01T09:00:00Z")["inside"]


def test_a_window_in_the_repeated_hour_opens_at_its_first_pass_and_closes_at_its_second():
    window = Window.from_mapping({"day": "sunday", "start": "01:30", "end": "01:45", "timezone": "America/Toronto"})
    occurrence = window.occurrence(date(2026, 11, 1))
    assert occurrence.opens == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    assert occurrence.closes == datetime(2026, 11, 1, 6, 45, tzinfo=UTC)  # 01:45 EST


def test_a_window_inside_the_gap_does_not_happen_that_week():
    window = Window.from_mapping({"day": "sunday", "start": "02:15", "end": "02:45", "timezone": "America/Toronto"})
    assert window.occurrence(date(2026, 3, 8)) is None
    result = status([window], "2026-03-08T00:00:00Z")
    assert result["next_start_local"] == "2026-03-15T02:15:00-04:00"


def test_a_window_ending_in_the_gap_closes_when_the_clock_jumps():
    window = Window.from_mapping({"day": "sunday", "start": "01:00", "end": "02:30", "timezone": "America/Toronto"})
    occurrence = window.occurrence(date(2026, 3, 8))
    assert occurrence.opens == datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 01:00 EST
    assert occurrence.closes == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT


def test_crossing_midnight_opens_on_its_day_and_closes_the_next():
    windows = [{"day": "saturday", "start": "23:00", "end": "01:00", "timezone": "Europe/Paris"}]
    assert status(windows, "2026-06-13T22:30:00+02:00")["next_start_local"] == "2026-06-13T23:00:00+02:00"
    late = status(windows, "2026-06-13T23:30:00+02:00")
    assert late["inside"] and late["window"]["closes_local"] == "2026-06-14T01:00:00+02:00"
    assert status(windows, "2026-06-14T00:59:00+02:00")["inside"]
    assert not status(windows, "2026-06-14T01:00:00+02:00")["inside"]
    # Sunday 00:30 is only inside because Saturday's window runs over: Sunday 23:30 is not.
    assert not status(windows, "2026-06-14T23:30:00+02:00")["inside"]


def test_until_midnight_and_across_a_dst_night():
    window = Window.from_mapping({"day": "saturday", "start": "22:00", "end": "24:00", "timezone": "America/Toronto"})
    assert window.occurrence(date(2026, 3, 7)).closes == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
    overnight = Window.from_mapping({"day": "sat", "start": "23:00", "end": "04:00", "timezone": "America/Toronto"})
    occurrence = overnight.occurrence(date(2026, 3, 7))  # 23:00 EST to 04:00 EDT: 4 hours of real time
    assert (occurrence.closes - occurrence.opens).total_seconds() == 4 * 3600


def test_several_windows_pick_the_next_to_open():
    windows = [TORONTO, {"day": "wednesday", "start": "12:00", "end": "12:30", "timezone": "UTC"}]
    result = status(windows, "2026-11-23T00:00:00Z")  # a Monday
    assert result["next_start"] == "2026-11-25T12:00:00+00:00"
    assert result["next_window"]["day"] == "wednesday"
    assert status(windows, "2026-11-25T12:10:00Z")["window"]["timezone"] == "UTC"


def test_yaml_sexagesimal_times_are_minutes():
    # An unquoted 02:00 in YAML 1.1 (Ansible) arrives as 120.
    window = Window.from_mapping({"day": "Sunday", "start": 120, "end": 240, "timezone": "America/Toronto"})
    assert window.describe() == TORONTO


def test_every_problem_is_named_at_once():
    with pytest.raises(MaintenanceWindowError) as caught:
        parse_windows(
            [
                {"day": "dimanche", "start": "2h", "end": "25:00", "timezone": "Mars/Olympus", "hours": 2},
                {"day": "sunday", "start": "02:00", "end": "02:00", "timezone": "UTC"},
                "sunday",
            ]
        )
    fields = {(p.file, p.field) for p in caught.value.problems}
    assert fields == {
        ("windows[0]", "hours"),
        ("windows[0]", "day"),
        ("windows[0]", "timezone"),
        ("windows[0]", "start"),
        ("windows[0]", "end"),
        ("windows[1]", "end"),
        ("windows[2]", "(window)"),
    }


@pytest.mark.parametrize("value", ["2026-03-08T02:30:00", "yesterday", "2026-13-01T00:00:00Z"])
def test_an_instant_needs_an_offset(value):
    with pytest.raises(MaintenanceWindowError, match="at"):
        parse_instant(value)


def test_now_by_default():
    result = status()
    assert 0 < result["seconds_until_next"] <= 7 * 86400
    assert result["message"].startswith(("inside", "outside"))


# The scheduled maintenance's choices.


def index(name: str, density: float | None, size: int, leaf_pages: int = 10) -> dict:
    return {"database": "registry", "index": name, "bytes": size, "leaf_density": density, "leaf_pages": leaf_pages}


@pytest.mark.parametrize(
    ("row", "bloated"),
    [
        (index("a", 9.0, 2_200_000), True),
        (index("b", 49.9, 65536), True),
        (index("c", 50.0, 10**6), False),  # at the threshold is not under it
        (index("d", 90.0, 10**6), False),
        (index("e", 9.0, 65535), False),  # too small to matter
        (index("f", 9.0, 10**6, leaf_pages=0), False),  # no leaf pages: pgstatindex says nothing
        (index("g", None, 10**6), False),
        ({"database": "registry", "index": "h"}, False),
    ],
)
def test_bloated_indexes(row: dict, bloated: bool) -> None:
    assert bloated_indexes([row], 50, 65536) == ([row] if bloated else [])


def test_bloated_indexes_read_looped_query_results() -> None:
    results = [
        {"item": "registry", "query_result": [index("a", 9.0, 10**6), index("b", 88.0, 10**6)]},
        {"item": "runtime", "query_result": []},
        {"item": "broken", "failed": True},
    ]
    assert [row["index"] for row in bloated_indexes(results, 50, 65536)] == ["a"]
    assert [row["index"] for row in bloated_indexes(results, 90, 65536)] == ["a", "b"]


SIMULATION = """Reading package lists...
Inst libssl3 [3.0.11-1~deb12u1] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable-updates [all])
Inst openssl [3.0.11-1~deb12u1] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf libssl3 (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst libssl3 [3.0.11-1~deb12u1] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""


@pytest.mark.parametrize(
    ("simulation", "packages"),
    [
        (SIMULATION, ["libssl3", "openssl"]),
        (SIMULATION.splitlines(), ["libssl3", "openssl"]),
        ("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n", []),
        ([], []),
    ],
)
def test_security_upgrades(simulation, packages: list[str]) -> None:
    assert security_upgrades(simulation) == packages
