"""The stages of a rollout the leader carries: their records and pure decisions.

A staged rollout (a release phase, several jobs, or canaries Noman promotes)
moves through these stages, each recorded in the rollout record
(``service/<name>/rollout``) with the time it is due, never in a sleeping
thread, so a restart or a new leader resumes it where it stood:

    release_phase        the parameterized job was dispatched; its child runs
    canary               a job's deployment placed canaries; they are not healthy yet
    analysis             the canaries are healthy: checks run every interval for the bake
    awaiting_promotion   the analysis passed; ``promote`` (API, CLI, page) goes on
    rolling              a job's deployment replaces the remaining allocations
    reverting            it failed (or was aborted): the jobs already moved go back

The jobs of a service are rolled in order, one ``JobStep`` each. Requests to
promote or abort do not write the rollout record (the leader is its one
writer): they write the service's ``Gate`` (``service/<name>/promotion``) and touch
``pending/<name>/<seq>``, which wakes the leader; it acts and records who asked
in the rollout and the history.

Everything here is pure: records in, records or decisions out. The leader's
acting code is ``noman.staged``; the checks are run by ``noman.analysis``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from noman.model import CanaryCheck, CanaryPlan, Service

if TYPE_CHECKING:
    from noman.state import RolloutState

#: Stages in which the leader follows Nomad with blocking queries.
FOLLOWED = frozenset({"release_phase", "canary", "rolling"})
#: The canary plan of a service without a [canary] table whose job places canaries.
DEFAULT_PLAN = CanaryPlan()
#: The placeholders a Prometheus query may use; PromQL's own braces are left alone.
_PLACEHOLDER = re.compile(r"\{(service|tag|job|deployment)\}")


class JobStep(msgspec.Struct, frozen=True, omit_defaults=True):
    """One job of the rollout: waiting, registered, running, successful, failed, reverted."""

    job: str
    state: str
    version: int | None = None
    # The version that ran before Noman registered ``version``: what a revert goes back to.
    previous: int | None = None
    deployment_id: str | None = None
    placed: int | None = None
    healthy: int | None = None
    desired: int | None = None
    canaries: int | None = None
    description: str | None = None


class ReleaseState(msgspec.Struct, frozen=True, omit_defaults=True):
    """The release phase: the job dispatched, its child, and how it ended."""

    job: str
    started_at: float
    state: str
    child: str | None = None
    exit_code: int | None = None
    message: str | None = None


class Measurement(msgspec.Struct, frozen=True, omit_defaults=True):
    """One check's result in one round of an analysis."""

    check: str
    ok: bool
    value: float | None = None
    threshold: str = ""
    detail: str = ""
    at: float = 0.0


class AnalysisState(msgspec.Struct, frozen=True, omit_defaults=True):
    """The canary analysis of one job's deployment: when it began, when the next round is."""

    job: str
    deployment_id: str
    started_at: float
    next_at: float
    rounds: int = 0
    last: tuple[Measurement, ...] = ()
    passed_at: float | None = None


class Gate(msgspec.Struct, frozen=True, omit_defaults=True):
    """A request to promote or abort attempt ``seq``, and who asked.

    Kept at ``service/<name>/promotion``.
    """

    seq: int
    action: Literal["promote", "abort"]
    by: str
    time: str
    at: float
    request_id: str | None = None


# -- decisions ---------------------------------------------------------------------------


def plan_of(service: Service) -> CanaryPlan:
    """The service's canary plan (the defaults without a [canary] table)."""
    return service.canary or DEFAULT_PLAN


def job_steps(service: Service) -> tuple[JobStep, ...]:
    """A fresh step for each job of the service, in rollout order."""
    assert service.nomad is not None
    return tuple(JobStep(job, "waiting") for job in service.nomad.job_ids)


def current(rollout: RolloutState) -> int | None:
    """The index of the job being moved: the first one that is not successful yet."""
    for i, step in enumerate(rollout.jobs):
        if step.state != "successful":
            return i
    return None


