"""DockerHub's push webhook: unsigned; the URL secret is its only proof.

Fields used: ``push_data.tag``, ``repository.repo_name``, and as untrusted
hints ``push_data.pushed_at`` and ``callback_url``. Everything else in the
payload is descriptive and ignored (shape: docs.docker.com, "Docker Hub
webhooks", example payload; older payloads also list ``push_data.images``
and, before 2017, had no ``tag``: such a push is ignored, there is nothing
to deploy).
"""

from __future__ import annotations

from typing import Any

from noman.config import Service
from noman.errors import InvalidPayload
from noman.release import Ignored, Release
from noman.senders.common import check_repository


def looks_like(payload: dict[str, Any]) -> bool:
    """DockerHub payloads carry ``push_data`` and ``repository``."""
    return "push_data" in payload and "repository" in payload


def parse_push(payload: dict[str, Any], service: Service | None = None) -> Release | Ignored:
    """The release a DockerHub push payload announces, or why it announces none."""
    push = _object(payload, "push_data")
    repository = _object(payload, "repository")
    repo_name = _string(repository, "repo_name", "repository.repo_name")
    tag = push.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise InvalidPayload("push_data.tag must be a string.")
    if not tag:
        if service is not None:
            check_repository(service, repo_name)
        return Ignored(
            "no_tag", "This DockerHub push names no tag; nothing to deploy.", "dockerhub"
        )
    pushed_at = push.get("pushed_at")
    if isinstance(pushed_at, bool) or not isinstance(pushed_at, int | float | type(None)):
        raise InvalidPayload("push_data.pushed_at must be a number.")
    callback = payload.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise InvalidPayload("callback_url must be a string.")
    return Release(
        tag=tag,
        sender="dockerhub",
        repository=repo_name,
        pushed_at=int(pushed_at) if pushed_at is not None else None,
        callback_url=callback or None,
    )


def _object(payload: dict[str, Any], name: str) -> dict[str, Any]:
    value = payload.get(name)
    if not isinstance(value, dict):
        raise InvalidPayload(f"{name} must be a JSON object.")
    return value


def _string(data: dict[str, Any], name: str, path: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidPayload(f"{path} must be a non-empty string.")
    return value
