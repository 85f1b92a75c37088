"""Requests to promote or abort a rollout: from the API, the CLI and the status page.

A request never writes the rollout record (the leader is its one writer). It
writes the service's gate (``service/<name>/promotion``: the attempt, the action,
who asked, when) and touches ``pending/<name>/<seq>`` in the same transaction,
with check-and-set on both: the touch wakes the leader's blocking read, and it
fails when the attempt ended meanwhile. The leader acts on the gate (promotes,
or fails the deployment and puts the jobs back) and records who asked in the
rollout and the history (``noman.staged``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from noman.deploy import Deployer, iso
from noman.errors import ConsulUnavailable, NothingToAbort, NothingToPromote, WriteConflict
from noman.model import Service
from noman.stages import Gate
from noman.state import decode, encode
from noman.stores import OutcomeUnknown, Store, Write

log = logging.getLogger(__name__)

Action = Literal["promote", "abort"]


def request(
    deployer: Deployer,
    service: Service,
    action: Action,
    by: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Ask the leader to ``action`` the service's running attempt; what was asked.

    ``promote`` needs a rollout waiting in ``awaiting_promotion``
    (``NothingToPromote``); ``abort`` any rollout in progress (``NothingToAbort``).

    Long because the check-and-set loop keeps each refusal (and why) beside the transaction
    it guards, on the same view.
    """
    refused = NothingToPromote() if action == "promote" else NothingToAbort()
    if service.strategy != "rolling":
        raise type(refused)(f"Service {service.name!r} has no rollouts (strategy restart).")
    keys, store = deployer.keys, deployer.store
    for _ in range(deployer.cas_retries):
        view = deployer.view(service)
        attempt, rollout = view.desired.attempt, view.rollout
        if attempt is None:
            raise refused
        begun = rollout is not None and rollout.seq == attempt.seq
        if begun and rollout is not None and rollout.terminal:
            raise type(refused)(f"The rollout of {attempt.tag} ended: {rollout.state}.")
        stage = rollout.stage if begun and rollout is not None else None
        if action == "promote" and stage != "awaiting_promotion":
            where = stage or (rollout.state if begun and rollout is not None else "pending")
            raise NothingToPromote(
                f"The rollout of {attempt.tag} is in {where}, not awaiting_promotion."
            )
        pending_key = keys.pending(service.name, attempt.seq)
        gate_key = keys.promotion_request(service.name)
        pending, found = store.read_many([pending_key, gate_key])
        if pending.value is None:
            raise type(refused)(f"The rollout of {attempt.tag} ended.")
        asked = decode(Gate, gate_key, found.value)
        if asked is not None and asked.seq == attempt.seq and asked.action == "abort":
            if action == "promote":
                raise NothingToPromote(f"The rollout of {attempt.tag} is being aborted.")
            return _answer(service, attempt.tag, asked, stage)  # asked already
        now = deployer.clock()
        gate = Gate(attempt.seq, action, by, iso(now), now, request_id)
        ops = [
            Write(gate_key, encode(gate), found.modify_index),
            Write(pending_key, "gate", pending.modify_index),
        ]
        if _transact(store, ops, gate_key, gate):
            log.info(
                "%s requested",
                action,
                extra={"fields": {"service": service.name, "tag": attempt.tag, "by": by}},
            )
            return _answer(service, attempt.tag, gate, stage)
    raise WriteConflict()


def _transact(store: Store, ops: list[Write], gate_key: str, gate: Gate) -> bool:
    """Write the request; False when a check-and-set lost. A write whose answer timed out
    counts when a re-read finds it; otherwise Consul is unavailable."""
    try:
        return store.transact(ops) is not None
    except OutcomeUnknown:
        again = decode(Gate, gate_key, store.read(gate_key).value)
        if again != gate:
            raise ConsulUnavailable(
                "Consul did not answer in time and a re-read shows nothing was written. "
                "Retry later."
            ) from None
        return True


def _answer(service: Service, tag: str, gate: Gate, stage: str | None) -> dict[str, Any]:
    return {
        "service": service.name,
        "tag": tag,
        "seq": gate.seq,
        "action": gate.action,
        "requested_by": gate.by,
        "stage": stage,
        "message": f"{gate.action} of {tag} requested; the leader carries it out.",
    }