def with_step(rollout: RolloutState, index: int, **changes: Any) -> tuple[JobStep, ...]:
    """The rollout's jobs with step ``index`` changed."""
    steps = list(rollout.jobs)
    steps[index] = msgspec.structs.replace(steps[index], **changes)
    return tuple(steps)


def event(name: str, rollout: RolloutState, index: int | None = None) -> str:
    """The report state of a stage event: one per attempt (and per job of several)."""
    if index is None or len(rollout.jobs) <= 1:
        return name
    return f"{name}.{index + 1}"


def needs_noman(found: dict[str, Any]) -> bool:
    """True when a running deployment's canaries wait for a promotion Nomad will not do."""
    canaries = found.get("canaries")
    return (
        isinstance(canaries, dict)
        and int(canaries.get("desired") or 0) > 0
        and not canaries.get("promoted")
        and not canaries.get("auto_promote")
    )


def canaries_healthy(found: dict[str, Any]) -> bool:
    """True when every canary of a deployment that waits for promotion is healthy."""
    canaries = found.get("canaries") or {}
    desired = int(canaries.get("desired") or 0)
    return desired > 0 and int(found.get("healthy") or 0) >= desired


def query_text(check: CanaryCheck, service: str, tag: str, job: str, deployment: str) -> str:
    """The check's query with its placeholders filled in."""
    values = {"service": service, "tag": tag, "job": job, "deployment": deployment}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], check.query)


def threshold_text(check: CanaryCheck) -> str:
    """What the check holds a value to: ``≤ 0.01``, ``≥ 5``, ``≥ 1 and ≤ 2``, ``2xx``."""
    if check.kind == "http":
        return " or ".join(str(s) for s in check.expect) if check.expect else "2xx"
    parts = []
    if check.min is not None:
        parts.append(f"≥ {check.min:g}")
    if check.max is not None:
        parts.append(f"≤ {check.max:g}")
    return " and ".join(parts)


def judge(check: CanaryCheck, values: list[float], at: float) -> Measurement:
    """A Prometheus check's measurement from the values of its query (every series)."""
    threshold = threshold_text(check)
    present = [v for v in values if not math.isnan(v)]
    if not present:
        ok = check.on_no_data == "pass"
        return Measurement(check.name, ok, None, threshold, "no data", at)
    for value in present:
        if (check.max is not None and value > check.max) or (
            check.min is not None and value < check.min
        ):
            return Measurement(check.name, False, value, threshold, "", at)
    worst = max(present) if check.max is not None else min(present)
    return Measurement(check.name, True, worst, threshold, "", at)


def measured_text(measurement: Measurement) -> str:
    """One measurement as a line of a report: ``error ratio 0.002 ≤ 0.01``."""
    if measurement.value is None:
        text = f"{measurement.check}: {measurement.detail or 'no value'}"
    else:
        relation = measurement.threshold if measurement.ok else f"not {measurement.threshold}"
        text = f"{measurement.check} {measurement.value:g} {relation}".rstrip()
    if measurement.detail and measurement.value is not None:
        text += f" ({measurement.detail})"
    return text


def analysis_done(analysis: AnalysisState, plan: CanaryPlan, now: float) -> bool:
    """True once the bake has passed since the canaries turned healthy (rounds ran)."""
    return analysis.rounds > 0 and now - analysis.started_at >= plan.bake


def next_round(analysis: AnalysisState, plan: CanaryPlan, now: float) -> float:
    """When the round after one run ``now`` is due: on the interval's beat, never in the past."""
    due = analysis.next_at + plan.interval
    while due <= now:
        due += plan.interval
    # The last round lands on the end of the bake, not an interval past it.
    return min(due, max(analysis.started_at + plan.bake, now))


@dataclass(frozen=True)
class Ending:
    """How a staged rollout ends, decided before the reverts that precede the record."""

    state: str
    reason: str | None
    description: str
