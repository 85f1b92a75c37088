"""The four DORA keys, measured from Noman's own history (``service/<name>/history/``).

Plain functions over ``HistoryEntry`` values and a time ``now``: no I/O but
``collect``, which reads each service's history once. Definitions (the README
says the same):

- a **deployment** is a ``deploy`` (not a rollback) that reached production
  and ended ``successful``, ``failed`` or ``timed_out``; what never reached it
  (cancelled, superseded, rejected, expired, still waiting) is not one. The
  period holds the deployments that *ended* within it;
- **deployment frequency**: successful deployments per day of the period;
- **lead time for changes**: from the time encoded in the tag (when the
  service's order is numeric and the first capture group has 14 digits, read
  as ``YYYYMMDDhhmmss`` UTC, as ``release-20230103082900``), else from the
  push's arrival, to the moment the deploy ended successfully; median and 90th
  percentile (nearest rank);
- **change failure rate**: deployments that ended ``failed`` or ``timed_out``,
  or that a later rollback replaced, over all deployments;
- **time to restore**: from a failure (a failed deployment's end, or the end of
  a deployment later rolled back) to the end of the next successful deploy or
  rollback; failures in a row count as one; median.

Each key is classified in the performance bands of DORA's Accelerate State of
DevOps report (2023, with the gaps between bands closed); a service's overall
band is the lowest of its keys'.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from noman.model import Service
from noman.ordering import order_kind
from noman.state import HistoryEntry, Report, iso_time

if TYPE_CHECKING:
    from noman.deploy import Deployer

DAY = 86400.0
DEFAULT_DAYS = 30
MAX_DAYS = 3650
APPLIED = frozenset({"successful", "failed", "timed_out"})
FAILED = frozenset({"failed", "timed_out"})
BANDS = ("elite", "high", "medium", "low")
#: Upper bounds of the elite, high and medium bands; beyond the last: low.
LEAD_TIME_BOUNDS = (DAY, 7 * DAY, 30 * DAY)
RESTORE_BOUNDS = (3600.0, DAY, 7 * DAY)
FAILURE_RATE_BOUNDS = (0.05, 0.10, 0.15)
#: Lower bounds (deploys per day) of the elite, high and medium bands.
FREQUENCY_BOUNDS = (1.0, 1 / 7, 1 / 30)


def parse_time(value: str) -> float | None:
    """Epoch seconds of an ISO 8601 time from a record (None when empty or unreadable)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def tag_time(service: Service, tag: str) -> float | None:
    """The commit time a tag encodes (``release-20230103082900``), or None."""
    if order_kind(service.tag_pattern) != "number":
        return None
    match = service.tag_pattern.fullmatch(tag)
    digits = match.group(1) if match is not None and match.lastindex else None
    if digits is None or len(digits) != 14 or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Change:
    """One history entry, reduced to what the keys need."""

    service: str
    seq: int
    tag: str
    kind: str
    outcome: str
    previous: str | None
    asked: float  # the push's arrival
    ended: float  # when the outcome was reached
    committed: float | None  # the time the tag encodes

    @property
    def lead_time(self) -> float:
        """Seconds from the change's commit (or arrival) until it was live."""
        start = self.committed if self.committed is not None else self.asked
        return max(0.0, self.ended - start)


def changes_of(service: Service, history: Iterable[HistoryEntry]) -> list[Change]:
    """The applied entries of ``service``'s history, oldest first."""
    found = []
    for entry in history:
        if entry.outcome not in APPLIED:
            continue
        asked = parse_time(entry.time)
        if asked is None:
            continue
        ended = parse_time(entry.ended) or asked
        found.append(
            Change(
                service=service.name,
                seq=entry.seq,
                tag=entry.tag,
                kind=entry.kind,
                outcome=entry.outcome,
                previous=entry.previous,
                asked=asked,
                ended=ended,
                committed=tag_time(service, entry.tag),
            )
        )
    return sorted(found, key=lambda c: c.seq)


def rolled_back(changes: Sequence[Change]) -> set[int]:
    """Seqs of successful deploys that a later rollback replaced."""
    found: set[int] = set()
    for i, change in enumerate(changes):
        if change.kind != "rollback" or change.outcome != "successful" or not change.previous:
            continue
        for earlier in reversed(changes[:i]):
            if earlier.tag == change.previous and earlier.kind == "deploy":
                if earlier.outcome == "successful":
                    found.add(earlier.seq)
                break
    return found


