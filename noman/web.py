"""The HTTP layer: thin views over the deploy use case, and the one error converter.

A hook: look up the service by secret -> read and parse the body -> deploy
(one Consul transaction) -> answer 200, 202 (rollout pending, or an ignored
registry event) or an error. Each of ``status`` (alias ``deployment``),
``rollback``, ``freeze``, ``unfreeze``, ``promote`` and ``abort`` (202: the
leader carries them out, ``noman.promotion``) has the same two forms as the hook:
``/hooks/<secret>/<action>`` and ``/hooks/<action>`` with a bearer secret.
Beside them: ``/healthz``, ``/readyz``, ``/metrics``; the status page is
``noman.ui``. Every failure, Flask's own 404/405 included, leaves as the JSON
error shape.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import msgspec
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug import exceptions as werkzeug_errors
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from noman import auth, errors, logs, metrics, promotion, routes
from noman.errors import NomanError
from noman.model import Service
from noman.release import Ignored, Release
from noman.senders import Headers, parse_json, read_release
from noman.senders.common import RETRYING_SENDERS
from noman.wiring import Components, components

#: A view's answer: body and status, and headers when there are any.
Answer = Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]

bp = Blueprint("noman", __name__)

_HTTP_ERRORS: dict[int, type[NomanError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    408: errors.RequestTimeout,
    415: errors.UnsupportedMediaType,
}


# Each route has two forms: the secret in the path, or in ``Authorization: Bearer``
# (out of access logs) on the path without it. No automatic OPTIONS answers: hook
# routes take their one method and nothing else.
@bp.post("/hooks/<secret>", provide_automatic_options=False)
@bp.post("/hooks", provide_automatic_options=False)
def hook(secret: str | None = None) -> Answer:
    """Deploy the pushed tag to the service this secret belongs to."""
    # The bearer header is read inside, so that a missing one gets its hook line too.
    return _handle_hook(secret)


@bp.get("/hooks/<secret>/status", provide_automatic_options=False)
@bp.get("/hooks/<secret>/deployment", provide_automatic_options=False)
@bp.get("/hooks/status", provide_automatic_options=False)
def status(secret: str | None = None) -> Response:
    """Desired and running tag, frozen flag, rollout and history (``/deployment``: alias)."""
    parts = components(current_app)
    return jsonify(parts.deployer.status(_service_for(_secret(secret), parts)))


@bp.post("/hooks/<secret>/rollback", provide_automatic_options=False)
@bp.post("/hooks/rollback", provide_automatic_options=False)
def rollback(secret: str | None = None) -> tuple[Response, int]:
    """Deploy an earlier tag: the body's ``tag``, else the last good one before the current."""
    return _rollback(_secret(secret))


@bp.post("/hooks/<secret>/freeze", provide_automatic_options=False)
@bp.post("/hooks/freeze", provide_automatic_options=False)
def freeze(secret: str | None = None) -> Response:
    """Refuse deploys of this service (423) until it is unfrozen; rollbacks still work."""
    return _set_frozen(_secret(secret), True)


@bp.post("/hooks/<secret>/unfreeze", provide_automatic_options=False)
@bp.post("/hooks/unfreeze", provide_automatic_options=False)
def unfreeze(secret: str | None = None) -> Response:
    """Accept deploys again."""
    return _set_frozen(_secret(secret), False)


@bp.post("/hooks/<secret>/promote", provide_automatic_options=False)
@bp.post("/hooks/promote", provide_automatic_options=False)
def promote(secret: str | None = None) -> tuple[Response, int]:
    """Promote the canaries of the rollout waiting in ``awaiting_promotion``."""
    return _gate(_secret(secret), "promote")


@bp.post("/hooks/<secret>/abort", provide_automatic_options=False)
@bp.post("/hooks/abort", provide_automatic_options=False)
def abort(secret: str | None = None) -> tuple[Response, int]:
    """Fail the rollout in progress, at any stage: the jobs go back, the key too."""
    return _gate(_secret(secret), "abort")


def _gate(secret: str, action: promotion.Action) -> tuple[Response, int]:
    parts = components(current_app)
    service = _service_for(secret, parts)
    deployer = parts.deployer
    answer = promotion.request(deployer, service, action, by="api", request_id=_request_id())
    return jsonify(answer), 202


def _rollback(secret: str) -> tuple[Response, int]:
    parts = components(current_app)
    service = _service_for(secret, parts)
    tag = None
    if request.content_length or request.headers.get("Transfer-Encoding"):
        data = parse_json(_read_json_body(parts.settings.max_body_bytes))
        unknown = sorted(set(data) - {"tag"})
        if unknown:
            raise errors.InvalidPayload(f'Unknown field {unknown[0][:40]!r}; only "tag".')
        tag = data.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise errors.InvalidPayload('"tag" must be a string.')
    outcome = parts.deployer.rollback(service, tag, sender="api", request_id=_request_id())
    logs.HOOK_LOG.info(
        "rollback",
        extra={"fields": {"service": service.name, "tag": outcome.tag, "outcome": "rollback"}},
    )
    return jsonify(outcome.as_dict()), outcome.status


