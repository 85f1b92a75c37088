"""DockerHub's push webhook: unsigned; the URL secret is its only proof.

Fields used: ``push_data.tag``, ``repository.repo_name``, and as untrusted
hints ``push_data.pushed_at`` and ``callback_url``. Everything else in the
payload is descriptive and ignored (shape: docs.docker.com, "Docker Hub
webhooks", example payload; older payloads also list ``push_data.images``
and, before 2017, had no ``tag``: such a push is ignored, there is nothing
to deploy).

Recognised by its shape (``push_data`` and ``repository``); proved by the
URL secret, and the service's ``auth_header`` when it requires one (which
DockerHub cannot send: such a service takes no DockerHub pushes).
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
    obj,
    optional_string,
    string,
)


def looks_like(payload: dict[str, Any]) -> bool:
    """DockerHub payloads carry ``push_data`` and ``repository``."""
    return "push_data" in payload and "repository" in payload


def parse_push(payload: dict[str, Any], service: Service | None = None) -> Release | Ignored:
    """The release a DockerHub push payload announces, or why it announces none."""
    push = obj(payload, "push_data", "push_data")
    repository = obj(payload, "repository", "repository")
    repo_name = string(repository, "repo_name", "repository.repo_name")
    tag = optional_string(push, "tag", "push_data.tag")
    if not tag:
        if service is not None:
            check_repository(service, repo_name)
        return Ignored(
            "no_tag", "This DockerHub push names no tag; nothing to deploy.", "dockerhub"
        )
    pushed_at = push.get("pushed_at")
    if isinstance(pushed_at, bool) or not isinstance(pushed_at, int | float | type(None)):
        raise InvalidPayload("push_data.pushed_at must be a number.")
    callback = optional_string(payload, "callback_url", "callback_url")
    return Release(
        tag=tag,
        sender="dockerhub",
        repository=repo_name,
        pushed_at=int(pushed_at) if pushed_at is not None else None,
        callback_url=callback or None,
    )


def parse(payload: dict[str, Any], service: Service | None, headers: Headers) -> Release | Ignored:
    """The table's parser: ``parse_push``."""
    return parse_push(payload, service)


SENDER = Sender("dockerhub", parse, shape=looks_like)
