"""HTTP plumbing shared by the fake servers (FakeConsul, FakeNomad); standard library only.

:class:`FakeServer` owns what every fake needs around its API: a threaded HTTP server on a
real socket, started and stopped on demand and able to refuse connections and listen again on
the same port; fault injection (failed answers, hung requests); the record of requests; and
:func:`run_main` for the ``python -m tests.fakes.<name>`` entry points. A fake subclasses it,
names its request handler (a :class:`QuietHandler`) and answers requests itself, consulting
:meth:`FakeServer._next_fault` first.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

__all__ = [
    "Failure",
    "FakeClock",
    "FakeHTTPServer",
    "FakeServer",
    "Hang",
    "QuietHandler",
    "RequestRecord",
    "parse_duration",
    "run_main",
]

_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Return the seconds in a Go duration such as ``"1s"``, ``"500ms"`` or ``"1m30s"``.

    Raises:
        ValueError: when ``text`` is not a Go duration (Go requires a unit except for "0").
    """
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(body))


#: One recorded request: (method, path, query, headers with Title-Cased names).
RequestRecord = tuple[str, str, dict[str, list[str]], dict[str, str]]

F = TypeVar("F", bound="FakeServer")


class FakeHTTPServer(ThreadingHTTPServer, Generic[F]):
    """ThreadingHTTPServer that knows its open connections so that it can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops SYNs when a test fires many requests at once,
    # and the client's retransmit then costs a second.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], fake: F, handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.fake = fake
        # Set when this server stops: blocking reads and hung requests give up at once.
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            if self.closing.is_set():
                return  # accepted just before the stop: drop it like the others
            self._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away (timeouts, cut connections); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Cut every open keep-alive connection, so clients cannot keep talking to us."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            # Already gone is fine: the goal is only that nobody can keep using it.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class QuietHandler(BaseHTTPRequestHandler):
    """Base request handler of the fakes: HTTP/1.1 keep-alive, TCP_NODELAY, no access log."""

    # HTTP/1.1 gives keep-alive; every answer must carry Content-Length for that to work.
    protocol_version = "HTTP/1.1"
    # Sets TCP_NODELAY on the accepted socket (item 16 of shared/specs/consul-kv.md): without
    # it small keep-alive answers can wait ~40 ms on Nagle and delayed ACKs, which makes
    # timing-sensitive tests slow and flaky.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are dropped eventually rather than pinning a thread forever.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: access logs would flood test output."""

    def send_reply(self, reply: Any) -> None:
        """Send a fake's reply (``status``, ``content_type``, ``headers``, ``body``).

        With ``reply.hang`` it waits that out and closes without an answer, so the client
        sees a connection closed without a response (or its own read timeout first); with
        ``reply.delay`` it waits that out before answering.
        """
        if reply.hang is not None:
            reply.hang.wait()
            self.close_connection = True
            return
        if reply.delay is not None:
            reply.delay.wait()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


@dataclass(frozen=True)
class Hang:
    """A request caught by :meth:`FakeServer.hang`: wait, then close without an answer."""

    seconds: float
    release: threading.Event

    def wait(self) -> None:
        """Block until the hang time is over or :meth:`FakeServer.heal`/``stop`` releases it."""
        self.release.wait(self.seconds)


@dataclass(frozen=True)
class Failure:
    """A failed answer from :meth:`FakeServer.fail_next`/``fail_always``: nothing is applied.

    ``delay`` (when set) must be waited out, without the lock, before answering.
    """

    status: int
    body: str
    delay: Hang | None = None


class FakeClock:
    """A manual monotonic clock for the fakes: time stands still until :meth:`advance`.

    Pass one to a fake (``FakeConsul(clock=clock)``, ``FakeNomad(clock=clock)``; one clock may
    drive several fakes) and the fake's timed behaviour (Consul session TTLs and lock-delays,
    Nomad's scripted deployment outcomes) follows it instead of the wall clock, so tests need
    no sleeps. Blocking queries still time out on the wall clock (``wait=``): only the
    simulated events follow this clock.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._fakes: list[FakeServer] = []

    def __call__(self) -> float:
        """The current time in seconds (only meaningful relative to other readings)."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward, then let every attached fake apply what came due and wake waiters.

        Returns once every event due by the new time has happened, so a test can assert on the
        outcome right away (a blocked HTTP reader is woken, it still needs a moment to answer).
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += seconds
            fakes = list(self._fakes)
        for fake in fakes:
            fake._tick()

    def _attach(self, fake: FakeServer) -> None:
        with self._lock:
            self._fakes.append(fake)


