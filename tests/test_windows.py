"""Deploy windows: cron edge cases on fixed instants (DST changes, weekdays, midnight)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from noman.durations import parse_duration
from noman.windows import (
    Window,
    allowed,
    describe,
    next_allowed,
    parse_cron,
    parse_timezone,
)


def at(text: str) -> datetime:
    """An instant written in UTC: ``2024-03-31 01:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(kind: str, schedule: str, duration: str, timezone: str = "UTC") -> Window:
    return Window(kind, parse_cron(schedule), parse_duration(duration), timezone)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "minutes", "hours", "weekdays"),
    [
        ("0 9 * * mon-fri", (0,), (9,), {1, 2, 3, 4, 5}),
        ("*/15 22-23 * * *", (0, 15, 30, 45), (22, 23), set(range(7))),
        ("5,35 0 * * 7", (5, 35), (0,), {0}),  # 7 is Sunday
        ("0 0 * * SUN,Sat", (0,), (0,), {0, 6}),
        ("30/10 1 * * *", (30, 40, 50), (1,), set(range(7))),  # Vixie: 30-59/10
        ("@daily", (0,), (0,), set(range(7))),
    ],
)
def test_cron_fields(
    text: str, minutes: tuple[int, ...], hours: tuple[int, ...], weekdays: set[int]
) -> None:
    cron = parse_cron(text)
    assert cron.minutes == minutes
    assert cron.hours == hours
    assert cron.weekdays == weekdays


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("* * * *", "has 4 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("0 24 * * *", "hour: 24 is outside 0-23"),
        ("0 0 0 * *", "day of month: 0 is outside 1-31"),
        ("0 0 * 13 *", "month: 13 is outside 1-12"),
        ("0 0 * * 8", "day of week: 8 is outside 0-7"),
        ("0 0 * * funday", "not a number or a name"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "not a positive number"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 feb *", "never fires"),
    ],
)
def test_cron_mistakes_are_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cron(text)


def test_durations_and_time_zones() -> None:
    assert parse_duration("90m") == 5400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2d") == 2 * 86400
    assert parse_duration("1w") == 7 * 86400
    for bad in ("", "h", "10 minutes", "-1h", "1H", " 1h", "500ms"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)
    assert str(parse_timezone("Europe/Berlin")) == "Europe/Berlin"
    for bad in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ValueError, match="IANA"):
            parse_timezone(bad)


def test_day_of_month_or_day_of_week_as_cron_reads_them() -> None:
    # Both restricted: either matches (the 13th, and every Friday).
    either = window("allow", "0 12 13 * fri", "1h")
    starts = list(either.starts(at("2024-09-01 00:00"), at("2024-09-30 23:59")))
    days = [s.day for s in starts]
    assert days == [6, 13, 20, 27]  # Fridays, the 13th being one of them
    # Day of month "*": only the weekday decides.
    fridays = window("allow", "0 12 * * 5", "1h")
    assert [s.day for s in fridays.starts(at("2024-12-01 00:00"), at("2024-12-31 23:59"))] == [
        6,
        13,
        20,
        27,
    ]


def test_a_window_that_crosses_midnight() -> None:
    night = window("deny", "0 22 * * *", "4h")
    assert not night.is_open(at("2024-01-01 21:59"))
    assert night.is_open(at("2024-01-01 22:00"))
    assert night.is_open(at("2024-01-02 01:59:59"))
    assert not night.is_open(at("2024-01-02 02:00"))
    assert night.closes(at("2024-01-02 00:30")) == at("2024-01-02 02:00")


def test_a_friday_evening_freeze_reaches_over_the_weekend_and_the_day_of_week_counts() -> None:
    berlin = "Europe/Berlin"
    freeze = window("deny", "0 17 * * fri", "64h", berlin)  # Fri 17:00 -> Mon 09:00
    # 2024-01-05 is a Friday; Berlin is UTC+1 in winter.
    assert not freeze.is_open(at("2024-01-05 15:59"))
    assert freeze.is_open(at("2024-01-05 16:00"))
    assert freeze.is_open(at("2024-01-07 12:00"))
    assert not freeze.is_open(at("2024-01-08 08:00"))
    # A Thursday at the same hour is not frozen.
    assert not freeze.is_open(at("2024-01-04 16:30"))
    assert next_allowed((freeze,), at("2024-01-06 10:00")) == at("2024-01-08 08:00")


def test_spring_forward_a_start_in_the_skipped_hour_opens_at_the_change() -> None:
    # Europe/Berlin skips 02:00-03:00 on 2024-03-31 (01:00 UTC).
    nightly = window("allow", "30 2 * * *", "1h", "Europe/Berlin")
    starts = list(nightly.starts(at("2024-03-30 00:00"), at("2024-04-01 12:00")))
    assert starts == [
        at("2024-03-30 01:30"),  # 02:30 CET
        at("2024-03-31 01:00"),  # 02:30 does not exist: 03:00 CEST, the change itself
        at("2024-04-01 00:30"),  # 02:30 CEST
    ]
    # The duration is elapsed time: open one hour from the change.
    assert nightly.is_open(at("2024-03-31 01:59"))
    assert not nightly.is_open(at("2024-03-31 02:00"))


