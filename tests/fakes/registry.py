"""A fake container registry with its token server, over real HTTP on 127.0.0.1.

Built from the OCI Distribution Spec (``opencontainers/distribution-spec`` spec.md:
"Listing Tags", error codes), the reference registry (``distribution/distribution``:
``registry/handlers/tags.go``) and Docker's token authentication
(``docs/spec/auth/token.md``), as ``shared/specs/registries.md`` sums them up:

* ``GET /v2/`` and ``GET /v2/<name>/tags/list``: tags in lexical order; ``n`` limits a
  page and ``last`` starts after a tag; while more remain a *relative* ``Link:
  </v2/<name>/tags/list?n=N&last=T>; rel="next"``. ``max_page`` caps ``n`` (above it:
  ``400 PAGINATION_NUMBER_INVALID``, as distribution does with ``tags.maxtags``) and
  ``default_page`` pages without being asked. ``{"tags": null}`` for an empty repository
  is the reference registry's shape only when ``null_empty`` is set.
* ``auth="token"``: a request without a good token gets ``401`` and ``WWW-Authenticate:
  Bearer realm="<url>/token",service="fake-registry",scope="repository:<name>:pull"``,
  with ``error="invalid_token"`` for an unknown or expired token and
  ``error="insufficient_scope"`` for one that lacks the scope. ``GET /token?service=&scope=``
  authenticates ``Authorization: Basic`` (a wrong password is ``401``; none is anonymous)
  and grants the intersection of what was asked and what is allowed (public repositories
  and unknown names to anyone, private ones to their users), never failing for a scope it
  cannot grant. The answer carries ``token``, ``access_token``, ``expires_in`` and
  ``issued_at`` (each can be left out), tokens die after ``token_lifetime`` seconds.
* ``auth="basic"``: the registry itself wants ``Authorization: Basic`` (``WWW-Authenticate:
  Basic realm=…``); ``auth="none"``: no authentication at all.
* Docker Hub's rate limit: with :meth:`FakeRegistry.set_ratelimit` every tag list answers
  ``ratelimit-limit``/``ratelimit-remaining`` and costs one; at zero it is ``429
  TOOMANYREQUESTS`` with ``Retry-After``. :meth:`FakeRegistry.rate_limit` answers ``429``
  to the next tag lists on demand (``Retry-After`` in seconds or as an HTTP date).
* faults per repository (:meth:`FakeRegistry.fault`): ``hang``, ``500``, ``garbage`` (200 with
  HTML), ``no_tags`` (200 JSON without ``tags``), ``loop`` (a ``Link`` back to the same page);
  and the whole server's faults of :class:`~tests.fakes._server.FakeServer` (fail, hang,
  refuse connections).
* counters: :attr:`FakeRegistry.counts` (requests per path), :attr:`FakeRegistry.tokens_issued`,
  :meth:`FakeRegistry.tag_list_requests`.

Time is the wall clock (``time.time``) or a :class:`~tests.fakes._server.FakeClock` passed as
``clock=``, read as Unix seconds: give the client under test the same clock.

    with FakeRegistry() as registry:
        registry.add_repository("acme/shop", ["1.0", "1.1"])
        requests.get(f"{registry.url}/v2/acme/shop/tags/list")  # 401, then the token dance

Run it by hand with ``python -m tests.fakes.registry [--port N]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.fakes._server import (
    FakeClock,
    FakeHTTPServer,
    FakeServer,
    Hang,
    QuietHandler,
    run_main,
)

__all__ = ["FAULTS", "SERVICE", "FakeRegistry", "SharedClock", "main", "serve_child"]

#: The ``service`` of the token challenge.
SERVICE = "fake-registry"
#: Faults :meth:`FakeRegistry.fault` can put on one repository.
FAULTS = ("hang", "500", "garbage", "no_tags", "loop")
_TAGS_PATH = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
# distribution/reference's repository name grammar.
_NAME = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_SCOPE = re.compile(r"^repository:(?P<name>[^:]+):(?P<actions>[a-z*,]*)$")


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: Hang | None = None
    delay: Hang | None = None


@dataclass
class _Repository:
    tags: set[str] = field(default_factory=set)
    private: bool = False


@dataclass(frozen=True)
class _Token:
    subject: str | None
    access: frozenset[tuple[str, str]]  # (repository, action)
    expires: float


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(data).encode(), "application/json", headers or {})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Reply:
    """The distribution spec's error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    return _json({"errors": [{"code": code, "message": message, "detail": None}]}, status, headers)


