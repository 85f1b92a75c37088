"""URL secrets: finding a service by its secret in constant time, and making new ones."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from noman.config import hash_secret
from noman.model import Service

SECRET_BYTES = 32  # 256 bits; the floor is 128


def secrets_match(presented: bytes, expected: bytes) -> bool:
    """Compare two secret digests in constant time; the only comparison Noman uses."""
    return hmac.compare_digest(presented, expected)


def sign(key: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(key, body)>``: GitHub's scheme, also Noman's notifications."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def find_service(services: Iterable[Service], secret: str) -> Service | None:
    """The service whose secret is ``secret``, or None.

    Every configured digest is compared, even after a match, so the time
    taken says nothing about which service (if any) the secret belongs to.
    """
    presented = hash_secret(secret)
    found = None
    for service in services:
        for expected in service.secret_hashes:
            if secrets_match(presented, expected) and found is None:
                found = service
    return found


def new_secret() -> tuple[str, str]:
    """A fresh URL-safe secret and the sha256 hex to put in the config."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return secret, hashlib.sha256(secret.encode()).hexdigest()
