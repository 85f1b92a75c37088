"""Harbor and Quay push webhooks: unsigned, like DockerHub; the URL secret is the proof.

Both may announce several tags in one push. The tag deployed is the
newest (by the service's ``tag_pattern``) of those the service accepts.
The repository is the image name as ``docker pull`` spells it, registry
host included (``harbor.example.com/library/app``, ``quay.io/ns/app``).

Harbor: ``type: PUSH_ARTIFACT``, ``event_data.resources[].{tag,
resource_url}``, ``event_data.repository.repo_full_name``; its configured
auth header arrives verbatim, so ``Authorization: Bearer <secret>`` to
``POST /hooks`` works. Quay: ``docker_url``, ``updated_tags[]``.
"""

from __future__ import annotations

from typing import Any

from noman.config import Service
from noman.deploy import OCI_TAG, release_order
from noman.errors import InvalidPayload, InvalidTag
from noman.release import Release, split_image


def is_harbor(payload: dict[str, Any]) -> bool:
    """Harbor's events have a ``type`` and ``event_data``."""
    return "event_data" in payload and "type" in payload


def is_quay(payload: dict[str, Any]) -> bool:
    """Quay's push notifications list ``updated_tags``."""
    return "updated_tags" in payload and "docker_url" in payload


def parse_harbor(payload: dict[str, Any], service: Service) -> Release:
    """The release a Harbor ``PUSH_ARTIFACT`` event announces."""
    if payload.get("type") != "PUSH_ARTIFACT":
        raise InvalidPayload(f"Harbor event {str(payload.get('type'))[:40]!r} is not a push.")
    data = payload["event_data"]
    resources = data.get("resources") if isinstance(data, dict) else None
    if not isinstance(resources, list) or not resources:
        raise InvalidPayload("event_data.resources must be a non-empty list.")
    tags, names = [], set()
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("tag"), str):
            raise InvalidPayload("Every event_data.resources[] needs a string tag.")
        tags.append(resource["tag"])
        url = resource.get("resource_url")
        if isinstance(url, str) and url:
            names.add(split_image(url)[0])
    if len(names) > 1:
        raise InvalidPayload("The resources name more than one repository.")
    repository = names.pop() if names else _full_name(data)
    return Release(tag=pick_tag(service, tags), sender="harbor", repository=repository)


def parse_quay(payload: dict[str, Any], service: Service) -> Release:
    """The release a Quay repository push notification announces."""
    tags = payload.get("updated_tags")
    docker_url = payload.get("docker_url")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or not tags:
        raise InvalidPayload("updated_tags must be a non-empty list of strings.")
    if not isinstance(docker_url, str) or not docker_url:
        raise InvalidPayload("docker_url must be a non-empty string.")
    return Release(tag=pick_tag(service, tags), sender="quay", repository=docker_url)


def pick_tag(service: Service, tags: list[str]) -> str:
    """The newest of ``tags`` the service accepts; InvalidTag when it accepts none."""
    accepted = [t for t in tags if OCI_TAG.fullmatch(t) and service.tag_pattern.fullmatch(t)]
    if not accepted:
        shown = ", ".join(repr(t[:40]) for t in tags[:5])
        raise InvalidTag(
            f"None of the pushed tags ({shown}) matches {service.tag_pattern.pattern}."
        )
    ordered = [(release_order(service, t), t) for t in accepted]
    if all(isinstance(order, int) for order, _ in ordered) or all(
        isinstance(order, str) for order, _ in ordered
    ):
        return max(ordered)[1]
    return accepted[-1]


def _full_name(data: dict[str, Any]) -> str:
    repository = data.get("repository")
    name = repository.get("repo_full_name") if isinstance(repository, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidPayload("event_data.repository.repo_full_name is missing.")
    return name