def restores(
    changes: Sequence[Change], bad: set[int]
) -> tuple[list[tuple[float, float]], float | None]:
    """(failure start, restored) pairs in order, and the start of a failure not yet restored."""
    found: list[tuple[float, float]] = []
    broken: float | None = None
    for change in changes:
        failure = (change.kind == "deploy" and change.outcome in FAILED) or change.seq in bad
        if failure:
            if broken is None:
                broken = change.ended
        elif change.outcome == "successful" and broken is not None:
            found.append((broken, change.ended))
            broken = None
    return found, broken


@dataclass
class Keys:
    """The four keys of one service, or of all of them, over one period."""

    days: float
    deployments: int = 0
    successful: int = 0
    failed: int = 0
    rolled_back: int = 0
    lead_times: list[float] = field(default_factory=list)
    restore_times: list[float] = field(default_factory=list)
    unrestored: int = 0

    def add(self, changes: Sequence[Change], since: float, until: float) -> None:
        """Count one service's changes (oldest first) into these keys."""
        bad = rolled_back(changes)
        for change in changes:
            if change.kind != "deploy" or not since <= change.ended <= until:
                continue
            self.deployments += 1
            if change.outcome == "successful":
                self.successful += 1
                self.lead_times.append(change.lead_time)
            else:
                self.failed += 1
            if change.seq in bad:
                self.rolled_back += 1
        pairs, broken = restores(changes, bad)
        self.restore_times += [end - start for start, end in pairs if since <= start <= until]
        if broken is not None and since <= broken <= until:
            self.unrestored += 1

    @property
    def frequency(self) -> float:
        """Successful deployments per day."""
        return self.successful / self.days

    @property
    def failure_rate(self) -> float | None:
        """Failed or rolled-back deployments over all (None without deployments)."""
        if not self.deployments:
            return None
        return (self.failed + self.rolled_back) / self.deployments

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/metrics/dora`` for these keys."""
        lead = sorted(self.lead_times)
        restore = sorted(self.restore_times)
        rate = self.failure_rate
        bands = {
            "deployment_frequency": frequency_band(self.frequency),
            "lead_time": bounded_band(median(lead), LEAD_TIME_BOUNDS),
            "change_failure_rate": bounded_band(rate, FAILURE_RATE_BOUNDS, inclusive=True),
            "time_to_restore": bounded_band(median(restore), RESTORE_BOUNDS),
        }
        known = [b for b in bands.values() if b is not None]
        return {
            "deployments": self.deployments,
            "successful": self.successful,
            "failed": self.failed,
            "rolled_back": self.rolled_back,
            "deployment_frequency_per_day": round(self.frequency, 4),
            "lead_time_seconds": {"median": _round(median(lead)), "p90": _round(p90(lead))},
            "change_failure_rate": None if rate is None else round(rate, 4),
            "time_to_restore_seconds": {"median": _round(median(restore))},
            "unrestored_failures": self.unrestored,
            "bands": bands,
            "band": max(known, key=BANDS.index) if known else None,
        }


def median(values: Sequence[float]) -> float | None:
    """The median (the mean of the middle two for an even count); None when empty."""
    return float(statistics.median(values)) if values else None


def p90(values: Sequence[float]) -> float | None:
    """The 90th percentile by nearest rank of sorted ``values``; None when empty."""
    if not values:
        return None
    return float(values[max(0, math.ceil(0.9 * len(values)) - 1)])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def bounded_band(
    value: float | None, bounds: tuple[float, float, float], inclusive: bool = False
) -> str | None:
    """The band of a value where lower is better (None when there is no value)."""
    if value is None:
        return None
    for band, bound in zip(BANDS, bounds, strict=False):
        if value < bound or (inclusive and value <= bound):
            return band
    return "low"


def frequency_band(per_day: float) -> str:
    """The band of a deployment frequency (deploys per day)."""
    for band, bound in zip(BANDS, FREQUENCY_BOUNDS, strict=False):
        if per_day >= bound:
            return band
    return "low"


@dataclass(frozen=True)
class Measurement:
    """The keys of every service and of all of them, with the series the charts draw."""

    days: float
    since: float
    until: float
    services: dict[str, Keys]
    all: Keys
    changes: dict[str, list[Change]]
    partial: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/metrics/dora``."""
        return {
            "days": self.days,
            "since": iso_time(self.since),
            "until": iso_time(self.until),
            "services": {name: keys.as_dict() for name, keys in self.services.items()},
            "all": self.all.as_dict(),
            "partial_history": list(self.partial),
        }

    def daily(self, service: str | None = None) -> list[tuple[str, int, int, int]]:
        """(date, successful, failed, rolled back) per UTC day of the period, oldest first."""
        start = datetime.fromtimestamp(self.since, UTC).date()
        end = datetime.fromtimestamp(self.until, UTC).date()
        days = {
            (start + timedelta(days=i)).isoformat(): [0, 0, 0]
            for i in range((end - start).days + 1)
        }
        for name, changes in self.changes.items():
            if service is not None and name != service:
                continue
            bad = rolled_back(changes)
            for change in changes:
                if change.kind != "deploy" or not self.since <= change.ended <= self.until:
                    continue
                day = datetime.fromtimestamp(change.ended, UTC).date().isoformat()
                if day not in days:
                    continue
                if change.seq in bad:
                    days[day][2] += 1
                elif change.outcome == "successful":
                    days[day][0] += 1
                else:
                    days[day][1] += 1
        return [(day, *counts) for day, counts in days.items()]  # type: ignore[misc]

    def lead_points(self, service: str | None = None) -> list[tuple[float, float]]:
        """(ended, lead time seconds) of each successful deployment of the period."""
        points = [
            (c.ended, c.lead_time)
            for name, changes in self.changes.items()
            if service is None or name == service
            for c in changes
            if c.kind == "deploy"
            and c.outcome == "successful"
            and self.since <= c.ended <= self.until
        ]
        return sorted(points)


