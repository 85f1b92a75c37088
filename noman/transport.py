"""HTTP for Noman's clients: sessions set up as Consul's and Nomad's CLIs would be, what a
failure on the wire was, in words, and what answers at an address that is not the server
it should be.

Consul and Nomad are reached directly: ``HTTP(S)_PROXY`` from the environment is ignored
(a proxy meant for the internet must not see ACL tokens, and scanning the environment
costs about a millisecond per request). ``*_TLS_SERVER_NAME`` names the certificate to
expect when the address is an IP or a load balancer.

``problem`` is the one table of wire failures every client words its errors with
(Consul, Nomad, the registries, Prometheus). ``scheme_problem`` and ``identify`` look at
a failure for an address that answers but is not what it should be: the other one of
Consul and Nomad (each found by an endpoint only it has and that needs no token:
Consul's ``/v1/catalog/datacenters``, Nomad's ``/v1/regions``), or TLS on one side only.
They run only after a call failed, so a healthy cluster never pays for them.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

#: What Go's net/http (Consul's and Nomad's server) answers to plain HTTP on its TLS port.
HTTP_ON_HTTPS = "Client sent an HTTP request to an HTTPS server"
#: OpenSSL's words for a TLS handshake answered by a server that speaks plain HTTP.
_PLAIN_HTTP_MARKS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure")
#: An endpoint only each server has, answered without a token with a list of names.
_OWN_ENDPOINT = {"consul": "catalog/datacenters", "nomad": "regions"}
Server = Literal["consul", "nomad"]

# Checked in order: the first class that matches names the problem.
_PROBLEMS: tuple[tuple[type[requests.RequestException], str], ...] = (
    (requests.exceptions.SSLError, "TLS handshake or certificate failed"),
    (requests.exceptions.ProxyError, "the proxy refused or failed"),
    (requests.exceptions.ConnectionError, "cannot connect (refused, reset or unknown host)"),
    (requests.exceptions.ChunkedEncodingError, "the answer was cut off"),
    (requests.exceptions.ContentDecodingError, "the answer could not be decoded"),
    (requests.exceptions.TooManyRedirects, "too many redirects"),
    (requests.exceptions.InvalidURL, "the URL is not valid"),
)


class ServerNameAdapter(HTTPAdapter):
    """HTTPS with SNI and hostname verification against a fixed name."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        """urllib3 pools that send and verify ``server_name`` instead of the URL's host."""
        pool_kwargs["server_hostname"] = self.server_name
        pool_kwargs["assert_hostname"] = self.server_name
        super().init_poolmanager(*args, **pool_kwargs)


def configure(session: requests.Session, tls_server_name: str | None = None) -> requests.Session:
    """``session`` without environment proxies, verifying ``tls_server_name`` if given."""
    session.trust_env = False
    if tls_server_name:
        session.mount("https://", ServerNameAdapter(tls_server_name))
    return session


def problem(exc: requests.RequestException, timeout: float) -> str:
    """What went wrong on the wire, in words; never the exception's own text (URLs)."""
    reason = exc.args[0] if exc.args else None
    if isinstance(exc, requests.Timeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return f"no answer within {timeout:g}s"
    for kind, words in _PROBLEMS:
        if isinstance(exc, kind):
            return words
    return f"request failed ({type(exc).__name__})"


def scheme_problem(
    address: str,
    exc: requests.RequestException | None = None,
    answer: requests.Response | None = None,
    timeout: float = 2.0,
) -> str | None:
    """ "speaks HTTPS; ..." (or plain HTTP) when the failure shows the address's scheme is wrong.

    A TLS server that resets a plain request without a word is asked for a TLS handshake
    (nothing else is sent) to tell it from a server that merely hung up.
    """
    scheme = urlsplit(address).scheme
    if answer is not None:
        if scheme == "http" and answer.status_code == 400 and HTTP_ON_HTTPS in answer.text[:200]:
            return "speaks HTTPS; write the address with https://"
        return None
    if exc is None:
        return None
    if scheme == "https" and isinstance(exc, requests.exceptions.SSLError):
        if any(mark in str(exc) for mark in _PLAIN_HTTP_MARKS):
            return "speaks plain HTTP, not HTTPS; write the address with http://"
        return None
    reason = exc.args[0] if exc.args else None
    hung_up = isinstance(reason, urllib3.exceptions.ProtocolError)
    if scheme == "http" and hung_up and _speaks_tls(address, timeout):
        return "speaks HTTPS; write the address with https://"
    return None


def _speaks_tls(address: str, timeout: float) -> bool:
    """Whether a TLS handshake with the address's host and port completes (unverified)."""
    url = urlsplit(address)
    if not url.hostname:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((url.hostname, url.port or 80), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=url.hostname),
        ):
            return True
    except (OSError, ValueError):
        return False


def marked(answer: requests.Response, server: Server) -> bool:
    """Whether the answer bears one of the server's own headers (``X-Consul-*``, ``X-Nomad-*``)."""
    prefix = f"x-{server}-"
    return any(name.lower().startswith(prefix) for name in answer.headers)


def identify(
    session: requests.Session,
    address: str,
    server: Server,
    timeout: float,
    **request: Any,
) -> bool:
    """Whether ``server`` answers its own token-free endpoint at ``address`` (False: unknown)."""
    try:
        answer = session.get(
            f"{address}/v1/{_OWN_ENDPOINT[server]}",
            timeout=timeout,
            allow_redirects=False,
            **request,
        )
        names = answer.json() if answer.status_code == 200 else None
    except Exception:  # a probe after a failure: whatever goes wrong, the answer is "unknown"
        return False
    return marked(answer, server) or (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    )


def what_answers(
    answer: requests.Response,
    foreign: bool,
    *,
    address: str,
    expected: Server,
    other_here: str,
    refusals: frozenset[int],
    other_answers: Callable[[], bool],
) -> str | None:
    """What answers at ``address`` instead of ``expected``, judged from an unusable answer.

    None when ``expected`` itself may have said it (its own headers, a 5xx, one of its
    ``refusals``). ``foreign`` is an answer of the wrong shape; ``other_answers`` probes
    the other server's own endpoint, only when the answer leaves the question open.
    """
    where = scheme_problem(address, answer=answer)
    if where is not None or marked(answer, expected):
        return where
    if marked(answer, "nomad" if expected == "consul" else "consul"):
        return other_here
    if answer.status_code >= 500 or answer.status_code in refusals:
        return None  # a proxy's outage page, or a refusal: the server's words for those
    html = described(answer).startswith("an HTML")
    if not (foreign or html or answer.status_code == 404):
        return None
    if other_answers():
        return other_here
    if foreign or html:
        return f"does not answer like {expected.capitalize()}: it sent {described(answer)}"
    return None


def described(answer: requests.Response) -> str:
    """What an answer is, for a message: "an HTML page", "HTTP 404", ..."""
    kind = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if kind == "text/html" or answer.text[:100].lstrip().lower().startswith(("<!doctype", "<html")):
        return f"an HTML page (HTTP {answer.status_code})"
    return f"HTTP {answer.status_code}"
