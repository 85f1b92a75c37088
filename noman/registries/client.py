"""The OCI Distribution API, as far as polling needs it: a repository's tags, every page.

``RegistryClient.list_tags`` asks ``GET /v2/<name>/tags/list`` and follows
``Link: <…>; rel="next"`` pages (relative links resolved against the page's URL, the
same registry only, no page twice, at most ``max_pages``), authenticating with Docker's
token flow (``noman.registries.auth``). Every failure leaves as one of the
``Registry*`` errors of ``noman.errors``, mapped in one place (``_mapped`` and its
tables, the wire's words from ``noman.transport.problem``), as httpx maps httpcore's
exceptions:

    connection refused, DNS, TLS, timeouts, 5xx     RegistryUnavailable     (temporary)
    429 (Retry-After in seconds or an HTTP date)    RegistryRateLimited     (temporary)
    401 / 403 after the token flow                  RegistryUnauthorized
    404 (NAME_UNKNOWN)                              RegistryNotFound
    200 that is not a tag list, endless pages       RegistryInvalidAnswer
    any other status                                RegistryError

Messages name the registry host, the repository and the registry's error codes, never
a header value or a body. Docker Hub's ``ratelimit-remaining`` header feeds the
``noman_registry_ratelimit_remaining{registry}`` gauge.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from noman import __version__, transport
from noman.errors import (
    RegistryError,
    RegistryInvalidAnswer,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryUnauthorized,
    RegistryUnavailable,
)
from noman.imageref import ImageReference, is_loopback, parse_reference
from noman.metrics import REGISTRY_RATELIMIT_REMAINING
from noman.registries.auth import (
    Challenge,
    DockerCredentials,
    Token,
    TokenCache,
    host_of,
    parse_challenges,
    parse_token,
    scope_for,
)

if TYPE_CHECKING:
    from noman.config import PollSettings

__all__ = ["USER_AGENT", "RegistryClient", "parse_link_next", "parse_retry_after"]

log = logging.getLogger(__name__)

USER_AGENT = f"noman/{__version__} (registry poll)"
#: Pages followed at most for one tag list: a registry paging forever is an invalid answer.
MAX_PAGES = 100
#: Bytes read at most from one answer (a tag list page or a token).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: The longest Retry-After honoured, in seconds: a day.
MAX_RETRY_AFTER = 86400
# Registry error codes are upper-case words (OCI distribution spec): anything else in
# that field is not quoted back.
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,40}")
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")
_ACCEPT = "application/json"


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer, its body read within the list's deadline."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes


def parse_retry_after(value: str | None, now: float) -> int | None:
    """Seconds to wait from a ``Retry-After`` (delay-seconds or an HTTP date); None if unreadable.

    ``now`` is the wall-clock time (Unix seconds) an HTTP date is measured from. The
    result is between 0 and ``MAX_RETRY_AFTER``.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return int(min(max(math.ceil(seconds), 0), MAX_RETRY_AFTER))


def parse_link_next(header: str | None) -> str | None:
    """The target of the ``rel="next"`` link in a ``Link`` header (RFC 8288), as written."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        target, params = match.group(1), match.group(2)
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel":
                rels = value.strip().strip('"').lower().split()
                if "next" in rels:
                    return target.strip()
    return None


def _ratelimit_remaining(value: str | None) -> float | None:
    """``76`` of Docker Hub's ``ratelimit-remaining: 76;w=21600``."""
    if not value:
        return None
    head = value.split(";", 1)[0].split(",", 1)[0].strip()
    return float(head) if head.isdigit() else None


def _error_codes(body: bytes) -> str:
    """The registry's error codes (``NAME_UNKNOWN, DENIED``) from an error body, or ""."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    codes = [e.get("code") for e in errors if isinstance(e, dict)]
    return ", ".join(c for c in codes if isinstance(c, str) and _ERROR_CODE.fullmatch(c))[:200]


class _Deadline:
    """The time one ``list_tags`` call may take, every page and token included."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends - time.monotonic()