def measure(
    histories: Mapping[Service, Sequence[HistoryEntry]],
    now: float,
    days: float = DEFAULT_DAYS,
    history_size: int | None = None,
) -> Measurement:
    """The keys of each service's ``history`` over the ``days`` before ``now``.

    With ``history_size``, a service whose history is full and starts after the
    period does is named in ``partial`` (its older deploys were pruned).
    """
    since = now - days * DAY
    everything = Keys(days)
    per_service: dict[str, Keys] = {}
    changes: dict[str, list[Change]] = {}
    partial = []
    for service, history in histories.items():
        found = changes_of(service, history)
        keys = Keys(days)
        keys.add(found, since, now)
        everything.add(found, since, now)
        per_service[service.name] = keys
        changes[service.name] = found
        if history_size is not None and len(history) >= history_size:
            oldest = min((parse_time(h.time) or now for h in history), default=now)
            if oldest > since:
                partial.append(service.name)
    return Measurement(days, since, now, per_service, everything, changes, tuple(partial))


def collect(deployer: Deployer, services: Iterable[Service]) -> dict[Service, list[HistoryEntry]]:
    """Each service's history as stored (one folder read per service)."""
    return {service: deployer.history(service) for service in services}


def observe(service: Service | None, report: Report) -> tuple[str, float | None]:
    """The outcome a report records, and its lead time when it is a successful deploy."""
    if report.state != "successful" or report.kind != "deploy" or service is None:
        return report.state, None
    asked = parse_time(report.requested)
    ended = report.at or None
    if asked is None or ended is None:
        return report.state, None
    committed = tag_time(service, report.tag)
    start = committed if committed is not None else asked
    return report.state, max(0.0, ended - start)


def human(seconds: float | None) -> str:
    """A duration the way a person reads it: "45 s", "12 min", "6.5 h", "3.0 d"."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} d"


def table(data: Mapping[str, Any]) -> str:
    """``noman report``'s text: one line per service and one for all."""
    header = (
        "service",
        "deploys",
        "per day",
        "lead time p50 / p90",
        "failure rate",
        "restore p50",
        "band",
    )
    rows = [header]
    keyed = [*data["services"].items(), ("all", data["all"])]
    for name, keys in keyed:
        lead = keys["lead_time_seconds"]
        rate = keys["change_failure_rate"]
        rows.append(
            (
                name,
                str(keys["deployments"]),
                f"{keys['deployment_frequency_per_day']:.2f}",
                f"{human(lead['median'])} / {human(lead['p90'])}",
                "—" if rate is None else f"{rate:.0%}",
                human(keys["time_to_restore_seconds"]["median"]),
                keys["band"] or "—",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"DORA keys over {data['days']:g} days, {data['since']} to {data['until']}",
        "",
        *(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ),
        "",
        "Bands: elite, high, medium, low per DORA's 2023 report; a service's band is its "
        "lowest key's.",
    ]
    if data.get("partial_history"):
        names = ", ".join(data["partial_history"])
        lines.append(
            f"The history of {names} starts after the period does (rollout.history_size "
            "keeps fewer entries): its keys count only what is kept."
        )
    return "\n".join(lines)
