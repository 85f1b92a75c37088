"""Named operators and what they control: tokens, approvals, deploy windows.

An operator (``[[operators]]``) is a person with a name and a token, kept as
sha256 digests only and compared in constant time. The token logs into the
status page and authorises the operator API (``noman.api``); a service's hook
secret never does, so the CI that pushes a release cannot approve it. What a
service asks of its operators (``approvals``, ``approval_ttl``,
``approve_rollbacks``, its deploy windows) is a ``Controls`` value, kept beside
``Service`` and found with ``Settings.controls_for``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from noman.windows import Window


@dataclass(frozen=True)
class Operator:
    """A person who may approve, reject and override: a name and the digests of their token."""

    name: str
    token_hashes: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class Controls:
    """What one service asks before a deploy lands: approvals, deploy windows."""

    approvals: int = 0
    approval_ttl: float = 24 * 3600.0
    approve_rollbacks: bool = False
    #: The service's own windows followed by the global ``[[windows]]``.
    windows: tuple[Window, ...] = ()

    @property
    def active(self) -> bool:
        """True when deploys of this service may wait for anything."""
        return self.approvals > 0 or bool(self.windows)


NO_CONTROLS = Controls()


def token_digest(token: str) -> bytes:
    """The sha256 digest a token is stored and compared as."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def find_operator(operators: Iterable[Operator], token: str) -> Operator | None:
    """The operator whose token is ``token``, or None.

    Every digest is compared, even after a match, so the time taken says
    nothing about which operator (if any) the token belongs to.
    """
    presented = token_digest(token)
    found = None
    for operator in operators:
        for expected in operator.token_hashes:
            if hmac.compare_digest(presented, expected) and found is None:
                found = operator
    return found


def operator_named(operators: Iterable[Operator], name: str) -> Operator | None:
    """The configured operator called ``name`` (the CLI's ``--as``), or None."""
    return next((o for o in operators if o.name == name), None)