def _set_frozen(secret: str, frozen: bool) -> Response:
    parts = components(current_app)
    service = _service_for(secret, parts)
    return jsonify(parts.deployer.set_frozen(service, frozen, sender="api"))


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(headers: Headers | None = None) -> str | None:
    """The caller's ``X-Request-Id`` when it is a plain token (it lands in history).

    ``headers``: the hook's lower-case headers, when it has them already.
    """
    value = (request.headers if headers is None else headers).get("x-request-id", "")
    return value if _REQUEST_ID.fullmatch(value) else None


def lowercase_headers(environ: dict[str, Any]) -> Headers:
    """The request's headers, lower-case names, from its WSGI environ.

    What werkzeug's ``EnvironHeaders`` iterates (PEP 3333: ``HTTP_*`` plus the
    two CGI content variables), named as the sender table asks for them, in
    half the time of lower-casing werkzeug's title-cased names (once per hook).
    """
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key[:5] == "HTTP_" and key not in _SHADOWED
    }
    for key, name in _CGI_HEADERS.items():
        value = environ.get(key)
        if value:
            headers[name] = value
    return headers


# Content-Type and Content-Length are CGI variables in the environ, not HTTP_ ones; an
# HTTP_ form of either (some servers set it too) is ignored, as werkzeug does.
_CGI_HEADERS = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
_SHADOWED = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus metrics of every worker (unless they have a listener of their own)."""
    if components(current_app).settings.metrics_bind:
        raise errors.NotFound()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready: Consul has a leader and lets Noman's token read every service's key."""
    parts = components(current_app)
    try:
        store = parts.store.check_ready()
        for service in parts.settings.services:
            parts.store.read(service.key)
    except NomanError as exc:
        body = {"status": "unavailable", "error": exc.code, "message": exc.message}
        return jsonify(body), 503
    return jsonify({"status": "ready", "store": store}), 200


def _handle_hook(secret: str | None) -> Answer:
    started = time.monotonic()
    fields: dict[str, Any] = {"service": None, "tag": None}
    service: Service | None = None
    release: Release | None = None
    parts = components(current_app)
    try:
        service = _service_for(_secret(secret), parts)
        fields["service"] = service.name
        headers = lowercase_headers(request.environ)
        settings = parts.settings
        body = _read_json_body(settings.max_body_bytes)
        parsed = read_release(service, headers, body, settings.proofs_for(service))
        if parsed is None:  # GitHub's ping when the webhook is created
            _log_hook(fields, "ping", 200, started)
            return _json_answer({"service": service.name, "event": "ping"}, 200)
        if isinstance(parsed, Ignored):
            return _answer_ignored(service, parsed, fields, started)
        release = parsed
        fields["tag"] = release.tag[:140]
        fields["sender"] = release.sender
        outcome = parts.deployer.deploy(service, release, _request_id(headers))
    # The caught error is handed to a helper, never kept in a local here: its traceback
    # holds this frame, and a local holding the error would make a reference cycle that
    # keeps the whole request alive until the garbage collector runs (six times as many
    # collections under rejections, measured).
    except NomanError as exc:
        return _refused(exc, parts, service, release, fields, started)
    except Exception:
        # Unexpected errors too get their hook line, metric and report; the
        # handler below logs the traceback and answers.
        _refused(errors.NomanError(), parts, service, release, fields, started)
        raise
    result = "deployed" if outcome.changed else "unchanged"
    if outcome.status == 202:
        result = "pending"
    if outcome.waiting is not None:  # approvals or a deploy window (noman.gates)
        result = str(outcome.waiting["state"])
    _log_hook(fields, result, outcome.status, started)
    if not outcome.changed and outcome.waiting is None:
        parts.reporter.unchanged(service, release, outcome)
    return _json_answer(outcome.as_dict(), outcome.status)


def _refused(
    error: NomanError,
    parts: Components,
    service: Service | None,
    release: Release | None,
    fields: dict[str, Any],
    started: float,
) -> Response:
    """The answer to a hook refused with ``error``, after its line, metric and report."""
    if (
        isinstance(error, errors.StaleTag)
        and service is not None
        and release is not None
        and release.sender in RETRYING_SENDERS
    ):
        # Refused, this event would be retried for ever, holding back the
        # registry's later events: an older tag is acknowledged instead.
        stale = Ignored("stale_tag", error.message, release.sender)
        return _answer_ignored(service, stale, fields, started)
    _log_hook(fields, error.code, error.status, started, error.message)
    if service is not None:
        parts.reporter.failed(service, release, error)
    return _error_answer(error)


