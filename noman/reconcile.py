"""The elected leader: carries every rollout to its end, and delivers the outbox.

One Noman process per cluster leads, elected with the store's leader lock (a
Consul session lock on ``<prefix>.leader``). Three threads per process, each
with one job, so none can starve another:

- leadership (``_keep_lock``): renews the session on its own timer, or, while
  another process leads, waits on the lock key with a blocking read;
- the reconciler (``_run``): for each rolling service named under
  ``pending/`` (and every rolling service on a slow full pass, which catches
  a tag key or a job changed by hand) registers the job version, follows its
  deployment with Nomad blocking queries and writes each state to the
  service's rollout record; ends with the history outcome and the report, in
  one transaction; then deletes ``pending/<service>/<seq>``. An older attempt
  still pending when a newer one came is recorded and reported ``cancelled``.
  Idle, it blocks on ``pending/``: a wake costs what is pending, not what exists;
- the courier (``noman.courier``): delivers the reports the leader writes
  at once, one worker per destination, and sweeps ``outbox/`` on a timer for
  reports their writer (the instance that took a hook) did not deliver.

Everything it needs is in the store, so a new leader resumes where a dead one
stopped: nothing is lost, a report may be repeated (same ``event_id``).
Tests and ``noman deploy --wait`` drive the same passes with ``run_once``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec import structs

from noman.config import Settings
from noman.courier import Courier
from noman.deploy import STALE_JOB, Deployer, Orchestrator, ServiceView, check_release, iso
from noman.errors import NomanError, StateUnreadable
from noman.gates import Gates
from noman.model import Service, orders_before
from noman.notify import Reporter
from noman.polling import PollLoop
from noman.release import Release
from noman.staged import StagedRollouts
from noman.stages import needs_noman
from noman.state import (
    Attempt,
    HistoryEntry,
    Keys,
    Report,
    RolloutState,
    close_entry,
    decode,
    encode,
    first_rollout,
    make_report,
    new_write_id,
)
from noman.stores import Entry, LeaderLock, Store, Write

log = logging.getLogger(__name__)

_STATES = {"successful": "successful", "failed": "failed", "cancelled": "cancelled"}
#: Longest blocking read of ``pending/`` or ``outbox/`` while idle.
IDLE_MAX = 30.0
#: Longest blocking read of the lock key by a process that does not lead.
FOLLOWER_WAIT = 30.0


@dataclass
class _Carried:
    """A rollout this pass carries, with the modify index of its record."""

    service: Service
    rollout: RolloutState
    index: int
    # Carried in stages (noman.staged): its following is theirs.
    staged: bool = False


class Reconciler:
    """Converges every rolling service to its desired tag while this process leads."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        orchestrator: Orchestrator | None,
        reporter: Reporter,
        courier: Courier | None = None,
        idle_wait: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        gates: Gates | None = None,
    ) -> None:
        self.settings = settings
        # Carries approvals' expiry and held deploys' windows (noman.gates).
        self.gates = gates
        self.store = store
        self.deployer = deployer
        self.orchestrator = orchestrator
        self.reporter = reporter
        self.keys: Keys = deployer.keys
        self.clock = clock
        self.monotonic = monotonic
        self.lock: LeaderLock = store.leader_lock(
            self.keys.leader, settings.consul.session_ttl, settings.consul.lock_delay
        )
        self.idle_wait = idle_wait if idle_wait is not None else IDLE_MAX
        self.leader = False
        self.courier = courier or Courier(store, self.keys, reporter, settings.notify)
        self.courier.leading = lambda: self.leader
        #: The registry poller (``noman.polling``), started and stopped with the threads.
        self.polling: PollLoop | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending: dict[str, Entry] | None = None
        self._pending_index = 0
        self._next_resync = 0.0
        self._nomad_index: dict[str, int] = {}
        # service name -> (attempt seq, monotonic time before which it is not retried);
        # an entry is dropped when it comes due, so it never wakes the loop twice
        self._not_before: dict[str, tuple[int, float]] = {}
        self._unreadable: set[str] = set()
        self._marked = False
        self.stages = StagedRollouts(self)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Run leadership, the reconciler and the courier in daemon threads (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._keep_lock, name="noman-leadership", daemon=True),
            threading.Thread(target=self._run, name="noman-reconciler", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.courier.start()
        if self.polling is not None:
            self.polling.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the threads and give up the lock; True if the reconciler ended in time."""
        self._stop.set()
        self.courier.stop()
        if self.polling is not None:
            self.polling.stop(min(timeout, 5.0))
        if self.leader and self.running:
            self._wake()
        self.lock.release()
        threads, self._threads = self._threads, []
        ended = True
        deadline = time.monotonic() + timeout
        for thread in threads:
            # Leadership may sit in a blocking read of the lock key: it acts on nothing
            # once stopped, so it is not waited for.
            wait = 0.05 if thread.name == "noman-leadership" else timeout
            thread.join(max(0.0, min(wait, deadline - time.monotonic())))
            if thread.name != "noman-leadership":
                ended = ended and not thread.is_alive()
        self.lock.release()  # again, in case a thread took the lock before it saw the stop
        self.leader = False
        return ended

    def _wake(self) -> None:
        """End the reconciler's blocking read of ``pending/`` now (at shutdown)."""
        # Should it fail, the read ends by itself within its wait.
        with contextlib.suppress(NomanError):
            self.store.transact([Write(self.keys.pending_marker, f"{self.clock():.3f}", 0, "set")])

    @property
    def running(self) -> bool:
        """True while the background threads run."""
        return any(t.is_alive() for t in self._threads)

    def _keep_lock(self) -> None:
        """Renew on a timer of its own, so a slow pass never costs the session."""
        renew = self.settings.consul.session_ttl / 3
        while not self._stop.is_set():
            self.leader = self.lock.hold()
            if self._stop.is_set():
                break
            if self.leader:
                self._stop.wait(renew)
            else:
                self.lock.wait_free(FOLLOWER_WAIT)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.leader:
                self._stop.wait(0.2)
                continue
            try:
                busy = self.run_once(wait=min(self.idle_wait, 5.0))
            except NomanError as exc:
                log.warning("reconciler: %s: %s", exc.code, exc.message)
                self._stop.wait(2.0)
                continue
            except Exception:
                log.exception("reconciler: unexpected error")
                self._stop.wait(2.0)
                continue
            if not busy and not self._stop.is_set():
                self._idle()

    def _idle(self) -> None:
        """Block until something is pending, a retry is due, or the full pass is."""
        now = self.monotonic()
        wait = min(self.idle_wait, max(0.0, self._next_resync - now))
        if self._not_before:
            soonest = min(when for _, when in self._not_before.values())
            wait = max(0.0, min(wait, soonest - now))
        if self.gates is not None and (due := self.gates.next_due()) is not None:
            wait = max(0.0, min(wait, due))
        if wait <= 0:
            return
        try:
            snapshot = self.store.list(self.keys.pending_folder, self._pending_index or 1, wait)
            self._pending_index, self._pending = snapshot.watch_index, snapshot.entries
        except NomanError as exc:
            log.warning("reconciler: watching %s: %s", self.keys.pending_folder, exc.code)
            self._stop.wait(min(wait, 2.0))

    # -- one pass ------------------------------------------------------------------------

    def run_once(self, wait: float = 0.0) -> bool:
        """One pass if this process leads; True while rollouts are active.

        ``wait`` bounds the Nomad blocking query of an active deployment. Without the
        background threads (tests, ``noman deploy --wait``) it also delivers the outbox.

        Long because it is the pass itself, in order: lead, gather the work (pending
        keys, due timers, the periodic resync), step each service, follow the active
        deployments.
        """
        self.leader = self.lock.hold()
        if not self.leader:
            return False
        if not self._marked:
            # Created once (check-and-set on "missing"): a no-op when it exists.
            self.store.transact([Write(self.keys.pending_marker, "", 0)])
            self._marked = True
        waiting, names, views = self._work()
        busy = False
        active: list[_Carried] = []
        for service in self.settings.services:
            if service.name not in names:
                continue
            try:
                carried = self._step(
                    service, waiting.get(service.name, {}), views.get(service.name)
                )
            except StateUnreadable as exc:
                self._note_unreadable(service, exc)
                continue
            if carried is None:
                continue
            if carried.rollout.state in ("registered", "running"):
                active.append(carried)
            elif service.name in self._not_before:
                busy = busy or self._due(service, carried.rollout.seq)
        for carried in active:
            # With several deployments in flight, share the wait between them.
            self._follow(carried, wait / len(active))
            busy = True
        if not self.running:
            self.courier.deliver_all()
        return busy

    def _work(self) -> tuple[dict[str, dict[int, Entry]], set[str], dict[str, ServiceView]]:
        """This pass's work: pending keys by service and seq, the names of the services to
        step (pending, retry due, or every rolling one on a full pass) and a full pass's views.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            snapshot = self.store.list(self.keys.pending_folder)
            self._pending_index, pending = snapshot.watch_index, snapshot.entries
        if self.gates is not None and self.gates.run(pending):
            # A held deploy or an approval landed: its pending key is this pass's work.
            snapshot = self.store.list(self.keys.pending_folder)
            self._pending_index, pending = snapshot.watch_index, snapshot.entries
        now = self.monotonic()
        waiting: dict[str, dict[int, Entry]] = {}
        for key, entry in pending.items():
            found = self.keys.parse_pending(key)
            if found is not None:
                waiting.setdefault(found[0], {})[found[1]] = entry
        names = set(waiting)
        for name in [name for name, (_, due) in self._not_before.items() if due <= now]:
            del self._not_before[name]
            names.add(name)
        views: dict[str, ServiceView] = {}
        if now >= self._next_resync:
            self._next_resync = now + self.settings.rollout.resync
            rolling = [s for s in self.settings.services if s.strategy == "rolling"]
            names |= {s.name for s in rolling}
            views = self.deployer.views(rolling)
        return waiting, names, views

    def _note_unreadable(self, service: Service, exc: StateUnreadable) -> None:
        if service.name not in self._unreadable:
            self._unreadable.add(service.name)
            log.error("reconciler: %s: %s", service.name, exc.message)
        self._not_before[service.name] = (-1, self.monotonic() + self.settings.rollout.retry_max)

    # -- deciding ------------------------------------------------------------------------

    def _step(
        self, service: Service, pending: dict[int, Entry], view: ServiceView | None = None
    ) -> _Carried | None:
        """Bring one service a step closer to its desired tag; the rollout it carries.

        ``pending`` holds the service's keys under ``pending/`` by attempt; ``view`` is
        what the full pass read already (else it is read now).
        """
        if view is None or pending:
            view = self.deployer.view(service)
        self._unreadable.discard(service.name)
        if view.migration is not None:
            self.deployer.migrate(service, view)
            view = self.deployer.view(service)
        if service.strategy != "rolling" or self.orchestrator is None:
            self._clear_pending(service, pending)
            return None
        attempt = view.desired.attempt
        if self._adopt(service, view):
            return None  # a new attempt was written: the next pass carries it
        if attempt is None:
            self._clear_pending(service, pending)
            return None
        older = {seq: entry for seq, entry in pending.items() if seq < attempt.seq}
        if older:
            self._cancel_superseded(service, attempt, older)
        pending = {seq: entry for seq, entry in pending.items() if seq >= attempt.seq}
        rollout, index = view.rollout, view.rollout_entry.modify_index if view.rollout_entry else 0
        if rollout is None or rollout.seq != attempt.seq:
            # The instance that took the hook registers inline: leave it that long.
            handover = attempt.at + self.deployer.answer_within - self.clock()
            inline = not service.staged  # a staged rollout's first step is the leader's
            if inline and handover > 0 and (rollout is None or rollout.seq < attempt.seq):
                self._not_before[service.name] = (attempt.seq, self.monotonic() + handover)
                return None
            rollout = first_rollout(attempt, iso(self.clock()))
        if rollout.terminal:
            self._not_before.pop(service.name, None)
            if pending:
                self._settle_history(service, rollout)
            self._clear_pending(service, pending)
            return None
        if self.stages.wants(service, rollout, pending):
            staged = self.stages.step(service, rollout, index)
            return None if staged is None else _Carried(service, *staged, staged=True)
        if rollout.state == "pending":
            if not self._due(service, attempt.seq):
                return _Carried(service, rollout, index)
            return self._register(service, rollout, index)
        return _Carried(service, rollout, index)

    def _settle_history(self, service: Service, rollout: RolloutState) -> None:
        """A rollout the hook's instance ended (inline): its history outcome and report."""
        key = self.keys.history(service.name, rollout.seq)
        found = self.store.read(key)
        entry = decode(HistoryEntry, key, found.value)
        if entry is None or entry.outcome != "pending":
            return
        description = rollout.description or rollout.state
        report = make_report(
            service,
            rollout.seq,
            rollout.tag,
            rollout.state,
            description,
            previous=entry.previous,
            callback_url=entry.callback_url,
            at=self.clock(),
            requested=entry.time,
            kind=entry.kind,
        )
        ended = close_entry(entry, rollout.state, description, iso(self.clock()))
        written = self.store.transact(
            [
                Write(key, encode(ended), found.modify_index),
                Write(self.keys.outbox(report), encode(report), 0, "set"),
            ]
        )
        if written is not None:
            self.courier.send_now([(self.keys.outbox(report), report)])

    def _clear_pending(self, service: Service, pending: dict[int, Entry]) -> None:
        """Nothing left to do: the pending keys go, unless a hook set them again since."""
        for seq, entry in pending.items():
            self.store.delete(self.keys.pending(service.name, seq), entry.modify_index)

    def _adopt(self, service: Service, view: ServiceView) -> bool:
        """A tag key set outside Noman becomes an attempt of its own when the job lags."""
        desired, key = view.desired, view.key.value
        if key is None or key == desired.tag:
            return False
        try:
            check_release(service, Release(tag=key, sender="consul"))
        except NomanError:
            return False  # not a tag Noman would deploy (set by hand?): leave it alone
        assert self.orchestrator is not None
        try:
            running = self.orchestrator.read(service).tag
        except NomanError as exc:
            log.warning("reconciler: %s: job unreadable: %s", service.name, exc.code)
            return False
        if running == key or orders_before(service, key, running):
            return False
        now = self.clock()
        attempt = Attempt(
            seq=desired.seq + 1,
            tag=key,
            kind="deploy",
            sender="consul",
            time=iso(now),
            at=0.0,  # nobody registers it inline: the leader carries it at once
            previous=desired.tag,
        )
        entry = HistoryEntry(
            seq=attempt.seq,
            tag=key,
            time=attempt.time,
            sender="consul",
            kind="deploy",
            outcome="pending",
            previous=desired.tag,
            description=f"{key} found in {service.key}, set outside Noman",
            write_id=new_write_id(),
        )
        new = structs.replace(
            desired, tag=key, seq=attempt.seq, attempt=attempt, write_id=entry.write_id
        )
        ops = [
            Write(service.key, key, view.key.modify_index),
            Write(self.keys.desired(service.name), encode(new), view.desired_entry.modify_index),
            Write(self.keys.history(service.name, attempt.seq), encode(entry), 0),
            Write(self.keys.pending(service.name, attempt.seq), "adopted", 0, "set"),
        ]
        self.store.transact(ops)
        log.info("reconciler: %s: adopting %s, set outside Noman", service.name, key)
        return True

    def _cancel_superseded(
        self, service: Service, attempt: Attempt, older: dict[int, Entry]
    ) -> None:
        """Attempts a newer push replaced before they ended: recorded and reported once."""
        seqs = sorted(older)
        keys = [self.keys.history(service.name, seq) for seq in seqs]
        ops: list[Write] = []
        reports: list[tuple[str, Report]] = []
        for seq, key, item in zip(seqs, keys, self.store.read_many(keys), strict=True):
            pending = older[seq]
            ops.append(
                Write(self.keys.pending(service.name, seq), "", pending.modify_index, "delete-cas")
            )
            entry = decode(HistoryEntry, key, item.value)
            if entry is None or entry.outcome != "pending":
                continue  # ended before it was superseded (or pruned): nothing to tell
            description = f"superseded by {attempt.tag} before it finished"
            ended = close_entry(entry, "cancelled", description, iso(self.clock()))
            ops.append(Write(key, encode(ended), item.modify_index))
            report = make_report(
                service,
                entry.seq,
                entry.tag,
                "cancelled",
                description,
                previous=entry.previous,
                callback_url=entry.callback_url,
                at=self.clock(),
            )
            ops.append(Write(self.keys.outbox(report), encode(report), 0, "set"))
            reports.append((self.keys.outbox(report), report))
        if self.store.transact(ops) is not None:
            self.courier.send_now(reports)

    def _due(self, service: Service, seq: int) -> bool:
        held = self._not_before.get(service.name)
        return held is None or held[0] != seq or held[1] <= self.monotonic()

    def _back_off(self, service: Service, seq: int, attempts: int, error: NomanError) -> None:
        rollout = self.settings.rollout
        if error.permanent:
            delay = rollout.refused_retry
        else:
            delay = min(rollout.retry_max, rollout.retry_backoff * 2 ** max(0, attempts - 1))
        self._not_before[service.name] = (seq, self.monotonic() + delay)

    # -- acting --------------------------------------------------------------------------

    def _write_rollout(
        self, service: Service, rollout: RolloutState, index: int, extra: list[Write] | None = None
    ) -> int | None:
        """Check-and-set the rollout record; its new index, or None when it changed."""
        key = self.keys.rollout(service.name)
        written = self.store.transact([Write(key, encode(rollout), index), *(extra or [])])
        if written is None:
            log.info("reconciler: %s: rollout record changed; reading again", service.name)
            return None
        return written.get(key, 0)

    def _register(self, service: Service, rollout: RolloutState, index: int) -> _Carried | None:
        try:
            registered = self.deployer.register_once(service, rollout)
        except NomanError as exc:
            self._note_failure(service, rollout, index, exc)
            return None
        if registered == "stale":
            self._end_rollout(service, rollout, index, "cancelled", STALE_JOB, reason="stale_tag")
            return None
        if registered is None:
            return _Carried(service, rollout, index)  # the job changed in between: next pass
        self._not_before.pop(service.name, None)
        now = self.clock()
        done = rollout.moved(
            "registered",
            iso(now),
            version=registered.version,
            reason=None,
            description=None,
            registered_at=now,
        )
        new_index = self._write_rollout(service, done, index)
        if new_index is None:
            return None
        log.info(
            "reconciler: %s %s registered as job version %s",
            service.name,
            rollout.tag,
            registered.version,
        )
        return _Carried(service, done, new_index)

    def _note_failure(
        self, service: Service, rollout: RolloutState, index: int, error: NomanError
    ) -> None:
        """Count a failed attempt; a refusal that needs an operator is reported once."""
        attempts = rollout.attempts + 1
        self._back_off(service, rollout.seq, attempts, error)
        log.warning(
            "reconciler: %s %s: %s (attempt %s)", service.name, rollout.tag, error.code, attempts
        )
        extra: list[Write] = []
        reports: list[tuple[str, Report]] = []
        notified = rollout.notified
        if error.permanent and notified != error.code:
            notified = error.code
            report = make_report(
                service, rollout.seq, rollout.tag, error.code, error.message, at=self.clock()
            )
            extra.append(Write(self.keys.outbox(report), encode(report), 0, "set"))
            reports.append((self.keys.outbox(report), report))
        new = rollout.moved(
            "pending",
            iso(self.clock()),
            reason=error.code,
            description=error.message,
            attempts=attempts,
            notified=notified,
        )
        try:
            if self._write_rollout(service, new, index, extra) is not None:
                self.courier.send_now(reports)
        except NomanError as exc:
            log.warning("reconciler: %s: attempt not recorded: %s", service.name, exc.code)

    def _follow(self, carried: _Carried, wait: float) -> None:
        assert self.orchestrator is not None
        service, rollout = carried.service, carried.rollout
        if carried.staged:
            self.stages.follow(service, rollout, carried.index, wait)
            return
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
        started = rollout.registered_at or self.clock()
        late = self.clock() - started > self.settings.nomad.watch_timeout
        if found is None:
            if self._stable(service, rollout.version):
                # A version with no deployment of its own (it ran before, or the job has no
                # update block) that Nomad already marked good.
                self._end(carried, "successful", None)
            elif late:
                self._end(carried, "timed_out", None)
            return
        status = str(found.get("status"))
        if status in _STATES:
            self._end(carried, _STATES[status], found)
        elif late:
            self._end(carried, "timed_out", found)
        elif needs_noman(found):
            # Canaries Nomad will not promote by itself: the stages carry them on.
            self.stages.take_over(service, rollout, carried.index, found)
        else:
            self._progress(carried, found)

    def _stable(self, service: Service, version: int) -> bool:
        assert self.orchestrator is not None
        try:
            job = self.orchestrator.read(service)
        except NomanError:
            return False
        return job.version == version and job.spec.get("Stable") is True

    def _progress(self, carried: _Carried, found: dict[str, Any]) -> None:
        rollout = carried.rollout
        counts = {name: found.get(name) for name in ("placed", "healthy", "desired")}
        if (
            rollout.state == "running"
            and rollout.deployment_id == found.get("id")
            and all(getattr(rollout, k) == v for k, v in counts.items())
        ):
            return
        new = rollout.moved(
            "running",
            iso(self.clock()),
            deployment_id=found.get("id"),
            description=found.get("description"),
            **counts,
        )
        self._write_rollout(carried.service, new, carried.index)

    def _end(self, carried: _Carried, state: str, found: dict[str, Any] | None) -> None:
        service, rollout = carried.service, carried.rollout
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
        self._end_rollout(
            service, rollout, carried.index, state, description, deployment=found, running=running
        )

    def _end_rollout(
        self,
        service: Service,
        rollout: RolloutState,
        index: int,
        state: str,
        description: str,
        reason: str | None = None,
        deployment: dict[str, Any] | None = None,
        running: str | None = None,
        history: dict[str, Any] | None = None,
    ) -> None:
        """Record the end of a rollout, its history outcome and its report: one transaction.

        With ``running`` (Nomad reverted to that tag), the tag key and the desired
        state are set back to it in the same transaction, so Consul tells the truth.
        ``history`` adds fields to the history entry (who aborted, the reason).

        Long because the history entry, the report and the revert writes go into one
        transaction and are built side by side.
        """
        name = service.name
        entry_key = self.keys.history(name, rollout.seq)
        found = self.store.read(entry_key)
        entry = decode(HistoryEntry, entry_key, found.value)
        counts = (
            {k: deployment.get(k) for k in ("placed", "healthy", "desired")} if deployment else {}
        )
        ended = rollout.moved(
            state,
            iso(self.clock()),
            reason=reason,
            description=description,
            deployment_id=(deployment or {}).get("id") or rollout.deployment_id,
            **counts,
        )
        report = self._ending_report(service, rollout, state, description, entry, deployment)
        ops = [Write(self.keys.outbox(report), encode(report), 0, "set")]
        if entry is not None:
            ended_entry = close_entry(
                entry, state, description, iso(self.clock()), **(history or {})
            )
            ops.append(Write(entry_key, encode(ended_entry), found.modify_index))
        if running is not None:
            ops += self._revert_ops(service, rollout, running)
        if self._write_rollout(service, ended, index, ops) is not None:
            self._not_before.pop(name, None)
            log.info("reconciler: %s %s: %s", name, rollout.tag, state)
            self.courier.send_now([(self.keys.outbox(report), report)])

    def _ending_report(
        self,
        service: Service,
        rollout: RolloutState,
        state: str,
        description: str,
        entry: HistoryEntry | None,
        deployment: dict[str, Any] | None,
    ) -> Report:
        """The report of a rollout's end, told as its history ``entry`` asked for it."""
        return make_report(
            service,
            rollout.seq,
            rollout.tag,
            state,
            description,
            previous=entry.previous if entry else None,
            deployment=deployment,
            callback_url=entry.callback_url if entry else None,
            at=self.clock(),
            requested=entry.time if entry else "",
            kind=entry.kind if entry else "deploy",
        )

    def _revert_ops(self, service: Service, rollout: RolloutState, running: str) -> list[Write]:
        """Set the tag key and desired state back to what Nomad reverted to, with history."""
        view = self.deployer.view(service, with_rollout=False)
        if view.key.value != rollout.tag:
            return []  # a newer push came meanwhile: it decides
        desired = view.desired
        now = self.clock()
        seq = desired.seq + 1
        entry = HistoryEntry(
            seq=seq,
            tag=running,
            time=iso(now),
            sender="nomad",
            kind="rollback",
            outcome="successful",
            previous=rollout.tag,
            description=f"{rollout.tag} failed, running {running}",
            write_id=new_write_id(),
        )
        new = structs.replace(desired, tag=running, seq=seq, write_id=entry.write_id)
        ops = [
            Write(service.key, running, view.key.modify_index),
            Write(self.keys.desired(service.name), encode(new), view.desired_entry.modify_index),
            Write(self.keys.history(service.name, seq), encode(entry), 0),
        ]
        if seq - self.deployer.history_size >= 1:
            old = self.keys.history(service.name, seq - self.deployer.history_size)
            ops.append(Write(old, "", 0, "delete"))
        return ops
