"""Deploy windows: cron schedules in a time zone, each opening a window for a duration.

A window (``[[windows]]`` for every service, ``[[services.<name>.windows]]`` for
one) has a ``kind``, a five-field cron ``schedule`` read in its IANA
``timezone``, and a ``duration``: each time the schedule fires, the window is
open for that long, as Argo CD's sync windows define it. Deploys may land when
no deny window is open and, if there are allow windows, at least one of them
is. Plain functions over aware ``datetime`` values: the caller passes the
time, so an injected clock decides everything.

Cron, as Vixie cron reads it: ``minute hour day-of-month month day-of-week``,
each ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a list of
those; month and day names (``jan``, ``mon-fri``); day-of-week 0 or 7 is Sunday;
when both day fields are restricted a day matching either counts; the macros
``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and ``@yearly`` too.

Clock changes, in the window's time zone: a start that falls in the hour a
spring-forward change skips opens the window at the change itself (cron
would run the job then too); a start in the hour a fall-back change repeats
opens it once, at its first occurrence, unless the schedule's hour field is
``*`` (then each pass of that hour counts, as cron runs hourly jobs in both).
A duration is elapsed time, so a 2 h window across a change lasts 2 hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "Cron",
    "Window",
    "allowed",
    "describe",
    "next_allowed",
    "parse_cron",
    "parse_timezone",
]

#: How far ahead a search for the next start (or the next allowed moment) looks.
HORIZON = timedelta(days=366 * 8 + 2)  # a schedule on 29 February fires within 8 years
#: Most steps a search takes (windows chained end to start, events tried): a schedule
#: that keeps a window open for ever is "never closes", not a hang.
MAX_STEPS = 2000
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


# -- parsing ---------------------------------------------------------------------------------


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` ("Europe/Berlin", "UTC"); ValueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. Europe/Berlin)") from None


@dataclass(frozen=True)
class Cron:
    """A parsed five-field schedule: the values each field allows."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month was "*": only the weekday decides
    any_weekday: bool  # day-of-week was "*": only the day of month decides
    every_hour: bool  # hour was "*": repeated hours (fall back) count twice

    def day_matches(self, day: date) -> bool:
        """True when the schedule fires on ``day`` (at some hour and minute)."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        weekday = (day.weekday() + 1) % 7
        in_week = weekday in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return in_week
        if self.any_weekday:
            return in_month
        return in_month or in_week


def parse_cron(text: str) -> Cron:
    """Parse a five-field cron schedule (or a macro); ValueError naming what is wrong."""
    source = MACROS.get(text.strip().lower(), text)
    fields = source.split()
    if len(fields) != 5:
        raise ValueError(
            f"{text!r} has {len(fields)} fields; a schedule has five: "
            "minute hour day-of-month month day-of-week"
        )
    minutes = _field(fields[0], "minute", 0, 59)
    hours = _field(fields[1], "hour", 0, 23)
    days = _field(fields[2], "day of month", 1, 31)
    months = _field(fields[3], "month", 1, 12, MONTHS, 1)
    weekdays = {d % 7 for d in _field(fields[4], "day of week", 0, 7, DAYS, 0)}
    cron = Cron(
        text=text.strip(),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        any_day=fields[2].startswith("*"),
        any_weekday=fields[4].startswith("*"),
        every_hour=fields[1].startswith("*"),
    )
    if not _ever(cron):
        raise ValueError(f"{text!r} never fires (no month has such a day)")
    return cron


def _field(
    text: str, what: str, low: int, high: int, names: tuple[str, ...] = (), first: int = 0
) -> set[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{what}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            start, end = (
                _value(a, what, low, high, names, first),
                _value(b, what, low, high, names, first),
            )
            if start > end:
                raise ValueError(f"{what}: range {body!r} runs backwards")
        else:
            start = _value(body, what, low, high, names, first)
            # "5/15" is Vixie's "5-<max>/15"
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return values


def _value(text: str, what: str, low: int, high: int, names: tuple[str, ...], first: int) -> int:
    if text in names:
        return names.index(text) + first
    if not text.isdigit():
        raise ValueError(f"{what}: {text!r} is not a number" + (" or a name" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what}: {value} is outside {low}-{high}")
    return value


def _ever(cron: Cron) -> bool:
    """True when some day of some (leap) year matches: "30 2 30 2 *" never does."""
    if not cron.any_day and not cron.any_weekday:
        return True  # the weekday alone matches some day of every month
    if cron.any_day:
        return True
    # Only the day of month decides: some allowed month must have one of those days.
    longest = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30}
    return any(min(cron.days) <= longest.get(month, 31) for month in cron.months)


# -- windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Deploys allowed (``allow``) or held (``deny``) for ``duration`` from each start."""

    kind: Literal["allow", "deny"]
    cron: Cron
    duration: float
    timezone: str = "UTC"

    @property
    def schedule(self) -> str:
        """The cron text as configured."""
        return self.cron.text

    @property
    def zone(self) -> ZoneInfo:
        """The time zone the schedule is read in."""
        return ZoneInfo(self.timezone)

    def starts(self, since: datetime, until: datetime) -> Iterator[datetime]:
        """Every start ``s`` with ``since <= s <= until`` (UTC, ascending)."""
        for start in self._forward(since):
            if start > until:
                return
            yield start

    def _forward(self, since: datetime) -> Iterator[datetime]:
        """Starts from ``since`` on, ascending, for as far as ``HORIZON`` looks."""
        zone = self.zone
        day = since.astimezone(zone).date() - timedelta(days=1)
        last = day + HORIZON
        previous: datetime | None = None
        while day <= last:
            for start in _day_instants(self.cron, day, self.timezone):
                if start >= since and (previous is None or start > previous):
                    previous = start
                    yield start
            day += timedelta(days=1)

    def _backward(self, until: datetime, floor: datetime) -> Iterator[datetime]:
        """Starts at or before ``until`` and not before ``floor``, descending."""
        zone = self.zone
        day = until.astimezone(zone).date() + timedelta(days=1)
        first = floor.astimezone(zone).date() - timedelta(days=1)
        previous: datetime | None = None
        while day >= first:
            for start in reversed(_day_instants(self.cron, day, self.timezone)):
                if floor <= start <= until and (previous is None or start < previous):
                    previous = start
                    yield start
            day -= timedelta(days=1)

    def next_start(self, after: datetime) -> datetime | None:
        """The first start strictly after ``after`` (None within ``HORIZON``)."""
        return next(self._forward(after + timedelta(microseconds=1)), None)

    def last_start(self, at: datetime) -> datetime | None:
        """The start of the window open at ``at`` that started last (None when closed)."""
        span = timedelta(seconds=self.duration)
        start = next(self._backward(at, at - span), None)
        return start if start is not None and start + span > at else None

    def is_open(self, at: datetime) -> bool:
        """True while a window that started less than ``duration`` ago is open."""
        return self.last_start(at) is not None

    def closes(self, at: datetime) -> datetime | None:
        """When the window open at ``at`` closes, counting the windows that overlap it
        (None when closed at ``at``, or open for as long as the search looks)."""
        start = self.last_start(at)
        if start is None:
            return None
        end = start + timedelta(seconds=self.duration)
        for _ in range(MAX_STEPS):
            later = self.last_start(end)
            if later is None:
                return end
            end = later + timedelta(seconds=self.duration)
        return None

    def public(self) -> dict[str, object]:
        """The window as status shows it."""
        return {
            "kind": self.kind,
            "schedule": self.schedule,
            "duration": _duration_text(self.duration),
            "timezone": self.timezone,
        }


