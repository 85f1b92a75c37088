"""Gitea and Forgejo ``package`` webhooks: signed with HMAC-SHA256 over the raw body.

Headers (Gitea's ``services/webhook/deliver.go``; Forgejo adds its own
``X-Forgejo-*`` beside them): ``X-Gitea-Event`` / ``X-Forgejo-Event`` (the
event, ``package``), ``X-Gitea-Delivery`` / ``X-Forgejo-Delivery`` (a UUID),
``X-Gitea-Signature`` / ``X-Forgejo-Signature`` (hex HMAC-SHA256 of the
body, no prefix), and, for GitHub's receivers, ``X-GitHub-Event``,
``X-GitHub-Delivery`` and ``X-Hub-Signature-256: sha256=<hex>``. This row
comes before GitHub's in the table, so a Gitea delivery is never read as
GitHub's (whose ``package`` actions are ``published``/``updated``, where
Gitea's are ``created``/``deleted``).

Payload (``modules/structs/hook.go`` ``PackagePayload``,
``modules/structs/package.go`` ``Package``): ``{"action": "created" |
"deleted", "package": {"id", "owner": {"login", ...}, "repository",
"creator", "type", "name", "version", "html_url", "created_at"},
"organization", "sender"}``. A container image pushed by tag is a version
named after the tag; Gitea lowercases it (``routers/api/packages/
container/manifest.go``), so a tag pattern should expect lower case. A
manifest pushed by digest (one platform of a multi-arch image) is a
version named ``sha256:...``: ignored. The image is
``<host of html_url>/<owner.login>/<name>``.

What deploys: ``package`` events, action ``created``, of a ``container``
package, with a tag. Ignored (202): other events and actions, other package
types, digest versions, and other images (an owner's package hook fires for
all of its packages).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from noman.config import HookProofs
from noman.errors import InvalidSignature
from noman.model import Service
from noman.release import Ignored, Release, quote
from noman.senders.common import (
    JSON,
    Headers,
    Sender,
    delivery_id,
    hmac_hex_matches,
    obj,
    optional_string,
    other_repository,
    ours,
    require_service,
    string,
)

EVENT = "package"
CREATED = "created"
CONTAINER = "container"


def looks_like(headers: Headers) -> bool:
    """Gitea and Forgejo name their event in headers of their own."""
    return "x-gitea-event" in headers or "x-forgejo-event" in headers


def name(headers: Headers) -> str:
    """``forgejo`` when Forgejo sent it, else ``gitea``."""
    return "forgejo" if "x-forgejo-event" in headers else "gitea"


def verify(service: Service, proofs: HookProofs, headers: Headers, body: bytes) -> None:
    """Check Forgejo's, else Gitea's, else GitHub-style signature over the raw body.

    The first of those headers present is the one checked: a wrong one is
    not rescued by another.
    """
    if not proofs.gitea_keys:
        raise InvalidSignature(
            "This service has no Gitea/Forgejo secret configured (gitea_secret_env)."
        )
    for header in ("x-forgejo-signature", "x-gitea-signature"):
        if headers.get(header):
            signature = headers[header]
            break
    else:
        scheme, _, signature = headers.get("x-hub-signature-256", "").partition("=")
        if scheme != "sha256":
            signature = ""
    if not signature:
        raise InvalidSignature(
            "The delivery carries no signature (X-Gitea-Signature); give the webhook a secret."
        )
    if not hmac_hex_matches(proofs.gitea_keys, body, signature):
        raise InvalidSignature("The Gitea/Forgejo signature does not match the body.")


def parse(payload: JSON, service: Service | None, headers: Headers) -> Release | Ignored:
    """The release a verified ``package`` event announces, or why it announces none."""
    service = require_service(service, "Gitea")
    sender = name(headers)
    event = headers.get("x-forgejo-event") or headers.get("x-gitea-event", "")
    if event != EVENT:
        return _ignored("not_a_push", sender, f"event {quote(event, 40)} is not a package event.")
    action = payload.get("action")
    if action != CREATED:
        return _ignored(
            "not_a_push", sender, f"package action {quote(str(action), 40)} is not a publish."
        )
    package = obj(payload, "package", "package")
    kind = string(package, "type", "package.type")
    if kind.lower() != CONTAINER:
        return _ignored(
            "not_a_container", sender, f"package type {quote(kind, 40)} is not a container image."
        )
    owner = string(obj(package, "owner", "package.owner"), "login", "package.owner.login")
    image = string(package, "name", "package.name")
    version = optional_string(package, "version", "package.version") or ""
    url = optional_string(package, "html_url", "package.html_url")
    host = (urlsplit(url).netloc or None) if url else None
    path = f"{owner}/{image}"
    if not ours(service, host, path):
        seen = f"{host}/{path}" if host else path
        return other_repository(sender, sender.capitalize(), seen, service)
    if not version:
        return _ignored("no_tag", sender, "package version names no tag.")
    if version.startswith("sha256:"):
        return _ignored(
            "digest_only",
            sender,
            "package version is a digest (a manifest pushed by digest, such as one platform of a "
            "multi-arch image); the tagged version arrives in its own delivery.",
        )
    delivery = headers.get("x-forgejo-delivery") or headers.get("x-gitea-delivery")
    return Release(
        tag=version,
        sender=sender,
        repository=service.repository,
        delivery_id=delivery_id(sender, delivery),
    )


def _ignored(reason: str, sender: str, message: str) -> Ignored:
    return Ignored(reason, f"{sender.capitalize()} {message} Nothing to deploy.", sender)


SENDER = Sender("gitea", parse, headers=looks_like, verify=verify)
