"""GitHub packages (GHCR) webhooks: signed with HMAC-SHA256 over the raw body.

Headers: ``X-GitHub-Event`` (``package``, or ``registry_package`` from the
older registry; ``ping`` when the hook is created), ``X-GitHub-Delivery``
(stable across redeliveries) and ``X-Hub-Signature-256``. The SHA-1
``X-Hub-Signature`` alone is refused. The image is
``ghcr.io/<namespace>/<name>``; the tag is
``package_version.container_metadata.tag.name`` (``package_version.name``
is the digest, not the tag).

What deploys: ``package`` / ``registry_package`` events, action
``published`` (or ``updated``), of a ``CONTAINER`` package, with a tag.
What is ignored (202): other events and actions, other package types, and
untagged versions (``tag.name == ""``): a multi-arch build publishes one
untagged version per platform manifest beside the tagged index.

Gitea and Forgejo send GitHub's headers too (``X-GitHub-Event``,
``X-Hub-Signature-256``) beside their own: their row comes first in the
table, so this one only sees deliveries without ``X-Gitea-Event`` /
``X-Forgejo-Event``.
"""

from __future__ import annotations

from typing import Any

from noman.auth import secrets_match, sign
from noman.config import HookProofs
from noman.errors import InvalidPayload, InvalidSignature
from noman.model import Service
from noman.release import Ignored, Release, quote
from noman.senders.common import Headers, Sender, check_repository

EVENTS = ("package", "registry_package")
ACTIONS = ("published", "updated")
REGISTRY = "ghcr.io"


def looks_like(headers: Headers) -> bool:
    """GitHub names its event in a header."""
    return "x-github-event" in headers or "x-hub-signature-256" in headers


def verify(service: Service, headers: Headers, body: bytes) -> None:
    """Check ``X-Hub-Signature-256`` over the raw body against the service's keys."""
    if not service.github_keys:
        raise InvalidSignature("This service has no GitHub secret configured.")
    header = headers.get("x-hub-signature-256", "")
    scheme, _, signature = header.partition("=")
    if scheme != "sha256" or len(signature) != 64:
        raise InvalidSignature("X-Hub-Signature-256 must be 'sha256=<64 hex digits>'.")
    presented = header.lower().encode("ascii", errors="replace")
    matched = False
    for key in service.github_keys:
        matched |= secrets_match(presented, sign(key, body).encode())
    if not matched:
        raise InvalidSignature("The GitHub signature does not match the body.")


def event(headers: Headers) -> str:
    """The event name (verify first: the header is not covered by the signature)."""
    return str(headers.get("x-github-event", ""))


def parse_package(
    payload: dict[str, Any], headers: Headers, service: Service | None = None
) -> Release | Ignored:
    """The release a verified ``package`` event announces, or why it announces none."""
    name = event(headers)
    if name not in EVENTS:
        return _ignored("not_a_push", f"GitHub event {quote(name, 40)} is not a package event.")
    action = payload.get("action")
    if action not in ACTIONS:
        return _ignored(
            "not_a_push", f"GitHub package action {quote(str(action), 40)} is not a publish."
        )
    package = payload.get("package") or payload.get("registry_package")
    if not isinstance(package, dict):
        raise InvalidPayload("package must be a JSON object.")
    kind = package.get("package_type") or package.get("ecosystem") or ""
    if not isinstance(kind, str) or not kind:
        raise InvalidPayload("package.package_type must be a non-empty string.")
    if kind.upper() != "CONTAINER":
        return _ignored(
            "not_a_container", f"Package type {quote(kind, 40)} is not a container image."
        )
    namespace, repo = _namespace(package), package.get("name")
    if not isinstance(repo, str) or not repo:
        raise InvalidPayload("package.name must be a non-empty string.")
    repository = f"{REGISTRY}/{namespace}/{repo}".lower()
    version = package.get("package_version")
    metadata = version.get("container_metadata") if isinstance(version, dict) else None
    tag_info = metadata.get("tag") if isinstance(metadata, dict) else None
    tag = tag_info.get("name") if isinstance(tag_info, dict) else None
    if not isinstance(tag, str):
        raise InvalidPayload("package.package_version.container_metadata.tag.name is missing.")
    if not tag:
        if service is not None:
            check_repository(service, repository)
        return _ignored(
            "no_tag",
            "This version is untagged (one platform of a multi-arch build); the tagged "
            "version arrives in its own delivery.",
        )
    delivery = headers.get("x-github-delivery") or None
    return Release(
        tag=tag,
        sender="github",
        repository=repository,
        delivery_id=f"github:{delivery}" if delivery else None,
    )


def _ignored(reason: str, message: str) -> Ignored:
    return Ignored(reason, f"{message} Nothing to deploy.", "github")


def _namespace(package: dict[str, Any]) -> str:
    namespace = package.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        owner = package.get("owner")
        namespace = owner.get("login") if isinstance(owner, dict) else None
    if not isinstance(namespace, str) or not namespace:
        raise InvalidPayload("package.namespace (or package.owner.login) is missing.")
    return namespace


def _verify(service: Service, proofs: HookProofs, headers: Headers, body: bytes) -> None:
    verify(service, headers, body)


def parse(
    payload: dict[str, Any], service: Service | None, headers: Headers
) -> Release | Ignored | None:
    """The table's parser: None for ``ping``, else ``parse_package``."""
    if event(headers) == "ping":
        return None
    return parse_package(payload, headers, service)


SENDER = Sender("github", parse, headers=looks_like, verify=_verify)
