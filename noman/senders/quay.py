"""Quay push notifications: unsigned, like DockerHub; the URL secret is the proof.

Quay (``notifications/notificationevent.py``, ``endpoints/v2``):
``repository``, ``namespace``, ``name``, ``docker_url``, ``homepage``,
``updated_tags`` (a list; very old Quay sent an object of tag -> image id).
A push may update several tags: the newest the service accepts is deployed
(see ``pick_tag``). The "Test Notification" button sends
``updated_tags: ["latest", "foo"]`` plus ``pruned_image_count``, which real
pushes do not carry: it is ignored.
"""

from __future__ import annotations

from typing import Any

from noman.errors import InvalidPayload
from noman.model import Service
from noman.release import Ignored, Release
from noman.senders.common import (
    Headers,
    Sender,
    check_repository,
    pick_tag,
    require_service,
)

# Quay's sample repo_push event (RepoPushEvent.get_sample_data).
QUAY_TEST_TAGS = ("latest", "foo")


def is_quay(payload: dict[str, Any]) -> bool:
    """Quay's repository notifications carry ``docker_url`` and ``updated_tags``."""
    return "updated_tags" in payload and "docker_url" in payload


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


def parse(payload: dict[str, Any], service: Service | None, headers: Headers) -> Release | Ignored:
    """The table's parser: ``parse_quay``."""
    return parse_quay(payload, require_service(service, "Quay"))


SENDER = Sender("quay", parse, shape=is_quay)
