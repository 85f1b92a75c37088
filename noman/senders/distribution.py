"""Docker distribution (``registry:2``) and GitLab container registry notifications.

Shape (distribution's ``docs/content/about/notifications.md``, the
``notifications`` package): an envelope ``{"events": [...]}`` sent as
``Content-Type: application/vnd.docker.distribution.events.v1+json``
(distribution 3 says ``v2+json``; both are taken); each event has ``id``,
``timestamp``, ``action`` (``push``, ``pull``, ``delete``, ``mount``),
``target`` (``mediaType``, ``digest``, ``size``, ``repository``, ``url``,
and ``tag`` when a manifest was pushed or pulled by tag), ``request``
(``id``, ``addr``, ``host``, ``method``, ``useragent``), ``actor`` and
``source``. GitLab's registry is a fork of distribution and sends the same
envelope (GitLab's own receiver, ``API::ContainerRegistryEvent``, reads it
with that media type).

Recognised by that Content-Type, else by the shape (an ``events`` list).
Proof: the registry signs nothing; an endpoint's ``headers`` (for example
``Authorization: [Bearer <token>]``) arrive verbatim, so a service's
``auth_header`` is the proof, else the URL secret alone.

A registry sends every repository's events, grouped in envelopes as it
pleases, to every endpoint, and retries a delivery until it gets a 2xx or
3xx. So an envelope is read as a whole: the tagged manifest pushes of
this service's repository (``target.repository``, and ``request.host``
when the event has it) are its candidates, and the newest one the
service accepts is deployed (by ``tag_pattern``'s order; with an unordered
pattern, the last one pushed). Everything else (pulls, deletes, mounts,
blob and digest-only pushes, other repositories) is acknowledged as
ignored. The chosen event's ``id`` names the delivery, so a retried
envelope deploys at most once.
"""

from __future__ import annotations

from typing import Any

from noman.errors import InvalidPayload
from noman.model import Service
from noman.release import Ignored, Release, quote
from noman.senders.common import (
    JSON,
    Headers,
    Sender,
    delivery_id,
    optional_obj,
    optional_string,
    other_repository,
    ours,
    pick_tag,
    require_service,
    string,
)

NAME = "distribution"
MEDIA_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
)
PUSH = "push"
# Envelopes are small; a bound keeps a hostile one from costing much.
MAX_EVENTS = 1000


def looks_like_headers(headers: Headers) -> bool:
    """The envelope's own media type."""
    mimetype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return mimetype in MEDIA_TYPES


def looks_like(payload: JSON) -> bool:
    """An ``events`` list: the envelope, whatever Content-Type a proxy left."""
    return isinstance(payload.get("events"), list)


def parse(payload: JSON, service: Service | None, headers: Headers) -> Release | Ignored:
    """The release an envelope announces for ``service``, or why it announces none.

    Long because it is one pass over the envelope's events, sorting each into tagged pushes,
    other actions on this repository and other repositories, then answering from the three
    in order of precedence.
    """
    service = require_service(service, "registry notification")
    events = payload.get("events")
    if not isinstance(events, list) or not events:
        raise InvalidPayload("events must be a non-empty list.")
    if len(events) > MAX_EVENTS:
        raise InvalidPayload(f"An envelope of more than {MAX_EVENTS} events is not read.")
    tagged: list[tuple[str, str | None]] = []  # (tag, event id), in the order pushed
    mine: list[str] = []  # the actions of this repository's other events
    others: list[str] = []
    for n, event in enumerate(events):
        where = f"events[{n}]"
        if not isinstance(event, dict):
            raise InvalidPayload(f"{where} must be a JSON object.")
        action = string(event, "action", f"{where}.action")
        target = optional_obj(event, "target", f"{where}.target")
        if target is None:
            if action == PUSH:
                raise InvalidPayload(f"{where}.target must be a JSON object.")
            continue
        repository = optional_string(target, "repository", f"{where}.target.repository")
        if not repository:
            if action == PUSH:
                raise InvalidPayload(f"{where}.target.repository must be a non-empty string.")
            continue
        host = _host(event, where)
        if not ours(service, host, repository):
            others.append(f"{host}/{repository}" if host else repository)
            continue
        tag = optional_string(target, "tag", f"{where}.target.tag")
        if action == PUSH and tag:
            tagged.append((tag, event.get("id")))
        else:
            mine.append("digest-only push" if action == PUSH else action)
    if tagged:
        picked = pick_tag(service, [tag for tag, _ in tagged], NAME, latest_wins=True)
        if isinstance(picked, Ignored):
            return picked
        chosen = [event_id for tag, event_id in tagged if tag == picked][-1]
        return Release(
            tag=picked,
            sender=NAME,
            repository=service.repository,
            delivery_id=delivery_id(NAME, chosen),
        )
    return _untagged(service, mine, others)


def _untagged(service: Service, mine: list[str], others: list[str]) -> Ignored:
    """Why an envelope that pushes no tag of ``service`` is ignored.

    ``mine`` holds the actions of the service's own events, ``others`` the other
    repositories the envelope names.
    """
    if "digest-only push" in mine:
        return Ignored(
            "digest_only",
            "This push of the service's repository names no tag (a blob, or a manifest pushed "
            "by digest such as one platform of a multi-arch image); nothing to deploy.",
            NAME,
        )
    if mine:
        actions = ", ".join(quote(a, 20) for a in dict.fromkeys(mine))
        return Ignored(
            "not_a_push",
            f"This envelope's events for the service's repository ({actions}) push no tag; "
            "nothing to deploy.",
            NAME,
        )
    if others:
        return other_repository(NAME, "registry notification", others[0], service)
    return Ignored("not_a_push", "This envelope names no repository; nothing to deploy.", NAME)


def _host(event: dict[str, Any], where: str) -> str | None:
    """The registry host the event's request named (None when the event has no request)."""
    request = optional_obj(event, "request", f"{where}.request")
    if request is None:
        return None
    return optional_string(request, "host", f"{where}.request.host") or None


SENDER = Sender(NAME, parse, headers=looks_like_headers, shape=looks_like)
