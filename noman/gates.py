"""Approvals and deploy windows: accepted deploys whose tag key waits to be written.

A deploy of a service with ``approvals = N`` (or one that arrives while its
deploy windows hold deploys) is accepted and recorded like any other, in ONE
transaction: the desired state gains a ``Gate`` (the attempt, who approved so
far, when it expires), history entry ``seq`` is created as ``awaiting_approval``
or ``held``, a report goes to the outbox, and ``pending/<name>/gate`` is set as
the leader's timer. The tag key is **not** written. Then:

- each approval (``approve``) is a check-and-set of the desired state; the N-th
  distinct one writes the tag key, the desired state (and ``pending/<name>/<seq>``
  for a rolling service) in one transaction, exactly as a deploy would, unless a
  window holds it: then it is ``held`` until the window opens;
- ``reject`` ends it (history ``rejected``, reported); a newer push or any other
  deploy or rollback supersedes it (history ``superseded``, reported);
- the leader carries the waits: ``Gatekeeper.run`` expires proposals after
  ``approval_ttl`` (history ``expired``, reported) and applies a held deploy
  when its window opens, with no new webhook; ``deploy_now`` lets an operator
  skip the window for the pending tag (recorded as ``override``).

Every transition is a check-and-set of the desired state, the one value that
holds the gate, so a rewrite of the gate's history entry or timer (``set``) in
the same transaction can never race another transition. All of it lives in the
store: a restart or a new leader loses nothing between proposal and approval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from noman.config import Settings
from noman.deploy import Deployer, ServiceView, iso
from noman.errors import (
    ConsulUnavailable,
    Frozen,
    NomanError,
    NotCurrent,
    StaleTag,
    StateUnreadable,
    WriteConflict,
)
from noman.model import Service, orders_before
from noman.release import Outcome, Release, quote
from noman.state import (
    Attempt,
    DeployChange,
    Desired,
    Gate,
    HistoryEntry,
    Report,
    deploy_change,
    encode,
    make_report,
    new_write_id,
    recent_deliveries,
)
from noman.stores import Entry, OutcomeUnknown, Store, Write
from noman.windows import allowed, describe, next_allowed

log = logging.getLogger(__name__)

#: States of an attempt that waits; their reports are notices for people, not outcomes.
WAITING_STATES = ("awaiting_approval", "held")
#: How a gate ends when its tag is never written.
ENDED_STATES = ("rejected", "expired", "superseded")

_Job = tuple[str, Report]


class GateTimer(msgspec.Struct, frozen=True):
    """``pending/<name>/gate``: when the leader next looks at attempt ``seq``'s gate."""

    seq: int
    due: float


_TIMER = msgspec.json.Decoder(GateTimer)


@dataclass(frozen=True)
class Decision:
    """Why a new attempt waits: approvals (until ``expires_at``) or a window (``until``)."""

    state: Literal["awaiting_approval", "held"]
    needed: int = 0
    expires_at: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class Action:
    """The answer to an operator's approve, reject or deploy-now."""

    body: dict[str, Any]
    status: int = 200


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _maybe_iso(epoch: float | None) -> str | None:
    return iso(epoch) if epoch is not None else None


