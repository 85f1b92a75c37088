"""The status page's operator parts: who is logged in, the approve / reject / deploy-now
buttons, the deploy windows and the DORA panel.

Registered on ``noman.ui.views.bp``. An operator logs in with their own token
(``[[operators]]``); the session keeps only a fingerprint of its digest, from
which the operator is found again on each request, so removing an operator
ends their sessions. The admin token (``[ui]``) keeps its rollback and freeze,
but approvals go by name: its buttons ask for an operator's login. Actions call
``Gates`` exactly as the operator API does, recorded with ``sender="ui"``.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import current_app, flash, redirect, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from noman import dora, errors
from noman.errors import NomanError
from noman.operators import Operator
from noman.ui import charts
from noman.ui.session import csrf_ok, fingerprint
from noman.ui.views import _render_service, _service, bp, login_required, to_login
from noman.wiring import components

log = logging.getLogger("noman.ui")
SENDER = "ui"
GATE_ACTIONS = ("approve", "reject", "deploy-now")
#: Seconds the DORA panel's numbers are kept (each page view would read every history).
DORA_TTL = 30.0


def current_operator() -> Operator | None:
    """The operator whose token this session logged in with (None: the admin, or nobody)."""
    label = session.get("token")
    if not isinstance(label, str):
        return None
    found = None
    for operator in components(current_app).settings.operators:
        for digest in operator.token_hashes:
            if hmac.compare_digest(label, fingerprint(digest)) and found is None:
                found = operator
    return found


@bp.context_processor
def _operator_globals() -> dict[str, Any]:
    return {"operator": current_operator, "dora_panel": dora_panel}


@bp.post("/services/<name>/gate/<action>")
@login_required(otherwise=to_login)
def gate_action(name: str, action: str) -> BaseResponse | tuple[str, int]:
    """Approve, reject or deploy now what waits, as the logged-in operator."""
    if not csrf_ok():
        raise errors.CsrfFailed()
    service = _service(name)
    if action not in GATE_ACTIONS:
        raise errors.NotFound()
    operator = current_operator()
    if operator is None:
        raise errors.Forbidden("Approvals go by name: log in with your operator token.")
    gates = components(current_app).gates
    tag = request.form.get("tag") or None
    fields = {"service": service.name, "action": action, "operator": operator.name}
    try:
        if action == "approve":
            done = gates.approve(service, operator.name, tag, sender=SENDER)
        elif action == "reject":
            reason = (request.form.get("reason") or "").strip()[:200] or None
            done = gates.reject(service, operator.name, tag, reason, sender=SENDER)
        else:
            done = gates.deploy_now(service, operator.name, tag, sender=SENDER)
    except NomanError as exc:
        log.warning("ui %s refused", action, extra={"fields": {**fields, "error": exc.code}})
        return _render_service(service, error=exc), exc.status
    log.info("ui %s", action, extra={"fields": fields})
    flash(_said(action, done.body))
    return redirect(url_for("ui.service_page", name=service.name), 303)


def _said(action: str, body: dict[str, Any]) -> str:
    tag = body.get("tag")
    rollout = body.get("rollout") or {}
    state = rollout.get("state")
    if action == "reject":
        return f"Rejected {tag}."
    if state == "awaiting_approval":
        approvals = rollout.get("approvals") or {}
        by = len(approvals.get("by") or [])
        return f"Approved {tag}: {by} of {approvals.get('needed')} approvals."
    if state == "held":
        return f"{tag} is approved and held until {rollout.get('until') or 'a window opens'}."
    return f"{tag} is being deployed."


def dora_panel(service: str | None = None) -> dict[str, Any]:
    """What the DORA panel shows over the default period: the keys and both charts
    (``service``: one, else all)."""
    parts = components(current_app)
    cache: dict[str, Any] = current_app.extensions.setdefault("noman.ui.dora", {})
    found = cache.get("measured")
    if found is None or time.monotonic() - cache.get("at", 0.0) > DORA_TTL:
        try:
            histories = dora.collect(parts.deployer, list(parts.settings.services))
        except NomanError as exc:
            # An unreachable or damaged store must not hide the rest of the page.
            return {"days": dora.DEFAULT_DAYS, "error": exc.code}
        found = dora.measure(
            histories,
            now=parts.gates.clock(),
            days=dora.DEFAULT_DAYS,
            history_size=parts.settings.rollout.history_size,
        )
        cache.update(measured=found, at=time.monotonic())
    data = found.as_dict()
    keys = data["services"].get(service) if service else data["all"]
    prefix = f"dora-{service}" if service else "dora-all"
    return {
        "days": found.days,
        "summary": keys,
        "services": data["services"] if service is None else {},
        "partial": service in found.partial if service else bool(found.partial),
        "daily": charts.deploys_per_day(f"{prefix}-daily", found.daily(service)),
        "lead": charts.lead_times(
            f"{prefix}-lead", found.lead_points(service), found.since, found.until
        ),
        "human": dora.human,
    }
