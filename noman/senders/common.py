"""What every sender shares: its row in the table, the proofs, the repository and tag rules.

A sender is one ``Sender`` row (see ``noman.senders`` for the table and its
order): how it is recognised (its own headers, else the JSON body's shape),
how a delivery is verified, how it is parsed.

A push for another repository is refused (403: the hook is misdirected or
forged), even when it would otherwise be ignored, so a misconfiguration
always shows; except from the registries whose one endpoint receives every
repository's events (a registry:2 or GitLab notification endpoint, an
unscoped ACR webhook, an Artifactory webhook on several repositories, a
Gitea owner's package hook), where another repository's event is normal
and is ignored (202, ``other_repository``). A push for this repository whose tag
the service does not take (``latest`` beside ``release-...``) is ignored
(202), because the registry sent it for a reason outside this service and
must not retry it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from noman.auth import secrets_match
from noman.config import HookProofs, hash_secret
from noman.errors import AmbiguousTags, InvalidPayload, InvalidSignature, RepositoryMismatch
from noman.imageref import names_image, same_image
from noman.model import Service
from noman.ordering import newest
from noman.release import Ignored, Release, quote, tag_accepted

# Request headers with lower-case names (HTTP header names are case-insensitive).
Headers = Mapping[str, str]
JSON = dict[str, Any]

# Senders that announce pushes on their own; plain and signed CI bodies ask explicitly.
REGISTRY_SENDERS = frozenset(
    {
        "dockerhub",
        "github",
        "harbor",
        "quay",
        "distribution",
        "acr",
        "artifactory",
        "gitea",
        "forgejo",
    }
)
# Registries that retry a refused delivery until it is accepted, holding back every later
# event for that endpoint (distribution's retrying sink): a refusal no retry can change
# (an older tag) is acknowledged as ignored for them, never answered 409.
RETRYING_SENDERS = frozenset({"distribution"})

_HEX64 = re.compile(r"[0-9a-f]{64}")


def never(_: Any) -> bool:
    """The test of a row that is not recognised that way (no header test, or no shape)."""
    return False


def check_auth_header(
    service: Service, proofs: HookProofs, headers: Headers, body: bytes = b""
) -> None:
    """InvalidSignature unless the header the service requires carries its value.

    The proof of unsigned senders: every unsigned delivery must carry it
    once it is configured, whatever its format, or anyone holding the URL
    could send a plain body instead. Compared as sha256 digests, in
    constant time, over every configured value; the value is never echoed.
    """
    if not proofs.auth_header_hashes:
        return
    presented = headers.get(proofs.auth_header.lower())
    if presented is None:
        raise InvalidSignature(
            f"This service requires the {proofs.auth_header} header (auth_header); it is missing."
        )
    digest = hash_secret(presented)
    matched = False
    for expected in proofs.auth_header_hashes:
        matched |= secrets_match(digest, expected)
    if not matched:
        raise InvalidSignature(
            f"The {proofs.auth_header} header is not the value this service requires."
        )


@dataclass(frozen=True)
class Sender:
    """One row of the senders table: how a delivery is recognised, verified and parsed.

    ``headers`` recognises the sender by its own request headers: tried for
    every row before the body is even decoded, so a signature is checked
    over the raw bytes. ``shape`` recognises it by the decoded JSON object.
    ``verify`` raises ``InvalidSignature`` (401) unless the delivery carries
    what proves it (a signature, a token); by default, the proof every
    unsigned sender shares (``check_auth_header``), so a row cannot leave
    it out by omission;
    ``parse`` turns the verified JSON into a ``Release``, an ``Ignored``
    (202), or None for a ping. ``service`` is None only for
    ``parse_release`` called without one (DockerHub and plain bodies).
    """

    name: str
    parse: Callable[[JSON, Service | None, Headers], Release | Ignored | None]
    headers: Callable[[Headers], bool] = never
    shape: Callable[[JSON], bool] = never
    verify: Callable[[Service, HookProofs, Headers, bytes], None] = check_auth_header


def hmac_hex_matches(keys: Iterable[bytes], body: bytes, presented: str) -> bool:
    """True when ``presented`` is the hex HMAC-SHA256 of ``body`` under one of ``keys``.

    Every key is tried (constant time per key, no early exit on a match).
    """
    candidate = presented.strip().lower()
    if not _HEX64.fullmatch(candidate):
        return False
    matched = False
    for key in keys:
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        matched |= secrets_match(candidate.encode("ascii"), expected.encode("ascii"))
    return matched


def check_repository(service: Service, repository: str | None) -> None:
    """RepositoryMismatch unless ``repository`` (when given) is the image the service deploys."""
    if repository is not None and not same_image(service.repository, repository):
        raise RepositoryMismatch(
            f"Repository {quote(repository, 140)} is not the one this service deploys."
        )


def ours(service: Service, host: str | None, path: str) -> bool:
    """True when a registry's (``host``, ``path``) names the image the service deploys."""
    return names_image(service.repository, host, path)


