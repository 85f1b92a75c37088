"""The domain values every layer shares: services, releases, job states, records.

Plain frozen data and pure functions: nothing here talks to Consul, Nomad
or Flask, and nothing here imports another Noman module but ``ordering``
and the sender-facing values of ``release``. ``noman.config`` re-exports
``Service`` and ``NomadTarget`` so older imports keep working.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from noman.ordering import is_older
from noman.release import OCI_TAG, Outcome, Release, Rollout, split_image

__all__ = [
    "DEFAULT_TAG_PATTERN",
    "OCI_TAG",
    "TERMINAL_STATES",
    "HistoryEntry",
    "JobState",
    "NomadTarget",
    "Outcome",
    "Record",
    "Release",
    "Rollout",
    "RolloutState",
    "Service",
    "same_repository",
    "split_image",
    "utc_now",
]

DEFAULT_TAG_PATTERN = r"^release-(\d{14})$"

#: Rollout states after which the reconciler leaves a tag alone.
TERMINAL_STATES = frozenset({"successful", "failed", "cancelled", "timed_out"})
#: Every rollout state, in the order a rollout normally goes through them.
ROLLOUT_STATES = (
    "pending",
    "registered",
    "running",
    "successful",
    "failed",
    "cancelled",
    "timed_out",
)


@dataclass(frozen=True)
class NomadTarget:
    """The Nomad job a rolling service updates, and which field of it."""

    job: str
    namespace: str | None = None
    region: str | None = None
    update: Literal["meta", "image"] = "meta"
    meta_key: str = "NOMAN_IMAGE_TAG"
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    """One deployable thing: who may deploy it, what is accepted, where it goes."""

    name: str
    repository: str
    key: str
    secret_hashes: tuple[bytes, ...] = field(repr=False)
    tag_pattern: re.Pattern[str] = re.compile(DEFAULT_TAG_PATTERN, re.ASCII)
    strategy: Literal["restart", "rolling"] = "restart"
    nomad: NomadTarget | None = None
    # Keys of signed senders; several during a rotation.
    github_keys: tuple[bytes, ...] = field(default=(), repr=False)
    standard_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class JobState:
    """A job as an orchestrator read it: the tag it runs and what is needed to change it."""

    tag: str | None
    spec: dict[str, Any]
    modify_index: int

    @property
    def version(self) -> int:
        """The job version Nomad gave this spec."""
        return int(self.spec.get("Version") or 0)


def same_repository(service: Service, repository: str | None) -> bool:
    """True unless ``repository`` is given and is not the one the service deploys."""
    return repository is None or repository.lower() == service.repository.lower()


def orders_before(service: Service, tag: str | None, other: str | None) -> bool:
    """True when both tags can be ordered and ``tag`` is older than ``other``."""
    return tag is not None and is_older(service.tag_pattern, tag, other)


def utc_now() -> str:
    """The time now, ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RolloutState:
    """Where the rollout of the desired tag stands, as kept in the service's record."""

    state: str
    tag: str
    version: int | None = None
    deployment_id: str | None = None
    reason: str | None = None
    description: str | None = None
    attempts: int = 0
    placed: int | None = None
    healthy: int | None = None
    desired: int | None = None
    updated_at: str = ""
    # Set by rollbacks and forced pushes: the job may go to an older tag.
    force: bool = False
    # When (epoch seconds) the job version was registered: the watch deadline counts from it.
    registered_at: float | None = None
    # DockerHub's per-push callback (a token in its path): sent with the final
    # report, then cleared; never shown.
    callback_url: str | None = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        """True once the reconciler has nothing more to do for this tag."""
        return self.state in TERMINAL_STATES

    def moved(self, state: str, **changes: Any) -> RolloutState:
        """A copy in ``state`` with ``changes``, stamped now."""
        return replace(self, state=state, updated_at=utc_now(), **changes)

    def public(self) -> dict[str, Any]:
        """The fields ``status`` shows."""
        data = asdict(self)
        for internal in ("force", "registered_at", "callback_url"):
            data.pop(internal)
        return data


@dataclass(frozen=True)
class HistoryEntry:
    """One deploy or rollback, with its final outcome once known."""

    tag: str
    previous: str | None
    time: str
    sender: str
    request_id: str | None
    kind: Literal["deploy", "rollback"]
    outcome: str
    description: str = ""


@dataclass(frozen=True)
class Record:
    """A service's state under Noman's prefix: one JSON value per service.

    ``reports`` are outcome reports not yet sent (the reconciler sends them
    and removes them); ``write_id`` names the last write, so a write whose
    answer timed out can be recognised on a re-read.
    """

    tag: str | None = None
    frozen: bool = False
    rollout: RolloutState | None = None
    deliveries: dict[str, float] = field(default_factory=dict)
    history: tuple[HistoryEntry, ...] = ()
    reports: tuple[dict[str, Any], ...] = ()
    write_id: str = ""

    @classmethod
    def parse(cls, raw: str | None) -> Record:
        """The record in ``raw`` (an empty record when missing or unreadable)."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        rollout = data.get("rollout")
        known_rollout = {f for f in RolloutState.__dataclass_fields__}
        known_history = {f for f in HistoryEntry.__dataclass_fields__}
        deliveries = data.get("deliveries")
        try:
            return cls(
                tag=data.get("tag") if isinstance(data.get("tag"), str) else None,
                frozen=data.get("frozen") is True,
                rollout=RolloutState(**{k: v for k, v in rollout.items() if k in known_rollout})
                if isinstance(rollout, dict)
                else None,
                deliveries={
                    k: float(v)
                    for k, v in (deliveries if isinstance(deliveries, dict) else {}).items()
                    if isinstance(v, int | float)
                },
                history=tuple(
                    HistoryEntry(**{k: v for k, v in h.items() if k in known_history})
                    for h in data.get("history") or []
                    if isinstance(h, dict)
                ),
                reports=tuple(r for r in data.get("reports") or [] if isinstance(r, dict)),
                write_id=str(data.get("write_id") or ""),
            )
        except TypeError:
            return cls()

    def dump(self) -> str:
        """The record as the JSON text stored under the prefix."""
        return json.dumps(
            {
                "tag": self.tag,
                "frozen": self.frozen,
                # Flat dataclasses: their own __dict__ serialises as is, without
                # asdict's deep copy (the hot path of every hook).
                "rollout": vars(self.rollout) if self.rollout else None,
                "deliveries": self.deliveries,
                "history": [vars(h) for h in self.history],
                "reports": list(self.reports),
                "write_id": self.write_id,
            },
            separators=(",", ":"),
        )

    def finish_history(self, tag: str, outcome: str, description: str) -> tuple[HistoryEntry, ...]:
        """History with the newest pending entry for ``tag`` given its final outcome."""
        entries = list(self.history)
        for i, entry in enumerate(entries):
            if entry.tag == tag:
                if entry.outcome == "pending":
                    entries[i] = replace(entry, outcome=outcome, description=description)
                break
        return tuple(entries)
