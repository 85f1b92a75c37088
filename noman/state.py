"""Noman's state in the store, split by writer and lifetime, and its pure transitions.

Every value here is small, typed and decoded strictly (msgspec): a value that
does not decode is ``StateUnreadable``, never an empty default, so a frozen
service can never deploy because its state was damaged. The layout under
``consul.state_prefix`` (default ``noman/``):

    service/<name>/desired        the hook (one transaction with the tag key): desired tag,
                                  frozen, the last attempt, recent delivery ids   (bounded)
    service/<name>/rollout        the leader (and, for its first ``answer_within`` seconds,
                                  the instance that took the hook): where the rollout stands
    service/<name>/history/<seq>  created by the transaction that makes the change, its
                                  outcome filled in by the leader; the hook that appends
                                  entry ``seq`` deletes entry ``seq - history_size``
    pending/<name>/<seq>          set by a rolling deploy, deleted by the leader once that
                                  attempt ended or was superseded
    outbox/<name>/<seq>.<state>   a report, written with the transition that produces it,
                                  deleted by whoever delivered it
    poll/<name>                   the leader's registry poller: when it polled, what it saw
    service/<name>/promotion      a request to promote or abort the running attempt (the
                                  API, CLI or page), read by the leader (``noman.stages``)
    .leader                       the reconciler's session lock

No value is routinely rewritten by both a hook and the leader, and nothing a
hook reads or writes grows with history or with the number of services. The
functions below are the one owner of the deploy's state machine: state in,
state out, no I/O, used by the hook path (``deploy``) and the leader
(``reconcile``) alike.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec

from noman.errors import StateUnreadable
from noman.model import TERMINAL_STATES, Service
from noman.stages import AnalysisState, JobStep, ReleaseState

#: Delivery ids remembered per service to refuse replays of signed deliveries: at most
#: this many, and none older than ``KEEP_DELIVERIES_SECONDS``.
KEEP_DELIVERIES = 100
KEEP_DELIVERIES_SECONDS = 24 * 3600
#: The most history entries a migration carries over in its one transaction (Consul
#: allows 64 operations per transaction in older versions, 128 in newer).
MIGRATED_HISTORY = 50


class Attempt(msgspec.Struct, frozen=True, omit_defaults=True):
    """One deploy attempt as the hook recorded it: ``seq`` names it in history and reports."""

    seq: int
    tag: str
    kind: Literal["deploy", "rollback"]
    sender: str
    time: str
    at: float
    previous: str | None = None
    request_id: str | None = None
    force: bool = False
    # DockerHub's per-push callback (a token in its path): used by the final report only.
    callback_url: str | None = None


class Gate(msgspec.Struct, frozen=True, omit_defaults=True):
    """An accepted attempt whose tag key is not written yet (``noman.gates``).

    It waits for ``needed`` distinct operators to approve (``approvers`` so far) until
    ``expires_at``, then for a deploy window to open, unless an operator said deploy
    now (``override``). Its history entry is rewritten with each step, under the
    check-and-set of the desired state that holds it.
    """

    attempt: Attempt
    needed: int = 0
    approvers: tuple[str, ...] = ()
    expires_at: float | None = None
    override: str | None = None
    # The history entry's write id, kept when the entry is rewritten.
    write_id: str = ""

    @property
    def approved(self) -> bool:
        """True once enough distinct operators approved."""
        return len(self.approvers) >= self.needed


class Desired(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a service should run: written by hooks in one transaction with its tag key."""

    tag: str | None = None
    frozen: bool = False
    seq: int = 0
    # Names the last write: after a late answer, a re-read of history entry ``seq``
    # tells whether this write landed (nobody else writes that entry's ``write_id``).
    write_id: str = ""
    deliveries: dict[str, float] = {}
    attempt: Attempt | None = None
    # An attempt waiting for approvals or a deploy window; any other change supersedes it.
    gate: Gate | None = None