def other_repository(sender: str, label: str, name: str, service: Service) -> Ignored:
    """A feed's event for another repository: acknowledged, nothing to deploy.

    ``sender`` is the sender's code, ``label`` how the message names it.
    """
    return Ignored(
        "other_repository",
        f"This {label} event is for {quote(name, 140)}, not {quote(service.repository, 140)} "
        "(this registry sends every repository's events to every endpoint); nothing to deploy.",
        sender,
    )


def require_service(service: Service | None, sender: str) -> Service:
    """``service``; InvalidPayload when a payload that needs one is read without it."""
    if service is None:
        raise InvalidPayload(f"A {sender} payload is read for a service; none was given.")
    return service


def canonical(service: Service, release: Release) -> Release:
    """``release`` naming the service's own spelling of its image when it is that image.

    Registries spell one image several ways (``docker.io/library/nginx``,
    ``nginx``); the deploy policy compares names as written.
    """
    if release.repository is None or release.repository == service.repository:
        return release
    if same_image(service.repository, release.repository):
        return replace(release, repository=service.repository)
    return release


def screen(service: Service, parsed: Release | Ignored) -> Release | Ignored:
    """A registry's push of a tag outside ``tag_pattern`` becomes Ignored; the rest passes."""
    if isinstance(parsed, Ignored) or parsed.sender not in REGISTRY_SENDERS:
        return parsed
    # A misdirected push goes on to the deploy policy, which refuses it (403) with the
    # release in hand, so DockerHub still gets its error callback.
    if (
        parsed.repository is not None and not same_image(service.repository, parsed.repository)
    ) or tag_accepted(service.tag_pattern, parsed.tag):
        return parsed
    return Ignored(
        "tag_not_accepted",
        f"Tag {quote(parsed.tag)} does not match this service's pattern "
        f"{service.tag_pattern.pattern}; nothing to deploy.",
        parsed.sender,
    )


def pick_tag(
    service: Service, tags: list[str], sender: str | None = None, latest_wins: bool = False
) -> str | Ignored:
    """The newest of ``tags`` the service accepts.

    Ignored when it accepts none. When it accepts several and its
    ``tag_pattern`` does not order them: AmbiguousTags, or with
    ``latest_wins`` the last of them (``tags`` in the order they were pushed).
    """
    accepted = list(dict.fromkeys(t for t in tags if tag_accepted(service.tag_pattern, t)))
    if not accepted:
        names = ", ".join(quote(t, 40) for t in tags[:5])
        return Ignored(
            "tag_not_accepted",
            f"None of the pushed tags ({names}) matches this service's pattern "
            f"{service.tag_pattern.pattern}; nothing to deploy.",
            sender,
        )
    if len(accepted) == 1:
        return accepted[0]
    best = newest(service.tag_pattern, accepted)
    if best is None and latest_wins:
        return accepted[-1]
    if best is None:
        names = ", ".join(quote(t, 40) for t in accepted[:10])
        raise AmbiguousTags(
            f"This push carries several tags this service accepts ({names}) and its pattern "
            f"{service.tag_pattern.pattern} does not order them; tighten tag_pattern so "
            "that one tag per push matches, or capture a number or a version in its first group."
        )
    return best


def string(data: JSON, name: str, where: str) -> str:
    """``data[name]``, a non-empty string; else InvalidPayload naming ``where`` (``target.tag``)."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidPayload(f"{where} must be a non-empty string.")
    return value


def optional_string(data: JSON, name: str, where: str) -> str | None:
    """``data[name]`` when present and not null: a string, else InvalidPayload."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidPayload(f"{where} must be a string.")
    return value


def obj(data: JSON, name: str, where: str) -> JSON:
    """``data[name]``, a JSON object; else InvalidPayload naming ``where``."""
    value = data.get(name)
    if not isinstance(value, dict):
        raise InvalidPayload(f"{where} must be a JSON object.")
    return value


def optional_obj(data: JSON, name: str, where: str) -> JSON | None:
    """``data[name]`` when present and not null: a JSON object, else InvalidPayload."""
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise InvalidPayload(f"{where} must be a JSON object.")
    return value


_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def delivery_id(sender: str, value: Any) -> str | None:
    """``<sender>:<value>`` when ``value`` is a plain token (it lands in the record), else None."""
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return f"{sender}:{value}"
    return None
