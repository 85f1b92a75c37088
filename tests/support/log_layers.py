"""gunicorn configurations with one log-redaction layer switched off, to test the other alone.

``python:tests.support.log_layers.routes_only``: RedactingFilter does nothing;
only layer 1 (route templates, no exception texts) keeps secrets out.

``python:tests.support.log_layers.redaction_only``: every line is built from
the raw request as stock gunicorn and Flask would (raw request line in the
access log, gunicorn's debug line and exception texts, the path in Noman's
unexpected-error line); only layer 2 (RedactingFilter) keeps secrets out.
"""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from noman import logs
from noman.logs import GunicornLogger
from noman.server import worker


class NoFilter(logs.RedactingFilter):
    """A RedactingFilter that lets every record through unchanged."""

    def filter(self, record: Any) -> bool:
        return True


def disable_redaction() -> None:
    """Make every RedactingFilter, present and future, and the JSON fields' redaction no-ops."""
    logs.RedactingFilter.filter = NoFilter.filter  # type: ignore[method-assign]
    logs._redact_values = lambda value: value


class RawLogger(GunicornLogger):
    """Layer 2 only: gunicorn's own access atoms and level methods (raw paths, exception texts)."""

    atoms = glogging.Logger.atoms
    critical = glogging.Logger.critical
    error = glogging.Logger.error
    warning = glogging.Logger.warning
    info = glogging.Logger.info
    debug = glogging.Logger.debug
    exception = glogging.Logger.exception
    log = glogging.Logger.log


def raw_route() -> str:
    """The raw path and query, where layer 1 would write the route template."""
    from flask import request

    return request.full_path


def leaky_handle_error(self: Any, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
    """Log the parse error's text as stock gunicorn does, then answer as Noman does."""
    self.log.warning("Invalid request from ip=%s: %s", (addr or ("-",))[0], str(exc))
    original_handle_error(self, req, client, addr, exc)


original_handle_error = worker._WorkerMixin.handle_error