class RolloutState(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where the rollout of one attempt stands (the leader's record)."""

    seq: int
    tag: str
    state: str
    version: int | None = None
    deployment_id: str | None = None
    reason: str | None = None
    description: str | None = None
    attempts: int = 0
    placed: int | None = None
    healthy: int | None = None
    desired: int | None = None
    updated_at: str = ""
    force: bool = False
    # When (epoch seconds) the job version was registered: the watch deadline counts from it.
    registered_at: float | None = None
    # The permanent refusal already reported, so it is reported once per reason.
    notified: str | None = None
    # A staged rollout (noman.stages): where it stands, since when, each job, the release
    # phase, the canary analysis, who promoted or aborted it, and (while reverting) how
    # it is going to end.
    stage: str | None = None
    stage_since: float | None = None
    jobs: tuple[JobStep, ...] = ()
    release: ReleaseState | None = None
    analysis: AnalysisState | None = None
    promoted_by: str | None = None
    aborted_by: str | None = None
    ending: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the reconciler has nothing more to do for this attempt."""
        return self.state in TERMINAL_STATES

    def moved(self, state: str, now: str, **changes: Any) -> RolloutState:
        """A copy in ``state`` with ``changes``, stamped ``now``."""
        return msgspec.structs.replace(self, state=state, updated_at=now, **changes)

    def public(self) -> dict[str, Any]:
        """The fields ``status`` shows."""
        data = msgspec.to_builtins(self, builtin_types=None)
        for name in ("version", "deployment_id", "reason", "description"):
            data.setdefault(name, None)
        for name in ("placed", "healthy", "desired"):
            data.setdefault(name, None)
        data.setdefault("attempts", 0)
        data.setdefault("updated_at", "")
        for internal in ("force", "registered_at", "notified", "stage_since", "ending"):
            data.pop(internal, None)
        return dict(data)


class HistoryEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One deploy or rollback, with its final outcome once known."""

    seq: int
    tag: str
    time: str
    sender: str
    kind: Literal["deploy", "rollback"]
    outcome: str
    previous: str | None = None
    request_id: str | None = None
    description: str = ""
    write_id: str = ""
    callback_url: str | None = None
    # When the outcome was reached (ISO 8601); empty until then, and in older entries.
    ended: str = ""
    approvers: tuple[str, ...] = ()
    # The operator who let it land outside its deploy windows.
    override: str | None = None
    # Who promoted or aborted a staged rollout ("api", "cli", "ui"), and why it ended.
    promoted_by: str | None = None
    aborted_by: str | None = None
    reason: str | None = None

    def public(self) -> dict[str, Any]:
        """The fields ``status`` shows (never the callback's token)."""
        extra: dict[str, Any] = {}
        if self.approvers:
            extra["approvers"] = list(self.approvers)
        if self.override:
            extra["override"] = self.override
        shown = {
            "seq": self.seq,
            "tag": self.tag,
            "previous": self.previous,
            "time": self.time,
            "sender": self.sender,
            "request_id": self.request_id,
            "kind": self.kind,
            "outcome": self.outcome,
            "description": self.description,
            **extra,
        }
        for name in ("promoted_by", "aborted_by", "reason"):
            if getattr(self, name) is not None:
                shown[name] = getattr(self, name)
        return shown


class Report(msgspec.Struct, frozen=True, omit_defaults=True):
    """One outcome to tell the outside, waiting in the outbox until delivered.

    ``event_id`` names the deploy attempt and the state (``service:seq:state``): a
    re-send after a failover carries the same id, a new deploy of the same tag a new one.
    """

    event_id: str
    service: str
    key: str
    tag: str
    state: str
    success: bool
    description: str
    seq: int = 0
    previous: str | None = None
    deployment: dict[str, Any] | None = None
    callback_url: str | None = None
    # When it was written (epoch seconds): the leader delivers it only if its writer has
    # not within the courier's grace time.
    at: float = 0.0
    # When the change was asked for (ISO 8601, the history entry's time) and what kind
    # it is: a successful deploy's lead time (noman.dora).
    requested: str = ""
    kind: str = "deploy"
    # A stage of a rollout (noman.stages), not its outcome: sent to targets that want
    # "stage" reports, never to DockerHub's callback, not counted as a deploy.
    stage: bool = False


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind) for kind in (Desired, RolloutState, HistoryEntry, Report)
}
_ENCODER = msgspec.json.Encoder()
T = TypeVar("T")


