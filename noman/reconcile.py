"""The elected loop that carries every rollout to its end, and sends the reports.

One reconciler per cluster of Noman instances leads, elected with the
store's leader lock (a Consul session lock under the prefix). The leader,
for each rolling service whose job does not run the desired tag and whose
rollout is not terminal for that tag, registers the job version, follows
its deployment with Nomad blocking queries and writes each state change to
the service's record; for every service it sends the reports waiting in
the record, then removes them. Everything it needs is in the records, so a
new leader resumes where a dead one stopped: nothing is lost, a report may
be repeated (same ``event_id``).

It runs in one background thread per process (``start``/``stop``), woken by
blocking reads on the prefix; tests and ``noman deploy --wait`` drive it
with ``run_once``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from noman.config import Settings
from noman.deploy import Deployer, Orchestrator, check_release
from noman.errors import NomanError, WriteConflict
from noman.model import Record, RolloutState, Service, orders_before, utc_now
from noman.notify import Reporter
from noman.release import Release
from noman.stores import Entry, LeaderLock, Store

log = logging.getLogger(__name__)

#: Refusals that need an operator: retried slowly, notified once.
PERMANENT = frozenset({"nomad_forbidden", "nomad_job_not_found"})
_STATES = {"successful": "successful", "failed": "failed", "cancelled": "cancelled"}


class Reconciler:
    """Converges every service to its desired tag while this process holds the lock."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        orchestrator: Orchestrator | None,
        reporter: Reporter,
        idle_wait: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deployer = deployer
        self.orchestrator = orchestrator
        self.reporter = reporter
        self.prefix = settings.consul.state_prefix
        self.lock: LeaderLock = store.leader_lock(
            f"{self.prefix}.leader", settings.consul.session_ttl, settings.consul.lock_delay
        )
        # Renewal must happen well within the session TTL, so no wait is longer than a third.
        self.idle_wait = idle_wait if idle_wait is not None else settings.consul.session_ttl / 3
        self.leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0
        # Records as the last blocking read saw them: lets a pass skip restart services
        # that have no report waiting without reading anything.
        self._records: dict[str, Entry] | None = None
        self._nomad_index: dict[str, int] = {}
        # service name -> (tag, monotonic time before which it is not retried)
        self._not_before: dict[str, tuple[str, float]] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in one daemon thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="noman-reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop and give up the lock; True if the thread ended in time."""
        self._stop.set()
        # Releasing first wakes the loop from its blocking read of the records (the
        # lock key changes), so a worker stops at once, not after the read's wait.
        self.lock.release()
        thread, self._thread = self._thread, None
        ended = True
        if thread is not None:
            thread.join(timeout)
            ended = not thread.is_alive()
        self.lock.release()  # again, in case the loop took the lock before it saw the stop
        self.leader = False
        return ended

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once(wait=min(self.idle_wait, 5.0))
            except NomanError as exc:
                log.warning("reconciler: %s: %s", exc.code, exc.message)
                self._stop.wait(min(self.idle_wait, 2.0))
                continue
            except Exception:
                log.exception("reconciler: unexpected error")
                self._stop.wait(min(self.idle_wait, 2.0))
                continue
            if not busy and not self._stop.is_set():
                self._idle()

    def _idle(self) -> None:
        """Block until a record changes, the next retry is due, or it is time to renew."""
        wait = self.idle_wait
        if self._not_before:
            soonest = min(when for _, when in self._not_before.values())
            wait = max(0.0, min(wait, soonest - time.monotonic()))
        if not self.leader:
            self._stop.wait(wait)
            return
        try:
            snapshot = self.store.list(self.prefix, self._index or 1, wait)
            self._index, self._records = snapshot.watch_index, snapshot.entries
        except NomanError as exc:
            log.warning("reconciler: watching %s: %s", self.prefix, exc.code)
            self._stop.wait(min(wait, 2.0))

    # -- one pass ------------------------------------------------------------------------

    def run_once(self, wait: float = 0.0) -> bool:
        """One pass over every service if this process leads; True while rollouts are active.

        ``wait`` bounds the Nomad blocking query of an active deployment.
        """
        self.leader = self.lock.hold()
        if not self.leader:
            return False
        busy = False
        active = []
        records, self._records = self._records, None
        for service in self.settings.services:
            if service.strategy != "rolling" and records is not None:
                seen = records.get(self.deployer.record_key(service))
                if seen is None or not Record.parse(seen.value).reports:
                    continue
            rollout = self._step(service)
            if rollout is not None and rollout.state in ("registered", "running"):
                active.append((service, rollout))
            elif rollout is not None and rollout.state == "pending":
                busy = busy or self._due(service, rollout.tag)
        for service, rollout in active:
            # With several deployments in flight, share the wait between them.
            self._follow(service, rollout, wait / len(active))
            busy = True
        return busy

    def settle(self, timeout: float = 10.0, wait: float = 0.2) -> bool:
        """Run passes until nothing is in flight (tests, scripts); True if it settled in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.run_once(wait=wait)
            if not self.leader:
                time.sleep(min(wait, 0.1))  # another instance leads, or the lock is in delay
            elif not busy and self._quiet():
                return True
        return False

    def _quiet(self) -> bool:
        """No report waiting and no rollout in flight that is due now."""
        for service in self.settings.services:
            record = Record.parse(self.store.read(self.deployer.record_key(service)).value)
            if record.reports:
                return False
        return True

    def _step(self, service: Service) -> RolloutState | None:
        """Send waiting reports; start the rollout the desired tag needs. Returns it."""
        key, _, record = self.deployer.read(service)
        if record.reports:
            self._send_reports(service, record)
        if service.strategy != "rolling" or self.orchestrator is None or key.value is None:
            return None
        desired = key.value
        try:
            check_release(service, Release(tag=desired, sender="consul"))
        except NomanError:
            return None  # not a tag Noman would deploy (set by hand?): leave it alone
        rollout = record.rollout if record.rollout and record.rollout.tag == desired else None
        if rollout is not None and rollout.terminal:
            return None
        if rollout is None:
            rollout = self._adopt(service, desired)
            if rollout is None:
                return None
        if rollout.state == "pending" and self._due(service, desired):
            return self._register(service, rollout)
        return rollout

    def _adopt(self, service: Service, desired: str) -> RolloutState | None:
        """A desired tag with no rollout (set outside Noman): roll it if the job lags."""
        assert self.orchestrator is not None
        try:
            running = self.orchestrator.read(service).tag
        except NomanError as exc:
            log.warning("reconciler: %s: job unreadable: %s", service.name, exc.code)
            return None
        if running == desired or orders_before(service, desired, running):
            return None
        pending = RolloutState("pending", desired, updated_at=utc_now())

        def change(record: Record) -> Record | None:
            current = record.rollout
            if current is not None and current.tag == desired:
                return None
            return replace(record, rollout=pending)

        self.deployer.update_record(service, change)
        return pending

    def _due(self, service: Service, tag: str) -> bool:
        held = self._not_before.get(service.name)
        return held is None or held[0] != tag or held[1] <= time.monotonic()

    def _back_off(self, service: Service, tag: str, attempts: int, code: str) -> None:
        rollout = self.settings.rollout
        if code in PERMANENT:
            delay = rollout.refused_retry
        else:
            delay = min(rollout.retry_max, rollout.retry_backoff * 2 ** max(0, attempts - 1))
        self._not_before[service.name] = (tag, time.monotonic() + delay)

    def _register(self, service: Service, rollout: RolloutState) -> RolloutState | None:
        tag = rollout.tag
        try:
            registered = self.deployer.register_once(service, rollout)
        except NomanError as exc:
            self.deployer.note_failure(service, tag, exc)
            self._back_off(service, tag, rollout.attempts + 1, exc.code)
            log.warning(
                "reconciler: %s %s: %s (attempt %s)",
                service.name,
                tag,
                exc.code,
                rollout.attempts + 1,
            )
            return None
        if registered == "cancelled":
            return None
        if registered is None:
            return rollout  # the job changed in between: read again next pass
        self._not_before.pop(service.name, None)
        self.deployer.mark_registered(service, tag, registered.version)
        log.info(
            "reconciler: %s %s registered as job version %s", service.name, tag, registered.version
        )
        return replace(
            rollout, state="registered", version=registered.version, registered_at=time.time()
        )

    def _follow(self, service: Service, rollout: RolloutState, wait: float) -> None:
        assert self.orchestrator is not None
        if rollout.version is None:
            return
        index = self._nomad_index.get(service.name, 0)
        try:
            found, index = self.orchestrator.follow(
                service, rollout.version, rollout.deployment_id, index, wait
            )
        except NomanError as exc:
            log.warning("reconciler: following %s: %s", service.name, exc.code)
            self._nomad_index.pop(service.name, None)
            self._stop.wait(min(wait, 1.0))
            return
        self._nomad_index[service.name] = index
        started = rollout.registered_at or time.time()
        if found is None:
            if self._stable(service, rollout.version):
                # A version with no deployment of its own (it ran before, or the job has no
                # update block) that Nomad already marked good.
                self._end(service, rollout, "successful", None)
            elif time.time() - started > self.settings.nomad.watch_timeout:
                self._end(service, rollout, "timed_out", None)
            return
        status = str(found.get("status"))
        if status in _STATES:
            self._end(service, rollout, _STATES[status], found)
        elif time.time() - started > self.settings.nomad.watch_timeout:
            self._end(service, rollout, "timed_out", found)
        else:
            self._progress(service, rollout, found)

    def _stable(self, service: Service, version: int) -> bool:
        assert self.orchestrator is not None
        try:
            job = self.orchestrator.read(service)
        except NomanError:
            return False
        return job.version == version and job.spec.get("Stable") is True

    def _progress(self, service: Service, rollout: RolloutState, found: dict[str, Any]) -> None:
        counts = {name: found.get(name) for name in ("placed", "healthy", "desired")}
        if (
            rollout.state == "running"
            and rollout.deployment_id == found.get("id")
            and all(getattr(rollout, k) == v for k, v in counts.items())
        ):
            return

        def change(record: Record) -> Record | None:
            current = record.rollout
            if current is None or current.tag != rollout.tag or current.terminal:
                return None
            return replace(
                record,
                rollout=current.moved(
                    "running",
                    deployment_id=found.get("id"),
                    description=found.get("description"),
                    **counts,
                ),
            )

        self.deployer.update_record(service, change)

    def _end(
        self,
        service: Service,
        rollout: RolloutState,
        state: str,
        found: dict[str, Any] | None,
    ) -> None:
        self._nomad_index.pop(service.name, None)
        description = f"Nomad deployment of job version {rollout.version}: {state}"
        if found and found.get("description"):
            description += f" ({found['description']})"
        if state == "timed_out":
            description = (
                f"Job version {rollout.version} still not finished after "
                f"{self.settings.nomad.watch_timeout:g}s."
            )
        running = None
        if state == "failed" and self.orchestrator is not None:
            try:
                job = self.orchestrator.read(service)
                if job.tag != rollout.tag and job.version > (rollout.version or 0):
                    running = job.tag  # Nomad auto-reverted to the last stable version
            except NomanError as exc:
                log.warning("reconciler: %s: job unreadable after failure: %s", service.name, exc)
        if running is not None:
            description += f"; {rollout.tag} failed, running {running}"
        try:
            self.deployer.finish(
                service, rollout.tag, state, description, deployment=found, running=running
            )
        except WriteConflict:
            log.warning("reconciler: %s: end of rollout not recorded yet", service.name)

    def _send_reports(self, service: Service, record: Record) -> None:
        for data in record.reports:
            try:
                self.reporter.deliver(data)
            except Exception:
                log.exception("reconciler: report %s failed", data.get("event_id"))
        sent = record.reports

        def change(current: Record) -> Record | None:
            left = tuple(r for r in current.reports if r not in sent)
            if len(left) == len(current.reports):
                return None
            return replace(current, reports=left)

        self.deployer.update_record(service, change)
