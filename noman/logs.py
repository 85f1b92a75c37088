"""Logging: one JSON line per event, with hook secrets kept out in two layers.

The URL secret is part of the request path, and paths reach logs from
many places (gunicorn's access log and its "Error handling request" and
"Invalid request line" lines, Flask's "Exception on <path>"). Two layers,
each enough on its own:

1. No line is built from the raw path or query: the access log
   (``GunicornLogger.atoms``) and Noman's lines name the matched route's
   template (``/hooks/<secret>``) or ``unmatched`` (see ``noman.routes``), and
   gunicorn's exception texts (which quote the request line) are logged as
   their class name only.
2. Every handler Noman and gunicorn use gets ``RedactingFilter``, which
   rewrites the finished message before it is written: secrets after any
   ``/hooks/``-like segment, every query string, long token-like path
   segments, long mixed-case tokens anywhere, bearer tokens, judged after
   percent-decoding.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import msgspec
from gunicorn import glogging

from noman import routes

# No line Noman or gunicorn writes names its caller's file, function or line: the
# logging HOWTO's "Optimization" switch saves a stack walk per line (one per request).
logging._srcfile = None

REDACTED = "<redacted>"
#: The hook lines' logger: one line per hook request, its outcome and fields.
HOOK_LOG = logging.getLogger("noman.hooks")
# Where a hook line waits for its request's access line (see GunicornLogger.access).
_HOOK_LINE_KEY = "noman.hook_line"
# Set in a gunicorn process whose logger is GunicornLogger: hook lines are deferred.
_access_writes_hook_lines = False
# Everything after a hook-like segment ('/hooks/', '/hook/', '/webhooks/'),
# except the route templates that layer 1 writes on purpose.
_HOOK_PATH = re.compile(r"(/(?:web)?hooks?)(/[^\s?#\"'\\]*)", re.IGNORECASE)
_TEMPLATE_REST = re.compile(r"/<secret>(/[a-z_]+)?/?")
# Query strings anywhere: callers paste secrets there (`?token=...`).
_QUERY = re.compile(r"(/[^\s?#\"'\\]*)\?[^\s#\"'\\]*")
# A long token-like path segment is as good as a secret (22+ url-safe characters).
_TOKEN_SEGMENT = re.compile(r"(?<=/)[A-Za-z0-9_~-]{22,}(?=[/\s?#\"'\\]|$)")
# Anywhere, a long run of mixed-case letters and digits reads like a generated secret
# (`noman secret new`, token_urlsafe); UUIDs and hex digests are single-case and stay.
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])"
    r"(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{22,}(?![A-Za-z0-9_-])"
)
_BEARER = re.compile(r"(bearer\s+)[^\s\"',;]+", re.IGNORECASE)
# A run of 22 token characters: what _TOKEN_SEGMENT and _TOKEN need at least.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_~-]{22}")


def redact(text: str) -> str:
    """``text`` with hook path secrets, query strings and bearer tokens replaced."""
    if text in _CLEAN:
        return text
    redacted = _redact(text)
    if redacted == text and len(text) <= _CLEAN_LONGEST:
        if len(_CLEAN) >= _CLEAN_MAX:
            _CLEAN.clear()  # a flood of distinct words; the common ones come back at once
        _CLEAN.add(text)
    return redacted


# Short texts redact() found nothing in. A hook line's fields are mostly the same few
# words (its service, route, outcome, method, address, user agent), and a set lookup is a
# fraction of the tests below (measured: a hook line in 10 us instead of 15). Only texts
# with nothing to redact are kept, so no secret is, and whole lines (each one unique) are
# not kept at all.
_CLEAN: set[str] = set()
_CLEAN_MAX = 4096
_CLEAN_LONGEST = 64


def _redact(text: str) -> str:
    for _ in range(3):  # '/%2568ooks/<secret>' is '/hooks/<secret>' decoded twice
        if "%" not in text:
            break
        text = unquote(text)
    # Each substitution runs only when the text holds what its pattern needs at least
    # (most log fields are short words): one search instead of five substitutions.
    lowered = text.lower()
    if "/" in text:
        if "hook" in lowered:
            text = _HOOK_PATH.sub(_redact_hook_rest, text)
        if "?" in text:
            text = _QUERY.sub(r"\1?" + REDACTED, text)
    if _TOKEN_RUN.search(text) is not None:
        if "/" in text:
            text = _TOKEN_SEGMENT.sub(REDACTED, text)
        text = _TOKEN.sub(REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    return text


def _redact_hook_rest(match: re.Match[str]) -> str:
    rest = match.group(2)
    if rest in ("", "/") or _TEMPLATE_REST.fullmatch(rest):
        return match.group(0)
    return f"{match.group(1)}/{REDACTED}"


class RedactingFilter(logging.Filter):
    """Redacts the formatted message and any traceback text of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        gunicorn = record.name.startswith("gunicorn")
        if gunicorn and isinstance(record.args, tuple):
            # gunicorn's exceptions quote the request line or header they choke on.
            record.args = tuple(_quiet(arg) for arg in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            if gunicorn and record.exc_info[1] is not None:
                record.exc_text = redact(_trace_without_message(record.exc_info))
            else:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _quiet(arg: object) -> object:
    return type(arg).__name__ if isinstance(arg, BaseException) else arg


def _quiet_all(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_quiet(arg) for arg in args)


def _trace_without_message(exc_info: Any) -> str:
    kind, _, trace = exc_info
    if kind is None:
        return "(no traceback)"
    lines = [*traceback.format_tb(trace), f"{kind.__name__}\n"]
    return "Traceback (most recent call last):\n" + "".join(lines)


# Values JSON cannot hold (an exception, a path) are written as their text.
_LINE_ENCODER = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields.

    A line written while a request is handled also names its route template
    (``"route": "/hooks/<secret>"`` or ``"unmatched"``), never the path sent.
    """

    def format(self, record: logging.LogRecord) -> str:
        # Layer 2 for the message and the structured fields too (a tag or reason is client
        # text); the time, level and logger name are this formatter's own words.
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        route = routes.request_route()
        if route is not None:
            entry["route"] = redact(route)  # a template, unless layer 1 is off
        entry.update(_redact_values(getattr(record, "fields", {})))
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        # msgspec writes the line ten times faster than json.dumps (one per request).
        return _LINE_ENCODER.encode(entry).decode()


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        # Strings redacted in place of a call per value: a hook line has a dozen fields.
        return {
            key: redact(item) if type(item) is str else _redact_values(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_values(item) for item in value]
    return value


def configure(level: str = "info") -> None:
    """Send the ``noman`` loggers to stderr as redacted JSON lines (once).

    Also filters gunicorn's own handlers, so that ``gunicorn 'noman:create_app()'``
    without the shipped configuration (and its logger class) leaks nothing either.
    """
    protect_gunicorn_logs()
    logger = logging.getLogger("noman")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_noman_cli", False):  # a command that now serves: JSON lines
            logger.removeHandler(handler)
    if any(getattr(h, "_noman", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    handler._noman = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def configure_cli() -> None:
    """Send the ``noman`` loggers' warnings to stderr as redacted ``noman: warning: ...`` lines.

    For every command but ``serve`` (whose workers write JSON lines, ``configure``):
    without a handler, a command's warnings went through Python's last-resort
    handler, bare and unredacted. Records still propagate, so a caller's own
    handlers see them too.
    """
    logger = logging.getLogger("noman")
    if any(getattr(h, "_noman", False) or getattr(h, "_noman_cli", False) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)  # whatever level a loaded app left on the logger
    handler.setFormatter(_CommandFormatter())
    handler.addFilter(RedactingFilter())
    handler._noman_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is when a line is written."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr: a test's captured stream, or the terminal


class _CommandFormatter(logging.Formatter):
    """``noman: warning: <message>``, as the commands' own error lines read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"noman: {record.levelname.lower()}: {super().format(record)}"


def write_hook_line(line: dict[str, Any]) -> None:
    """Log one hook request's line: INFO, or WARNING when it answered 5xx."""
    level = logging.WARNING if line.get("status", 0) >= 500 else logging.INFO
    HOOK_LOG.log(level, "hook %s", line.get("outcome"), extra={"fields": line})


def defer_hook_line(environ: dict[str, Any], line: dict[str, Any]) -> bool:
    """Leave ``line`` for the request's access line to write; False when nothing would.

    Under the shipped gunicorn configuration each hook request is logged once:
    its hook line, with the access line's fields added, written when gunicorn
    logs the access, instead of two lines per request (the profile of a worker
    under rejected requests spent a quarter of its time on the two).
    """
    if not _access_writes_hook_lines or "gunicorn.socket" not in environ:
        return False
    environ[_HOOK_LINE_KEY] = line
    return True


def protect_gunicorn_logs() -> None:
    """Add RedactingFilter to every handler of gunicorn's loggers (idempotent)."""
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger: route templates in the access log, no exception texts, redacted.

    The level methods are layer 1 for gunicorn's own lines: an exception
    passed as an argument is logged as its class name, and ``exception``
    logs the traceback without the message (gunicorn's parser errors quote
    the request line, and ``NoMoreData`` the bytes read so far).
    """

    def critical(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at CRITICAL, exception arguments by class name."""
        self.error_log.critical(msg, *_quiet_all(args), **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR, exception arguments by class name."""
        self.error_log.error(msg, *_quiet_all(args), **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at WARNING, exception arguments by class name."""
        self.error_log.warning(msg, *_quiet_all(args), **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at INFO, exception arguments by class name."""
        self.error_log.info(msg, *_quiet_all(args), **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG, exception arguments by class name."""
        self.error_log.debug(msg, *_quiet_all(args), **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR with the current traceback, minus the exception's message."""
        kwargs.pop("exc_info", None)
        trace = _trace_without_message(sys.exc_info()).replace("%", "%%")
        self.error_log.error(f"{msg}\n{trace}", *_quiet_all(args), **kwargs)

    def log(self, lvl: Any, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at ``lvl``, exception arguments by class name."""
        super().log(lvl, msg, *_quiet_all(args), **kwargs)

    def setup(self, cfg: Any) -> None:
        """Set up as gunicorn does, then filter every error and access handler."""
        global _access_writes_hook_lines
        super().setup(cfg)
        _access_writes_hook_lines = True
        for log in (self.error_log, self.access_log):
            log.addFilter(RedactingFilter())
            for handler in log.handlers:
                handler.addFilter(RedactingFilter())

    def access(self, resp: Any, req: Any, environ: Any, request_time: timedelta) -> None:
        """The access line; for a hook request, its hook line with the access fields instead."""
        line = (environ or {}).pop(_HOOK_LINE_KEY, None)
        if line is None:
            super().access(resp, req, environ, request_time)
            return
        sent = getattr(resp, "sent", None)
        line["route"] = routes.route_of(environ)
        line["method"] = routes.method_of(environ)
        line["remote"] = environ.get("REMOTE_ADDR", "-")
        line["bytes"] = sent
        line["user_agent"] = str(environ.get("HTTP_USER_AGENT", "-"))[:200]
        write_hook_line(line)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: timedelta) -> dict[str, Any]:
        """The access log's fields, with the route template in place of the path.

        Request headers and environ entries (``%({name}i)s``, ``%({name}e)s``)
        are left out on purpose: they hold the raw URI, the referer and more.
        """
        status = str(getattr(resp, "status", "-") or "-").split(None, 1)[0]
        environ = environ or {}
        method, route = routes.method_of(environ), routes.route_of(environ)
        protocol = str(environ.get("SERVER_PROTOCOL", "-"))[:16]
        sent = getattr(resp, "sent", None)
        micros = request_time.seconds * 1_000_000 + request_time.microseconds
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "l": "-",
            "u": "-",
            "t": self.now(),
            "r": f"{method} {route} {protocol}",
            "s": status,
            "m": method,
            "U": route,
            "q": "",
            "H": protocol,
            "b": str(sent) if sent is not None else "-",
            "B": sent,
            "f": "-",
            "a": str(environ.get("HTTP_USER_AGENT", "-"))[:200],
            "T": request_time.seconds,
            "D": micros,
            "M": micros // 1000,
            "L": f"{request_time.seconds}.{request_time.microseconds:06d}",
            "p": f"<{os.getpid()}>",
        }
