"""Harbor and Quay push webhooks: unsigned, like DockerHub; the URL secret is the proof.

Both may announce several tags in one push. The tag deployed is the newest
(by the service's ``tag_pattern``, see ``noman.ordering``) of those the
service accepts; when the pattern gives no order and several are accepted,
the push is refused as ambiguous rather than deploying an arbitrary one.
The repository is the image name as ``docker pull`` spells it, registry host
included (``harbor.example.com/library/app``, ``quay.io/ns/app``).

Harbor 2.x, Default payload format (``src/controller/event/handler/webhook/
artifact/artifact.go``): ``type`` (``PUSH_ARTIFACT``, ``DELETE_ARTIFACT``,
``PULL_ARTIFACT``, ``SCANNING_COMPLETED``, ...), ``event_data.resources[].
{tag, digest, resource_url}``, ``event_data.repository.repo_full_name``.
Harbor puts the *first* pushed tag in ``tag``, or the digest
(``sha256:...``, with ``resource_url`` ``host/ns/app@sha256:...``) when the
artifact was pushed by digest only. Its configured auth header arrives
verbatim, so ``Authorization: Bearer <secret>`` to ``POST /hooks`` works.

Harbor >= 2.8, CloudEvents payload format (``src/pkg/notifier/formats/
cloudevents.go``): ``Content-Type: application/cloudevents+json``,
``specversion``, ``type: harbor.artifact.pushed`` (``harbor.artifact.
deleted``, ``harbor.scan.completed``, ...), ``data`` holding the same
``resources`` and ``repository`` as the Default format.

Harbor 1.x (``type: pushImage``) is refused with a message saying so.

Quay (``notifications/notificationevent.py``, ``endpoints/v2``):
``repository``, ``namespace``, ``name``, ``docker_url``, ``homepage``,
``updated_tags`` (a list; very old Quay sent an object of tag -> image id).
The "Test Notification" button sends ``updated_tags: ["latest", "foo"]``
plus ``pruned_image_count``, which real pushes do not carry: it is ignored.
"""

from __future__ import annotations

from typing import Any

from noman.config import Service
from noman.errors import AmbiguousTags, InvalidPayload
from noman.ordering import newest
from noman.release import Ignored, Release, shown, split_image, tag_accepted
from noman.senders.common import check_repository

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
# Quay's sample repo_push event (RepoPushEvent.get_sample_data).
QUAY_TEST_TAGS = ("latest", "foo")


def is_harbor(payload: dict[str, Any]) -> bool:
    """Harbor's Default format: a ``type`` and ``event_data``."""
    return "event_data" in payload and "type" in payload


def is_harbor_cloudevent(payload: dict[str, Any]) -> bool:
    """Harbor's CloudEvents format: ``specversion`` and a ``harbor.*`` type."""
    kind = payload.get("type")
    return "specversion" in payload and isinstance(kind, str) and kind.startswith("harbor.")


def is_quay(payload: dict[str, Any]) -> bool:
    """Quay's repository notifications carry ``docker_url`` and ``updated_tags``."""
    return "updated_tags" in payload and "docker_url" in payload


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


def parse_quay(payload: dict[str, Any], service: Service) -> Release | Ignored:
    """The release a Quay repository push notification announces, or why it announces none."""
    raw = payload.get("updated_tags")
    docker_url = payload.get("docker_url")
    # Very old Quay sent {"tag": "image id"}; current Quay sends a list of names.
    tags = list(raw) if isinstance(raw, dict) else raw
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidPayload("updated_tags must be a list of strings.")
    if not isinstance(docker_url, str) or not docker_url:
        raise InvalidPayload("docker_url must be a non-empty string.")
    check_repository(service, docker_url)
    if "pruned_image_count" in payload or tuple(tags) == QUAY_TEST_TAGS:
        return Ignored(
            "test_notification",
            "This is Quay's test notification (its tags were never pushed); nothing to deploy.",
            "quay",
        )
    if not tags:
        return Ignored("no_tag", "This Quay push updated no tag; nothing to deploy.", "quay")
    picked = pick_tag(service, tags, "quay")
    if isinstance(picked, Ignored):
        return picked
    return Release(tag=picked, sender="quay", repository=docker_url)


def pick_tag(service: Service, tags: list[str], sender: str | None = None) -> str | Ignored:
    """The newest of ``tags`` the service accepts.

    Ignored when it accepts none; AmbiguousTags when it accepts several and
    its ``tag_pattern`` does not order them.
    """
    accepted = list(dict.fromkeys(t for t in tags if tag_accepted(service.tag_pattern, t)))
    if not accepted:
        names = ", ".join(shown(t, 40) for t in tags[:5])
        return Ignored(
            "tag_not_accepted",
            f"None of the pushed tags ({names}) matches this service's pattern "
            f"{service.tag_pattern.pattern}; nothing to deploy.",
            sender,
        )
    if len(accepted) == 1:
        return accepted[0]
    best = newest(service.tag_pattern, accepted)
    if best is None:
        names = ", ".join(shown(t, 40) for t in accepted[:10])
        raise AmbiguousTags(
            f"This push carries several tags this service accepts ({names}) and its pattern "
            f"{service.tag_pattern.pattern} does not order them; tighten tag_pattern so "
            "that one tag per push matches, or capture a number or a version in its first group."
        )
    return best


def _harbor_event(
    kind: Any, push: str, data: Any, service: Service, where: str
) -> Release | Ignored:
    """Both Harbor formats carry the same resources; only the event names differ."""
    if kind != push:
        return Ignored(
            "not_a_push",
            f"Harbor event {shown(str(kind), 40)} is not a push ({push}); nothing to deploy.",
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