class _Handler(QuietHandler):
    """Hands every GET to :meth:`FakeRegistry._handle`."""

    server: FakeHTTPServer[FakeRegistry]

    def do_GET(self) -> None:
        headers = {name.title(): value for name, value in self.headers.items()}
        self.send_reply(self.server.fake._handle(self.command, self.path, headers))


class FakeRegistry(FakeServer):
    """An OCI registry and its Docker token server on one 127.0.0.1 port."""

    _handler_class = _Handler
    _thread_name = "fake-registry"
    _poll_interval = 0.01

    def __init__(
        self,
        *,
        auth: Literal["token", "basic", "none"] = "token",
        port: int = 0,
        clock: FakeClock | None = None,
        token_lifetime: float = 300.0,
        max_page: int | None = None,
        default_page: int | None = None,
    ) -> None:
        """A stopped fake; ``start()`` it or use it as a context manager."""
        super().__init__(host="127.0.0.1", port=port, clock=clock)
        self.auth = auth
        self.token_lifetime = token_lifetime
        self.max_page = max_page
        self.default_page = default_page
        #: Fields the token answer carries (drop some to test a client's defaults).
        self.token_fields: set[str] = {"token", "access_token", "expires_in", "issued_at"}
        #: ``{"tags": null}`` for an empty repository instead of ``[]``.
        self.null_empty = False
        self._repositories: dict[str, _Repository] = {}
        self._users: dict[str, tuple[str, frozenset[str] | None]] = {}
        self._tokens: dict[str, _Token] = {}
        self._faults: dict[str, tuple[str, int | None]] = {}
        self._limited: list[str | None] = []
        self._ratelimit: tuple[int, int, int, str | None] | None = None
        #: Requests per path (faulted ones included), e.g. ``counts["/token"]``.
        self.counts: collections.Counter[str] = collections.Counter()
        #: Tokens the token server handed out.
        self.tokens_issued = 0

    # ---- test-side state -------------------------------------------------------------------

    @property
    def realm(self) -> str:
        """The token server's URL."""
        return f"{self.url}/token"

    @property
    def registry_host(self) -> str:
        """``127.0.0.1:<port>``: how an image name spells this registry."""
        return f"127.0.0.1:{self.port}"

    def image(self, name: str) -> str:
        """The image name of repository ``name`` on this registry (``127.0.0.1:PORT/name``)."""
        return f"{self.registry_host}/{name}"

    def add_repository(
        self, name: str, tags: list[str] | tuple[str, ...] = (), *, private: bool = False
    ) -> None:
        """Create (or replace) repository ``name`` holding ``tags``."""
        if not _NAME.match(name):
            raise ValueError(f"not a repository name: {name!r}")
        with self._lock:
            self._repositories[name] = _Repository(set(tags), private)

    def push(self, name: str, *tags: str) -> None:
        """Add ``tags`` to repository ``name`` (created public when missing)."""
        with self._lock:
            self._repositories.setdefault(name, _Repository()).tags.update(tags)

    def add_user(self, username: str, password: str, repositories: list[str] | None = None) -> None:
        """A user the token server (or Basic auth) accepts; ``repositories`` None: all of them."""
        with self._lock:
            self._users[username] = (
                password,
                None if repositories is None else frozenset(repositories),
            )

    def fault(self, name: str, kind: str | None, count: int | None = None) -> None:
        """Put fault ``kind`` (one of :data:`FAULTS`) on repository ``name``'s tag lists.

        ``count`` requests meet it (None: until cleared with ``kind=None``). ``hang`` holds
        the request until :meth:`heal` or :meth:`stop`, then closes it unanswered.
        """
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        with self._lock:
            if kind is None:
                self._faults.pop(name, None)
            else:
                self._fresh_release()
                self._faults[name] = (kind, count)

    def heal(self) -> None:
        """Clear every fault, the per-repository ones too, and release waiting requests."""
        with self._lock:
            self._faults.clear()
            self._limited.clear()
        super().heal()

    def rate_limit(self, retry_after: int | str | None = 60, count: int = 1) -> None:
        """Answer the next ``count`` tag lists ``429 TOOMANYREQUESTS``.

        ``retry_after`` is sent as ``Retry-After`` (seconds, or a string such as an HTTP
        date); None sends none.
        """
        with self._lock:
            self._limited.extend([None if retry_after is None else str(retry_after)] * count)

    def set_ratelimit(
        self,
        limit: int = 100,
        remaining: int = 100,
        window: int = 21600,
        retry_after: str | None = "3600",
    ) -> None:
        """Docker Hub's pull limit: headers on every tag list, ``429`` once none remain."""
        with self._lock:
            self._ratelimit = (limit, remaining, window, retry_after)

    def expire_tokens(self) -> None:
        """Make every token handed out so far unknown (a registry restart with a new key)."""
        with self._lock:
            self._tokens.clear()

    def tag_list_requests(self, name: str) -> int:
        """How many requests reached repository ``name``'s tag list (all pages)."""
        with self._lock:
            return self.counts[f"/v2/{name}/tags/list"]

    def wall(self) -> float:
        """The fake's time in Unix seconds: its FakeClock when given, else time.time()."""
        return self.clock() if self.clock is not None else time.time()

    # ---- requests --------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str]) -> _Reply:
        """Answer one request (called from handler threads)."""
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append((method, path, query, headers))
            self.counts[path] += 1
            fault = self._next_fault()
            if isinstance(fault, Hang):
                return _Reply(hang=fault)
            if fault is not None:
                reply = _Reply(fault.status, fault.body.encode(), "text/plain; charset=utf-8")
                reply.delay = fault.delay
                return reply
            late = self._next_late()
            try:
                reply = self._route(path, query, headers)
            except Exception as exc:  # a bug in the fake: show it rather than hang
                reply = _error(500, "UNKNOWN", f"fake registry internal error: {exc!r}")
            if reply.hang is None:
                reply.delay = late
            return reply

    def _route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> _Reply:
        if path == "/token":
            return self._token(query, headers)
        if path in ("/v2", "/v2/"):
            denied = self._authorize(None, headers)
            return denied if denied is not None else _json({})
        match = _TAGS_PATH.match(path)
        if match is None:
            return _error(404, "UNSUPPORTED", "the operation is unsupported")
        return self._tags(match.group("name"), query, headers)

    # ---- the token server ------------------------------------------------------------------

    def _token(self, query: dict[str, list[str]], headers: dict[str, str]) -> _Reply:
        subject: str | None = None
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            subject = self._basic_user(value.strip())
            if subject is None:
                return _json({"details": "incorrect username or password"}, 401)
        if query.get("service", [""])[0] != SERVICE:
            return _json({"details": "invalid service"}, 400)
        access: set[tuple[str, str]] = set()
        for scope in query.get("scope", []):
            for one in scope.split(" "):
                match = _SCOPE.match(one)
                if match is None:
                    continue
                name = match.group("name")
                for action in match.group("actions").split(","):
                    if action == "pull" and self._may_pull(subject, name):
                        access.add((name, action))
        token = secrets.token_urlsafe(24)
        now = self.wall()
        self._tokens[token] = _Token(subject, frozenset(access), now + self.token_lifetime)
        self.tokens_issued += 1
        answer: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": int(self.token_lifetime),
            "issued_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        }
        return _json({k: v for k, v in answer.items() if k in self.token_fields})

    def _basic_user(self, value: str) -> str | None:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = self._users.get(user)
        if known is None or not secrets.compare_digest(known[0].encode(), password.encode()):
            return None
        return user

    def _may_pull(self, subject: str | None, name: str) -> bool:
        repository = self._repositories.get(name)
        if repository is None or not repository.private:
            return True  # unknown names are granted: the registry then says NAME_UNKNOWN
        if subject is None:
            return False
        allowed = self._users[subject][1]
        return allowed is None or name in allowed

    # ---- the registry ----------------------------------------------------------------------

    def _authorize(self, name: str | None, headers: dict[str, str]) -> _Reply | None:
        """None when the request may go on, else the 401 to answer."""
        if self.auth == "none":
            return None
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        scope = f',scope="repository:{name}:pull"' if name else ""
        if self.auth == "basic":
            user = self._basic_user(value.strip()) if scheme.lower() == "basic" else None
            if user is not None and (name is None or self._may_pull(user, name)):
                return None
            return _error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": f'Basic realm="{SERVICE}"'},
            )
        challenge = f'Bearer realm="{self.realm}",service="{SERVICE}"{scope}'
        if scheme.lower() != "bearer" or not value.strip():
            return _error(
                401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}
            )
        token = self._tokens.get(value.strip())
        if token is None or token.expires <= self.wall():
            self._tokens.pop(value.strip(), None)
            return _error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": challenge + ',error="invalid_token"'},
            )
        if name is not None and (name, "pull") not in token.access:
            return _error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": challenge + ',error="insufficient_scope"'},
            )
        return None

    def _tags(self, name: str, query: dict[str, list[str]], headers: dict[str, str]) -> _Reply:
        denied = self._authorize(name, headers)
        if denied is not None:
            return denied
        extra: dict[str, str] = {}
        if self._ratelimit is not None:
            limit, remaining, window, wait = self._ratelimit
            if remaining <= 0:
                return _error(
                    429,
                    "TOOMANYREQUESTS",
                    "You have reached your pull rate limit.",
                    {"Retry-After": wait} if wait is not None else {},
                )
            remaining -= 1
            self._ratelimit = (limit, remaining, window, wait)
            extra = {
                "ratelimit-limit": f"{limit};w={window}",
                "ratelimit-remaining": f"{remaining};w={window}",
            }
        if self._limited:
            wait = self._limited.pop(0)
            return _error(
                429,
                "TOOMANYREQUESTS",
                "too many requests",
                {"Retry-After": wait} if wait is not None else {},
            )
        fault = self._take_fault(name)
        if fault == "hang":
            return _Reply(hang=Hang(3600.0, self._hang_release))
        if fault == "500":
            return _error(500, "UNKNOWN", "unknown error")
        if fault == "garbage":
            return _Reply(200, b"<html><body>Welcome to nginx!</body></html>", "text/html", extra)
        if fault == "no_tags":
            return _json({"name": name, "child": []}, headers=extra)
        repository = self._repositories.get(name)
        if repository is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        tags = sorted(repository.tags)
        limit = self.default_page
        if "n" in query:
            raw = query["n"][0]
            if not raw.isdigit() or (self.max_page is not None and int(raw) > self.max_page):
                return _error(
                    400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested"
                )
            limit = int(raw)
        last = query.get("last", [""])[0]
        if last:
            tags = [t for t in tags if t > last]
        more = limit is not None and len(tags) > limit
        page = tags[:limit] if limit is not None else tags
        if fault == "loop":
            again = "&".join(f"{k}={quote(v[0])}" for k, v in query.items())
            extra["Link"] = f'</v2/{name}/tags/list{"?" + again if again else ""}>; rel="next"'
        elif more and page:
            extra["Link"] = f'</v2/{name}/tags/list?n={limit}&last={quote(page[-1])}>; rel="next"'
        body: dict[str, Any] = {"name": name, "tags": page if page or not self.null_empty else None}
        return _json(body, headers=extra)

    def _take_fault(self, name: str) -> str | None:
        entry = self._faults.get(name)
        if entry is None:
            return None
        kind, count = entry
        if count is not None:
            if count <= 1:
                del self._faults[name]
            else:
                self._faults[name] = (kind, count - 1)
        return kind


