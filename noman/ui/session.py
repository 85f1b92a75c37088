"""Who is logged in: the signed session cookie, the admin token check, CSRF tokens.

The cookie holds a signed session: when the login happened, a CSRF token and
a fingerprint of the admin token digest that was used (so removing a token
from the config ends its sessions). Never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface

from noman.auth import secrets_match
from noman.config import hash_secret

CSRF_FIELD = "csrf_token"


class UISessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, ``Secure`` whenever the request came over TLS."""

    salt = "noman-ui-session"

    def get_cookie_secure(self, app: Flask) -> bool:
        """True over https, including https a trusted proxy reported (ProxyFix x_proto)."""
        return request.is_secure


def token_matches(token: str, hashes: Iterable[bytes]) -> bytes | None:
    """The configured digest ``token`` hashes to, compared in constant time, or None."""
    presented = hash_secret(token)
    found = None
    for expected in hashes:  # no early exit: the time says nothing about a match
        if secrets_match(presented, expected) and found is None:
            found = expected
    return found


def fingerprint(digest: bytes) -> str:
    """A short, one-way label of a token digest, kept in the session."""
    return hashlib.sha256(b"noman-ui-session:" + digest).hexdigest()[:16]


def log_in(digest: bytes) -> None:
    """Start a fresh session for the holder of the token whose digest is ``digest``."""
    session.clear()
    session.permanent = True
    session["since"] = int(time.time())
    session["token"] = fingerprint(digest)
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def logged_in(hashes: Iterable[bytes], hours: float) -> bool:
    """True when the session started less than ``hours`` ago, with a token still accepted.

    The cookie's own signed timestamp moves whenever the session changes (a
    flash message, say); the login time does not, so a login ends on time.
    """
    label, since = session.get("token"), session.get("since")
    if not isinstance(label, str) or not isinstance(since, int):
        return False
    if time.time() - since > hours * 3600:
        return False
    return any(hmac.compare_digest(label, fingerprint(digest)) for digest in hashes)


def csrf_token() -> str:
    """This session's CSRF token (made on first use, e.g. by the login form)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def csrf_ok() -> bool:
    """True when the POSTed form carries this session's CSRF token."""
    expected = session.get(CSRF_FIELD)
    presented = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