def decode(kind: type[T], key: str, raw: str | None) -> T | None:
    """The value of ``key`` (None when missing); ``StateUnreadable`` when it does not decode."""
    if raw is None:
        return None
    decoder = _DECODERS.get(kind)
    if decoder is None:  # another record type (noman.stages.Gate): made once
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        value: T = decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StateUnreadable(key, str(exc).splitlines()[0][:160] or "not JSON") from None
    return value


def encode(value: msgspec.Struct) -> str:
    """The compact JSON text stored for ``value``."""
    return _ENCODER.encode(value).decode("utf-8")


@dataclass(frozen=True)
class Keys:
    """Where each piece of state lives under the prefix."""

    prefix: str

    def folder(self, service: str) -> str:
        """Every key of one service."""
        return f"{self.prefix}service/{service}/"

    def desired(self, service: str) -> str:
        """The hook-written desired state."""
        return f"{self.folder(service)}desired"

    def rollout(self, service: str) -> str:
        """The leader's rollout record."""
        return f"{self.folder(service)}rollout"

    def history_folder(self, service: str) -> str:
        """The service's history entries."""
        return f"{self.folder(service)}history/"

    def promotion_request(self, service: str) -> str:
        """Requests to promote or abort the service's running attempt (``noman.promotion``)."""
        return f"{self.folder(service)}promotion"

    def history(self, service: str, seq: int) -> str:
        """History entry ``seq`` (zero-padded, so keys sort by age)."""
        return f"{self.history_folder(service)}{seq:010d}"

    @property
    def pending_folder(self) -> str:
        """What the leader watches for rollouts to carry."""
        return f"{self.prefix}pending/"

    @property
    def pending_marker(self) -> str:
        """A key that keeps ``pending/`` from ever being empty.

        Consul answers a blocking read of an empty prefix with the index of the whole KV
        store, so every write anywhere would wake the leader; with one key under the
        prefix, the index is the prefix's own.
        """
        return f"{self.pending_folder}.watch"

    def pending(self, service: str, seq: int) -> str:
        """Exists while attempt ``seq`` of ``service`` has not ended (or been superseded)."""
        return f"{self.pending_folder}{service}/{seq:010d}"

    def parse_pending(self, key: str) -> tuple[str, int] | None:
        """(service, attempt seq) of a key under ``pending/`` (None for anything else)."""
        service, _, seq = key.removeprefix(self.pending_folder).rpartition("/")
        return (service, int(seq)) if service and seq.isdigit() else None

    def gate(self, service: str) -> str:
        """Exists while an attempt of ``service`` waits for approvals or a deploy window:
        the leader's timer for its expiry or its window (``noman.gates``)."""
        return f"{self.pending_folder}{service}/gate"

    def parse_gate(self, key: str) -> str | None:
        """The service of a gate timer key under ``pending/`` (None for anything else)."""
        service, _, name = key.removeprefix(self.pending_folder).rpartition("/")
        return (
            service if service and name == "gate" and key.startswith(self.pending_folder) else None
        )

    @property
    def outbox_folder(self) -> str:
        """What the courier watches for reports to deliver."""
        return f"{self.prefix}outbox/"

    def outbox(self, report: Report) -> str:
        """Where ``report`` waits until delivered."""
        return f"{self.outbox_folder}{report.service}/{report.seq:010d}.{report.state}"

    @property
    def poll_folder(self) -> str:
        """The leader's poll states."""
        return f"{self.prefix}poll/"

    def poll(self, service: str) -> str:
        """Where the leader keeps ``service``'s poll state (``noman.polling``)."""
        return f"{self.poll_folder}{service}"

    def legacy(self, service: str) -> str:
        """The one-record-per-service layout of Noman 0.x, read for migration."""
        return f"{self.prefix}{service}"

    @property
    def leader(self) -> str:
        """The reconciler's lock."""
        return f"{self.prefix}.leader"


# -- transitions ---------------------------------------------------------------------------