class FakeServer:
    """Socket and thread lifecycle, fault injection and request log of a fake HTTP server.

    Use as a context manager (``with Fake() as fake: ...``) or call :meth:`start` and
    :meth:`stop`. ``_lock`` (reentrant) guards the fault state and the subclass's state;
    ``_cond`` is a condition on that same lock, notified when the server stops so that
    requests waiting on it can give up.
    """

    #: The request handler the server uses; subclasses name theirs.
    _handler_class: ClassVar[type[QuietHandler]] = QuietHandler
    #: Prefix of the serving thread's name (the port is appended).
    _thread_name: ClassVar[str] = "fake-server"
    #: How often the serving loop checks for shutdown: stop() waits up to this long.
    _poll_interval: ClassVar[float] = 0.05

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, clock: FakeClock | None = None
    ) -> None:
        self.host = host
        #: The manual clock driving timed events, or None for the wall clock (time.monotonic).
        self.clock = clock
        if clock is not None:
            clock._attach(self)
        self._port = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        #: Every request received, faulted ones included: (method, path, query, headers with
        #: Title-Cased names); each fake documents which form of the path it records.
        self.requests: list[RequestRecord] = []
        # (status, body, seconds before answering)
        self._fail_next: list[tuple[int, str, float]] = []
        self._fail_always: tuple[int, str, float] | None = None
        # Seconds by which answers of applied requests are held back (answer_late).
        self._late_next: list[float] = []
        self._late_always: float | None = None
        self._hang: float | None = None
        self._hang_release = threading.Event()
        self._server: FakeHTTPServer[Any] | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (0 until the first :meth:`start` when it was asked to pick one)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:8500``; a wildcard host is reached on 127.0.0.1."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._port}"

    def start(self) -> Self:
        """Start listening (no-op when already listening) and return ``self``."""
        with self._lock:
            if self._server is None:
                self._listen()
        return self

    def stop(self) -> None:
        """Stop listening, cut open connections, release hung requests; calling twice is fine.

        State is kept: a later :meth:`start` serves it again.
        """
        self._hang_release.set()
        self._unlisten()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listen(self) -> None:
        # Re-binding a port we just closed can briefly fail; retry rather than flake.
        for attempt in range(100):
            try:
                server = FakeHTTPServer((self.host, self._port), self, self._handler_class)
                break
            except OSError:
                if self._port == 0 or attempt == 99:
                    raise
                time.sleep(0.02)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=f"{self._thread_name}-{self._port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _unlisten(self) -> None:
        with self._cond:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None or thread is None:
                return
            server.closing.set()
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(timeout=5)

    # ---- time ------------------------------------------------------------------------------

    def now(self) -> float:
        """The fake's notion of monotonic time: its :class:`FakeClock`, else time.monotonic()."""
        return self.clock() if self.clock is not None else time.monotonic()

    def advance(self, seconds: float) -> None:
        """Move the fake's :class:`FakeClock` forward (see :meth:`FakeClock.advance`).

        Raises:
            RuntimeError: when the fake runs on the wall clock (no ``clock=`` given).
        """
        if self.clock is None:
            raise RuntimeError("advance() needs a fake created with clock=FakeClock()")
        self.clock.advance(seconds)

    def _next_due(self) -> float | None:
        """When (in :meth:`now` time) the next timed event is due, or None; lock held."""
        return None

    def _apply_due(self) -> bool:
        """Apply every timed event that is due; True when something changed. Lock held."""
        return False

    def _tick(self) -> None:
        """Apply due events and wake every waiter if anything changed."""
        with self._cond:
            if self._apply_due():
                self._cond.notify_all()

    def _wait(self, remaining: float) -> None:
        """Wait on ``_cond`` (held) for up to ``remaining`` wall seconds, then apply due events.

        On the wall clock the wait also ends when the next timed event is due, so that events
        happen on time (and wake blocking queries) without a timer thread.
        """
        if self.clock is None and (due := self._next_due()) is not None:
            remaining = min(remaining, max(due - time.monotonic(), 0.0))
        self._cond.wait(remaining)
        if self._apply_due():
            self._cond.notify_all()

    # ---- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        body: str = "No cluster leader",
        after: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests (any endpoint) with ``status`` and a text body.

        Nothing is applied. With ``after``, each failure is answered only that many seconds
        later (a server failing slowly). Failures queue up after any already pending.
        """
        with self._lock:
            self._fresh_release()
            self._fail_next.extend([(status, body, after)] * count)

    def fail_always(
        self, status: int = 500, body: str = "No cluster leader", after: float = 0.0
    ) -> None:
        """Answer every request with ``status`` and a text body (after any :meth:`fail_next`).

        With ``after``, each answer comes that many seconds late. Lasts until :meth:`heal`.
        """
        with self._lock:
            self._fresh_release()
            self._fail_always = (status, body, after)

    def answer_late(self, seconds: float, count: int | None = 1) -> None:
        """Apply the next ``count`` requests normally but hold each answer back ``seconds``.

        The write lands while a client with a shorter timeout gives up: the outcome is
        unknown to it. ``count=None`` delays every answer until :meth:`heal`. Requests that
        meet another fault (fail, hang) are not delayed by this. :meth:`heal` and
        :meth:`stop` release held answers at once.
        """
        with self._lock:
            self._fresh_release()
            if count is None:
                self._late_always = seconds
            else:
                self._late_next.extend([seconds] * count)

    def hang(self, seconds: float) -> None:
        """Make every request wait ``seconds``, then close the connection without an answer.

        The request is not applied. :meth:`heal` and :meth:`stop` release waiting requests.
        """
        with self._lock:
            self._hang = seconds
            self._fresh_release()

    def heal(self) -> None:
        """Clear every fault (fail_next, fail_always, hang, answer_late); release waiters."""
        with self._lock:
            self._fail_next.clear()
            self._fail_always = None
            self._late_next.clear()
            self._late_always = None
            self._hang = None
            self._hang_release.set()

    def refuse_connections(self) -> None:
        """Close the listening socket and open connections: connects are refused, state kept."""
        self._unlisten()

    def resume(self) -> None:
        """Listen again on the same port after :meth:`refuse_connections`, state intact."""
        with self._lock:
            if self._server is None:
                self._listen()

    def _fresh_release(self) -> None:
        """A new release event for faults set from now on, once heal() used the old one."""
        if self._hang_release.is_set():
            self._hang_release = threading.Event()

    def _next_fault(self) -> Hang | Failure | None:
        """The fault the request being handled meets, if any; the caller holds the lock.

        A :class:`Hang` must be waited out without the lock, then the connection closed
        unanswered; a :class:`Failure` is answered as text (after its delay, without the
        lock) instead of applying the request. Faults come before anything else: they model
        the network or an unhealthy server.
        """
        if self._hang is not None:
            return Hang(self._hang, self._hang_release)
        failure = self._fail_next.pop(0) if self._fail_next else self._fail_always
        if failure is None:
            return None
        status, body, after = failure
        return Failure(status, body, Hang(after, self._hang_release) if after > 0 else None)

    def _next_late(self) -> Hang | None:
        """How long to hold back the answer of a request applied normally; lock held."""
        seconds = self._late_next.pop(0) if self._late_next else self._late_always
        return None if seconds is None else Hang(seconds, self._hang_release)


def run_main(fake: FakeServer) -> int:
    """Serve ``fake`` until SIGTERM/SIGINT, printing its URL on one line; returns 0."""
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with fake:
        print(fake.url, flush=True)
        # Wait in slices so the main thread runs signal handlers promptly.
        while not done.wait(0.2):
            pass
    return 0
