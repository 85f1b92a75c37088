"""The status page's views: login, overview, service page, the confirmed actions.

Every action calls the Deployer exactly as the HTTP API does (same records,
reports and refusals), with ``sender="ui"``. Pages are HTML; refusals of the
security kind (no CSRF token, unknown service) keep the JSON error shape.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from noman import errors, promotion
from noman.config import Settings
from noman.deploy import Deployer
from noman.errors import ConfigError, NomanError
from noman.model import Service
from noman.ui import present
from noman.ui.session import csrf_ok, csrf_token, log_in, logged_in, token_matches
from noman.wiring import components

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
)
log = logging.getLogger("noman.ui")
SENDER = "ui"
ACTIONS = {
    "rollback": "Roll back",
    "freeze": "Freeze",
    "unfreeze": "Unfreeze",
    "promote": "Promote",
    "abort": "Abort",
}
# The page polls this often while a rollout runs, and this often otherwise.
POLL_ACTIVE_MS = 4000
POLL_IDLE_MS = 20000

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")

_CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.after_request
def _protect(response: Response) -> Response:
    # Pages and polls hold live state and sit behind a login: never cached,
    # never framed, no external anything.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token}


def login_required(otherwise: Callable[[], A]) -> Callable[[Callable[P, R]], Callable[P, R | A]]:
    """Serve the view to a logged-in session only; anyone else gets ``otherwise()``."""

    def decorate(view: Callable[P, R]) -> Callable[P, R | A]:
        @functools.wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | A:
            if not _authenticated():
                return otherwise()
            return view(*args, **kwargs)

        return guarded

    return decorate


def to_login() -> BaseResponse:
    """A page's answer to a visitor not logged in: to the login form (303)."""
    return redirect(url_for("ui.index"), 303)


def _login_page(message: str | None = None) -> str:
    return render_template("login.html", message=message)


def _log_in_first() -> NoReturn:
    raise errors.Unauthorized("Log in at /ui first.")


@bp.get("")
@login_required(otherwise=_login_page)
def index() -> BaseResponse | str:
    """The overview when logged in, else the login form."""
    rows = _overview_rows()
    return render_template(
        "overview.html",
        rows=rows,
        active=any(row["active"] for row in rows),
        poll=_poll_settings(),
    )


@bp.post("/login")
def login() -> tuple[str, int, dict[str, str]] | BaseResponse:
    """Check the admin token; start a session or count a failure."""
    if not csrf_ok():
        raise errors.CsrfFailed()
    address = request.remote_addr or "unknown"
    limiter = components(current_app).limiter
    try:
        if limiter is not None:
            limiter.refuse_if_over(address)
    except errors.TooManyFailures as exc:
        log.warning("ui login refused", extra={"fields": {"address": address}})
        return _login_page(exc.message), exc.status, {"Retry-After": str(exc.retry_after)}
    digest = token_matches(request.form.get("token", ""), _login_hashes())
    if digest is None:
        if limiter is not None:
            limiter.record_failure(address)
        log.warning("ui login failed", extra={"fields": {"address": address}})
        return _login_page("Wrong token."), 401, {}
    log_in(digest)
    log.info("ui login", extra={"fields": {"address": address}})
    return redirect(url_for("ui.index"), 303)


@bp.post("/logout")
def logout() -> BaseResponse:
    """End the session (its cookie is deleted)."""
    if not csrf_ok():
        raise errors.CsrfFailed()
    session.clear()
    log.info("ui logout", extra={"fields": {"address": request.remote_addr}})
    return redirect(url_for("ui.index"), 303)


@bp.get("/api/overview")
@login_required(otherwise=_log_in_first)
def overview_json() -> Response:
    """The overview rows as JSON: what the page polls while a rollout runs."""
    rows = _overview_rows()
    return jsonify({"active": any(row["active"] for row in rows), "services": rows})


@bp.get("/services/<name>")
@login_required(otherwise=to_login)
def service_page(name: str) -> BaseResponse | str:
    """One service: its state, history timeline and actions."""
    return _render_service(_service(name))


