"""The domain values every layer shares: services, releases, job states.

Plain frozen data and pure functions: nothing here talks to Consul, Nomad
or Flask, and nothing here imports another Noman module but ``ordering``
and the sender-facing values of ``release``; the state kept in the store is
``noman.state``. ``noman.config`` re-exports
``Service`` and ``NomadTarget`` so older imports keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from noman.ordering import is_older
from noman.release import OCI_TAG, Outcome, Release, Rollout, split_image

__all__ = [
    "DEFAULT_TAG_PATTERN",
    "OCI_TAG",
    "TERMINAL_STATES",
    "JobState",
    "NomadTarget",
    "Outcome",
    "Release",
    "Rollout",
    "Service",
    "same_repository",
    "split_image",
    "utc_now",
]

DEFAULT_TAG_PATTERN = r"^release-(\d{14})$"

#: Rollout states after which the reconciler leaves a tag alone.
TERMINAL_STATES = frozenset({"successful", "failed", "cancelled", "timed_out"})


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