class SharedClock(FakeClock):
    """A FakeClock whose time lives in shared memory: one process advances it, another reads it.

    ``value`` is a ``multiprocessing.Value("d")`` holding Unix seconds (benchmarks run the
    fake in a child process so that their own CPU time is the client's alone).
    """

    def __init__(self, value: Any) -> None:
        super().__init__(float(value.value))
        self.value = value

    def __call__(self) -> float:
        """The shared time."""
        return float(self.value.value)

    def advance(self, seconds: float) -> None:
        """Move the shared time forward (the fake in the other process reads it on demand)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.value.value = self.value.value + seconds


def serve_child(
    conn: Any, value: Any, repositories: list[tuple[str, list[str]]], **options: Any
) -> None:
    """A ``multiprocessing`` target: serve a FakeRegistry on ``SharedClock(value)`` until told.

    Sends the registry's host on ``conn`` once listening; then answers ``"counts"`` with
    ``(tag-list requests, tokens issued)`` and stops at anything else. ``options`` go to
    :class:`FakeRegistry`.
    """
    fake = FakeRegistry(clock=SharedClock(value), **options)
    for name, tags in repositories:
        fake.add_repository(name, tags)
    with fake:
        conn.send(fake.registry_host)
        while conn.recv() == "counts":
            with fake._lock:
                listed = sum(n for path, n in fake.counts.items() if path.endswith("/tags/list"))
                conn.send((listed, fake.tokens_issued))
                fake.requests.clear()  # a long run's request log would only grow


def main(argv: list[str] | None = None) -> int:
    """Serve a fake registry with a public ``demo/app`` until SIGTERM, printing its URL."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.registry", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeRegistry(port=args.port)
    fake.add_repository("demo/app", ["1.0.0", "1.1.0", "latest"])
    return run_main(fake)


if __name__ == "__main__":
    sys.exit(main())
