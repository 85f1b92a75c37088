"""The leader's acting code for staged rollouts: release phase, several jobs, canaries.

Part of the reconciler (``noman.reconcile`` calls it for every rollout that
``wants`` it): each pass takes one step of a rollout from its record, acts on
Nomad, Prometheus or the canaries, and writes the next stage with the reports
of the change in one transaction. Waits are the record's: the release phase
and the deployments are followed with Nomad blocking queries (``follow``, with
the pass's wait), the analysis runs its rounds when the record says they are
due, a manual promotion waits for the service's gate. A new leader reads the
same record and goes on: the bake counts from when the canaries turned
healthy, a dispatched release job is followed, never dispatched again (and
Nomad's idempotency token covers a crash between the dispatch and its record).

An ending (a failure, an abort, a timeout) is recorded first (stage
``reverting``, with how it will end), then carried out: the running
deployment is failed, the jobs already moved go back to their previous
versions (``EnforcePriorVersion``), and the rollout ends with the tag key set
back to what the service runs, in one transaction, like the plain path's
auto-revert. Every action is safe to repeat, so a step cut short is simply
taken again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

import msgspec
from msgspec import structs

from noman.analysis import Analyst
from noman.deploy import STALE_JOB, iso
from noman.errors import NomadError, NomanError
from noman.model import Service
from noman.rollouts.nomad import Canary, NomadRollouts, for_job
from noman.stages import (
    FOLLOWED,
    AnalysisState,
    Ending,
    Gate,
    JobStep,
    ReleaseState,
    analysis_done,
    canaries_healthy,
    current,
    event,
    job_steps,
    measured_text,
    needs_noman,
    next_round,
    plan_of,
    with_step,
)
from noman.state import HistoryEntry, RolloutState, decode, encode, make_report
from noman.stores import Entry, Write

if TYPE_CHECKING:
    from noman.reconcile import Reconciler

log = logging.getLogger(__name__)


class StagedRollouts:
    """Carries staged rollouts for the reconciler, one step per pass."""

    def __init__(self, reconciler: Reconciler, analyst: Analyst | None = None) -> None:
        self.r = reconciler
        self.analyst = analyst or Analyst(clock=reconciler.clock)
        # (service, resource) -> the Nomad index to block on next
        self._index: dict[tuple[str, str], int] = {}
        # service -> (attempt, monotonic time before which Nomad is not asked again)
        self._backoff: dict[str, tuple[int, float]] = {}
        # service -> monotonic time of the last look at a deployment awaiting promotion
        self._looked: dict[str, float] = {}

    @property
    def nomad(self) -> NomadRollouts:
        """The Nomad client (a staged rollout only exists where one is configured)."""
        return cast(NomadRollouts, self.r.orchestrator)

    # -- entry points ------------------------------------------------------------------

    def wants(self, service: Service, rollout: RolloutState, pending: dict[int, Entry]) -> bool:
        """True when this rollout is carried in stages (configured, begun, or a gate came)."""
        if service.staged or rollout.stage is not None:
            return True
        gated = pending.get(rollout.seq)
        return gated is not None and gated.value == "gate"

    def step(
        self, service: Service, rollout: RolloutState, index: int
    ) -> tuple[RolloutState, int] | None:
        """One step; (rollout, index) when the pass should follow Nomad for it."""
        now = self.r.clock()
        gate = self._gate(service, rollout)
        if rollout.stage is None:
            begun = self._begin(service, rollout, index, now)
            if begun is None:
                return None
            rollout, index = begun
        if gate is not None and gate.action == "abort" and rollout.stage != "reverting":
            ending = Ending("failed", "aborted", f"Aborted by {gate.by}.")
            self._decide(service, rollout, index, ending, aborted_by=gate.by)
            return None
        if not self._ready(service, rollout.seq):
            return None
        try:
            return self._act(service, rollout, index, gate, now)
        except NomanError as exc:
            self._note_error(service, rollout, index, exc)
            return None

    def follow(self, service: Service, rollout: RolloutState, index: int, wait: float) -> None:
        """Block on Nomad up to ``wait`` s for the stage's change, then record it."""
        try:
            if rollout.stage == "release_phase":
                self._follow_release(service, rollout, index, wait)
            elif rollout.stage in FOLLOWED:
                self._follow_job(service, rollout, index, wait)
        except NomanError as exc:
            log.warning("reconciler: following %s: %s", service.name, exc.code)
            self._index = {k: v for k, v in self._index.items() if k[0] != service.name}
            self._note_error(service, rollout, index, exc)

    def take_over(
        self, service: Service, rollout: RolloutState, index: int, found: dict[str, Any]
    ) -> None:
        """A plain rollout whose deployment places canaries Nomad will not promote."""
        begun = self._begin(service, rollout, index, self.r.clock())
        if begun is not None:
            self._observed(service, begun[0], begun[1], 0, found)

    # -- the stages --------------------------------------------------------------------

    def _act(
        self, service: Service, rollout: RolloutState, index: int, gate: Gate | None, now: float
    ) -> tuple[RolloutState, int] | None:
        stage = rollout.stage
        if stage == "reverting":
            self._revert(service, rollout, index)
            return None
        if stage == "release_phase":
            return self._dispatch(service, rollout, index, now)
        if stage == "analysis":
            self._analyse(service, rollout, index, now)
            return None
        if stage == "awaiting_promotion":
            self._await(service, rollout, index, gate, now)
            return None
        return self._register(service, rollout, index, now)

    def _begin(
        self, service: Service, rollout: RolloutState, index: int, now: float
    ) -> tuple[RolloutState, int] | None:
        """The first step: the jobs to move, and the first stage."""
        assert service.nomad is not None
        if rollout.version is not None:
            # A rollout the plain path began (a gate came for it): its one job runs.
            step = JobStep(
                service.nomad.job,
                state="running",
                version=rollout.version,
                deployment_id=rollout.deployment_id,
            )
            new = rollout.moved(rollout.state, iso(now), stage="rolling", jobs=(step,))
        elif service.release_phase is not None:
            release = ReleaseState(service.release_phase.job, now, "dispatching")
            new = rollout.moved(
                "running", iso(now), stage="release_phase", jobs=job_steps(service), release=release
            )
        else:
            new = rollout.moved("running", iso(now), stage="rolling", jobs=job_steps(service))
        new = structs.replace(new, stage_since=now)
        written = self._write(service, new, index)
        return None if written is None else (new, written)

    def _dispatch(
        self, service: Service, rollout: RolloutState, index: int, now: float
    ) -> tuple[RolloutState, int] | None:
        """Dispatch the release job once (the token covers a crash before the record)."""
        release = rollout.release
        assert release is not None
        if release.child is not None:
            return rollout, index
        token = f"noman:{service.name}:{rollout.seq}:{rollout.tag}"
        running = self.nomad.running_children(service, release.job)
        others = [child for child, theirs in running if theirs != token]
        if others and len(others) == len(running):
            # An earlier push's release job (or one run by hand) still runs: two
            # migrations at once would be worse than a late one. Checked again shortly,
            # within the release phase's timeout.
            assert service.release_phase is not None
            timeout = service.release_phase.timeout
            if now - release.started_at > timeout:
                text = f"Release phase: {others[0]} still ran after {timeout:g}s; not dispatched."
                ending = Ending("failed", "release_phase_failed", text)
                self._decide(service, rollout, index, ending)
                return None
            waiting = f"Release phase: waiting for {others[0]} to end before dispatching."
            if rollout.description != waiting:
                self._write(service, rollout.moved("running", iso(now), description=waiting), index)
            self._wake(service, rollout.seq, now + self.r.settings.nomad.poll_interval)
            return None
        try:
            child = self.nomad.dispatch(service, release.job, rollout.tag, token)
        except NomadError as exc:
            # Refused (not a parameterized job, a meta key it does not allow): asking
            # again cannot help, and no job of the service has moved.
            ending = Ending("failed", "release_phase_failed", f"{exc.message}.")
            self._decide(
                service, rollout, index, ending, release=structs.replace(release, state="failed")
            )
            return None
        new = rollout.moved(
            "running",
            iso(now),
            release=structs.replace(release, child=child, state="running"),
            reason=None,
            description=f"Release phase: {child} runs {rollout.tag}.",
        )
        log.info("reconciler: %s %s: release phase %s", service.name, rollout.tag, child)
        text = f"release phase: {child} dispatched with {rollout.tag}"
        written = self._write(service, new, index, [("release_phase", text)])
        return None if written is None else (new, written)

    def _follow_release(
        self, service: Service, rollout: RolloutState, index: int, wait: float
    ) -> None:
        release = rollout.release
        assert release is not None and release.child is not None
        assert service.release_phase is not None
        timeout = service.release_phase.timeout
        left = release.started_at + timeout - self.r.clock()
        if left <= 0:
            text = f"Release phase {release.child} did not finish within {timeout:g}s."
            self._decide(
                service,
                rollout,
                index,
                Ending("failed", "release_phase_failed", text),
                release=structs.replace(release, state="timed_out"),
            )
            return
        key = (service.name, release.child)
        run, self._index[key] = self.nomad.release(
            service, release.child, self._index.get(key, 0), min(wait, left)
        )
        if run.status == "running":
            return
        now = self.r.clock()
        done = structs.replace(
            release, state=run.status, exit_code=run.exit_code, message=run.message
        )
        if run.status == "complete":
            new = rollout.moved(
                "running", iso(now), stage="rolling", release=done, description=None
            )
            new = structs.replace(new, stage_since=now)
            text = f"release phase: {release.child} complete"
            if self._write(service, new, index, [("release_phase_complete", text)]) is not None:
                self._wake(service, rollout.seq, now)  # register the first job at once
            return
        text = f"Release phase job {release.child} failed"
        if run.exit_code is not None:
            text += f" with exit code {run.exit_code}"
        text += f": {run.message}." if run.message else "."
        self._decide(
            service, rollout, index, Ending("failed", "release_phase_failed", text), release=done
        )

    def _register(
        self, service: Service, rollout: RolloutState, index: int, now: float
    ) -> tuple[RolloutState, int] | None:
        """Register the current job if it waits; else follow its deployment."""
        i = current(rollout)
        if i is None:
            self._succeed(service, rollout, index)
            return None
        step = rollout.jobs[i]
        if step.state != "waiting":
            return rollout, index
        registered = self.r.deployer.register_once(for_job(service, step.job), rollout)
        if registered == "stale":
            ending = Ending("cancelled", "stale_tag", f"{step.job}: {STALE_JOB}")
            self._decide(service, rollout, index, ending)
            return None
        if registered is None:
            self._wake(service, rollout.seq, now)  # the job changed in between: again
            return None
        # A version registered now replaced the one before it (EnforceIndex); a job that
        # ran the tag already says nothing of what ran before.
        previous = registered.version - 1 if registered.eval_id else None
        jobs = with_step(
            rollout, i, state="registered", version=registered.version, previous=previous
        )
        new = rollout.moved("running", iso(now), stage="rolling", jobs=jobs, reason=None)
        new = structs.replace(new, stage_since=now)
        log.info(
            "reconciler: %s %s: job %s registered as version %s",
            service.name,
            rollout.tag,
            step.job,
            registered.version,
        )
        written = self._write(service, new, index)
        return None if written is None else (new, written)

    def _follow_job(self, service: Service, rollout: RolloutState, index: int, wait: float) -> None:
        i = current(rollout)
        if i is None:
            return
        step = rollout.jobs[i]
        if step.version is None:
            return
        job = for_job(service, step.job)
        key = (service.name, f"{step.job}@{step.version}")
        found, self._index[key] = self.nomad.follow(
            job, step.version, step.deployment_id, self._index.get(key, 0), wait
        )
        self._observed(service, rollout, index, i, found)

    def _observed(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        i: int,
        found: dict[str, Any] | None,
    ) -> None:
        """Record what Nomad says of job ``i``'s deployment: progress, a stage, an ending.

        Long because each status Nomad can report (no deployment, successful, failed or
        cancelled, late, running with or without canaries) maps to one recorded move,
        and the cases read best side by side.
        """
        step = rollout.jobs[i]
        now = self.r.clock()
        late = now - (rollout.stage_since or now) > self.r.settings.nomad.watch_timeout
        if found is None:
            if step.version is not None and self.r._stable(
                for_job(service, step.job), step.version
            ):
                self._job_done(service, rollout, index, i, None)
            elif late:
                self._time_out(service, rollout, index)
            return
        status = str(found.get("status"))
        if status == "successful":
            self._job_done(service, rollout, index, i, found)
            return
        if status in ("failed", "cancelled"):
            counts = {k: found.get(k) for k in ("placed", "healthy", "desired")}
            text = f"Job {step.job}: Nomad deployment of version {step.version}: {status}"
            if found.get("description"):
                text += f" ({found['description']})"
            ending = Ending(status, "deployment_failed", text + ".")
            jobs = with_step(rollout, i, state="failed", deployment_id=found.get("id"), **counts)
            self._decide(service, rollout, index, ending, jobs=jobs)
            return
        if late and rollout.stage in FOLLOWED:
            self._time_out(service, rollout, index)
            return
        self._progressed(service, rollout, index, i, found, now)

    def _progressed(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        i: int,
        found: dict[str, Any],
        now: float,
    ) -> None:
        """Record job ``i``'s running deployment: its counts, and its canaries' stage."""
        step = rollout.jobs[i]
        counts = {k: found.get(k) for k in ("placed", "healthy", "desired")}
        canaries = (found.get("canaries") or {}).get("desired")
        jobs = with_step(
            rollout,
            i,
            state="running",
            deployment_id=found.get("id"),
            canaries=canaries,
            description=found.get("description"),
            **counts,
        )
        if rollout.stage in ("analysis", "awaiting_promotion"):
            if jobs != rollout.jobs:
                self._write(service, structs.replace(rollout, jobs=jobs), index)
            return
        events: list[tuple[str, str]] = []
        stage, analysis = "rolling", None
        if needs_noman(found):
            stage = "canary"
            if canaries_healthy(found):
                stage = "analysis"
                analysis = AnalysisState(step.job, str(found.get("id")), now, next_at=now)
                text = f"canary healthy: {found.get('healthy')}/{canaries} canaries of {step.job}"
                events.append((event("canary_healthy", rollout, i), text))
            elif rollout.stage != "canary":
                text = f"canary: {canaries} canar{'y' if canaries == 1 else 'ies'} of {step.job}"
                events.append((event("canary", rollout, i), text + " placed, not healthy yet"))
        if stage == rollout.stage and jobs == rollout.jobs:
            return
        new = rollout.moved("running", iso(now), stage=stage, jobs=jobs, reason=None)
        if stage != rollout.stage:
            new = structs.replace(new, stage_since=now, analysis=analysis or rollout.analysis)
        if self._write(service, new, index, events) is not None and stage == "analysis":
            self._wake(service, rollout.seq, now)

    def _job_done(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        i: int,
        found: dict[str, Any] | None,
    ) -> None:
        seen: dict[str, Any] = {}
        if found:
            seen = {k: found.get(k) for k in ("placed", "healthy", "desired", "description")}
            seen["deployment_id"] = found.get("id")
        jobs = with_step(rollout, i, state="successful", **seen)
        now = self.r.clock()
        if i + 1 < len(jobs):
            new = rollout.moved("running", iso(now), stage="rolling", jobs=jobs)
            new = structs.replace(new, stage_since=now)
            text = f"job {jobs[i].job} version {jobs[i].version} successful; next {jobs[i + 1].job}"
            written = self._write(service, new, index, [(event("job_successful", new, i), text)])
            if written is not None:
                self._wake(service, rollout.seq, now)
            return
        self._succeed(service, structs.replace(rollout, jobs=jobs), index, found)

    def _analyse(self, service: Service, rollout: RolloutState, index: int, now: float) -> None:
        """A round of checks when one is due; then the next round, or the verdict."""
        analysis = rollout.analysis
        assert analysis is not None
        if now < analysis.next_at:
            self._wake(service, rollout.seq, analysis.next_at)
            return
        i = current(rollout)
        assert i is not None
        job = for_job(service, analysis.job)
        found = self.nomad.deployment(job, analysis.deployment_id)
        if found is None or found.get("status") != "running":
            self._observed(service, rollout, index, i, found)
            return
        plan = plan_of(service)
        listed: dict[str | None, list[Canary]] = {}

        def canaries(port: str | None) -> list[Canary]:
            if port not in listed:
                listed[port] = self.nomad.canaries(job, analysis.deployment_id, port)
            return listed[port]

        measured = self.analyst.round(
            plan, service.name, rollout.tag, analysis.job, analysis.deployment_id, canaries
        )
        done = structs.replace(analysis, rounds=analysis.rounds + 1, last=tuple(measured))
        failed = next((m for m in measured if not m.ok), None)
        if failed is not None:
            text = f"Analysis failed: {measured_text(failed)}."
            ending = Ending("failed", "analysis_failed", text)
            self._decide(service, rollout, index, ending, analysis=done)
            return
        if not analysis_done(done, plan, now):
            done = structs.replace(done, next_at=next_round(analysis, plan, now))
            if self._write(service, structs.replace(rollout, analysis=done), index) is not None:
                self._wake(service, rollout.seq, done.next_at)
            return
        passed = "; ".join(measured_text(m) for m in measured) or (
            f"canaries healthy for {plan.bake:g}s"
        )
        done = structs.replace(done, passed_at=now)
        events = [(event("analysis_passed", rollout, i), f"analysis passed: {passed}")]
        if plan.promote == "manual":
            new = rollout.moved("running", iso(now), stage="awaiting_promotion", analysis=done)
            how = f"POST /hooks/<secret>/promote, `noman promote {service.name}` or the page"
            events.append((event("awaiting_promotion", rollout, i), f"awaiting promotion: {how}"))
            self._write(service, structs.replace(new, stage_since=now), index, events)
            return
        self._promote(service, structs.replace(rollout, analysis=done), index, "noman", events)

    def _await(
        self, service: Service, rollout: RolloutState, index: int, gate: Gate | None, now: float
    ) -> None:
        """Promote when someone asked; meanwhile look at the deployment every interval."""
        if gate is not None and gate.action == "promote":
            self._promote(service, rollout, index, gate.by, [])
            return
        interval = plan_of(service).interval
        monotonic = self.r.monotonic()
        if monotonic - self._looked.get(service.name, -interval) >= interval:
            self._looked[service.name] = monotonic
            analysis = rollout.analysis
            i = current(rollout)
            if analysis is not None and i is not None:
                found = self.nomad.deployment(
                    for_job(service, analysis.job), analysis.deployment_id
                )
                if found is None or found.get("status") != "running":
                    self._observed(service, rollout, index, i, found)
                    return
        self._wake(service, rollout.seq, now + interval)

    def _promote(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        by: str,
        events: list[tuple[str, str]],
    ) -> None:
        analysis = rollout.analysis
        i = current(rollout)
        assert analysis is not None and i is not None
        try:
            self.nomad.promote(for_job(service, analysis.job), analysis.deployment_id)
        except NomadError as exc:
            ending = Ending("failed", "promotion_refused", exc.message)
            self._decide(service, rollout, index, ending, analysis=analysis)
            return
        now = self.r.clock()
        new = rollout.moved("running", iso(now), stage="rolling", promoted_by=by)
        new = structs.replace(new, stage_since=now)
        who = "after the analysis" if by == "noman" else f"by {by}"
        events = [*events, (event("promoted", rollout, i), f"promoted {who}: {analysis.job}")]
        history = {"promoted_by": by} if by != "noman" else None
        if self._write(service, new, index, events, history) is not None:
            log.info("reconciler: %s %s: promoted %s", service.name, rollout.tag, who)
            self._wake(service, rollout.seq, now)

    # -- endings -----------------------------------------------------------------------

    def _time_out(self, service: Service, rollout: RolloutState, index: int) -> None:
        timeout = self.r.settings.nomad.watch_timeout
        text = f"Stage {rollout.stage} still not finished after {timeout:g}s."
        self._decide(service, rollout, index, Ending("timed_out", None, text))

    def _decide(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        ending: Ending,
        **changes: Any,
    ) -> tuple[RolloutState, int] | None:
        """Record how the rollout ends (stage ``reverting``), then carry it out."""
        now = self.r.clock()
        new = rollout.moved(
            rollout.state,
            iso(now),
            stage="reverting",
            reason=ending.reason,
            description=ending.description,
            **changes,
        )
        new = structs.replace(new, stage_since=now, ending=ending.state)
        log.info("reconciler: %s %s: %s", service.name, rollout.tag, ending.description)
        written = self._write(service, new, index)
        if written is None:
            return None
        if self._ready(service, new.seq):
            try:
                self._revert(service, new, written)
            except NomanError as exc:
                self._note_error(service, new, written, exc)
        return new, written

    def _revert(self, service: Service, rollout: RolloutState, index: int) -> None:
        """Fail what still deploys, put moved jobs back, then end with the key set back.

        Long because each job is failed, checked and reverted in reverse order with its
        own outcome noted, and the end is recorded only once all of them are.
        """
        jobs = list(rollout.jobs)
        for i in reversed(range(len(jobs))):
            step = jobs[i]
            if step.state in ("waiting", "reverted") or step.version is None:
                continue
            job = for_job(service, step.job)
            if step.deployment_id and step.state in ("registered", "running"):
                with contextlib.suppress(NomadError):  # it ended meanwhile: nothing to fail
                    self.nomad.fail(job, step.deployment_id)
            now_running = self.nomad.read(job)
            if now_running.tag != rollout.tag:
                note = f"runs {now_running.tag} (version {now_running.version})"
                jobs[i] = structs.replace(step, state=_put_back(step), description=note)
                continue
            previous = step.previous
            if previous is None:
                previous = self._previous_version(job, rollout.tag, now_running.version)
            if previous is None:
                jobs[i] = structs.replace(step, description="no earlier version to go back to")
                continue
            try:
                self.nomad.revert(job, previous, prior=now_running.version)
            except NomadError as exc:
                jobs[i] = structs.replace(step, description=f"not reverted: {exc.message}")
                continue
            log.info("reconciler: %s: job %s reverted to %s", service.name, step.job, previous)
            jobs[i] = structs.replace(
                step, state=_put_back(step), description=f"reverted to version {previous}"
            )
        first = self.nomad.read(for_job(service, rollout.jobs[0].job)) if rollout.jobs else None
        running = first.tag if first is not None and first.tag != rollout.tag else None
        state = rollout.ending or "failed"
        ended = structs.replace(rollout, jobs=tuple(jobs), stage=None, ending=None)
        description = rollout.description or state
        if running is not None:
            description += f" Running {running}."
        history: dict[str, Any] = {"reason": rollout.reason}
        if rollout.aborted_by:
            history["aborted_by"] = rollout.aborted_by
        self.r._end_rollout(
            service,
            ended,
            index,
            state,
            description,
            reason=rollout.reason,
            running=running,
            history=history,
        )
        self._forget(service)

    def _previous_version(self, job: Service, tag: str, version: int) -> int | None:
        """The newest version before ``version`` that runs another tag."""
        for candidate in self.nomad.versions(job):
            number = int(candidate.get("Version") or 0)
            if number < version and self.nomad.tag_of(job, candidate) != tag:
                return number
        return None

    def _succeed(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        found: dict[str, Any] | None = None,
    ) -> None:
        done = ", ".join(f"{s.job} version {s.version}" for s in rollout.jobs)
        description = f"Successful: {done}."
        if found and found.get("description"):
            description = f"{description[:-1]} ({found['description']})."
        ended = structs.replace(rollout, stage=None)
        last = rollout.jobs[-1] if rollout.jobs else None
        if last is not None:
            ended = structs.replace(ended, version=last.version, deployment_id=last.deployment_id)
        self.r._end_rollout(service, ended, index, "successful", description, deployment=found)
        self._forget(service)

    # -- plumbing ----------------------------------------------------------------------

    def _gate(self, service: Service, rollout: RolloutState) -> Gate | None:
        key = self.r.keys.promotion_request(service.name)
        gate = decode(Gate, key, self.r.store.read(key).value)
        return gate if gate is not None and gate.seq == rollout.seq else None

    def _write(
        self,
        service: Service,
        new: RolloutState,
        index: int,
        events: list[tuple[str, str]] | None = None,
        history: dict[str, Any] | None = None,
    ) -> int | None:
        """The rollout record (check-and-set) with the reports of its change, at once.

        The top-level version, deployment and counts follow the job being moved, so
        what shows them (``noman deploy --wait``, the page) reads as for a plain rollout.
        """
        now = self.r.clock()
        i = current(new)
        if i is not None and new.jobs[i].version is not None:
            step = new.jobs[i]
            new = structs.replace(
                new,
                version=step.version,
                deployment_id=step.deployment_id,
                placed=step.placed,
                healthy=step.healthy,
                desired=step.desired,
            )
        reports = [
            make_report(service, new.seq, new.tag, state, text, at=now, stage=True)
            for state, text in events or []
        ]
        ops = [Write(self.r.keys.outbox(r), encode(r), 0, "set") for r in reports]
        if history:
            key = self.r.keys.history(service.name, new.seq)
            found = self.r.store.read(key)
            entry = decode(HistoryEntry, key, found.value)
            if entry is not None:
                changed = msgspec.structs.replace(entry, **history)
                ops.append(Write(key, encode(changed), found.modify_index))
        written = self.r._write_rollout(service, new, index, ops)
        if written is not None and reports:
            self.r.courier.send_now([(self.r.keys.outbox(r), r) for r in reports])
        return written

    def _note_error(
        self, service: Service, rollout: RolloutState, index: int, error: NomanError
    ) -> None:
        """Wait before asking Nomad again; a refusal that needs an operator is reported once."""
        attempts = rollout.attempts + 1
        self.r._back_off(service, rollout.seq, attempts, error)  # the plain path's delays
        self._backoff[service.name] = self.r._not_before[service.name]
        log.warning(
            "reconciler: %s %s (%s): %s (attempt %s)",
            service.name,
            rollout.tag,
            rollout.stage,
            error.code,
            attempts,
        )
        events = []
        notified = rollout.notified
        if error.permanent and notified != error.code:
            notified = error.code
            events.append((error.code, error.message))
        new = rollout.moved(
            rollout.state,
            iso(self.r.clock()),
            reason=error.code if rollout.stage != "reverting" else rollout.reason,
            attempts=attempts,
            notified=notified,
        )
        if rollout.stage != "reverting":
            new = structs.replace(new, description=error.message)
        try:
            self._write(service, new, index, events)
        except NomanError as exc:
            log.warning("reconciler: %s: attempt not recorded: %s", service.name, exc.code)

    def _ready(self, service: Service, seq: int) -> bool:
        held = self._backoff.get(service.name)
        if held is None or held[0] != seq or held[1] <= self.r.monotonic():
            self._backoff.pop(service.name, None)
            return True
        return False

    def _wake(self, service: Service, seq: int, at: float) -> None:
        """Have the leader's idle wait end by ``at`` (epoch seconds) for this attempt."""
        delay = max(0.0, at - self.r.clock())
        self.r._not_before[service.name] = (seq, self.r.monotonic() + delay)

    def _forget(self, service: Service) -> None:
        self._index = {k: v for k, v in self._index.items() if k[0] != service.name}
        self._backoff.pop(service.name, None)
        self._looked.pop(service.name, None)


def _put_back(step: JobStep) -> str:
    """A job's state once the ending handled it: the failed one stays failed."""
    return "failed" if step.state == "failed" else "reverted"
