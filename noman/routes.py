"""Route templates: what logs name in place of the path a client sent.

Logs name the matched route's template (``/hooks/<secret>``) or the word
``unmatched``, never the path: ``install`` records the template in the WSGI
environ, where the access logger reads it, and Noman's own lines ask for the
template of the request being handled. The same hook tells the server's
worker (``noman.server.worker``) to close the connection after a 408 or 413,
or after a body that could not be read whole, since what follows on it may be
the rest of that body.

Flask is imported inside the functions, not at the top: the gunicorn master
imports ``noman.logs`` (and so this module) before the workers monkey-patch.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.routing import Rule

ROUTE_KEY = "noman.route"
UNMATCHED = "unmatched"
# Answers after which the connection closes: the request's body may be partly unread. A
# body that could not be read whole (cut off, broken chunks) sets CLOSE_CONNECTION; a 400
# for a body read whole (invalid JSON, an unknown payload) keeps the connection open.
CLOSE_AFTER = frozenset({408, 413})
CLOSE_CONNECTION = "noman.close_connection"
# Methods logged as sent; anything else is logged as OTHER (the method is client text).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(environ: MutableMapping[str, Any] | None) -> str:
    """The route template this request matched, or ``unmatched``."""
    route = (environ or {}).get(ROUTE_KEY)
    return route if isinstance(route, str) else UNMATCHED


def method_of(environ: MutableMapping[str, Any] | None) -> str:
    """The request method, if it is a known one (else ``OTHER``, or ``-`` when unknown)."""
    method = (environ or {}).get("REQUEST_METHOD")
    if not method:
        return "-"
    return method if method in KNOWN_METHODS else "OTHER"


def install(app: Flask) -> None:
    """Record each request's route template in its environ, for every log line."""
    from flask import Response, request

    from noman.server.worker import DeadlineSocket

    @app.after_request
    def remember_route(response: Response) -> Response:
        environ = request.environ
        environ[ROUTE_KEY] = _template(request.url_rule)
        sock = environ.get("gunicorn.socket")
        closing = response.status_code in CLOSE_AFTER or environ.get(CLOSE_CONNECTION)
        if closing and isinstance(sock, DeadlineSocket):
            # The body was refused unread or half read: what follows on this
            # connection is not a request. Answer, then close.
            sock.close_after = True
        return response


def request_route() -> str | None:
    """The route template of the request being handled; None outside a request."""
    # Only once Flask is loaded (the gunicorn master logs without it); looked up in
    # sys.modules rather than imported, as this runs for every log line.
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return None
    return current_route()


def current_route() -> str:
    """The route template of the request being handled (``unmatched`` outside one)."""
    from flask import has_request_context, request

    return _template(request.url_rule) if has_request_context() else UNMATCHED


def _template(rule: Rule | None) -> str:
    """The matched rule's template; ``unmatched`` when routing found none (a 404, a 405)."""
    return rule.rule if rule is not None else UNMATCHED
