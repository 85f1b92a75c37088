"""Docker's registry authentication: challenges, ``config.json`` credentials, cached tokens.

A registry that wants credentials answers ``401`` with a challenge
(``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``). The client then asks
the realm for a token, anonymously (public images) or with ``Authorization: Basic``
from a Docker ``config.json`` (private ones), and repeats its request with
``Authorization: Bearer <token>``. Tokens are cached per (realm, service, scope) until
``issued_at + expires_in`` minus a margin, by an injected clock. A registry that
challenges with ``Basic`` gets the Basic credentials directly.

Credentials (the ``config.json`` text, Basic headers, tokens) never reach a log line,
an exception message, a repr or a metric label: they live in objects whose repr names
hosts only, and every message here is built from hosts, paths and codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from noman.imageref import DOCKER_HUB, DOCKER_HUB_HOSTS

__all__ = [
    "Challenge",
    "DockerCredentials",
    "Token",
    "TokenCache",
    "credentials_key",
    "default_docker_config",
    "parse_challenges",
]

log = logging.getLogger(__name__)

#: Token lifetime when the token server does not say (Docker's token spec).
DEFAULT_EXPIRES_IN = 60.0
# A token is dropped this long before it expires (at most a tenth of its life), so a
# request never leaves with a token that dies on the way.
TOKEN_MARGIN = 10.0


# -- challenges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        """The token server's URL (Bearer) or the protection space's name (Basic)."""
        return self.params.get("realm")

    @property
    def error(self) -> str | None:
        """Why a token was refused: ``invalid_token``, ``insufficient_scope``, or None."""
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value (RFC 9110 section 11.6.1).

    Scheme names and parameter names are case-insensitive and come back lower-cased;
    quoted values may hold commas and backslash escapes (``scope="repository:a:pull,push"``).
    A challenge's token68 form (``Basic abc==``) keeps its value under ``""``. Malformed
    text ends parsing; what was parsed until then is kept.
    """
    parser = _ChallengeParser(header)
    return parser.challenges()


class _ChallengeParser:
    """A small hand-written scanner: regexes trip over quoted commas and escapes."""

    _SEPARATORS = frozenset(' \t,="')

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def challenges(self) -> list[Challenge]:
        found: list[Challenge] = []
        while True:
            self._skip(" \t,")
            scheme = self._token()
            if not scheme:
                return found
            params: dict[str, str] = {}
            self._params(params)
            found.append(Challenge(scheme.lower(), params))

    def _params(self, params: dict[str, str]) -> None:
        while True:
            start = self.pos
            self._skip(" \t")
            name = self._token()
            self._skip(" \t")
            if not name or not self._peek("="):
                # The next challenge's scheme (or the end): give it back.
                self.pos = start
                return
            self.pos += 1
            if self._peek("=") or self._at_end_of_challenge():
                # token68 ("Basic abc==" or "abc="): its padding is not a parameter.
                self._skip("=")
                params[""] = self.text[start : self.pos].strip()
                return
            self._skip(" \t")
            value = self._quoted() if self._peek('"') else self._token()
            params[name.lower()] = value
            self._skip(" \t")
            if not self._peek(","):
                return
            self.pos += 1

    def _at_end_of_challenge(self) -> bool:
        rest = self.text[self.pos :].lstrip(" \t")
        return rest == "" or rest.startswith(",")

    def _peek(self, char: str) -> bool:
        return self.text[self.pos : self.pos + 1] == char

    def _skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def _token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in self._SEPARATORS:
            self.pos += 1
        return self.text[start : self.pos]

    def _quoted(self) -> str:
        self.pos += 1  # the opening quote
        value: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                value.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            else:
                value.append(char)
        return "".join(value)


# -- credentials --------------------------------------------------------------------------


def credentials_key(key: str) -> str:
    """A Docker ``config.json`` ``auths`` key reduced to the registry host it is for.

    ``https://index.docker.io/v1/`` and every other Docker Hub name become Docker Hub's API
    host; a scheme and a path are dropped (``https://ghcr.io/v2/`` is ``ghcr.io``).
    """
    text = key.strip()
    if "://" in text:
        text = urlsplit(text).netloc or text
    host = text.split("/", 1)[0].lower()
    return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


def default_docker_config(environ: Mapping[str, str]) -> Path | None:
    """The ``config.json`` Docker itself would read, when it exists.

    ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set, else
    ``$HOME/.docker/config.json``; None when that file does not exist.
    """
    folder = environ.get("DOCKER_CONFIG")
    if folder:
        path = Path(folder) / "config.json"
    elif environ.get("HOME"):
        path = Path(environ["HOME"]) / ".docker" / "config.json"
    else:
        return None
    return path if path.is_file() else None


def read_docker_config(path: str | Path) -> dict[str, str]:
    """``{registry host: Basic credential (base64 of user:password)}`` from a ``config.json``.

    Entries with ``auth`` and entries with ``username`` and ``password`` are read; identity
    tokens and credential helpers (``credsStore``, ``credHelpers``) are not supported.

    Raises:
        ValueError: when the file cannot be read or is not a Docker config; the message
            never quotes the file's content.
    """
    return _load_docker_config(path)[0]


