"""Azure Container Registry webhooks: one event per request, unsigned.

Shape (Microsoft's "Azure Container Registry webhook reference"):
``{"id", "timestamp", "action", "target": {"mediaType", "size", "digest",
"length", "repository", "tag"}, "request": {"id", "host", "method",
"useragent"}}``. ``action`` is ``push`` (an image), ``delete`` (a manifest
or repository), ``chart_push`` / ``chart_delete`` (Helm charts),
``quarantine``, or ``ping`` (the portal's and ``az acr webhook ping``'s
test). The image is ``<request.host>/<target.repository>``
(``myregistry.azurecr.io/hello-world``).

Recognised by its shape (``id`` and ``action``, and a ``target`` unless it
is a ping). Proof: ACR signs nothing and adds no
header of its own, but sends the webhook's custom headers
(``--headers "Authorization=Bearer <token>"``), so a service's
``auth_header`` is the proof, else the URL secret alone.

An unscoped webhook fires for every repository of the registry, so a push
of another repository is ignored (202), not refused. Other actions, and
pushes by digest, are ignored; a ping is ignored as the test notification
it is (a 2xx is all ACR's ping checks).
"""

from __future__ import annotations

from noman.model import Service
from noman.release import Ignored, Release, quote
from noman.senders.common import (
    JSON,
    Headers,
    Sender,
    delivery_id,
    obj,
    optional_obj,
    optional_string,
    other_repository,
    ours,
    require_service,
    string,
)

NAME = "acr"
PUSH = "push"
PING = "ping"


def looks_like(payload: JSON) -> bool:
    """An ACR event: ``id``, ``action``, and a ``target`` unless a ping.

    ``timestamp`` is not required: no Microsoft page shows the ping's body.
    """
    action = payload.get("action")
    return isinstance(action, str) and "id" in payload and ("target" in payload or action == PING)


def parse(payload: JSON, service: Service | None, headers: Headers) -> Release | Ignored:
    """The release an ACR event announces for ``service``, or why it announces none."""
    service = require_service(service, "Azure Container Registry")
    action = string(payload, "action", "action")
    if action == PING:
        return Ignored(
            "test_notification",
            "This is Azure Container Registry's ping; nothing to deploy.",
            NAME,
        )
    if action != PUSH:
        return Ignored(
            "not_a_push",
            f"Azure Container Registry action {quote(action, 40)} is not an image push; "
            "nothing to deploy.",
            NAME,
        )
    target = obj(payload, "target", "target")
    repository = string(target, "repository", "target.repository")
    request = optional_obj(payload, "request", "request")
    host = optional_string(request, "host", "request.host") if request is not None else None
    if not ours(service, host or None, repository):
        name = f"{host}/{repository}" if host else repository
        return other_repository(NAME, "Azure Container Registry", name, service)
    tag = optional_string(target, "tag", "target.tag")
    if not tag:
        return Ignored(
            "digest_only",
            "This Azure Container Registry push names no tag (pushed by digest); "
            "nothing to deploy.",
            NAME,
        )
    return Release(
        tag=tag,
        sender=NAME,
        repository=service.repository,
        delivery_id=delivery_id(NAME, payload.get("id")),
    )


SENDER = Sender(NAME, parse, shape=looks_like)
