"""Delivering the outbox: reports leave through one worker per destination.

A report is written to ``outbox/`` in the same transaction as the change it
tells of, and whoever wrote it hands it to this process's courier at once
(``send_now``): the instance that took a restart deploy's hook delivers that
deploy's report, the leader delivers the reports of the rollouts it ends. So
the leader does no work per hook. The leader also sweeps the outbox on a
timer (``sweep``) for reports nobody delivered within ``grace`` seconds: the
writer died, or lost its answer. A report is deleted once every destination
took it or gave up.

Each destination (DockerHub's callback, each ``[[notify.targets]]``) has its
own worker thread, so a receiver that hangs delays only its own reports: each
attempt is bounded by ``notify.timeout``, retried ``notify.retries`` times with
backoff, then dropped and counted in ``noman_report_failures_total``. Workers
end after a second with nothing to do.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from noman.config import NotifySettings
from noman.errors import NomanError, StateUnreadable
from noman.notify import Reporter
from noman.state import Keys, Report, decode
from noman.stores import Entry, Store, Write

log = logging.getLogger(__name__)

#: Seconds between the leader's sweeps of the outbox.
SWEEP_EVERY = 10.0
#: Seconds a destination's worker waits for work before it ends.
WORKER_IDLE = 1.0

_Job = tuple[str, Report]


def grace_of(notify: NotifySettings) -> float:
    """How long the writer of a report may take to deliver it, with a margin."""
    backoff = sum(notify.backoff * 2**i for i in range(max(0, notify.retries - 1)))
    return float(notify.retries * notify.timeout + backoff + 10.0)


class Courier:
    """Delivers reports from the outbox, each destination on a worker of its own."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        reporter: Reporter,
        notify: NotifySettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.reporter = reporter
        self.grace = grace_of(notify)
        self.clock = clock
        #: True while this process leads (set by the reconciler): only then does it sweep.
        self.leading: Callable[[], bool] = lambda: False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: dict[str, queue.Queue[_Job]] = {}
        self._remaining: dict[str, set[str]] = {}
        # Reports delivered lately: a listing taken before their delete must not send them
        # again (bounded; their keys never come back, each names one attempt and state).
        self._delivered: dict[str, None] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while the sweeping thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Sweep the outbox (while this process leads) in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="noman-courier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping; workers finish what they hold and end."""
        self._stop.set()
        self._thread = None

    # -- delivering --------------------------------------------------------------------

    def send_now(self, reports: list[_Job]) -> None:
        """Deliver reports this process has just written (key, report), in the background."""
        for key, report in reports:
            self._dispatch(key, report)

    def sweep(self) -> int:
        """Hand over every report older than ``grace``: its writer did not deliver it."""
        entries = self.store.list(self.keys.outbox_folder).entries
        due = self.clock() - self.grace
        taken = 0
        for key, entry in sorted(entries.items()):
            report = self._decode(key, entry)
            if report is not None and report.at <= due and self._dispatch(key, report):
                taken += 1
        return taken

    def deliver_all(self) -> int:
        """Deliver every report now, in this thread (tests, ``deploy --wait``); how many."""
        entries = self.store.list(self.keys.outbox_folder).entries
        for key, entry in sorted(entries.items()):
            report = self._decode(key, entry)
            if report is None:
                continue
            with self._lock:
                if key in self._remaining or key in self._delivered:
                    continue  # a worker has it, or had it
            self.reporter.observe(report)
            for destination in self.reporter.destinations(report):
                self.reporter.send(destination, report)
            self._delete(key)
        return len(entries)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every report handed over is delivered or dropped; True if in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._remaining:
                    return True
            time.sleep(0.01)
        return False

    def _decode(self, key: str, entry: Entry) -> Report | None:
        try:
            return decode(Report, key, entry.value)
        except StateUnreadable as exc:
            log.error("courier: %s; left in place", exc.message)
            return None

    def _dispatch(self, key: str, report: Report) -> bool:
        """Start delivering ``report``; False when it is being delivered already."""
        destinations = self.reporter.destinations(report)
        with self._lock:
            if key in self._remaining or key in self._delivered:
                return False
            self._remaining[key] = set(destinations)
        self.reporter.observe(report)
        if not destinations:
            self._done(key, "")
        for destination in destinations:
            self._enqueue(destination, (key, report))
        return True

    def _enqueue(self, destination: str, job: _Job) -> None:
        with self._lock:
            jobs = self._workers.get(destination)
            if jobs is None:
                jobs = queue.Queue()
                self._workers[destination] = jobs
                threading.Thread(
                    target=self._work,
                    args=(destination, jobs),
                    name=f"noman-report-{destination}",
                    daemon=True,
                ).start()
            jobs.put(job)

    def _work(self, destination: str, jobs: queue.Queue[_Job]) -> None:
        while True:
            try:
                key, report = jobs.get(timeout=WORKER_IDLE)
            except queue.Empty:
                with self._lock:
                    if jobs.empty():
                        self._workers.pop(destination, None)
                        return
                continue
            try:
                self.reporter.send(destination, report)
            except Exception:
                log.exception("courier: report %s to %s failed", report.event_id, destination)
            self._done(key, destination)

    def _done(self, key: str, destination: str) -> None:
        with self._lock:
            left = self._remaining.get(key)
            if left is None:
                return
            left.discard(destination)
            if left:
                return
        self._delete(key)
        with self._lock:
            self._remaining.pop(key, None)
            self._delivered[key] = None
            while len(self._delivered) > 1000:
                self._delivered.pop(next(iter(self._delivered)))

    def _delete(self, key: str) -> None:
        # Outbox keys name one attempt and one state: nobody writes the same key again.
        try:
            self.store.transact([Write(key, "", 0, "delete")])
        except NomanError as exc:
            log.warning("courier: delivered %s, not deleted yet: %s", key, exc.code)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.leading():
                try:
                    self.sweep()
                except NomanError as exc:
                    log.warning("courier: sweeping the outbox: %s", exc.code)
            self._stop.wait(SWEEP_EVERY if self.leading() else 1.0)