def iso_time(epoch: float) -> str:
    """``epoch`` as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_write_id() -> str:
    """A fresh id for one write."""
    return uuid.uuid4().hex


def make_report(
    service: Service,
    seq: int,
    tag: str,
    state: str,
    description: str,
    previous: str | None = None,
    deployment: dict[str, Any] | None = None,
    callback_url: str | None = None,
    at: float = 0.0,
    requested: str = "",
    kind: str = "deploy",
    stage: bool = False,
) -> Report:
    """The report of attempt ``seq`` reaching ``state`` (or a stage), written at ``at``."""
    return Report(
        event_id=f"{service.name}:{seq}:{state}",
        service=service.name,
        key=service.key,
        tag=tag,
        state=state,
        success=state == "successful",
        description=description,
        seq=seq,
        previous=previous,
        deployment=deployment,
        callback_url=callback_url,
        at=at,
        requested=requested,
        kind=kind,
        stage=stage,
    )


def recent_deliveries(
    deliveries: dict[str, float], delivery_id: str | None, now: float
) -> dict[str, float]:
    """``deliveries`` with ``delivery_id`` added, bounded in count and age."""
    kept = {k: t for k, t in deliveries.items() if now - t < KEEP_DELIVERIES_SECONDS}
    if delivery_id:
        kept[delivery_id] = now
    if len(kept) > KEEP_DELIVERIES:
        kept = dict(sorted(kept.items(), key=lambda item: item[1])[-KEEP_DELIVERIES:])
    return kept


@dataclass(frozen=True)
class DeployChange:
    """What one accepted deploy writes: the new desired state, its history entry, reports."""

    desired: Desired
    entry: HistoryEntry
    reports: tuple[Report, ...]
    rolling: bool


def deploy_change(
    service: Service,
    desired: Desired,
    attempt: Attempt,
    delivery_id: str | None,
    report_success: bool,
) -> DeployChange:
    """The state after ``attempt`` was accepted (restart: done; rolling: pending).

    Long only because the three values one accepted attempt writes (history entry, report,
    desired state) spell out every field.
    """
    rolling = service.strategy == "rolling"
    write_id = new_write_id()
    found = "found by polling, " if attempt.sender == "poll" else ""
    description = "" if rolling else f"{attempt.tag} {found}written to {service.key}"
    entry = HistoryEntry(
        seq=attempt.seq,
        tag=attempt.tag,
        time=attempt.time,
        sender=attempt.sender,
        kind=attempt.kind,
        outcome="pending" if rolling else "successful",
        previous=attempt.previous,
        request_id=attempt.request_id,
        description=description,
        write_id=write_id,
        callback_url=attempt.callback_url if rolling else None,
        ended="" if rolling else iso_time(attempt.at),
    )
    reports: tuple[Report, ...] = ()
    if not rolling and (report_success or attempt.callback_url):
        reports = (
            make_report(
                service,
                attempt.seq,
                attempt.tag,
                "successful",
                description,
                previous=attempt.previous,
                callback_url=attempt.callback_url,
                at=attempt.at,
                requested=attempt.time,
                kind=attempt.kind,
            ),
        )
    new = Desired(
        tag=attempt.tag,
        frozen=desired.frozen,
        seq=attempt.seq,
        write_id=write_id,
        deliveries=recent_deliveries(desired.deliveries, delivery_id, attempt.at),
        # A restart deploy is done once written: nobody needs its attempt any more.
        attempt=attempt if rolling else None,
    )
    return DeployChange(new, entry, reports, rolling)


def close_entry(
    entry: HistoryEntry, outcome: str, description: str, ended: str = "", **changes: Any
) -> HistoryEntry:
    """``entry`` with its final outcome, reached at ``ended`` (the callback is spent by then)."""
    return msgspec.structs.replace(
        entry,
        outcome=outcome,
        description=description,
        callback_url=None,
        ended=ended,
        **changes,
    )


def first_rollout(attempt: Attempt, now: str) -> RolloutState:
    """The rollout record of an attempt nobody has registered yet."""
    return RolloutState(
        seq=attempt.seq, tag=attempt.tag, state="pending", updated_at=now, force=attempt.force
    )


# -- the layout of Noman 0.x (one JSON record per service) ----------------------------------


@dataclass(frozen=True)
class Migration:
    """A 0.x record turned into today's values, to be written with the next change."""

    desired: Desired
    history: tuple[HistoryEntry, ...]
    rollout: RolloutState | None
    reports: tuple[Report, ...]