class Gates:
    """Proposals, approvals, rejections, overrides, and the leader's timers for them."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        deliver: Callable[[list[_Job]], object] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deployer = deployer
        self.keys = deployer.keys
        self.deliver = deliver
        # The deployer's clock unless told otherwise: one knob for tests.
        self.clock: Callable[[], float] = clock or (lambda: deployer.clock())
        self._due: dict[str, float] = {}
        self._next_full = 0.0

    # -- policy --------------------------------------------------------------------------

    def decide(self, service: Service, kind: str, now: float) -> Decision | None:
        """Whether a new attempt of ``kind`` waits, and for what (None: it lands now)."""
        controls = self.settings.controls_for(service)
        if controls.approvals and (kind == "deploy" or controls.approve_rollbacks):
            return Decision(
                "awaiting_approval", controls.approvals, expires_at=now + controls.approval_ttl
            )
        if kind == "rollback" or allowed(controls.windows, _utc(now)):
            return None  # a rollback is how an incident ends: never held by a window
        return Decision("held", until=self._opens(service, now))

    def _opens(self, service: Service, now: float) -> float | None:
        """When deploys of ``service`` may land next (None: no window within the search)."""
        found = next_allowed(self.settings.controls_for(service).windows, _utc(now))
        return found.timestamp() if found is not None else None

    def before_write(
        self, service: Service, release: Release, kind: str, view: ServiceView
    ) -> Outcome | None:
        """The answer when ``release`` is already what waits (written again, it would start
        its approvals over); StaleTag when it is older than what waits."""
        gate = view.desired.gate
        if gate is None:
            return None
        waiting = gate.attempt
        if waiting.tag == release.tag and waiting.kind == kind:
            return Outcome(
                service.name,
                service.key,
                release.tag,
                view.key.value,
                changed=False,
                waiting=self.waiting(service, gate),
            )
        if not release.force and orders_before(service, release.tag, waiting.tag):
            raise StaleTag(
                f"Tag {release.tag} is older than {waiting.tag}, which waits "
                f"({self.state_of(gate)}); push with force to replace it on purpose."
            )
        return None

    def state_of(self, gate: Gate) -> Literal["awaiting_approval", "held"]:
        """What ``gate`` waits for now."""
        return "held" if gate.approved else "awaiting_approval"

    def waiting(self, service: Service, gate: Gate) -> dict[str, Any]:
        """What an answer says about a waiting attempt (``"rollout"`` of the hook's JSON)."""
        body: dict[str, Any] = {"state": self.state_of(gate), "tag": gate.attempt.tag}
        if gate.approved:
            opens = self._opens(service, self.clock())
            body["until"] = _maybe_iso(opens)
        else:
            body["approvals"] = {"needed": gate.needed, "by": list(gate.approvers)}
            body["expires_at"] = _maybe_iso(gate.expires_at)
        if gate.override:
            body["override"] = gate.override
        return body

    def status_fields(self, service: Service, desired: Desired) -> dict[str, Any]:
        """What ``status`` adds: the waiting attempt, and the deploy windows now and next
        (nothing for a service that asks for neither and has nothing waiting)."""
        controls = self.settings.controls_for(service)
        gate = desired.gate
        if gate is None and not controls.active:
            return {}
        now = self.clock()
        shown_gate = None
        if gate is not None:
            shown_gate = {
                **self.waiting(service, gate),
                "seq": gate.attempt.seq,
                "kind": gate.attempt.kind,
                "sender": gate.attempt.sender,
                "time": gate.attempt.time,
            }
        return {
            "gate": shown_gate,
            "approvals": controls.approvals,
            "windows": describe(controls.windows, _utc(now)),
        }

    # -- the hook's side -----------------------------------------------------------------

    def propose(
        self,
        service: Service,
        view: ServiceView,
        attempt: Attempt,
        delivery_id: str | None,
        decision: Decision,
    ) -> tuple[DeployChange, list[Write]]:
        """The transaction that records ``attempt`` as waiting (no tag key write).

        Long because it lists every write of one transaction (the tag key's guard, the
        desired state, the history entry and its pruning, superseded proposals, the
        timer, the outbox): read together, they say what lands at once.
        """
        name, seq = service.name, attempt.seq
        write_id = new_write_id()
        gate = Gate(
            attempt=attempt,
            needed=decision.needed,
            expires_at=decision.expires_at,
            write_id=write_id,
        )
        description = self._waiting_text(service, gate, decision.until)
        entry = _entry(gate, decision.state, description)
        desired = view.desired
        new = msgspec.structs.replace(
            desired,
            seq=seq,
            write_id=write_id,
            deliveries=recent_deliveries(desired.deliveries, delivery_id, attempt.at),
            gate=gate,
        )
        report = make_report(
            service,
            seq,
            attempt.tag,
            decision.state,
            description,
            previous=attempt.previous,
            at=attempt.at,
            requested=attempt.time,
            kind=attempt.kind,
        )
        ops = self._proposal_writes(service, view, new, entry)
        superseded, reports = self.supersede(service, view, entry, clear_timer=False)
        due = decision.expires_at if decision.state == "awaiting_approval" else decision.until
        ops += superseded
        ops.append(self._timer(name, seq, due, attempt.at))
        ops.append(Write(self.keys.outbox(report), encode(report), 0, "set"))
        change = DeployChange(new, entry, (*(r for _, r in reports), report), False)
        return change, ops

    def _proposal_writes(
        self, service: Service, view: ServiceView, new: Desired, entry: HistoryEntry
    ) -> list[Write]:
        """The tag key (unchanged), the waiting desired state, its history entry and pruning."""
        name, seq = service.name, entry.seq
        ops: list[Write] = []
        if view.key.value is not None:
            # Same value, same index: nothing moves, and the decision was made on it.
            ops.append(Write(service.key, view.key.value, view.key.modify_index))
        ops += [
            Write(self.keys.desired(name), encode(new), view.desired_entry.modify_index),
            Write(self.keys.history(name, seq), encode(entry), 0),
        ]
        if seq - self.deployer.history_size >= 1:
            ops.append(
                Write(self.keys.history(name, seq - self.deployer.history_size), "", 0, "delete")
            )
        return ops

    def proposed(self, service: Service, view: ServiceView, change: DeployChange) -> Outcome:
        """The answer once a proposal landed (202), its reports handed to the courier."""
        if change.reports and self.deliver is not None:
            self.deliver([(self.keys.outbox(r), r) for r in change.reports])
        gate = change.desired.gate
        assert gate is not None
        return Outcome(
            service.name,
            service.key,
            gate.attempt.tag,
            view.key.value,
            changed=False,
            waiting=self.waiting(service, gate),
        )

    def supersede(
        self, service: Service, view: ServiceView, by: HistoryEntry, clear_timer: bool = True
    ) -> tuple[list[Write], list[_Job]]:
        """Writes (and reports) that end the gate ``by`` replaces, as ``superseded``."""
        gate = view.desired.gate
        if gate is None:
            return [], []
        text = f"superseded by {by.tag} (attempt {by.seq}) before it was deployed"
        ops, reports = self._end_ops(service, gate, "superseded", text, floor=by.seq)
        if clear_timer:
            ops.append(Write(self.keys.gate(service.name), "", 0, "delete"))
        return ops, reports

    # -- the operators' side -------------------------------------------------------------

    def approve(
        self, service: Service, operator: str, tag: str | None = None, sender: str = "api"
    ) -> Action:
        """``operator`` approves the waiting proposal (``tag``: the one they looked at)."""
        for _ in range(self.deployer.cas_retries):
            view = self.deployer.view(service, with_rollout=False)
            gate = self._current(service, view, tag)
            now = self.clock()
            if not gate.approved and gate.expires_at is not None and now >= gate.expires_at:
                raise NotCurrent(
                    f"The proposal of {gate.attempt.tag} expired at {iso(gate.expires_at)}."
                )
            if view.desired.frozen:
                raise Frozen("This service is frozen; unfreeze it before approving.")
            if gate.approved or operator in gate.approvers:
                # The same operator twice counts once; nothing is written.
                return self._still_waiting(service, view, gate)
            moved = msgspec.structs.replace(gate, approvers=(*gate.approvers, operator))
            done = self._advance(service, view, moved, now, f"approved by {operator}", sender)
            if done is not None:
                return done
        raise WriteConflict()

    def deploy_now(
        self, service: Service, operator: str, tag: str | None = None, sender: str = "api"
    ) -> Action:
        """Let the waiting attempt land outside its deploy windows (approvals still count)."""
        for _ in range(self.deployer.cas_retries):
            view = self.deployer.view(service, with_rollout=False)
            gate = self._current(service, view, tag)
            if view.desired.frozen:
                raise Frozen()
            if gate.override:
                return self._still_waiting(service, view, gate)
            moved = msgspec.structs.replace(gate, override=operator)
            note = f"deploy-now by {operator}"
            done = self._advance(service, view, moved, self.clock(), note, sender)
            if done is not None:
                return done
        raise WriteConflict()

    def reject(
        self,
        service: Service,
        operator: str,
        tag: str | None = None,
        reason: str | None = None,
        sender: str = "api",
    ) -> Action:
        """End the waiting attempt: its tag is never written (recorded and reported)."""
        for _ in range(self.deployer.cas_retries):
            view = self.deployer.view(service, with_rollout=False)
            gate = self._current(service, view, tag)
            text = f"rejected by {operator}" + (f": {reason}" if reason else "")
            if self._close(service, view, gate, "rejected", text) is not None:
                log.info(
                    "service %s: %s rejected by %s (%s)",
                    service.name,
                    gate.attempt.tag,
                    operator,
                    sender,
                    extra={"fields": {"service": service.name, "operator": operator}},
                )
                body = self._body(service, view, gate, changed=False)
                body["rollout"] = {"state": "rejected", "tag": gate.attempt.tag, "by": operator}
                return Action(body)
        raise WriteConflict()

    def _current(self, service: Service, view: ServiceView, tag: str | None) -> Gate:
        gate = view.desired.gate
        if gate is None:
            raise NotCurrent(f"Nothing of {service.name} waits for approval or a deploy window.")
        if tag is not None and tag != gate.attempt.tag:
            raise NotCurrent(
                f"{quote(tag, 140)} is not what waits; {gate.attempt.tag} does "
                f"({self.state_of(gate)})."
            )
        return gate

    def _still_waiting(self, service: Service, view: ServiceView, gate: Gate) -> Action:
        body = self._body(service, view, gate, changed=False)
        body["rollout"] = self.waiting(service, gate)
        return Action(body, 202)

    def _body(
        self, service: Service, view: ServiceView, gate: Gate, changed: bool
    ) -> dict[str, Any]:
        return {
            "service": service.name,
            "key": service.key,
            "tag": gate.attempt.tag,
            "previous": view.key.value,
            "changed": changed,
        }

    def _advance(
        self, service: Service, view: ServiceView, gate: Gate, now: float, note: str, sender: str
    ) -> Action | None:
        """Record ``gate``'s new approvals or override; land it when nothing holds it.

        None when the desired state changed meanwhile (the caller reads again).

        Long because landing, staying held and moving the timer to a window's opening
        are three outcomes of one view, and the transaction that records the last two is
        listed whole.
        """
        name = service.name
        lands = gate.approved and (
            gate.override is not None
            or gate.attempt.kind == "rollback"
            or allowed(self.settings.controls_for(service).windows, _utc(now))
        )
        if lands:
            outcome = self._apply(service, view, gate, now, note)
            if outcome is None:
                return None
            log.info(
                "service %s: %s lands, %s (%s)",
                name,
                gate.attempt.tag,
                note,
                sender,
                extra={"fields": {"service": name, "tag": gate.attempt.tag}},
            )
            return Action(outcome.as_dict(), outcome.status)
        return self._hold(service, view, gate, now, note, sender)

    def _hold(
        self, service: Service, view: ServiceView, gate: Gate, now: float, note: str, sender: str
    ) -> Action | None:
        """Record ``gate`` still waiting (for approvals or a window); None as ``_advance``."""
        name = service.name
        until = self._opens(service, now) if gate.approved else None
        state = self.state_of(gate)
        text = self._waiting_text(service, gate, until)
        write_id = new_write_id()
        new = msgspec.structs.replace(view.desired, write_id=write_id, gate=gate)
        entry = _entry(gate, state, text)
        ops = [
            Write(self.keys.desired(name), encode(new), view.desired_entry.modify_index),
            Write(self.keys.history(name, gate.attempt.seq), encode(entry), 0, "set"),
        ]
        reports: list[_Job] = []
        was_waiting_for_approvals = view.desired.gate is not None and not view.desired.gate.approved
        if gate.approved and was_waiting_for_approvals:
            # Approved, now held by a window: the timer moves to the window's opening,
            # and the people who approved hear when it lands.
            ops.append(self._timer(name, gate.attempt.seq, until, now))
            report = make_report(
                service,
                gate.attempt.seq,
                gate.attempt.tag,
                "held",
                text,
                previous=gate.attempt.previous,
                at=now,
                requested=gate.attempt.time,
            )
            ops.append(Write(self.keys.outbox(report), encode(report), 0, "set"))
            reports.append((self.keys.outbox(report), report))
        if self._transact(service, ops, write_id) is None:
            return None
        self._send(reports)
        log.info(
            "service %s: %s %s, %s (%s)",
            name,
            gate.attempt.tag,
            state,
            note,
            sender,
            extra={"fields": {"service": name, "tag": gate.attempt.tag}},
        )
        return self._still_waiting(service, view, gate)

    # -- landing and ending --------------------------------------------------------------

    def _apply(
        self, service: Service, view: ServiceView, gate: Gate, now: float, note: str
    ) -> Outcome | None:
        """Write the tag key as the deploy would have; None when the state changed first.

        The instance that does it answers as a hook does (a rolling service's job
        version is registered inline when Nomad answers in time).
        """
        name = service.name
        attempt = msgspec.structs.replace(gate.attempt, at=now, previous=view.key.value)
        if not attempt.force and orders_before(service, attempt.tag, view.key.value):
            text = f"not deployed: {service.key} holds the newer {view.key.value}"
            if self._close(service, view, gate, "superseded", text) is None:
                return None
            return Outcome(
                name, service.key, attempt.tag, view.key.value, changed=False, state="superseded"
            )
        base = msgspec.structs.replace(view.desired, gate=None)
        change = deploy_change(service, base, attempt, None, self.deployer.report_successes)
        notes = [change.entry.description, note]
        if gate.approvers and not note.startswith("approved"):
            notes.append(f"approved by {', '.join(gate.approvers)}")
        description = "; ".join(n for n in notes if n)
        entry = msgspec.structs.replace(
            change.entry,
            description=description,
            approvers=gate.approvers,
            override=gate.override,
        )
        reports = tuple(msgspec.structs.replace(r, description=description) for r in change.reports)
        change = replace(change, entry=entry, reports=reports)
        ops = [
            Write(service.key, attempt.tag, view.key.modify_index),
            Write(self.keys.desired(name), encode(change.desired), view.desired_entry.modify_index),
            Write(self.keys.history(name, attempt.seq), encode(entry), 0, "set"),
        ]
        if change.rolling:
            ops.append(Write(self.keys.pending(name, attempt.seq), "approved", 0, "set"))
        ops += [Write(self.keys.outbox(r), encode(r), 0, "set") for r in change.reports]
        ops.append(Write(self.keys.gate(name), "", 0, "delete"))
        if self._transact(service, ops, change.desired.write_id) is None:
            return None
        return self.deployer.after_commit(service, attempt, change)

    def _close(
        self, service: Service, view: ServiceView, gate: Gate, outcome: str, text: str
    ) -> dict[str, int] | None:
        """End ``gate`` without writing its tag (the desired state forgets it); reported.

        The new indexes, or None when the desired state changed first.
        """
        name = service.name
        new = msgspec.structs.replace(view.desired, write_id=new_write_id(), gate=None)
        ended, reports = self._end_ops(service, gate, outcome, text, floor=gate.attempt.seq)
        ops = [
            Write(self.keys.desired(name), encode(new), view.desired_entry.modify_index),
            *ended,
            Write(self.keys.gate(name), "", 0, "delete"),
        ]
        written = self._transact(service, ops, new.write_id)
        if written is not None:
            self._send(reports)
        return written

    def _end_ops(
        self, service: Service, gate: Gate, outcome: str, text: str, floor: int
    ) -> tuple[list[Write], list[_Job]]:
        now = self.clock()
        entry = msgspec.structs.replace(_entry(gate, outcome, text), ended=iso(now))
        ops: list[Write] = []
        if gate.attempt.seq > floor - self.deployer.history_size:  # not pruned meanwhile
            key = self.keys.history(service.name, gate.attempt.seq)
            ops.append(Write(key, encode(entry), 0, "set"))
        report = make_report(
            service,
            gate.attempt.seq,
            gate.attempt.tag,
            outcome,
            text,
            previous=gate.attempt.previous,
            callback_url=gate.attempt.callback_url,
            at=now,
            requested=gate.attempt.time,
            kind=gate.attempt.kind,
        )
        ops.append(Write(self.keys.outbox(report), encode(report), 0, "set"))
        return ops, [(self.keys.outbox(report), report)]

    # -- the leader's timers -------------------------------------------------------------

    def run(self, pending: dict[str, Entry]) -> bool:
        """Carry every gate timer that is due (all of them on a full pass); True when an
        attempt landed, so the caller reads ``pending/`` again."""
        now = self.clock()
        full = time.monotonic() >= self._next_full
        if full:
            # Catches configuration changes (a window removed) and a timer left behind.
            self._next_full = time.monotonic() + self.settings.rollout.resync
        timers: dict[str, tuple[GateTimer, Entry]] = {}
        for key, entry in pending.items():
            name = self.keys.parse_gate(key)
            if name is None or entry.value is None:
                continue
            try:
                timers[name] = (_TIMER.decode(entry.value), entry)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("gates: %s is unreadable; delete it, the next full pass sets it", key)
        self._due = {name: timer.due for name, (timer, _) in timers.items()}
        landed = False
        services = {s.name: s for s in self.settings.services}
        if full:
            try:
                self._restore_timers(set(timers), now)
            except NomanError as exc:
                log.warning("gates: checking for lost timers: %s", exc.code)
                self._next_full = 0.0  # try again on the next pass
        for name, (timer, entry) in sorted(timers.items()):
            service = services.get(name)
            if service is None or (timer.due > now and not full):
                continue
            try:
                landed = self._carry(service, timer, entry, now) or landed
            except (NomanError, StateUnreadable) as exc:
                log.warning("gates: %s: %s: %s", name, exc.code, exc.message)
                self._due[name] = now + self.settings.rollout.retry_max
        return landed

    def _restore_timers(self, timed: set[str], now: float) -> None:
        """A gate whose timer key is gone (deleted by hand) gets one again, due now."""
        watched = [
            s
            for s in self.settings.services
            if s.name not in timed and self.settings.controls_for(s).active
        ]
        for name, view in self.deployer.views(watched).items():
            gate = view.desired.gate
            if gate is None:
                continue
            due = GateTimer(gate.attempt.seq, now)
            self.store.transact([Write(self.keys.gate(name), encode(due), 0)])
            self._due[name] = now
            log.warning("gates: %s: the timer of %s was missing; set again", name, gate.attempt.tag)

    def next_due(self) -> float | None:
        """Seconds until the soonest gate timer comes due (None: none is set)."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self.clock())

    def _carry(self, service: Service, timer: GateTimer, entry: Entry, now: float) -> bool:
        name = service.name
        view = self.deployer.view(service, with_rollout=False)
        gate = view.desired.gate
        key = self.keys.gate(name)
        if gate is None or gate.attempt.seq != timer.seq:
            self.store.transact([Write(key, "", entry.modify_index, "delete-cas")])
            self._due.pop(name, None)
            return False
        if not gate.approved:
            if gate.expires_at is not None and now >= gate.expires_at:
                text = f"expired: {len(gate.approvers)} of {gate.needed} approvals in time"
                if self._close(service, view, gate, "expired", text) is not None:
                    self._due.pop(name, None)
                    log.info("gates: %s %s expired", name, gate.attempt.tag)
                return False
            return self._reset(name, timer, entry, gate.expires_at, now)
        if view.desired.frozen:
            return self._reset(name, timer, entry, now + self.settings.rollout.resync, now)
        controls = self.settings.controls_for(service)
        if gate.override or gate.attempt.kind == "rollback" or allowed(controls.windows, _utc(now)):
            outcome = self._apply(service, view, gate, now, "its deploy window opened")
            if outcome is not None:
                self._due.pop(name, None)
                log.info("gates: %s %s landed: its deploy window opened", name, gate.attempt.tag)
            return outcome is not None
        return self._reset(name, timer, entry, self._opens(service, now), now)

    def _reset(
        self, name: str, timer: GateTimer, entry: Entry, due: float | None, now: float
    ) -> bool:
        """Move the timer to ``due`` (unless it is there already)."""
        when = due if due is not None else now + self.settings.rollout.resync
        if when != timer.due:
            value = encode(GateTimer(timer.seq, when))
            self.store.transact([Write(self.keys.gate(name), value, entry.modify_index)])
        self._due[name] = when
        return False

    # -- helpers -------------------------------------------------------------------------

    def _timer(self, name: str, seq: int, due: float | None, now: float) -> Write:
        when = due if due is not None else now + self.settings.rollout.resync
        return Write(self.keys.gate(name), encode(GateTimer(seq, when)), 0, "set")

    def _waiting_text(self, service: Service, gate: Gate, until: float | None) -> str:
        tag = gate.attempt.tag
        if gate.approved:
            when = f"until {iso(until)}" if until is not None else "until a deploy window opens"
            text = f"{tag} held by its deploy windows {when}"
        else:
            left = gate.needed - len(gate.approvers)
            text = f"{tag} awaits {left} more approval{'s' if left != 1 else ''}"
            if gate.approvers:
                text += f" (approved by {', '.join(gate.approvers)})"
            if gate.expires_at is not None:
                text += f", expires {iso(gate.expires_at)}"
        base = self.settings.ui.public_url
        if base:
            text += f"; {base}/ui/services/{service.name}"
        return text

    def _transact(self, service: Service, ops: list[Write], write_id: str) -> dict[str, int] | None:
        """Run ``ops``, which write the desired state with ``write_id``; after a late answer,
        a re-read of that id tells whether they landed."""
        try:
            return self.store.transact(ops)
        except OutcomeUnknown:
            pass
        try:
            desired = self.deployer.view(service, with_rollout=False).desired
        except NomanError:
            raise ConsulUnavailable(
                "Consul did not answer in time and could not be re-read: the change may or may "
                "not have landed; look at the service's status before repeating it."
            ) from None
        if desired.write_id == write_id:
            return {}
        raise ConsulUnavailable(
            "Consul did not answer in time and a re-read shows nothing was written. Retry later."
        )

    def _send(self, reports: list[_Job]) -> None:
        if reports and self.deliver is not None:
            self.deliver(reports)


def _entry(gate: Gate, outcome: str, description: str) -> HistoryEntry:
    """The history entry of a waiting attempt, in ``outcome``."""
    attempt = gate.attempt
    return HistoryEntry(
        seq=attempt.seq,
        tag=attempt.tag,
        time=attempt.time,
        sender=attempt.sender,
        kind=attempt.kind,
        outcome=outcome,
        previous=attempt.previous,
        request_id=attempt.request_id,
        description=description,
        write_id=gate.write_id,
        approvers=gate.approvers,
        override=gate.override,
    )
