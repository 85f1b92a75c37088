"""The curl and CI body: ``{"tag": "...", "force": false, "repository": "..."}``.

Only ``tag`` is required. ``force`` is the one way to roll back to an older
tag on purpose. Unknown fields are refused so that a typo such as
``"froce"`` fails loudly instead of deploying something unintended.

Recognised by its shape (a top-level ``tag``); proved by the URL secret (or
the bearer secret of ``POST /hooks``) and the service's ``auth_header``
when it requires one.
"""

from __future__ import annotations

from typing import Any

from noman.errors import InvalidPayload
from noman.model import Service
from noman.release import Release
from noman.senders.common import Headers, Sender

FIELDS = frozenset({"tag", "force", "repository"})


def looks_like(payload: dict[str, Any]) -> bool:
    """A plain body names the tag at the top level."""
    return "tag" in payload


def parse_plain(payload: dict[str, Any]) -> Release:
    """The release a plain JSON body asks for."""
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        # Every one named (a typo rarely comes alone), within a bounded answer.
        names = ", ".join(repr(name[:40]) for name in unknown[:50])
        more = f" and {len(unknown) - 50} more" if len(unknown) > 50 else ""
        raise InvalidPayload(f"Unknown field(s) {names}{more}; allowed: force, repository, tag.")
    tag = payload["tag"]
    if not isinstance(tag, str) or not tag:
        raise InvalidPayload("tag must be a non-empty string.")
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise InvalidPayload("force must be true or false.")
    repository = payload.get("repository")
    if repository is not None and not isinstance(repository, str):
        raise InvalidPayload("repository must be a string.")
    return Release(tag=tag, sender="plain", repository=repository, force=force)


def parse(payload: dict[str, Any], service: Service | None, headers: Headers) -> Release:
    """The table's parser: ``parse_plain``."""
    return parse_plain(payload)


SENDER = Sender("plain", parse, shape=looks_like)