def test_fall_back_a_fixed_start_once_an_hourly_one_in_both_passes() -> None:
    # Europe/Berlin repeats 02:00-03:00 on 2024-10-27 (00:00-01:00 UTC in CEST, then CET).
    fixed = window("allow", "30 2 * * *", "20m", "Europe/Berlin")
    assert list(fixed.starts(at("2024-10-26 23:00"), at("2024-10-27 03:00"))) == [
        at("2024-10-27 00:30")  # the first 02:30 (CEST) only
    ]
    assert not fixed.is_open(at("2024-10-27 01:35"))  # the second 02:30 opens nothing
    hourly = window("allow", "30 * * * *", "20m", "Europe/Berlin")
    assert [s.hour for s in hourly.starts(at("2024-10-26 23:00"), at("2024-10-27 02:00"))] == [
        23,
        0,
        1,  # 02:30 CET, the hour's second pass
    ]


def test_a_window_follows_its_time_zone_across_a_change() -> None:
    # 09:00 New York is 14:00 UTC in winter, 13:00 UTC after 2024-03-10.
    office = window("allow", "0 9 * * *", "8h", "America/New_York")
    assert office.next_start(at("2024-03-09 12:00")) == at("2024-03-09 14:00")
    assert office.next_start(at("2024-03-10 12:00")) == at("2024-03-10 13:00")


def test_allow_and_deny_windows_together() -> None:
    office = window("allow", "0 9 * * mon-fri", "8h")  # 09:00-17:00 on weekdays
    lunch = window("deny", "0 12 * * *", "1h")
    windows = (office, lunch)
    assert allowed(windows, at("2024-01-08 10:00"))  # a Monday morning
    assert not allowed(windows, at("2024-01-08 12:30"))  # lunch denies
    assert not allowed(windows, at("2024-01-08 18:00"))  # no allow window open
    assert not allowed(windows, at("2024-01-06 10:00"))  # Saturday
    assert next_allowed(windows, at("2024-01-08 12:30")) == at("2024-01-08 13:00")
    assert next_allowed(windows, at("2024-01-05 18:00")) == at("2024-01-08 09:00")
    assert next_allowed(windows, at("2024-01-08 10:00")) == at("2024-01-08 10:00")
    assert allowed((), at("2024-01-06 10:00"))  # no windows: always


def test_overlapping_windows_close_together_and_a_window_that_never_closes() -> None:
    rolling = window("deny", "0 * * * *", "90m")  # each hour's window overlaps the next
    assert rolling.closes(at("2024-01-01 10:15")) is None  # open for as long as we look
    assert next_allowed((rolling,), at("2024-01-01 10:15")) is None
    twice = window("deny", "0 10,11 * * *", "90m")
    assert twice.closes(at("2024-01-01 10:15")) == at("2024-01-01 12:30")


def test_describe_says_what_is_open_and_what_comes_next() -> None:
    office = window("allow", "0 9 * * mon-fri", "8h", "Europe/Berlin")
    shown = describe((office,), at("2024-01-06 10:00"))  # Saturday
    assert shown == {
        "deploys_allowed": False,
        "next_allowed": "2024-01-08T08:00:00Z",
        "open": [],
        "next": {
            "kind": "allow",
            "schedule": "0 9 * * mon-fri",
            "duration": "8h",
            "timezone": "Europe/Berlin",
            "starts": "2024-01-08T08:00:00Z",
            "ends": "2024-01-08T16:00:00Z",
        },
    }
    during = describe((office,), at("2024-01-08 10:00"))
    assert during is not None and during["deploys_allowed"] is True
    assert during["open"] == [
        {
            "kind": "allow",
            "schedule": "0 9 * * mon-fri",
            "duration": "8h",
            "timezone": "Europe/Berlin",
            "since": "2024-01-08T08:00:00Z",
            "until": "2024-01-08T16:00:00Z",
        }
    ]
    assert describe((), at("2024-01-08 10:00")) is None


def test_a_leap_day_schedule_is_found_years_ahead_and_searches_stay_quick() -> None:
    leap = window("allow", "0 0 29 2 *", "1d")
    assert leap.next_start(at("2024-03-01 00:00")) == at("2028-02-29 00:00")
    every_minute = window("deny", "* * * * *", "2m")
    started = datetime.now(UTC)
    assert next_allowed((every_minute,), at("2024-01-01 00:00")) is None
    assert datetime.now(UTC) - started < timedelta(seconds=5)