class RegistryClient:
    """Lists a repository's tags on any registry, with tokens cached across calls.

    One ``requests.Session`` (its connection pool shared by the threads that call
    ``list_tags`` at once; the token cache has its own lock). Proxies come from the
    environment (``HTTPS_PROXY``, ``NO_PROXY``), read once per registry host, and
    never for loopback hosts; ``.netrc`` is never read.

    Args:
        credentials: the Basic credentials of a Docker ``config.json``; None: anonymous.
        timeout: seconds for connecting and for each read of one request.
        insecure_registries: ``host[:port]`` entries reached over plain HTTP.
        clock: wall-clock time (Unix seconds) for token expiry and HTTP dates.
        page_size: ``n`` asked of the registry per page; None lets the registry decide.
        max_pages: pages followed at most for one tag list.
        total_timeout: seconds one ``list_tags`` may take in all; default 3 times ``timeout``.
        verify: TLS verification (a CA bundle path, or False); default the environment's
            ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else certifi's.
    """

    def __init__(
        self,
        credentials: DockerCredentials | None = None,
        *,
        timeout: float = 10.0,
        insecure_registries: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        page_size: int | None = None,
        max_pages: int = MAX_PAGES,
        total_timeout: float | None = None,
        pool_size: int = 10,
        verify: bool | str | None = None,
    ) -> None:
        self.credentials = credentials or DockerCredentials(None)
        self.timeout = timeout
        self.total_timeout = total_timeout if total_timeout is not None else 3 * timeout
        self.insecure_registries = tuple(h.lower() for h in insecure_registries)
        self.clock = clock
        self.page_size = page_size
        self.max_pages = max_pages
        self.tokens = TokenCache(clock)
        if verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._verify: bool | str = verify if verify is not None and verify != "" else True
        self._session = requests.Session()
        # Environment proxies are looked up once per host below, not on every request.
        self._session.trust_env = False
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": _ACCEPT})
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._proxies: dict[str, dict[str, str]] = {}
        self._proxies_lock = threading.Lock()
        # The token scope that worked per repository, when a registry asked for another
        # than the usual one: the next call asks for it up front.
        self._scopes: dict[tuple[str, str], str] = {}

    @classmethod
    def from_settings(
        cls, settings: PollSettings, clock: Callable[[], float] = time.time
    ) -> RegistryClient:
        """A client as ``[poll]`` configures it."""
        return cls(
            DockerCredentials(settings.docker_config),
            timeout=settings.timeout,
            insecure_registries=settings.insecure_registries,
            clock=clock,
            pool_size=max(10, settings.max_parallel),
        )

    def __repr__(self) -> str:
        return f"RegistryClient(timeout={self.timeout}, credentials={self.credentials!r})"

    def reference(self, repository: str) -> ImageReference:
        """``repository`` parsed with this client's insecure registries."""
        return parse_reference(repository, self.insecure_registries)

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # -- tags ------------------------------------------------------------------------------

    def list_tags(self, ref: ImageReference) -> list[str]:
        """Every tag of ``ref``'s repository, across all pages, in the registry's order.

        Raises:
            RegistryError: a subclass saying what went wrong (see the module docstring).
        """
        deadline = _Deadline(self.total_timeout)
        url = ref.tags_url + (f"?n={self.page_size}" if self.page_size else "")
        tags: list[str] = []
        seen_tags: set[str] = set()
        seen_urls: set[str] = set()
        for _ in range(self.max_pages):
            seen_urls.add(url)
            answer = self._get(ref, url, deadline)
            for tag in self._page_tags(ref, answer):
                if tag not in seen_tags:
                    seen_tags.add(tag)
                    tags.append(tag)
            link = parse_link_next(answer.headers.get("Link"))
            if link is None:
                return tags
            url = self._next_url(ref, answer.url, link)
            if url in seen_urls:
                raise RegistryInvalidAnswer(f"{ref}: the next page is a page already read")
        raise RegistryInvalidAnswer(f"{ref}: more than {self.max_pages} pages of tags")

    def _page_tags(self, ref: ImageReference, answer: _Answer) -> list[str]:
        try:
            data = json.loads(answer.body)
        except ValueError:
            raise RegistryInvalidAnswer(f"{ref}: the tag list is not JSON") from None
        if not isinstance(data, dict) or "tags" not in data:
            raise RegistryInvalidAnswer(f"{ref}: the answer has no 'tags'")
        tags = data["tags"]
        if tags is None:  # an empty repository, as the reference registry says it
            return []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RegistryInvalidAnswer(f"{ref}: 'tags' is not a list of strings")
        return tags

    def _next_url(self, ref: ImageReference, current: str, link: str) -> str:
        url = urljoin(current, link)
        here, there = urlsplit(ref.base_url), urlsplit(url)
        # The next request carries our token: it may only go where the first one went.
        if (there.scheme, there.netloc.lower()) != (here.scheme, here.netloc.lower()):
            raise RegistryInvalidAnswer(f"{ref}: the registry's next page is on another host")
        return url

    # -- one authorized request --------------------------------------------------------------

    def _get(self, ref: ImageReference, url: str, deadline: _Deadline) -> _Answer:
        key, header = self._prepared(ref, deadline)
        answer = self._fetch(ref, url, header, deadline)
        if answer.status == 401:
            challenge = self._challenge(ref, answer)
            if key is not None:
                self.tokens.drop(key)
            key, header = self._answer_challenge(ref, challenge, deadline)
            answer = self._fetch(ref, url, header, deadline)
            if answer.status == 401:
                if key is not None:
                    self.tokens.drop(key)
                raise self._refused(ref, answer)
        if answer.status != 200:
            raise self._status_error(ref, answer)
        return answer

    def _prepared(
        self, ref: ImageReference, deadline: _Deadline
    ) -> tuple[tuple[str, str, str] | None, str | None]:
        """The Authorization this host asked for last time, got ahead of its 401."""
        challenge = self.tokens.challenge(ref.host)
        if challenge is None:
            return None, None
        if challenge.scheme == "basic":
            basic = self.credentials.basic(ref.host)
            return None, f"Basic {basic}" if basic else None
        scope = self._scopes.get((ref.host, ref.path), scope_for(ref.path))
        return self._bearer(ref, challenge, scope, deadline)

    def _answer_challenge(
        self, ref: ImageReference, challenge: Challenge, deadline: _Deadline
    ) -> tuple[tuple[str, str, str] | None, str | None]:
        self.tokens.remember(ref.host, challenge)
        if challenge.scheme == "basic":
            basic = self.credentials.basic(ref.host)
            if basic is None:
                raise RegistryUnauthorized(
                    f"{ref}: the registry wants credentials and the Docker config has none "
                    f"for {ref.host}"
                )
            return None, f"Basic {basic}"
        scope = challenge.params.get("scope") or scope_for(ref.path)
        if scope != scope_for(ref.path):
            self._scopes[(ref.host, ref.path)] = scope
        return self._bearer(ref, challenge, scope, deadline)

    def _challenge(self, ref: ImageReference, answer: _Answer) -> Challenge:
        challenges = parse_challenges(answer.headers.get("WWW-Authenticate", ""))
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme and (scheme == "basic" or challenge.realm):
                    return challenge
        raise RegistryUnauthorized(f"{ref}: 401 without a Bearer or Basic challenge")

    def _refused(self, ref: ImageReference, answer: _Answer) -> RegistryUnauthorized:
        if self.credentials.has(ref.host):
            return RegistryUnauthorized(
                f"{ref}: credentials refused (the Docker config's credentials for {ref.host} "
                "do not grant pull on this repository)"
            )
        return RegistryUnauthorized(
            f"{ref}: no credentials for private repository (the Docker config has none for "
            f"{ref.host})"
        )

    def _bearer(
        self, ref: ImageReference, challenge: Challenge, scope: str, deadline: _Deadline
    ) -> tuple[tuple[str, str, str], str]:
        realm = challenge.realm or ""
        service = challenge.params.get("service", "")
        key = (realm, service, scope)
        token = self.tokens.get(key)
        if token is None:
            token = self._fetch_token(ref, realm, service, scope, deadline)
            self.tokens.put(key, token)
        return key, token.header()

    def _fetch_token(
        self, ref: ImageReference, realm: str, service: str, scope: str, deadline: _Deadline
    ) -> Token:
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryInvalidAnswer(f"{ref}: the registry's challenge names no token server")
        basic = self.credentials.basic(ref.host) if self._may_send_credentials(realm) else None
        params = {"scope": scope, **({"service": service} if service else {})}
        url = requests.Request("GET", realm, params=params).prepare().url or realm
        answer = self._fetch(ref, url, f"Basic {basic}" if basic else None, deadline)
        if answer.status in (401, 403):
            if basic:
                raise RegistryUnauthorized(
                    f"{ref}: credentials refused by the token server {host_of(realm)}"
                )
            raise RegistryUnauthorized(
                f"{ref}: the token server {host_of(realm)} wants credentials and the Docker "
                f"config has none for {ref.host}"
            )
        if answer.status != 200:
            raise self._status_error(ref, answer, what=f"the token server {host_of(realm)}")
        try:
            data = json.loads(answer.body)
        except ValueError:
            data = None
        token = parse_token(data, self.clock())
        if token is None:
            raise RegistryInvalidAnswer(f"{ref}: the token server's answer holds no token")
        return token

    def _may_send_credentials(self, realm: str) -> bool:
        """Basic credentials travel only over HTTPS, or to loopback and insecure hosts."""
        if urlsplit(realm).scheme == "https":
            return True
        host = host_of(realm)
        return is_loopback(host) or host in self.insecure_registries

    # -- HTTP and the error tables --------------------------------------------------------------

    def _fetch(
        self, ref: ImageReference, url: str, authorization: str | None, deadline: _Deadline
    ) -> _Answer:
        headers = {"Authorization": authorization} if authorization else {}
        with self._mapped(ref, deadline):
            remaining = deadline.remaining()
            if remaining <= 0:
                raise RegistryUnavailable(
                    f"{ref.host}: no complete answer within {deadline.seconds:g}s"
                )
            timeout = min(self.timeout, remaining)
            response = self._session.get(
                url,
                headers=headers,
                timeout=(timeout, timeout),
                stream=True,
                proxies=self._proxies_for(url),
                verify=self._verify,
            )
            try:
                body = self._read(ref, response, deadline)
            finally:
                response.close()
        if host_of(response.url) == ref.host:  # not a token server's headers
            self._note_ratelimit(ref, response.headers)
        return _Answer(response.url, response.status_code, response.headers, body)

    def _read(self, ref: ImageReference, response: requests.Response, deadline: _Deadline) -> bytes:
        body = bytearray()
        for chunk in response.iter_content(65536):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise RegistryInvalidAnswer(f"{ref}: an answer over {MAX_BODY_BYTES} bytes")
            if deadline.remaining() <= 0:
                raise RegistryUnavailable(
                    f"{ref.host}: no complete answer within {deadline.seconds:g}s"
                )
        return bytes(body)

    @contextlib.contextmanager
    def _mapped(self, ref: ImageReference, deadline: _Deadline) -> Iterator[None]:
        """requests' exceptions become Registry errors: the one place they are translated."""
        try:
            yield
        except RegistryError:
            raise
        except requests.RequestException as exc:
            # Not chained: an environment proxy's URL, credentials included, may be in it.
            problem = transport.problem(exc, self.timeout)
            raise RegistryUnavailable(f"{ref.host}: {problem}") from None

    def _status_error(
        self, ref: ImageReference, answer: _Answer, what: str = "the registry"
    ) -> RegistryError:
        codes = _error_codes(answer.body)
        said = f"{answer.status}" + (f" {codes}" if codes else "")
        if answer.status == 429:
            wait = parse_retry_after(answer.headers.get("Retry-After"), self.clock())
            after = f"; retry after {wait}s" if wait is not None else ""
            return RegistryRateLimited(f"{ref}: {what} answered {said}{after}", retry_after=wait)
        if answer.status >= 500:
            return RegistryUnavailable(f"{ref}: {what} answered {said}")
        error = _STATUS_ERRORS.get(answer.status, RegistryError)
        return error(f"{ref}: {what} answered {said}")

    def _note_ratelimit(self, ref: ImageReference, headers: Mapping[str, str]) -> None:
        remaining = _ratelimit_remaining(headers.get("ratelimit-remaining"))
        if remaining is not None:
            REGISTRY_RATELIMIT_REMAINING.labels(ref.host).set(remaining)

    def _proxies_for(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._proxies_lock:
            proxies = self._proxies.get(origin)
            if proxies is None:
                loopback = is_loopback(host_of(url))
                found = {} if loopback else requests.utils.get_environ_proxies(origin)
                proxies = {k: v for k, v in found.items() if k in ("http", "https")}
                self._proxies[origin] = proxies
            return proxies


# Statuses below 500 other than 401 and 429 (answered above).
_STATUS_ERRORS: dict[int, type[RegistryError]] = {
    401: RegistryUnauthorized,
    403: RegistryUnauthorized,
    404: RegistryNotFound,
}
