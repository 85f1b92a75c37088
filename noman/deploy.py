"""The use case: decide whether a release may be deployed, and make it the desired state.

Plain Python with no Flask and no Consul. A deploy reads the tag key and the
service's desired state in one round trip (or trusts what this process wrote
last, checked by the transaction), then writes them in ONE transaction with
check-and-set on both, together with the new history entry and, for a restart
deploy, its report. Nothing it moves grows with history or with the number of
services (``noman.state`` has the layout). Once that transaction landed, the
deploy is durable: no later error turns the answer into a 5xx, and the
reconciler carries a rolling deploy to its end. Rolling services get a fast
path: the instance that took the hook registers the job version inline when
Nomad answers quickly, and the leader leaves the rollout alone meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from msgspec import structs

from noman.errors import (
    ConsulUnavailable,
    Frozen,
    InvalidTag,
    NomadUnavailable,
    NomanError,
    NothingToRollBack,
    RepositoryMismatch,
    StaleTag,
    StateUnreadable,
    WriteConflict,
)
from noman.model import OCI_TAG, JobState, Service, orders_before, same_repository
from noman.release import Outcome, Release, Rollout, quote
from noman.state import (
    Attempt,
    DeployChange,
    Desired,
    HistoryEntry,
    Keys,
    Migration,
    Report,
    RolloutState,
    decode,
    deploy_change,
    encode,
    first_rollout,
    iso_time,
    make_report,
    migrate_legacy,
    new_write_id,
)
from noman.stores import Entry, OutcomeUnknown, Store, Write

if TYPE_CHECKING:
    from noman.gates import Gates

#: ``epoch`` as ISO 8601 in UTC, to the second (the state's own formatter, under its old name).
iso = iso_time

__all__ = [
    "Deployer",
    "JobState",
    "Orchestrator",
    "ServiceView",
    "check_release",
    "needs_write",
]

log = logging.getLogger(__name__)

#: Releases in a row found by polling (none by a webhook) before status flags the service.
POLL_ONLY_RELEASES = 3

#: Why a rollout ends when the job already runs a newer tag.
STALE_JOB = 'The job already runs a newer tag; push with "force": true to deploy the older tag.'


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
            f"Repository {quote(release.repository, 140)} is not the one this service deploys."
        )
    if not OCI_TAG.fullmatch(release.tag):
        raise InvalidTag(f"{quote(release.tag, 140)} is not a valid image tag.")
    if not service.tag_pattern.fullmatch(release.tag):
        raise InvalidTag(
            f"Tag {quote(release.tag, 140)} does not match this service's pattern "
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


@dataclass(frozen=True)
class ServiceView:
    """A service's tag key and state as one read saw them, with their modify indexes.

    ``migration`` is set when only a record of Noman 0.x exists: ``desired`` and
    ``rollout`` then come from it, and the next write converts it.
    """

    key: Entry
    desired_entry: Entry
    desired: Desired
    rollout_entry: Entry | None = None
    rollout: RolloutState | None = None
    migration: Migration | None = None
    legacy_entry: Entry | None = None


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
        observe: Callable[[Report], object] | None = None,
        deliver: Callable[[list[tuple[str, Report]]], object] | None = None,
        clock: Callable[[], float] = time.time,
        poll_intervals: dict[str, float] | None = None,
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.cas_retries = cas_retries
        self.register_retries = register_retries
        self.keys = Keys(state_prefix)
        self.answer_within = answer_within
        self.history_size = history_size
        # Without a notifier that wants successes, a restart deploy's report would be put
        # in the outbox only to be dropped: ``observe`` logs and counts it instead.
        self.report_successes = report_successes
        self.observe = observe
        # Hands the reports this process just wrote to its courier (noman.courier).
        self.deliver = deliver
        self.clock = clock
        # service name -> seconds between registry polls, for the services that poll.
        self.poll_intervals = poll_intervals or {}
        # Approvals and deploy windows (noman.gates); set by the wiring once both exist.
        self.gates: Gates | None = None
        # service name -> (tag key, desired state) as this process last wrote them.
        self._known: dict[str, tuple[Entry, Entry]] = {}
        self._known_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def view(self, service: Service, with_rollout: bool = True) -> ServiceView:
        """The tag key, desired state and rollout of ``service`` in one round trip."""
        keys = [service.key, self.keys.desired(service.name)]
        if with_rollout:
            keys.append(self.keys.rollout(service.name))
        found = self.store.read_many(keys)
        rollout_entry = found[2] if with_rollout else None
        return self._view(service, found[0], found[1], rollout_entry)

    def views(self, services: list[Service]) -> dict[str, ServiceView]:
        """Views of many services, 20 to a read-only transaction (the leader's full pass).

        A service whose state does not decode is left out (its own step reports it).
        """
        found: dict[str, ServiceView] = {}
        for start in range(0, len(services), 20):
            chunk = services[start : start + 20]
            keys = [
                key
                for s in chunk
                for key in (s.key, self.keys.desired(s.name), self.keys.rollout(s.name))
            ]
            entries = self.store.read_many(keys)
            for i, service in enumerate(chunk):
                key, desired, rollout = entries[3 * i : 3 * i + 3]
                try:
                    found[service.name] = self._view(service, key, desired, rollout)
                except StateUnreadable:
                    continue
        return found

    def _view(
        self, service: Service, key: Entry, desired_entry: Entry, rollout_entry: Entry | None
    ) -> ServiceView:
        desired_key = self.keys.desired(service.name)
        desired = decode(Desired, desired_key, desired_entry.value)
        rollout = None
        if rollout_entry is not None:
            rollout = decode(RolloutState, self.keys.rollout(service.name), rollout_entry.value)
        if desired is not None:
            return ServiceView(key, desired_entry, desired, rollout_entry, rollout)
        legacy_key = self.keys.legacy(service.name)
        legacy = self.store.read(legacy_key)
        if legacy.value is None:
            return ServiceView(key, desired_entry, Desired(), rollout_entry, rollout)
        migration = migrate_legacy(service, legacy_key, legacy.value)
        return ServiceView(
            key,
            desired_entry,
            migration.desired,
            rollout_entry,
            rollout or migration.rollout,
            migration,
            legacy,
        )

    def history(self, service: Service) -> list[HistoryEntry]:
        """The service's history, newest first (at most ``history_size`` entries)."""
        folder = self.keys.history_folder(service.name)
        entries = self.store.list(folder).entries
        found = [
            entry
            for key, item in sorted(entries.items(), reverse=True)
            if (entry := decode(HistoryEntry, key, item.value)) is not None
        ]
        return found[: self.history_size]

    def status(self, service: Service) -> dict[str, Any]:
        """Desired tag, running tag, frozen flag, rollout and history of ``service``."""
        view = self.view(service)
        history = (
            [h.public() for h in view.migration.history]
            if view.migration is not None
            else [h.public() for h in self.history(service)]
        )
        running = None
        if service.strategy == "rolling" and self.orchestrator is not None:
            try:
                running = self.orchestrator.read(service).tag
            except NomanError as exc:
                log.warning("status of %s: job unreadable: %s", service.name, exc.code)
        rollout, attempt = view.rollout, view.desired.attempt
        rolling = attempt is not None and service.strategy == "rolling"
        if rolling and attempt is not None and (rollout is None or rollout.seq < attempt.seq):
            # The newest attempt has no rollout record yet: it is pending.
            rollout = first_rollout(attempt, attempt.time)
        found = {
            "service": service.name,
            "strategy": service.strategy,
            "key": service.key,
            "tag": view.key.value,
            "running": running,
            "frozen": view.desired.frozen,
            "rollout": rollout.public() if rollout is not None else None,
            **(self.gates.status_fields(service, view.desired) if self.gates else {}),
            "history": history,
        }
        interval = self.poll_intervals.get(service.name)
        if interval is not None:
            found["poll"] = self._poll_status(service, interval, history)
        return found

    def _poll_status(
        self, service: Service, interval: float, history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """What the leader's poller last saved, and whether webhooks seem not to arrive."""
        from noman.registries.poller import PollState

        raw = self.store.read(self.keys.poll(service.name)).value
        try:
            state = PollState.parse(json.loads(raw), interval) if raw else PollState(interval)
        except ValueError:
            raise StateUnreadable(self.keys.poll(service.name), "not JSON") from None
        shown = state.public()
        deploys = [h for h in history if h["kind"] == "deploy"][:POLL_ONLY_RELEASES]
        shown["webhooks_missing"] = len(deploys) == POLL_ONLY_RELEASES and all(
            h["sender"] == "poll" for h in deploys
        )
        if shown["webhooks_missing"]:
            shown["warning"] = (
                f"the last {POLL_ONLY_RELEASES} releases were all found by polling: "
                "webhooks from this registry may not be arriving"
            )
        return shown

    # -- the operations ------------------------------------------------------------------

    def deploy(self, service: Service, release: Release, request_id: str | None = None) -> Outcome:
        """Make ``release`` the desired state of ``service``; returns once Consul confirmed."""
        return self._deploy(service, release, request_id, "deploy")

    def rollback(
        self, service: Service, tag: str | None, sender: str, request_id: str | None = None
    ) -> Outcome:
        """Deploy an earlier tag on purpose (default: the last good one before the current)."""
        if tag is None:
            view = self.view(service, with_rollout=False)
            history = view.migration.history if view.migration else self.history(service)
            for entry in history:
                if entry.tag != view.key.value and entry.outcome == "successful":
                    tag = entry.tag
                    break
            else:
                raise NothingToRollBack()
        release = Release(tag=tag, sender=sender, force=True)
        return self._deploy(service, release, request_id, "rollback")

    def set_frozen(self, service: Service, frozen: bool, sender: str) -> dict[str, Any]:
        """Freeze or unfreeze ``service`` (kept in its desired state); returns its status."""
        for _ in range(self.cas_retries):
            view = self.view(service)
            new = structs.replace(view.desired, frozen=frozen, write_id=new_write_id())
            ops = [
                Write(self.keys.desired(service.name), encode(new), view.desired_entry.modify_index)
            ]
            ops += self._migration_ops(service, view)
            try:
                written = self.store.transact(ops)
            except OutcomeUnknown:
                # Freezing is idempotent: the truth is whatever Consul holds now.
                again = self.view(service, with_rollout=False)
                written = {} if again.desired.frozen == frozen else None
            if written is not None:
                self._forget(service)
                log.info(
                    "service %s %s by %s", service.name, "frozen" if frozen else "unfrozen", sender
                )
                return self.status(service)
        raise WriteConflict()

    def migrate(self, service: Service, view: ServiceView) -> None:
        """Convert a Noman 0.x record now (the leader does, on its first pass over it)."""
        if view.migration is None:
            return
        ops = [
            Write(
                self.keys.desired(service.name),
                encode(view.migration.desired),
                view.desired_entry.modify_index,
            ),
            *self._migration_ops(service, view),
        ]
        if self.store.transact(ops) is not None:
            log.info("service %s: state converted from the 0.x record", service.name)

    # -- the transaction -----------------------------------------------------------------

    def _deploy(
        self,
        service: Service,
        release: Release,
        request_id: str | None,
        kind: Literal["deploy", "rollback"],
    ) -> Outcome:
        """Decide and write one deploy, deciding again on fresh values after a lost cas."""
        check_release(service, release)
        cached = self._cached(service)
        for _ in range(self.cas_retries):
            if cached is not None:
                # What this process wrote last: one round trip when nobody wrote since.
                # The check-and-set on both keys makes a stale guess fail, never win.
                view, cached = cached, None
                if not self._leads_to_write(service, release, kind, view):
                    continue  # a refusal or a no-op is only ever decided on fresh values
            else:
                view = self.view(service, with_rollout=service.strategy == "rolling")
            outcome = self._answer_unwritten(service, release, kind, view)
            if outcome is None:
                outcome = self._write(service, release, request_id, kind, view)
            if outcome is not None:
                return outcome
            log.info(
                "service %s: key or desired state changed while deploying %s; deciding again",
                service.name,
                release.tag,
            )
        raise WriteConflict()

    def _answer_unwritten(
        self, service: Service, release: Release, kind: str, view: ServiceView
    ) -> Outcome | None:
        """The answer when ``release`` writes nothing (a repeated delivery, a gate holds it,
        its tag is already desired); raises ``Frozen``; None when it is to be written."""
        desired = view.desired
        if desired.frozen and kind == "deploy":
            raise Frozen()
        if release.delivery_id and release.delivery_id in desired.deliveries:
            return Outcome(
                service.name,
                service.key,
                release.tag,
                view.key.value,
                changed=False,
                duplicate_delivery=True,
            )
        if self.gates is not None:
            waiting = self.gates.before_write(service, release, kind, view)
            if waiting is not None:
                return waiting
        write = needs_write(service, view.key.value, release)
        if not write and not self._retry_wanted(service, view, release):
            return self._unchanged(service, release, view)
        return None

    def _write(
        self,
        service: Service,
        release: Release,
        request_id: str | None,
        kind: Literal["deploy", "rollback"],
        view: ServiceView,
    ) -> Outcome | None:
        """Write ``release`` as the next attempt in one transaction; None if a cas lost."""
        now = self.clock()
        attempt = Attempt(
            seq=view.desired.seq + 1,
            tag=release.tag,
            kind=kind,
            sender=release.sender,
            time=iso(now),
            at=now,
            previous=view.key.value,
            request_id=request_id,
            force=release.force or kind == "rollback",
            callback_url=release.callback_url,
        )
        decision = self.gates.decide(service, kind, now) if self.gates else None
        superseded: list[tuple[str, Report]] = []
        if self.gates is not None and decision is not None:
            change, ops = self.gates.propose(service, view, attempt, release.delivery_id, decision)
            ops += self._migration_ops(service, view, skip_seq=attempt.seq)
        else:
            change = deploy_change(
                service, view.desired, attempt, release.delivery_id, self.report_successes
            )
            ops = self._deploy_ops(service, view, change)
            if self.gates is not None:
                # A waiting proposal this change replaces ends as superseded.
                extra, superseded = self.gates.supersede(service, view, change.entry)
                ops += extra
        written = self._commit(service, ops, change)
        if written is None:
            return None
        self._remember(service, ops, written)
        # DEBUG: the caller's own line says it (the hook line, the CLI's answer, the
        # rollback line), and a line per deploy is the relay's whole log cost.
        log.debug(
            "service %s: desired tag %s (%s)",
            service.name,
            release.tag,
            kind if decision is None else decision.state,
            extra={"fields": {"service": service.name, "tag": release.tag}},
        )
        if self.gates is not None and decision is not None:
            return self.gates.proposed(service, view, change)
        if superseded and self.deliver is not None:
            self.deliver(superseded)
        return self.after_commit(service, attempt, change)

    def _deploy_ops(self, service: Service, view: ServiceView, change: DeployChange) -> list[Write]:
        """The transaction of one deploy: tag key and desired state first (their indexes
        come back first), the new history entry, the one it pushes out, the wake-up."""
        name, seq = service.name, change.entry.seq
        ops = [
            # A same-value cas leaves the key's index alone (nothing restarts) and still
            # checks that nobody wrote it since it was read.
            Write(service.key, change.desired.tag or "", view.key.modify_index),
            Write(self.keys.desired(name), encode(change.desired), view.desired_entry.modify_index),
            Write(self.keys.history(name, seq), encode(change.entry), 0),
        ]
        if seq - self.history_size >= 1:
            ops.append(Write(self.keys.history(name, seq - self.history_size), "", 0, "delete"))
        if change.rolling:
            ops.append(Write(self.keys.pending(name, seq), "pending", 0, "set"))
        ops += [Write(self.keys.outbox(r), encode(r), 0, "set") for r in change.reports]
        return ops + self._migration_ops(service, view, skip_seq=seq)

    def _migration_ops(self, service: Service, view: ServiceView, skip_seq: int = 0) -> list[Write]:
        """The writes that convert a Noman 0.x record (none when there is nothing to convert)."""
        migration, legacy = view.migration, view.legacy_entry
        if migration is None or legacy is None:
            return []
        name = service.name
        # Entries the new one pushes out of the history are not carried over.
        floor = (skip_seq or migration.desired.seq) - self.history_size
        ops = [
            Write(self.keys.history(name, h.seq), encode(h), 0)
            for h in migration.history
            if h.seq > floor
        ]
        rollout_free = view.rollout_entry is not None and view.rollout_entry.value is None
        if migration.rollout is not None and rollout_free:
            ops.append(Write(self.keys.rollout(name), encode(migration.rollout), 0))
            if not migration.rollout.terminal:
                seq = migration.rollout.seq
                ops.append(Write(self.keys.pending(name, seq), "migrated", 0, "set"))
        ops += [Write(self.keys.outbox(r), encode(r), 0, "set") for r in migration.reports]
        ops.append(Write(self.keys.legacy(name), "", legacy.modify_index, "delete-cas"))
        return ops

    def _leads_to_write(
        self, service: Service, release: Release, kind: str, view: ServiceView
    ) -> bool:
        """True when these values lead to a write (so the transaction checks them)."""
        if view.desired.frozen and kind == "deploy":
            return False
        if view.desired.gate is not None:
            return False  # what waits decides the answer: decided on fresh values only
        if release.delivery_id and release.delivery_id in view.desired.deliveries:
            return False
        try:
            return needs_write(service, view.key.value, release)
        except StaleTag:
            return False

    def _cached(self, service: Service) -> ServiceView | None:
        with self._known_lock:
            known = self._known.get(service.name)
        if known is None:
            return None
        try:
            return self._view(service, known[0], known[1], None)
        except StateUnreadable:
            return None

    def _remember(self, service: Service, ops: list[Write], written: dict[str, int]) -> None:
        """Keep what this process just wrote, for the next deploy's first attempt.

        Only when Consul told us both new indexes (a late answer does not).
        """
        key_index = written.get(service.key, 0)
        desired_index = written.get(self.keys.desired(service.name), 0)
        with self._known_lock:
            if not key_index or not desired_index:
                self._known.pop(service.name, None)
            else:
                self._known[service.name] = (
                    Entry(ops[0].value, key_index),
                    Entry(ops[1].value, desired_index),
                )

    def _forget(self, service: Service) -> None:
        with self._known_lock:
            self._known.pop(service.name, None)

    def _retry_wanted(self, service: Service, view: ServiceView, release: Release) -> bool:
        """Pushing a failed tag again (or with force) retries its rollout on purpose."""
        rollout = view.rollout
        attempt = view.desired.attempt
        if service.strategy != "rolling" or rollout is None or rollout.tag != release.tag:
            return False
        if attempt is not None and rollout.seq != attempt.seq:
            return False  # the newest attempt has not been taken up yet
        return rollout.state in ("failed", "cancelled", "timed_out") or (
            release.force and rollout.terminal
        )

    def _commit(
        self, service: Service, ops: list[Write], change: DeployChange
    ) -> dict[str, int] | None:
        """Run the transaction; after a timed-out answer, re-read once to learn the truth.

        The new history entry is created (``cas`` 0) by this write alone and keeps its
        ``write_id`` forever after, so finding it tells whether the write landed.
        Returns the written keys' new indexes (empty when only the re-read saw the
        write), or None when someone wrote first.
        """
        try:
            return self.store.transact(ops)
        except OutcomeUnknown:
            pass
        entry_key = self.keys.history(service.name, change.entry.seq)
        try:
            landed = decode(HistoryEntry, entry_key, self.store.read(entry_key).value)
        except NomanError:
            raise ConsulUnavailable(
                "Consul did not answer in time and could not be re-read: the deploy may or "
                "may not have landed; sending the same request again is safe."
            ) from None
        if landed is not None and landed.write_id == change.entry.write_id:
            log.warning("service %s: Consul answered late, but the deploy landed", service.name)
            return {}
        raise ConsulUnavailable(
            "Consul did not answer in time and a re-read shows nothing was written. Retry later."
        )

    def _unchanged(self, service: Service, release: Release, view: ServiceView) -> Outcome:
        rollout, attempt = view.rollout, view.desired.attempt
        reason = None
        if service.strategy == "rolling" and attempt is not None and attempt.tag == release.tag:
            if rollout is None or rollout.seq != attempt.seq:
                reason = "pending"
            elif rollout.state == "pending":
                reason = rollout.reason or "pending"
        return Outcome(
            service.name,
            service.key,
            release.tag,
            view.key.value,
            changed=False,
            pending_reason=reason,
        )

    def after_commit(self, service: Service, attempt: Attempt, change: DeployChange) -> Outcome:
        """The answer once the transaction landed: from here on, never an error.

        Delivers the change's reports, and registers a rolling attempt inline (also
        when an approval or an opening deploy window made the change: ``noman.gates``).
        """
        outcome = Outcome(service.name, service.key, attempt.tag, attempt.previous, changed=True)
        if change.reports and self.deliver is not None:
            self.deliver([(self.keys.outbox(r), r) for r in change.reports])
        if not change.rolling:
            if not change.reports and self.observe is not None:
                description = change.entry.description
                self.observe(
                    make_report(
                        service,
                        attempt.seq,
                        attempt.tag,
                        "successful",
                        description,
                        attempt.previous,
                        at=attempt.at,
                        requested=attempt.time,
                        kind=attempt.kind,
                    )
                )
            return outcome
        if service.staged:
            # A release phase, several jobs or canaries: the leader takes the first step.
            return replace(outcome, pending_reason="staged")
        try:
            return self._register_inline(service, attempt, outcome)
        except NomanError as exc:
            # Durable already: the leader carries it on. Never a 5xx, never a failure report.
            log.warning(
                "service %s: after the deploy of %s landed: %s", service.name, attempt.tag, exc.code
            )
            return replace(outcome, pending_reason=exc.code)

    # -- the rolling fast path -----------------------------------------------------------

    def _register_inline(self, service: Service, attempt: Attempt, outcome: Outcome) -> Outcome:
        """Register the job version now if Nomad answers within ``answer_within``.

        The leader leaves a new attempt alone for ``answer_within`` seconds, so one
        deploy makes one registration; ``EnforceIndex`` and the rollout record's
        check-and-set keep a late leader from doing it twice.
        """
        if self.orchestrator is None:
            return replace(outcome, pending_reason="nomad_not_configured")
        rollout_key = self.keys.rollout(service.name)
        rollout_index = self.store.read(rollout_key).modify_index
        rollout = first_rollout(attempt, iso(self.clock()))
        started = time.monotonic()
        error: NomanError = NomadUnavailable(
            "Nomad did not accept the job version within rollout.answer_within; Noman keeps trying."
        )
        for _ in range(self.register_retries):
            if time.monotonic() - started > self.answer_within:
                break
            try:
                registered = self.register_once(service, rollout)
            except NomanError as exc:
                error = exc
                break
            if registered == "stale":
                # The leader records the history outcome and the report when it wakes.
                cancelled = rollout.moved(
                    "cancelled",
                    iso(self.clock()),
                    reason="stale_tag",
                    description=STALE_JOB,
                )
                self._record_inline(service, cancelled, rollout_index)
                return replace(outcome, state="cancelled", pending_reason="stale_tag")
            if registered is not None:
                now = self.clock()
                done = rollout.moved(
                    "registered", iso(now), version=registered.version, registered_at=now
                )
                self._record_inline(service, done, rollout_index)
                return replace(outcome, rollout=registered)
            error = WriteConflict("The Nomad job kept changing; Noman keeps trying.")
        failed = rollout.moved(
            "pending",
            iso(self.clock()),
            reason=error.code,
            description=error.message,
            attempts=1,
        )
        self._record_inline(service, failed, rollout_index)
        return replace(outcome, pending_reason=error.code)

    def _record_inline(self, service: Service, rollout: RolloutState, index: int) -> None:
        """Record the inline attempt's result, and wake the leader to carry it on."""
        ops = [
            Write(self.keys.rollout(service.name), encode(rollout), index),
            Write(self.keys.pending(service.name, rollout.seq), rollout.state, 0, "set"),
        ]
        try:
            if self.store.transact(ops) is None:
                log.info("service %s: the leader took the rollout over first", service.name)
        except NomanError as exc:
            log.warning(
                "service %s: inline result not recorded (%s); the leader carries it on",
                service.name,
                exc.code,
            )

    def register_once(
        self, service: Service, rollout: RolloutState
    ) -> Rollout | Literal["stale"] | None:
        """One attempt to have the job run ``rollout.tag``.

        Returns the job version that runs it (registered now, or already there),
        None when the job changed between read and register, or "stale" when the
        job runs a newer tag and the rollout is not forced.
        """
        assert self.orchestrator is not None
        tag = rollout.tag
        state = self.orchestrator.read(service)
        if state.tag == tag:
            job = service.nomad.job if service.nomad else service.name
            return Rollout(job, state.version, "")
        if not rollout.force and orders_before(service, tag, state.tag):
            return "stale"
        return self.orchestrator.register(service, state, tag)