def migrate_legacy(service: Service, key: str, raw: str) -> Migration:
    """Convert the record Noman 0.x kept at ``<prefix><service>``; unreadable: an error."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise StateUnreadable(key, "not JSON") from None
    if not isinstance(data, dict):
        raise StateUnreadable(key, "not a JSON object")
    try:
        return _migration(service, data)
    except (TypeError, ValueError, KeyError, msgspec.ValidationError) as exc:
        raise StateUnreadable(key, f"not a Noman record: {exc}"[:160]) from None


def _migration(service: Service, data: dict[str, Any]) -> Migration:
    """The 0.x record ``data`` as today's desired state, history, rollout and reports."""
    old_history = [h for h in data.get("history") or [] if isinstance(h, dict)]
    seq = len(old_history)
    history = _migrated_history(old_history[:MIGRATED_HISTORY], seq)
    old = data.get("rollout")
    rollout = _migrated_rollout(old, history, seq) if isinstance(old, dict) else None
    reports = tuple(
        make_report(
            service,
            seq,
            str(r.get("tag")),
            str(r.get("state") or "successful"),
            str(r.get("description") or ""),
            previous=r.get("previous"),
            callback_url=r.get("callback_url"),
        )
        for r in data.get("reports") or []
        if isinstance(r, dict) and isinstance(r.get("tag"), str)
    )
    deliveries = data.get("deliveries")
    attempt = None
    if rollout is not None and not rollout.terminal and isinstance(old, dict):
        # A rollout in flight: the leader carries it on from the migrated attempt.
        attempt = _migrated_attempt(rollout, history, old.get("callback_url"))
    desired = Desired(
        tag=data["tag"] if isinstance(data.get("tag"), str) else None,
        frozen=data.get("frozen") is True,
        seq=seq,
        write_id=new_write_id(),
        deliveries={
            str(k): float(v)
            for k, v in (deliveries if isinstance(deliveries, dict) else {}).items()
            if isinstance(v, int | float)
        },
        attempt=attempt,
    )
    return Migration(desired, history, rollout, reports)


def _migrated_history(kept: list[dict[str, Any]], seq: int) -> tuple[HistoryEntry, ...]:
    """The newest 0.x history entries, numbered down from ``seq``."""
    return tuple(
        HistoryEntry(
            seq=seq - i,
            tag=str(h["tag"]),
            time=str(h.get("time") or ""),
            sender=str(h.get("sender") or "unknown"),
            kind="rollback" if h.get("kind") == "rollback" else "deploy",
            outcome=str(h.get("outcome") or "unknown"),
            previous=h.get("previous") if isinstance(h.get("previous"), str) else None,
            request_id=h.get("request_id") if isinstance(h.get("request_id"), str) else None,
            description=str(h.get("description") or ""),
        )
        for i, h in enumerate(kept)
    )


def _migrated_rollout(
    old: dict[str, Any], history: tuple[HistoryEntry, ...], seq: int
) -> RolloutState | None:
    """A 0.x rollout as a rollout record, numbered as its history entry; None without a tag."""
    if not isinstance(old.get("tag"), str):
        return None
    return RolloutState(
        seq=next((h.seq for h in history if h.tag == old["tag"]), seq),
        tag=old["tag"],
        state=str(old.get("state") or "pending"),
        version=old.get("version") if isinstance(old.get("version"), int) else None,
        deployment_id=old.get("deployment_id"),
        reason=old.get("reason"),
        description=old.get("description"),
        attempts=int(old.get("attempts") or 0),
        updated_at=str(old.get("updated_at") or ""),
        force=old.get("force") is True,
        registered_at=old.get("registered_at"),
    )


def _migrated_attempt(
    rollout: RolloutState, history: tuple[HistoryEntry, ...], callback_url: Any
) -> Attempt:
    """The attempt of a 0.x rollout still in flight, told by its history entry if kept."""
    origin = next((h for h in history if h.seq == rollout.seq), None)
    return Attempt(
        seq=rollout.seq,
        tag=rollout.tag,
        kind=origin.kind if origin else "deploy",
        sender=origin.sender if origin else "unknown",
        time=origin.time if origin else rollout.updated_at,
        at=0.0,
        previous=origin.previous if origin else None,
        force=rollout.force,
        callback_url=callback_url,
    )
