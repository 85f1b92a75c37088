"""The use case: decide whether a release may be deployed, and make it the desired state.

Plain Python with no Flask and no Consul. A deploy is ONE store transaction
that writes the service's tag key and its record (under Noman's prefix)
with check-and-set on both; once it landed, the deploy is durable and the
reconciler carries it to its end. Nothing here ever writes a compensating
"restore". Rolling services get a fast path: the instance that took the
hook registers the job version inline when Nomad answers quickly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any, Literal, Protocol

from noman.errors import (
    ConsulUnavailable,
    Frozen,
    InvalidTag,
    NomadUnavailable,
    NomanError,
    NothingToRollBack,
    RepositoryMismatch,
    StaleTag,
    WriteConflict,
)
from noman.model import (
    OCI_TAG,
    HistoryEntry,
    JobState,
    Record,
    RolloutState,
    Service,
    orders_before,
    same_repository,
    utc_now,
)
from noman.release import Outcome, Release, Rollout, shown
from noman.stores import Entry, OutcomeUnknown, Store, Write

__all__ = [
    "Deployer",
    "JobState",
    "Orchestrator",
    "check_release",
    "needs_write",
]

log = logging.getLogger(__name__)

# Delivery ids remembered per service, to refuse replays of signed deliveries.
KEEP_DELIVERIES = 500


class Orchestrator(Protocol):
    """Something that runs a new job version per deploy (Nomad), and reports on it."""

    def read(self, service: Service) -> JobState:
        """The job of ``service`` as it is now."""
        ...

    def register(self, service: Service, state: JobState, tag: str) -> Rollout | None:
        """Register ``state`` with ``tag``; None if the job changed since it was read."""
        ...

    def follow(
        self, service: Service, version: int, deployment_id: str | None, index: int, wait: float
    ) -> tuple[dict[str, Any] | None, int]:
        """The deployment of job ``version`` (None while there is none) and the index to
        block on next; blocks up to ``wait`` s for a change past ``index``."""
        ...


def check_release(service: Service, release: Release) -> None:
    """Refuse a release this service must never run (bad tag, other repository)."""
    if release.repository is not None and not same_repository(service, release.repository):
        raise RepositoryMismatch(
            f"Repository {shown(release.repository, 140)} is not the one this service deploys."
        )
    if not OCI_TAG.fullmatch(release.tag):
        raise InvalidTag(f"{shown(release.tag, 140)} is not a valid image tag.")
    if not service.tag_pattern.fullmatch(release.tag):
        raise InvalidTag(
            f"Tag {shown(release.tag, 140)} does not match this service's pattern "
            f"{service.tag_pattern.pattern}."
        )


def needs_write(service: Service, current: str | None, release: Release) -> bool:
    """True to write ``release``, False when it is already deployed; StaleTag when older."""
    if current == release.tag:
        return False
    if release.force:
        return True
    # Only tags of one kind can be ordered; an unordered current value (set
    # by hand, or a first deploy) never blocks a valid release.
    if orders_before(service, release.tag, current):
        raise StaleTag(
            f"Tag {release.tag} is older than the deployed {current}; "
            'to roll back on purpose, send "force": true (HTTP) or use --force (noman deploy).'
        )
    return True


def report(
    service: Service,
    tag: str,
    state: str,
    description: str,
    previous: str | None = None,
    deployment: dict[str, Any] | None = None,
    callback_url: str | None = None,
) -> dict[str, Any]:
    """An outcome report waiting in a record; ``event_id`` lets receivers drop repeats."""
    return {
        "event_id": f"{service.name}:{tag}:{state}",
        "service": service.name,
        "key": service.key,
        "tag": tag,
        "previous": previous,
        "state": state,
        "success": state == "successful",
        "description": description,
        "deployment": deployment,
        "callback_url": callback_url,
    }


class Deployer:
    """Deploys, rolls back, freezes and describes services: every front end goes through it."""

    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator | None = None,
        cas_retries: int = 8,
        register_retries: int = 5,
        *,
        state_prefix: str = "noman/",
        answer_within: float = 5.0,
        history_size: int = 50,
        report_successes: bool = True,
        finished: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.cas_retries = cas_retries
        self.register_retries = register_retries
        self.state_prefix = state_prefix
        self.answer_within = answer_within
        self.history_size = history_size
        # Without a notifier that wants successes, a restart deploy's report would be written
        # to the record only to be dropped: ``finished`` logs and counts it instead.
        self.report_successes = report_successes
        self.finished = finished
        # service name -> (tag key, record) as this process last wrote them.
        self._known: dict[str, tuple[Entry, Entry]] = {}
        self._known_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def record_key(self, service: Service) -> str:
        """Where the service's record lives: under Noman's prefix, never beside its key."""
        return f"{self.state_prefix}{service.name}"

    def read(self, service: Service) -> tuple[Entry, Entry, Record]:
        """The tag key, the record's entry and the parsed record."""
        key = self.store.read(service.key)
        entry = self.store.read(self.record_key(service))
        return key, entry, Record.parse(entry.value)

    def status(self, service: Service) -> dict[str, Any]:
        """Desired tag, running tag, frozen flag, rollout and history of ``service``."""
        key, _, record = self.read(service)
        running = None
        if service.strategy == "rolling" and self.orchestrator is not None:
            try:
                running = self.orchestrator.read(service).tag
            except NomanError as exc:
                log.warning("status of %s: job unreadable: %s", service.name, exc.code)
        return {
            "service": service.name,
            "strategy": service.strategy,
            "key": service.key,
            "tag": key.value,
            "running": running,
            "frozen": record.frozen,
            "rollout": record.rollout.public() if record.rollout else None,
            "history": [asdict(h) for h in record.history],
        }

    # -- the operations ------------------------------------------------------------------

    def deploy(self, service: Service, release: Release, request_id: str | None = None) -> Outcome:
        """Make ``release`` the desired state of ``service``; returns once Consul confirmed."""
        return self._deploy(service, release, request_id, "deploy")

    def rollback(
        self, service: Service, tag: str | None, sender: str, request_id: str | None = None
    ) -> Outcome:
        """Deploy an earlier tag on purpose (default: the last good one before the current)."""
        if tag is None:
            key, _, record = self.read(service)
            for entry in record.history:
                if entry.tag != key.value and entry.outcome == "successful":
                    tag = entry.tag
                    break
            else:
                raise NothingToRollBack()
        release = Release(tag=tag, sender=sender, force=True)
        return self._deploy(service, release, request_id, "rollback")

    def set_frozen(self, service: Service, frozen: bool, sender: str) -> dict[str, Any]:
        """Freeze or unfreeze ``service`` (kept in its record); returns its status."""
        self.update_record(service, lambda record: replace(record, frozen=frozen))
        log.info("service %s %s by %s", service.name, "frozen" if frozen else "unfrozen", sender)
        return self.status(service)

    def update_record(
        self, service: Service, change: Callable[[Record], Record | None]
    ) -> Record | None:
        """Check-and-set ``change`` on the record until it lands (None: change declined)."""
        for _ in range(self.cas_retries):
            entry = self.store.read(self.record_key(service))
            new = change(Record.parse(entry.value))
            if new is None:
                return None
            new = replace(new, write_id=uuid.uuid4().hex)
            if self.store.write(self.record_key(service), new.dump(), entry.modify_index):
                return new
        raise WriteConflict()

    # -- the transaction -----------------------------------------------------------------

    def _deploy(
        self,
        service: Service,
        release: Release,
        request_id: str | None,
        kind: Literal["deploy", "rollback"],
    ) -> Outcome:
        check_release(service, release)
        cached = self._cached(service)
        for _ in range(self.cas_retries):
            if cached is not None:
                # What this process wrote last: one round trip when nobody wrote since.
                # The check-and-set on both keys makes a stale guess fail, never win.
                key, entry, record = cached
                cached = None
                if not self._writes_anyway(service, release, kind, key, record):
                    continue  # a refusal or a no-op is only ever decided on fresh values
            else:
                key, entry, record = self.read(service)
            if record.frozen and kind == "deploy":
                raise Frozen()
            if release.delivery_id and release.delivery_id in record.deliveries:
                return Outcome(
                    service.name,
                    service.key,
                    release.tag,
                    key.value,
                    changed=False,
                    duplicate_delivery=True,
                )
            write = needs_write(service, key.value, release)
            retry = not write and self._retry_wanted(service, record, release)
            if not write and not retry:
                return self._unchanged(service, release, key.value, record)
            new = self._next_record(service, release, request_id, kind, key.value, record)
            writes = [Write(self.record_key(service), new.dump(), entry.modify_index)]
            if write:
                writes.insert(0, Write(service.key, release.tag, key.modify_index))
            indexes = self._commit(service, writes, new)
            if indexes is not None:
                self._remember(service, writes, indexes)
                log.info(
                    "service %s: desired tag %s (%s)",
                    service.name,
                    release.tag,
                    kind,
                    extra={"fields": {"service": service.name, "tag": release.tag}},
                )
                return self._after_commit(service, release, key.value)
            log.info(
                "service %s: key or record changed while deploying %s; deciding again",
                service.name,
                release.tag,
            )
        raise WriteConflict()

    def _cached(self, service: Service) -> tuple[Entry, Entry, Record] | None:
        with self._known_lock:
            known = self._known.get(service.name)
        return None if known is None else (known[0], known[1], Record.parse(known[1].value))

    def _writes_anyway(
        self,
        service: Service,
        release: Release,
        kind: str,
        key: Entry,
        record: Record,
    ) -> bool:
        """True when these values lead to a write (so the transaction checks them)."""
        if record.frozen and kind == "deploy":
            return False
        if release.delivery_id and release.delivery_id in record.deliveries:
            return False
        try:
            return needs_write(service, key.value, release) or self._retry_wanted(
                service, record, release
            )
        except StaleTag:
            return False

    def _remember(self, service: Service, writes: list[Write], indexes: list[int]) -> None:
        """Keep what this process just wrote, for the next deploy's first attempt.

        Only when the transaction checked both keys (a record-only write leaves the
        tag key's index unverified) and Consul told us the new indexes.
        """
        written = {w.key: Entry(w.value, i) for w, i in zip(writes, indexes, strict=False)}
        key, record = written.get(service.key), written.get(self.record_key(service))
        with self._known_lock:
            if key is None or record is None or 0 in indexes or len(indexes) != len(writes):
                self._known.pop(service.name, None)
            else:
                self._known[service.name] = (key, record)

    def _retry_wanted(self, service: Service, record: Record, release: Release) -> bool:
        """Pushing a failed tag again (or with force) retries its rollout on purpose."""
        rollout = record.rollout
        if service.strategy != "rolling" or rollout is None or rollout.tag != release.tag:
            return False
        return rollout.state in ("failed", "cancelled", "timed_out") or (
            release.force and rollout.terminal
        )

    def _next_record(
        self,
        service: Service,
        release: Release,
        request_id: str | None,
        kind: Literal["deploy", "rollback"],
        previous: str | None,
        record: Record,
    ) -> Record:
        rolling = service.strategy == "rolling"
        history = record.history
        if record.rollout is not None and not record.rollout.terminal and rolling:
            superseded = f"superseded by {release.tag} before it finished"
            history = replace(record, history=history).finish_history(
                record.rollout.tag, "cancelled", superseded
            )
        entry = HistoryEntry(
            tag=release.tag,
            previous=previous,
            time=utc_now(),
            sender=release.sender,
            request_id=request_id,
            kind=kind,
            outcome="pending" if rolling else "successful",
            description="" if rolling else f"{release.tag} written to {service.key}",
        )
        deliveries = dict(record.deliveries)
        if release.delivery_id:
            deliveries[release.delivery_id] = time.time()
            deliveries = dict(sorted(deliveries.items(), key=lambda i: i[1])[-KEEP_DELIVERIES:])
        reports = record.reports
        rollout = None
        if rolling:
            rollout = RolloutState(
                state="pending",
                tag=release.tag,
                updated_at=utc_now(),
                force=release.force or kind == "rollback",
                callback_url=release.callback_url,
            )
        elif self.report_successes or release.callback_url:
            reports = (
                *reports,
                report(
                    service,
                    release.tag,
                    "successful",
                    entry.description,
                    previous=previous,
                    callback_url=release.callback_url,
                ),
            )
        return Record(
            tag=release.tag,
            frozen=record.frozen,
            rollout=rollout,
            deliveries=deliveries,
            history=(entry, *history)[: self.history_size],
            reports=reports,
            write_id=uuid.uuid4().hex,
        )

    def _commit(self, service: Service, writes: list[Write], new: Record) -> list[int] | None:
        """Run the transaction; after a timed-out answer, re-read once to learn the truth.

        Returns the new modify indexes (empty when only the re-read saw the write), or None
        when an index was stale.
        """
        try:
            return self.store.transact(writes)
        except OutcomeUnknown:
            pass
        try:
            landed = Record.parse(self.store.read(self.record_key(service)).value)
        except NomanError:
            raise ConsulUnavailable(
                "Consul did not answer in time and could not be re-read: the deploy may or "
                "may not have landed; sending the same request again is safe."
            ) from None
        if landed.write_id == new.write_id:
            log.warning("service %s: Consul answered late, but the deploy landed", service.name)
            return []
        raise ConsulUnavailable(
            "Consul did not answer in time and a re-read shows nothing was written. Retry later."
        )

    def _unchanged(
        self, service: Service, release: Release, current: str | None, record: Record
    ) -> Outcome:
        rollout = record.rollout
        pending = None
        if (
            service.strategy == "rolling"
            and rollout is not None
            and rollout.tag == release.tag
            and rollout.state == "pending"
        ):
            pending = rollout.reason or "pending"
        return Outcome(
            service.name, service.key, release.tag, current, changed=False, pending=pending
        )

    def _after_commit(self, service: Service, release: Release, previous: str | None) -> Outcome:
        outcome = Outcome(service.name, service.key, release.tag, previous, changed=True)
        if service.strategy != "rolling":
            if not (self.report_successes or release.callback_url) and self.finished:
                description = f"{release.tag} written to {service.key}"
                self.finished(report(service, release.tag, "successful", description, previous))
            return outcome
        return self._register_inline(service, release.tag, outcome)

    # -- the rolling fast path -----------------------------------------------------------

    def _register_inline(self, service: Service, tag: str, outcome: Outcome) -> Outcome:
        """Register the job version now if Nomad answers within ``answer_within``.

        Safe against the reconciler doing the same: ``EnforceIndex`` lets one
        registration win, and the record moves on only from ``pending``.
        """
        if self.orchestrator is None:
            return replace(outcome, pending="nomad_not_configured")
        started = time.monotonic()
        error: NomanError = NomadUnavailable(
            "Nomad did not accept the job version within rollout.answer_within; Noman keeps trying."
        )
        for _ in range(self.register_retries):
            if time.monotonic() - started > self.answer_within:
                break
            rollout = self._current_rollout(service, tag)
            if rollout is None or rollout.state != "pending":
                # The reconciler moved it on already: answer with the version it registered.
                if rollout is not None and rollout.version is not None:
                    job = service.nomad.job if service.nomad else service.name
                    return replace(outcome, rollout=Rollout(job, rollout.version, ""))
                return outcome
            try:
                registered = self.register_once(service, rollout)
            except NomanError as exc:
                error = exc
                break
            if registered == "cancelled":
                return replace(outcome, state="cancelled", pending="stale_tag")
            if registered is not None:
                self.mark_registered(service, tag, registered.version)
                return replace(outcome, rollout=registered)
            error = WriteConflict("The Nomad job kept changing; Noman keeps trying.")
        self.note_failure(service, tag, error)
        return replace(outcome, pending=error.code)

    def register_once(
        self, service: Service, rollout: RolloutState
    ) -> Rollout | Literal["cancelled"] | None:
        """One attempt to have the job run ``rollout.tag``.

        Returns the job version that runs it (registered now, or already
        there), None when the job changed between read and register, or
        "cancelled" (recorded) when the job runs a newer tag and the rollout
        is not forced.
        """
        assert self.orchestrator is not None
        tag = rollout.tag
        state = self.orchestrator.read(service)
        if state.tag == tag:
            job = service.nomad.job if service.nomad else service.name
            return Rollout(job, state.version, "")
        if not rollout.force and orders_before(service, tag, state.tag):
            self.finish(
                service,
                tag,
                "cancelled",
                f"The job already runs the newer {state.tag}; "
                'push with "force": true to deploy the older tag.',
                reason="stale_tag",
            )
            return "cancelled"
        return self.orchestrator.register(service, state, tag)

    def _current_rollout(self, service: Service, tag: str) -> RolloutState | None:
        rollout = Record.parse(self.store.read(self.record_key(service)).value).rollout
        return rollout if rollout is not None and rollout.tag == tag else None

    # -- record transitions (shared with the reconciler) ---------------------------------

    def mark_registered(self, service: Service, tag: str, version: int) -> None:
        """``pending`` -> ``registered`` with the job version Nomad accepted."""

        def change(record: Record) -> Record | None:
            rollout = record.rollout
            if rollout is None or rollout.tag != tag or rollout.state != "pending":
                return None
            return replace(
                record,
                rollout=rollout.moved(
                    "registered",
                    version=version,
                    reason=None,
                    description=None,
                    registered_at=time.time(),
                ),
            )

        self.update_record(service, change)

    def note_failure(self, service: Service, tag: str, error: NomanError) -> bool:
        """Count a failed attempt; True when this refusal is new (to be notified once)."""
        permanent = error.code in ("nomad_forbidden", "nomad_job_not_found")
        first: list[bool] = []

        def change(record: Record) -> Record | None:
            rollout = record.rollout
            if rollout is None or rollout.tag != tag or rollout.terminal:
                return None
            new_reason = rollout.reason != error.code
            first[:] = [new_reason]
            reports = record.reports
            if permanent and new_reason:
                reports = (
                    *reports,
                    report(service, tag, error.code, error.message),
                )
            return replace(
                record,
                rollout=rollout.moved(
                    rollout.state,
                    reason=error.code,
                    description=error.message,
                    attempts=rollout.attempts + 1,
                ),
                reports=reports,
            )

        try:
            self.update_record(service, change)
        except NomanError as exc:
            log.warning("service %s: attempt not recorded: %s", service.name, exc.code)
        return bool(first and first[0])

    def finish(
        self,
        service: Service,
        tag: str,
        state: str,
        description: str,
        reason: str | None = None,
        deployment: dict[str, Any] | None = None,
        running: str | None = None,
    ) -> bool:
        """Record the end of ``tag``'s rollout, its history outcome and its report.

        With ``running`` (Nomad reverted to that tag), the tag key is set back
        to it in the same transaction, so Consul tells the truth.
        """
        for _ in range(self.cas_retries):
            key, entry, record = self.read(service)
            rollout = record.rollout
            if rollout is None or rollout.tag != tag or rollout.terminal:
                return False
            counts = (
                {name: deployment.get(name) for name in ("placed", "healthy", "desired")}
                if deployment
                else {}
            )
            history = record.finish_history(tag, state, description)
            new_tag = record.tag
            writes: list[Write] = []
            if running is not None and running != tag and key.value == tag:
                new_tag = running
                writes.append(Write(service.key, running, key.modify_index))
                history = (
                    HistoryEntry(
                        tag=running,
                        previous=tag,
                        time=utc_now(),
                        sender="nomad",
                        request_id=None,
                        kind="rollback",
                        outcome="successful",
                        description=f"{tag} failed, running {running}",
                    ),
                    *history,
                )[: self.history_size]
            new = Record(
                tag=new_tag,
                frozen=record.frozen,
                rollout=rollout.moved(
                    state,
                    reason=reason,
                    description=description,
                    deployment_id=(deployment or {}).get("id") or rollout.deployment_id,
                    callback_url=None,
                    **counts,
                ),
                deliveries=record.deliveries,
                history=history,
                reports=(
                    *record.reports,
                    report(
                        service,
                        tag,
                        state,
                        description,
                        previous=next((h.previous for h in record.history if h.tag == tag), None),
                        deployment=deployment,
                        callback_url=rollout.callback_url,
                    ),
                ),
                write_id=uuid.uuid4().hex,
            )
            writes.append(Write(self.record_key(service), new.dump(), entry.modify_index))
            if self._commit(service, writes, new) is not None:
                return True
        raise WriteConflict()