@lru_cache(maxsize=4096)
def _day_instants(cron: Cron, day: date, timezone: str) -> tuple[datetime, ...]:
    """The UTC instants at which ``cron`` fires on local ``day`` in ``timezone``, ascending."""
    if not cron.day_matches(day):
        return ()
    zone = ZoneInfo(timezone)
    found: set[datetime] = set()
    for hour in cron.hours:
        for minute in cron.minutes:
            local = datetime(day.year, day.month, day.day, hour, minute)
            found.update(_instants(local, zone, cron.every_hour))
    return tuple(sorted(found))


def _instants(local: datetime, zone: ZoneInfo, every_hour: bool) -> list[datetime]:
    """The UTC instants a wall-clock time names in ``zone`` (see the module docstring)."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) != local:
        # Skipped by a spring-forward change: the change itself, which lies between the
        # two readings (fold=1 uses the offset after it, fold=0 the one before).
        low, high = min(first, second), max(first, second)
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                low = middle
            else:
                high = middle
        return [high.replace(microsecond=0)]
    # Repeated by a fall-back change: first pass, and the second for an hourly schedule.
    return sorted({first, second}) if every_hour else [min(first, second)]


def _duration_text(seconds: float) -> str:
    left, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


# -- many windows ----------------------------------------------------------------------------


def allowed(windows: tuple[Window, ...], at: datetime) -> bool:
    """True when deploys may land at ``at``: no deny window open, and an allow window open
    (if any allow window is configured)."""
    if any(w.kind == "deny" and w.is_open(at) for w in windows):
        return False
    allows = [w for w in windows if w.kind == "allow"]
    return not allows or any(w.is_open(at) for w in allows)


def next_allowed(
    windows: tuple[Window, ...], at: datetime, horizon: timedelta = HORIZON
) -> datetime | None:
    """The first moment from ``at`` on when deploys may land (``at`` itself if they may now);
    None when no window lets them within ``horizon``.

    Steps from one event that could allow a deploy (a deny window closing, an allow
    window opening) to the next, checking at each.
    """
    cursor = at
    for _ in range(MAX_STEPS):
        if cursor - at > horizon:
            return None
        denying = [w for w in windows if w.kind == "deny" and w.is_open(cursor)]
        allows = [w for w in windows if w.kind == "allow"]
        allow_ok = not allows or any(w.is_open(cursor) for w in allows)
        if not denying and allow_ok:
            return cursor
        events: list[datetime] = []
        for window in denying:
            start = window.last_start(cursor)
            if start is not None:
                events.append(start + timedelta(seconds=window.duration))
        if not allow_ok:
            events += [s for w in allows if (s := w.next_start(cursor)) is not None]
        later = [e for e in events if e > cursor]
        if not later:
            return None
        cursor = min(later)
    return None


def describe(windows: tuple[Window, ...], at: datetime) -> dict[str, object] | None:
    """What status shows: may deploys land now, the windows open now, the next to open."""
    if not windows:
        return None
    current = []
    for window in windows:
        start = window.last_start(at)
        if start is not None:
            current.append(
                {**window.public(), "since": iso(start), "until": _iso_or_none(window.closes(at))}
            )
    upcoming = [(s, w) for w in windows if (s := w.next_start(at)) is not None]
    following = None
    if upcoming:
        start, window = min(upcoming, key=lambda pair: pair[0])
        following = {
            **window.public(),
            "starts": iso(start),
            "ends": iso(start + timedelta(seconds=window.duration)),
        }
    may = allowed(windows, at)
    return {
        "deploys_allowed": may,
        "next_allowed": None if may else _iso_or_none(next_allowed(windows, at)),
        "open": current,
        "next": following,
    }


def iso(when: datetime) -> str:
    """``when`` in UTC, ISO 8601 to the second."""
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso_or_none(when: datetime | None) -> str | None:
    return iso(when) if when is not None else None