@bp.get("/services/<name>/confirm")
@login_required(otherwise=to_login)
def confirm(name: str) -> BaseResponse | str:
    """The confirmation step of an action (a GET that changes nothing)."""
    service = _service(name)
    action = request.args.get("action", "")
    if action not in ACTIONS:
        raise errors.NotFound()
    status = _operations().status(service)
    tag = request.args.get("tag") or None
    candidates = present.rollback_candidates(status)
    if tag is not None and tag not in candidates:
        raise errors.NotFound("That tag is not in this service's history.")
    return render_template(
        "confirm.html",
        service=service,
        status=status,
        action=action,
        label=ACTIONS[action],
        tag=tag,
        # What the Deployer is expected to pick; it decides, this only informs.
        default_tag=candidates[0] if candidates else None,
    )


@bp.post("/services/<name>/<action>")
@login_required(otherwise=to_login)
def act(name: str, action: str) -> BaseResponse | tuple[str, int]:
    """Run a confirmed action through the Deployer, as the HTTP API would."""
    if not csrf_ok():
        raise errors.CsrfFailed()
    service = _service(name)
    if action not in ACTIONS:
        raise errors.NotFound()
    operations = _operations()
    fields: dict[str, Any] = {"service": service.name, "action": action, "sender": SENDER}
    try:
        if action == "rollback":
            tag = request.form.get("tag") or None
            fields["requested_tag"] = tag
            outcome = operations.rollback(service, tag, sender=SENDER, request_id=uuid.uuid4().hex)
            message = f"Rolling back {service.name} to {outcome.tag}."
        elif action in ("promote", "abort"):
            gate: promotion.Action = "promote" if action == "promote" else "abort"
            asked = promotion.request(
                operations, service, gate, by=SENDER, request_id=uuid.uuid4().hex
            )
            message = f"{ACTIONS[action]} of {service.name} {asked['tag']} requested."
        else:
            operations.set_frozen(service, action == "freeze", sender=SENDER)
            message = f"{service.name} is {'frozen' if action == 'freeze' else 'unfrozen'}."
    except NomanError as exc:
        log.warning("ui %s refused", action, extra={"fields": {**fields, "error": exc.code}})
        return _render_service(service, error=exc), exc.status
    log.info("ui %s", action, extra={"fields": fields})
    flash(message)
    return redirect(url_for("ui.service_page", name=service.name), 303)


def _render_service(service: Service, error: NomanError | None = None) -> str:
    status = _operations().status(service)
    now = datetime.now(UTC)
    candidates = present.rollback_candidates(status)
    return render_template(
        "service.html",
        service=service,
        status=status,
        row=present.overview_row(service, status, now),
        history=present.history_rows(status, now),
        can_roll_back=bool(candidates),
        error=error,
        active=present.is_active(status),
        poll=_poll_settings(),
        reload_when_done=True,
        can_promote=(status.get("rollout") or {}).get("stage") == "awaiting_promotion",
        can_abort=present.is_active(status) and service.strategy == "rolling",
    )


def _overview_rows() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    operations = _operations()
    rows = []
    for service in _settings().services:
        try:
            status = operations.status(service)
        except NomanError as exc:
            # One unreachable service must not hide the others.
            rows.append(present.overview_row(service, None, now, error=exc.code))
            continue
        rows.append(present.overview_row(service, status, now))
    return rows


def _poll_settings() -> dict[str, Any]:
    return {"url": url_for("ui.overview_json"), "active": POLL_ACTIVE_MS, "idle": POLL_IDLE_MS}


def _authenticated() -> bool:
    return logged_in(_login_hashes(), _settings().ui.session_hours)


def _login_hashes() -> tuple[bytes, ...]:
    """Every token digest that may log in: the admin's, and each operator's (noman.ui.operate)."""
    settings = _settings()
    operators = tuple(d for operator in settings.operators for d in operator.token_hashes)
    return settings.ui.token_hashes + operators


def _service(name: str) -> Service:
    try:
        return _settings().service(name)
    except ConfigError:
        raise errors.NotFound() from None


def _settings() -> Settings:
    return components(current_app).settings


def _operations() -> Deployer:
    return components(current_app).deployer
