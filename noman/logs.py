"""Logging: one JSON line per event, with hook secrets redacted everywhere.

The URL secret is part of the request path, and paths reach logs from
many places (gunicorn's access log and its "Error handling request" and
"Invalid request line" lines, Flask's "Exception on <path>"). Rather than
trusting each place, every handler Noman and gunicorn use gets
``RedactingFilter``, which rewrites the finished message before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import unquote

from gunicorn import glogging

REDACTED = "<redacted>"
_HOOK_SECRET = re.compile(r"(/hooks/)[^/\s?#\"'\\]+", re.IGNORECASE)
# Query strings on hook paths are redacted too: callers paste secrets there.
_HOOK_QUERY = re.compile(r"(/hooks[^\s?#\"']*)\?[^\s#\"']*", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s\"',;]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with hook path secrets and bearer tokens replaced."""
    if "%" in text:
        # '/%68ooks/<secret>' routes like '/hooks/<secret>'; judge the decoded form.
        decoded = unquote(text)
        if _HOOK_SECRET.search(decoded):
            text = decoded
    text = _HOOK_SECRET.sub(r"\1" + REDACTED, text)
    text = _HOOK_QUERY.sub(r"\1?" + REDACTED, text)
    return _BEARER.sub(r"\1" + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Redacts the formatted message and any traceback text of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> None:
    """Send the ``noman`` loggers to stderr as redacted JSON lines (once).

    Also filters gunicorn's own handlers, so that ``gunicorn 'noman:create_app()'``
    without the shipped configuration (and its logger class) leaks nothing either.
    """
    protect_gunicorn_logs()
    logger = logging.getLogger("noman")
    logger.setLevel(level.upper())
    if any(getattr(h, "_noman", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    handler._noman = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def protect_gunicorn_logs() -> None:
    """Add RedactingFilter to every handler of gunicorn's loggers (idempotent)."""
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with every handler redacting hook secrets."""

    def setup(self, cfg: Any) -> None:
        """Set up as gunicorn does, then filter every error and access handler."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.addFilter(RedactingFilter())
            for handler in log.handlers:
                handler.addFilter(RedactingFilter())
