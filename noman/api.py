"""The operator API under ``/api``: approvals, rejections, deploy-now, the DORA report.

Every route needs a named operator's token (``[[operators]]``) as
``Authorization: Bearer <token>``, checked before anything else is read. A
service's hook secret or the status page's admin token answers ``403
forbidden`` (the CI that pushes a release never approves it), any other token
``401 unauthorized`` (counted by the per-address failure limit); neither
writes anything. Without ``[[operators]]`` the blueprint is not registered, so
every ``/api`` path is the usual JSON 404. Thin views: authenticate -> look up
-> ``Gates`` or ``dora`` -> answer.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from noman import auth, dora, errors
from noman.config import hash_secret
from noman.errors import ConfigError
from noman.model import Service
from noman.operators import Operator, find_operator
from noman.senders import parse_json
from noman.web import _read_json_body
from noman.wiring import components

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("noman.api")
SENDER = "api"
OPERATOR_HELP = "Send an operator's token as 'Authorization: Bearer <token>'."


@bp.before_request
def _authenticate() -> None:
    g.operator = _operator()


@bp.post("/services/<name>/approve", provide_automatic_options=False)
def approve(name: str) -> tuple[Response, int]:
    """Approve what waits (body ``{"tag": ...}`` pins the proposal you reviewed)."""
    service = _service(name)
    body = _fields({"tag"})
    action = components(current_app).gates.approve(service, _who(), body.get("tag"), sender=SENDER)
    _audit("approve", service, action.body)
    return jsonify(action.body), action.status


@bp.post("/services/<name>/reject", provide_automatic_options=False)
def reject(name: str) -> tuple[Response, int]:
    """Reject what waits (``{"tag", "reason"}``, both optional): its tag is never written."""
    service = _service(name)
    body = _fields({"tag", "reason"})
    action = components(current_app).gates.reject(
        service, _who(), body.get("tag"), body.get("reason"), sender=SENDER
    )
    _audit("reject", service, action.body)
    return jsonify(action.body), action.status


@bp.post("/services/<name>/deploy-now", provide_automatic_options=False)
def deploy_now(name: str) -> tuple[Response, int]:
    """Let what waits land outside its deploy windows (approvals still count)."""
    service = _service(name)
    body = _fields({"tag"})
    action = components(current_app).gates.deploy_now(
        service, _who(), body.get("tag"), sender=SENDER
    )
    _audit("deploy-now", service, action.body)
    return jsonify(action.body), action.status


@bp.get("/metrics/dora", provide_automatic_options=False)
def dora_report() -> Response:
    """The four keys per service and for all (``?service=`` one, ``?days=`` the period)."""
    parts = components(current_app)
    services = list(parts.settings.services)
    name = request.args.get("service")
    if name:
        services = [_service(name)]
    days = _days(request.args.get("days"))
    measured = dora.measure(
        dora.collect(parts.deployer, services),
        now=parts.gates.clock(),
        days=days,
        history_size=parts.settings.rollout.history_size,
    )
    return jsonify(measured.as_dict())


def _days(raw: str | None) -> int:
    if raw is None or raw == "":
        return dora.DEFAULT_DAYS
    if not raw.isdigit() or not 1 <= int(raw) <= dora.MAX_DAYS:
        raise errors.BadRequest(f"days must be a whole number from 1 to {dora.MAX_DAYS}.")
    return int(raw)


def _operator() -> Operator:
    """The operator whose token came with the request; 401/403 otherwise."""
    parts = components(current_app)
    settings, limiter = parts.settings, parts.limiter
    address = request.remote_addr or "unknown"
    if limiter is not None:
        limiter.refuse_if_over(address)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.Unauthorized(OPERATOR_HELP)
    operator = find_operator(settings.operators, token)
    if operator is not None:
        return operator
    hook = auth.find_service(settings.services, token)
    admin = any(auth.secrets_match(hash_secret(token), d) for d in settings.ui.token_hashes)
    if hook is not None or admin:
        log.warning(
            "operator endpoint refused a %s",
            "hook secret" if hook else "admin token",
            extra={"fields": {"address": address, "service": hook.name if hook else None}},
        )
        raise errors.Forbidden()
    if limiter is not None:
        limiter.record_failure(address)
    raise errors.Unauthorized(OPERATOR_HELP)


def _who() -> str:
    operator: Operator = g.operator
    return operator.name


def _service(name: str) -> Service:
    try:
        return components(current_app).settings.service(name)
    except ConfigError:
        raise errors.NotFound() from None


def _fields(allowed: set[str]) -> dict[str, str]:
    """The optional JSON body: only ``allowed`` fields, each a short string."""
    if not (request.content_length or request.headers.get("Transfer-Encoding")):
        return {}
    data = parse_json(_read_json_body(components(current_app).settings.max_body_bytes))
    unknown = sorted(set(data) - allowed)
    if unknown:
        names = ", ".join(f'"{n}"' for n in sorted(allowed))
        raise errors.InvalidPayload(f"Unknown field {unknown[0][:40]!r}; only {names}.")
    found: dict[str, str] = {}
    for name in allowed & set(data):
        value = data[name]
        if not isinstance(value, str) or not value or len(value) > 200:
            raise errors.InvalidPayload(f'"{name}" must be a string of 1 to 200 characters.')
        found[name] = value
    return found


def _audit(action: str, service: Service, body: dict[str, Any]) -> None:
    rollout = body.get("rollout") or {}
    log.info(
        "operator %s",
        action,
        extra={
            "fields": {
                "service": service.name,
                "operator": _who(),
                "tag": body.get("tag"),
                "state": rollout.get("state") if isinstance(rollout, dict) else None,
            }
        },
    )