def _load_docker_config(path: str | Path) -> tuple[dict[str, str], bool]:
    """``read_docker_config``'s answer, and whether the file names credential helpers."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        # JSONDecodeError's text quotes nothing, but its position points into secrets.
        raise ValueError(f"{path}: not a JSON Docker config") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON Docker config")
    auths = data.get("auths") or {}
    if not isinstance(auths, dict):
        raise ValueError(f"{path}: 'auths' is not an object")
    found: dict[str, str] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        basic = _basic_of(entry)
        if basic is not None:
            found.setdefault(credentials_key(str(key)), basic)
    return found, bool(data.get("credsStore") or data.get("credHelpers"))


def _basic_of(entry: Mapping[str, Any]) -> str | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return auth if ":" in decoded else None
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return None


class DockerCredentials:
    """The Basic credentials of a Docker ``config.json``, per registry host.

    The file is read again when its modification time changes, so rotated credentials
    need no restart. A file that stops being readable keeps the last good credentials
    (and is logged once, without its content). The repr names hosts, never secrets.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        # One thread reads a changed file while the others wait for what it read: the
        # stamp alone would send them on with the old (at first: no) credentials.
        self._reload_lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._basic: dict[str, str] = {}
        self._broken = False
        self._warned_helpers = False

    def __repr__(self) -> str:
        return f"DockerCredentials(path={str(self.path)!r}, hosts={sorted(self._hosts())})"

    def _hosts(self) -> list[str]:
        with self._lock:
            return list(self._basic)

    def basic(self, host: str) -> str | None:
        """The base64 ``user:password`` for ``host`` (lower case, with port), or None."""
        self._refresh()
        with self._lock:
            return self._basic.get(host.lower())

    def has(self, host: str) -> bool:
        """True when the config holds credentials for ``host``."""
        return self.basic(host) is not None

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        with self._reload_lock:
            if stamp is not None and stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                basic, helpers = _load_docker_config(self.path)
            except ValueError as exc:
                if not self._broken:
                    log.warning("registry credentials: %s; keeping the last good ones", exc)
                self._broken = True
                return
            if helpers and not self._warned_helpers:
                self._warned_helpers = True
                log.warning(
                    "registry credentials: %s names credential helpers (credsStore/credHelpers); "
                    "Noman reads only the 'auths' entries",
                    self.path,
                )
            with self._lock:
                self._basic, self._broken = basic, False


# -- tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A bearer token and when (by the cache's clock) it stops being used."""

    value: str = field(repr=False)
    expires: float

    def header(self) -> str:
        """The ``Authorization`` header value that carries it."""
        return f"Bearer {self.value}"


def parse_token(answer: Any, now: float) -> Token | None:
    """The token in a token server's JSON answer, received at ``now``; None when absent.

    ``token`` or ``access_token`` (OAuth2's name); ``expires_in`` defaults to 60 s;
    ``issued_at`` (RFC 3339) counts only when it is in the last ``expires_in`` seconds,
    so a token server whose clock is off by hours neither keeps a token forever nor
    makes every token stale on arrival.
    """
    if not isinstance(answer, dict):
        return None
    value = answer.get("token") or answer.get("access_token")
    if not isinstance(value, str) or not value:
        return None
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    issued = _timestamp(answer.get("issued_at"))
    start = issued if issued is not None and now - expires_in < issued <= now else now
    margin = min(TOKEN_MARGIN, expires_in / 10)
    return Token(value, start + float(expires_in) - margin)


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        # Python 3.11 reads RFC 3339 with 'Z' and any fraction length.
        return datetime.fromisoformat(text.replace("z", "Z")).timestamp()
    except ValueError:
        return None


class TokenCache:
    """Tokens per (realm, service, scope), and each registry host's last challenge.

    Remembering the challenge lets the next request of any repository on that host
    fetch (or reuse) its token up front instead of meeting a ``401`` first: one request
    per page while the token lives. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], Token] = {}
        self._challenges: dict[str, Challenge] = {}

    def __repr__(self) -> str:
        with self._lock:
            return f"TokenCache(tokens={len(self._tokens)}, hosts={sorted(self._challenges)})"

    def get(self, key: tuple[str, str, str]) -> Token | None:
        """The token cached under ``key`` while it is still good."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.expires <= self.clock():
                del self._tokens[key]
                token = None
            return token

    def put(self, key: tuple[str, str, str], token: Token) -> None:
        """Cache ``token``."""
        with self._lock:
            self._tokens[key] = token

    def drop(self, key: tuple[str, str, str]) -> None:
        """Forget the token under ``key`` (the registry refused it)."""
        with self._lock:
            self._tokens.pop(key, None)

    def challenge(self, host: str) -> Challenge | None:
        """The last challenge ``host`` answered with."""
        with self._lock:
            return self._challenges.get(host)

    def remember(self, host: str, challenge: Challenge) -> None:
        """Keep ``challenge`` as ``host``'s way of authenticating."""
        with self._lock:
            self._challenges[host] = challenge


def scope_for(path: str) -> str:
    """The token scope to pull (and so list the tags of) repository ``path``."""
    return f"repository:{path}:pull"


def host_of(url: str) -> str:
    """The lower-case ``host[:port]`` of ``url`` (any ``user@`` left out)."""
    return urlsplit(url).netloc.rpartition("@")[2].lower()
