"""The domain values every layer shares: services, releases, job states.

Plain frozen data and pure functions: nothing here talks to Consul, Nomad
or Flask, and nothing here imports another Noman module but ``ordering``
and the sender-facing values of ``release``; the state kept in the store is
``noman.state``. Import ``Service`` and its parts from here.
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
    "CanaryCheck",
    "CanaryPlan",
    "JobState",
    "NomadTarget",
    "Outcome",
    "Release",
    "ReleasePhase",
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
    """The Nomad job a rolling service updates, and which field of it.

    ``jobs`` lists every job of a service made of several, in the order they are
    rolled (``job`` is the first); empty for a service of one job.
    """

    job: str
    namespace: str | None = None
    region: str | None = None
    update: Literal["meta", "image"] = "meta"
    meta_key: str = "NOMAN_IMAGE_TAG"
    tasks: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()

    @property
    def job_ids(self) -> tuple[str, ...]:
        """Every job of the service, in rollout order."""
        return self.jobs or (self.job,)


@dataclass(frozen=True)
class ReleasePhase:
    """A parameterized batch job dispatched with the new tag before any job is registered."""

    job: str
    timeout: float = 900.0


@dataclass(frozen=True)
class CanaryCheck:
    """One check of a canary analysis: a Prometheus query, or a GET to every canary."""

    kind: Literal["prometheus", "http"]
    name: str
    url: str = ""
    query: str = ""
    max: float | None = None
    min: float | None = None
    on_no_data: Literal["fail", "pass"] = "fail"
    path: str = "/"
    port: str | None = None
    # Accepted statuses; empty: any 2xx.
    expect: tuple[int, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class CanaryPlan:
    """How Noman carries canaries that wait for promotion: bake, checks, who promotes."""

    bake: float = 60.0
    interval: float = 10.0
    promote: Literal["auto", "manual"] = "auto"
    checks: tuple[CanaryCheck, ...] = ()


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
    release_phase: ReleasePhase | None = None
    # The [canary] table; without one, canaries that wait for promotion get the defaults.
    canary: CanaryPlan | None = None

    @property
    def staged(self) -> bool:
        """True when the leader carries this service's rollouts in stages (``noman.stages``).

        A release phase, several jobs or a canary table; the inline registration of the
        hook's instance then waits: the first step is the leader's.
        """
        several = self.nomad is not None and len(self.nomad.job_ids) > 1
        return self.release_phase is not None or self.canary is not None or several


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
