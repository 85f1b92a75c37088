"""JFrog Artifactory webhooks (predefined): domain ``docker``, event ``pushed``.

Shape (JFrog's "Webhooks" docs, domain ``docker``; the same fields in
Kargo's and Keel's receivers): ``{"domain": "docker", "event_type":
"pushed", "data": {"repo_key", "path", "name", "sha256", "size",
"image_name", "tag", "platforms": [...]}, "subscription_key", "jpd_origin",
"source"}``. Other docker events (``deleted``, ``promoted``) and other
domains (``artifact``, ``build``, ...) are ignored.

Proof: the webhook's secret token arrives in ``X-JFrog-Event-Auth``,
either as is, or, with "Use secret for payload signing", as the hex
HMAC-SHA256 of the raw body under that secret (Kargo's receiver; a
``sha256=`` prefix is tolerated, since no JFrog page spells the format
out). Both are accepted against ``artifactory_secret_env``; the body is
not decoded before. Without that key configured, a delivery carrying the
header is refused (it cannot be checked) and one without it is proved
like any unsigned sender (the URL secret, and the service's
``auth_header``, which Artifactory can send as a custom header).

The image: Artifactory serves a Docker repository ``<repo_key>`` at
``<host>/<repo_key>/<image_name>`` (the repository path method) or
``<repo_key>.<host>/<image_name>`` (the subdomain method); ``<host>`` is
``jpd_origin``'s. The service's ``repository`` may use either; the port
method (one port per repository) is not told apart, so name such an image
by one of the other two. A webhook on several repositories fires for all
of their images, so another image's push is ignored (202), not refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from noman.auth import secrets_match
from noman.config import HookProofs, hash_secret
from noman.errors import InvalidSignature
from noman.model import Service
from noman.release import Ignored, Release, quote
from noman.senders.common import (
    JSON,
    Headers,
    Sender,
    check_auth_header,
    hmac_hex_matches,
    obj,
    optional_string,
    other_repository,
    ours,
    require_service,
    string,
)

NAME = "artifactory"
HEADER = "x-jfrog-event-auth"
DOCKER = "docker"
PUSHED = "pushed"


def looks_like_headers(headers: Headers) -> bool:
    """Artifactory's own header: its secret token or signature."""
    return HEADER in headers


def looks_like(payload: JSON) -> bool:
    """Artifactory's envelope: ``domain``, ``event_type`` and ``data``."""
    return (
        isinstance(payload.get("domain"), str)
        and isinstance(payload.get("event_type"), str)
        and "data" in payload
    )


def verify(service: Service, proofs: HookProofs, headers: Headers, body: bytes) -> None:
    """Check ``X-JFrog-Event-Auth`` (the token, or the body's HMAC) against the service's keys."""
    presented = headers.get(HEADER)
    if not proofs.artifactory_keys:
        if presented is not None:
            raise InvalidSignature(
                "This delivery carries X-JFrog-Event-Auth, but this service has no Artifactory "
                "secret configured (artifactory_secret_env) to check it against."
            )
        check_auth_header(service, proofs, headers, body)
        return
    if not presented:
        raise InvalidSignature("X-JFrog-Event-Auth is missing.")
    token = hash_secret(presented)
    matched = False
    for key in proofs.artifactory_keys:
        matched |= secrets_match(token, hash_secret(key.decode("utf-8")))
    signature = presented.strip()
    if signature[:7].lower() == "sha256=":
        signature = signature[7:]
    matched |= hmac_hex_matches(proofs.artifactory_keys, body, signature)
    if not matched:
        raise InvalidSignature(
            "X-JFrog-Event-Auth is neither the Artifactory secret nor the body's signature."
        )


def parse(payload: JSON, service: Service | None, headers: Headers) -> Release | Ignored:
    """The release an Artifactory event announces for ``service``, or why it announces none."""
    service = require_service(service, "Artifactory")
    domain = string(payload, "domain", "domain")
    kind = string(payload, "event_type", "event_type")
    if (domain, kind) != (DOCKER, PUSHED):
        return Ignored(
            "not_a_push",
            f"Artifactory event {quote(domain, 30)}/{quote(kind, 30)} is not a Docker tag push "
            "(docker/pushed); nothing to deploy.",
            NAME,
        )
    data = obj(payload, "data", "data")
    repo_key = string(data, "repo_key", "data.repo_key")
    image = string(data, "image_name", "data.image_name")
    origin = optional_string(payload, "jpd_origin", "jpd_origin")
    host = (urlsplit(origin).netloc or None) if origin else None
    path_name = f"{repo_key}/{image}"
    if not (ours(service, host, path_name) or _subdomain(service, host, repo_key, image)):
        seen = f"{host}/{path_name}" if host else path_name
        return other_repository(NAME, "Artifactory", seen, service)
    tag = optional_string(data, "tag", "data.tag")
    if not tag:
        return Ignored("no_tag", "This Artifactory push names no tag; nothing to deploy.", NAME)
    return Release(tag=tag, sender=NAME, repository=service.repository)


def _subdomain(service: Service, host: str | None, repo_key: str, image: str) -> bool:
    """The image as the subdomain method serves it: ``<repo_key>.<host>/<image>``."""
    if host is None:
        configured = service.repository.split("/", 1)[0].lower()
        return configured.startswith(f"{repo_key.lower()}.") and ours(service, configured, image)
    return ours(service, f"{repo_key}.{host}", image)


SENDER = Sender(NAME, parse, headers=looks_like_headers, shape=looks_like, verify=verify)