def _answer_ignored(
    service: Service, ignored: Ignored, fields: dict[str, Any], started: float
) -> Response:
    """202: a registry event with nothing to deploy; no write, no report, no callback."""
    fields["sender"] = ignored.sender
    fields["ignored"] = ignored.reason
    _log_hook(fields, "ignored", 202, started, ignored.message)
    return _json_answer(ignored.as_dict(service.name), 202)


def _log_hook(
    fields: dict[str, Any], outcome: str, status: int, started: float, reason: str = ""
) -> None:
    elapsed = time.monotonic() - started
    metrics.hook_requests(fields["service"] or "", outcome).inc()
    if fields["service"] is not None:
        # Timed only once a secret matched: a flood of wrong secrets would bury the
        # latency of real hooks, and its two writes to the metric files are a fifth of
        # such a refusal's own work.
        metrics.HOOK_DURATION.observe(elapsed)
    duration_ms = round(elapsed * 1000, 1)
    line = {**fields, "outcome": outcome, "status": status, "duration_ms": duration_ms}
    if reason:
        line["reason"] = reason
    if logs.defer_hook_line(request.environ, line):
        return  # written once, as this request's access line (noman.logs.GunicornLogger)
    logs.write_hook_line(line)


def _service_for(secret: str, parts: Components) -> Service:
    settings, limiter = parts.settings, parts.limiter
    address = request.remote_addr or "unknown"
    if limiter is not None:
        limiter.refuse_if_over(address)
    service = auth.find_service(settings.services, secret)
    if service is None:
        if limiter is not None:
            limiter.record_failure(address)
        raise errors.NotFound()
    return service


def _secret(in_path: str | None) -> str:
    """The secret of the path form, else the one in ``Authorization: Bearer``."""
    return in_path if in_path is not None else _bearer_secret()


def _bearer_secret() -> str:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise errors.Unauthorized()
    return credentials.strip()


def _read_json_body(limit: int) -> bytes:
    """The body, if JSON and within the cap; chunked bodies are counted, not trusted.

    Read with werkzeug's WSGI helpers on the environ rather than the request's
    properties: the same parsing, a third of the time (each property looks the
    request up again and re-reads its headers; this runs once per hook).
    """
    environ = request.environ
    mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise errors.UnsupportedMediaType()
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise errors.PayloadTooLarge(f"The body is over {limit} bytes.")
    try:
        body = get_input_stream(environ).read(limit + 1)
    except TimeoutError:  # noman.server.worker's read deadline: a client too slow to send
        raise errors.RequestTimeout() from None
    except Exception:
        # Broken chunked encoding, or the client went away mid-body (the
        # server's own exception types; their texts quote the request).
        environ[routes.CLOSE_CONNECTION] = True
        raise errors.BadRequest("The body is malformed or cut off.") from None
    if len(body) > limit:
        raise errors.PayloadTooLarge(f"The body is over {limit} bytes.")
    if length is not None and len(body) < length:
        # A client that half-closes early must not get a truncated body deployed.
        environ[routes.CLOSE_CONNECTION] = True
        raise errors.BadRequest("The body is shorter than its Content-Length.")
    return body


def register_error_handlers(app: Flask) -> None:
    """Route every error, ours and Flask's, through one JSON converter."""

    app.register_error_handler(NomanError, _error_answer)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = exc.code or 500
        error_class = _HTTP_ERRORS.get(status)
        if error_class is not None:
            body = error_class().body()
        else:
            body = errors.error_body(_code_for(exc), exc.description or "Request failed.")
        headers = {}
        if isinstance(exc, werkzeug_errors.MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return jsonify(body), status, headers

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # Logged by us, not by Flask: Flask's line would carry the request path.
        logging.getLogger("noman").error(
            "unexpected error in %s %s", request.method, routes.current_route(), exc_info=exc
        )
        return jsonify(errors.NomanError().body()), 500


# Compact, with a final newline: what jsonify writes (error bodies with sorted keys), without
# its provider's lookups and about five times faster. The hook's answers take these: a
# deploy's own work is measured against a bare Consul read and write (bench/durable.py),
# and rejections are its most frequent answer under attack.
_ANSWER_ENCODER = msgspec.json.Encoder()
_ERROR_ENCODER = msgspec.json.Encoder(order="sorted")


def _json_answer(body: dict[str, Any], status: int) -> Response:
    """A hook's JSON answer, keys in the order ``body`` has them."""
    return Response(
        _ANSWER_ENCODER.encode(body) + b"\n", status=status, mimetype="application/json"
    )


def _error_answer(exc: NomanError) -> Response:
    """Noman's JSON error answer: its code, message and status, and Retry-After if any."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    body = _ERROR_ENCODER.encode(exc.body()) + b"\n"
    return Response(body, status=exc.status, headers=headers, mimetype="application/json")


def _code_for(exc: HTTPException) -> str:
    name = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    return "".join(ch for ch in name if ch.isalnum() or ch == "_")
