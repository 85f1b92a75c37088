"""The gunicorn worker: how connections are served before and around the Flask app.

Noman runs under gunicorn's gevent worker (``NomanWorker``, set by
``noman.server.config``): every connection gets a greenlet, not one of a few
threads, so clients that trickle their headers or body cost a little memory
and never delay a real webhook. On top of that each request has a read
deadline (``NOMAN_READ_TIMEOUT`` seconds, default 10) for its headers and
body together, so slow connections are cut rather than kept forever.

gunicorn answers some requests itself before Flask sees them (a bad request
line or header, an over-long URI, too many header bytes, conflicting
lengths, broken chunked encoding). ``NomanWorker.handle_error`` answers those
with Noman's JSON error shape and a fixed message, never the request's text.

After a 408 or 413, or a body that could not be read whole, the app's
``noman.routes`` hook sets ``DeadlineSocket.close_after``: the worker answers,
then closes the connection, since its body may be partly unread.

Background threads of a worker (the outcome reporter, a reconciler) become
greenlets under gevent's monkey-patching: they must do their waiting on
sockets, ``time.sleep`` or ``threading`` primitives, never in a busy loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import ssl
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from noman.errors import error_body
from noman.server.environment import positive

DEFAULT_READ_TIMEOUT = 10.0


def read_timeout() -> float:
    """Seconds a client has to send one request's headers and body ($NOMAN_READ_TIMEOUT).

    ``noman.server.config`` checks the variable before any worker starts.
    """
    return positive("NOMAN_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)


class ReadDeadline(TimeoutError):
    """The client did not send its request within the read deadline.

    Carries ECONNRESET so gunicorn treats it as a client that went away (a
    debug line, no traceback); the app answers it with 408 while it reads a body.
    """

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "read deadline passed")


class DeadlineSocket:
    """A client socket whose reads fail once the current request's deadline has passed."""

    def __init__(self, sock: Any, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.close_after = False

    def arm(self) -> None:
        """Start the clock for the next request's headers and body."""
        self.deadline = time.monotonic() + self._timeout

    def recv(self, size: int, *flags: int) -> bytes:
        """``socket.recv``, bounded by the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ReadDeadline()
        self._sock.settimeout(left)
        try:
            data: bytes = self._sock.recv(size, *flags)
            return data
        except TimeoutError:
            raise ReadDeadline() from None
        finally:
            self._sock.settimeout(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# What gunicorn's parser errors become: (status, reason, code, message).
# Messages are fixed: gunicorn's own texts quote the request line or header.
_PARSE_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "LimitRequestLine": (414, "URI Too Long", "uri_too_long", "The request URI is too long."),
    "LimitRequestHeaders": (
        431,
        "Request Header Fields Too Large",
        "request_header_fields_too_large",
        "The request headers are too large or too many.",
    ),
    "UnsupportedTransferCoding": (
        501,
        "Not Implemented",
        "not_implemented",
        "That Transfer-Encoding is not supported.",
    ),
    "ExpectationFailed": (417, "Expectation Failed", "expectation_failed", "Expect not met."),
    "ForbiddenProxyRequest": (403, "Forbidden", "forbidden", "Request forbidden."),
    "InvalidChunkSize": (400, "Bad Request", "bad_request", "Malformed chunked body."),
    "ChunkMissingTerminator": (400, "Bad Request", "bad_request", "Malformed chunked body."),
    "InvalidChunkExtension": (400, "Bad Request", "bad_request", "Malformed chunked body."),
}
_BAD_REQUEST = (400, "Bad Request", "bad_request", "Malformed HTTP request.")


def error_answer(exc: BaseException) -> tuple[int, str, bytes]:
    """Status, reason and full HTTP/1.1 answer (JSON error shape) for a parse error."""
    status, reason, code, message = _PARSE_ERRORS.get(type(exc).__name__, _BAD_REQUEST)
    return status, reason, _closing_answer(status, reason, code, message)


def _closing_answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the JSON error shape, after which the connection closes."""
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _gevent_worker() -> type[Any]:
    # Imported lazily: the gunicorn master loads this module before forking,
    # and only the workers run the gevent hub.
    from gunicorn.workers.ggevent import GeventWorker

    return GeventWorker  # type: ignore[no-any-return]


class _WorkerMixin:
    """What Noman changes in gunicorn's gevent worker (see the module docstring)."""

    log: Any
    cfg: Any

    def init_process(self) -> None:
        """Start the worker with a default socket timeout, so TLS handshakes are bounded too.

        gevent's server completes the handshake before ``handle`` runs, on a
        socket whose timeout is the default one; ``handle`` then makes it blocking.
        """
        socket.setdefaulttimeout(read_timeout())
        super().init_process()  # type: ignore[misc]

    def run(self) -> None:
        """Serve; failed TLS handshakes (a client's doing) print no traceback."""
        import gevent  # type: ignore[import-untyped]

        hub = gevent.get_hub()
        # gevent's server runs the handshake before ``handle``: a plain-HTTP client
        # or one too slow would otherwise print a multi-line traceback each time.
        hub.NOT_ERROR = (*hub.NOT_ERROR, ssl.SSLError, OSError)
        super().run()  # type: ignore[misc]

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection with the read deadline (TLS handshake included)."""
        timeout = read_timeout()
        try:
            client.setblocking(1)
            if isinstance(client, ssl.SSLSocket) and not self.cfg.do_handshake_on_connect:
                client.settimeout(timeout)
                client.do_handshake()
                client.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            self.log.debug("TLS handshake failed: %s", type(exc).__name__)
            _close(client)
            return
        super().handle(listener, DeadlineSocket(client, timeout), addr)  # type: ignore[misc]

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """Handle one request; the next one on this connection gets a fresh deadline."""
        try:
            handled = super().handle_request(listener_name, req, sock, addr)  # type: ignore[misc]
        finally:
            if isinstance(sock, DeadlineSocket):
                sock.arm()
        if isinstance(sock, DeadlineSocket) and sock.close_after:
            raise StopIteration()  # gunicorn's way to end a keep-alive connection
        return handled

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer errors raised before or around the app in Noman's JSON shape."""
        started = datetime.now()
        status, reason, answer = error_answer(exc)
        if type(exc).__name__ in _PARSE_ERRORS or type(exc).__module__.startswith(
            ("gunicorn.http", "ssl")
        ):
            # The exception's text quotes the request: log its class only.
            self.log.warning("invalid request: %s", type(exc).__name__)
        else:
            status, reason = 500, "Internal Server Error"
            message = "Internal error; see the operator's log."
            answer = _closing_answer(status, reason, "internal_error", message)
            self.log.error("error handling a request: %s", type(exc).__name__)
        if req is not None:
            _log_access(self.log, req, addr, status, reason, len(answer), started)
        try:
            client.sendall(answer)
        except Exception:  # the client may be gone already
            self.log.debug("failed to send the error answer")


def _log_access(
    log: Any, req: Any, addr: Any, status: int, reason: str, sent: int, started: datetime
) -> None:
    answer = SimpleNamespace(status=f"{status} {reason}", sent=sent, headers=[])
    version = getattr(req, "version", (1, 1)) or (1, 1)
    environ = {
        "REQUEST_METHOD": getattr(req, "method", None) or "-",
        "SERVER_PROTOCOL": f"HTTP/{version[0]}.{version[1]}",
        "REMOTE_ADDR": (addr or ("-",))[0] if isinstance(addr, tuple) else "-",
    }
    try:
        log.access(answer, None, environ, datetime.now() - started)
    except Exception:  # logging must never turn an answer into a crash
        log.debug("failed to log an error answer")


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def worker_class() -> type[Any]:
    """gunicorn's gevent worker with Noman's deadlines and JSON error answers."""
    return type("NomanWorker", (_WorkerMixin, _gevent_worker()), {})


def __getattr__(name: str) -> Any:
    # `worker_class = "noman.server.worker.NomanWorker"`: gunicorn imports the name.
    if name == "NomanWorker":
        cls = worker_class()
        globals()["NomanWorker"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
