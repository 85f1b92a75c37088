"""Harbor push webhooks: unsigned, like DockerHub; the URL secret is the proof.

Harbor may announce several tags in one push. The tag deployed is the
newest (by the service's ``tag_pattern``, see ``noman.ordering``) of those
the service accepts; when the pattern gives no order and several are
accepted, the push is refused as ambiguous rather than deploying an
arbitrary one. The repository is the image name as ``docker pull`` spells
it, registry host included (``harbor.example.com/library/app``).

Harbor 2.x, Default payload format (``src/controller/event/handler/webhook/
artifact/artifact.go``): ``type`` (``PUSH_ARTIFACT``, ``DELETE_ARTIFACT``,
``PULL_ARTIFACT``, ``SCANNING_COMPLETED``, ...), ``event_data.resources[].
{tag, digest, resource_url}``, ``event_data.repository.repo_full_name``.
Harbor puts the *first* pushed tag in ``tag``, or the digest
(``sha256:...``, with ``resource_url`` ``host/ns/app@sha256:...``) when the
artifact was pushed by digest only. Its configured auth header arrives
verbatim, so ``Authorization: Bearer <secret>`` to ``POST /hooks`` works,
and so does a service's ``auth_header``.

Harbor >= 2.8, CloudEvents payload format (``src/pkg/notifier/formats/
cloudevents.go``): ``Content-Type: application/cloudevents+json``,
``specversion``, ``type: harbor.artifact.pushed`` (``harbor.artifact.
deleted``, ``harbor.scan.completed``, ...), ``data`` holding the same
``resources`` and ``repository`` as the Default format.

Harbor 1.x (``type: pushImage``) is refused with a message saying so.
"""

from __future__ import annotations

from typing import Any

from noman.errors import InvalidPayload
from noman.model import Service
from noman.release import Ignored, Release, quote, split_image
from noman.senders.common import (
    Headers,
    Sender,
    check_repository,
    pick_tag,
    require_service,
)

HARBOR_PUSH = "PUSH_ARTIFACT"
HARBOR_CLOUDEVENTS_PUSH = "harbor.artifact.pushed"
# Harbor 1.x event types (camelCase); 2.x renamed them all (PUSH_ARTIFACT...).
HARBOR_1_TYPES = frozenset(
    {
        "pushImage",
        "pullImage",
        "deleteImage",
        "uploadChart",
        "downloadChart",
        "deleteChart",
        "scanningCompleted",
        "scanningFailed",
    }
)


def is_harbor(payload: dict[str, Any]) -> bool:
    """Harbor's Default format: a ``type`` and ``event_data``."""
    return "event_data" in payload and "type" in payload


def is_harbor_cloudevent(payload: dict[str, Any]) -> bool:
    """Harbor's CloudEvents format: ``specversion`` and a ``harbor.*`` type."""
    kind = payload.get("type")
    return "specversion" in payload and isinstance(kind, str) and kind.startswith("harbor.")


def parse_harbor(payload: dict[str, Any], service: Service) -> Release | Ignored:
    """The release a Harbor 2.x Default-format event announces, or why it announces none."""
    kind = payload.get("type")
    if isinstance(kind, str) and kind in HARBOR_1_TYPES:
        raise InvalidPayload(
            f"This is Harbor 1.x's webhook format (type {kind!r}), which Noman does not "
            "support; upgrade to Harbor 2, whose PUSH_ARTIFACT events it takes."
        )
    return _harbor_event(kind, HARBOR_PUSH, payload.get("event_data"), service, "event_data")


def parse_harbor_cloudevent(payload: dict[str, Any], service: Service) -> Release | Ignored:
    """The release a Harbor CloudEvents-format event announces, or why it announces none."""
    kind = payload["type"]
    return _harbor_event(kind, HARBOR_CLOUDEVENTS_PUSH, payload.get("data"), service, "data")


def _harbor_event(
    kind: Any, push: str, data: Any, service: Service, where: str
) -> Release | Ignored:
    """Both Harbor formats carry the same resources; only the event names differ."""
    if kind != push:
        return Ignored(
            "not_a_push",
            f"Harbor event {quote(str(kind), 40)} is not a push ({push}); nothing to deploy.",
            "harbor",
        )
    return _harbor_push(data, service, where)


def _harbor_push(data: Any, service: Service, where: str) -> Release | Ignored:
    resources = data.get("resources") if isinstance(data, dict) else None
    if not isinstance(resources, list) or not resources:
        raise InvalidPayload(f"{where}.resources must be a non-empty list.")
    tags, names = [], set()
    for resource in resources:
        if not isinstance(resource, dict):
            raise InvalidPayload(f"Every {where}.resources[] must be an object.")
        tag, url = resource.get("tag"), resource.get("resource_url")
        if tag is not None and not isinstance(tag, str):
            raise InvalidPayload(f"{where}.resources[].tag must be a string.")
        if url is not None and not isinstance(url, str):
            raise InvalidPayload(f"{where}.resources[].resource_url must be a string.")
        if url:
            names.add(split_image(url)[0])
        # Pushed by digest: Harbor puts the digest where the tag would be.
        if tag and not tag.startswith("sha256:") and not (url and "@" in url):
            tags.append(tag)
    if len(names) > 1:
        raise InvalidPayload("The resources name more than one repository.")
    repository = names.pop() if names else _full_name(data, where)
    check_repository(service, repository)
    if not tags:
        return Ignored(
            "digest_only",
            "This Harbor push has no tag (pushed by digest only); nothing to deploy.",
            "harbor",
        )
    picked = pick_tag(service, tags, "harbor")
    if isinstance(picked, Ignored):
        return picked
    return Release(tag=picked, sender="harbor", repository=repository)


def _full_name(data: dict[str, Any], where: str) -> str:
    repository = data.get("repository")
    name = repository.get("repo_full_name") if isinstance(repository, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidPayload(f"{where}.repository.repo_full_name is missing.")
    return name


def looks_like(payload: dict[str, Any]) -> bool:
    """Either of Harbor's formats."""
    return is_harbor(payload) or is_harbor_cloudevent(payload)


def parse(payload: dict[str, Any], service: Service | None, headers: Headers) -> Release | Ignored:
    """The table's parser: whichever of Harbor's formats ``payload`` is."""
    service = require_service(service, "Harbor")
    if is_harbor(payload):
        return parse_harbor(payload, service)
    return parse_harbor_cloudevent(payload, service)


SENDER = Sender("harbor", parse, shape=looks_like)
