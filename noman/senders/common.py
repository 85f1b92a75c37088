"""What every registry sender applies before a push may reach the deploy policy.

A push for another repository is refused (403: the hook is misdirected or
forged), even when it would otherwise be ignored, so a misconfiguration
always shows. A push for this repository whose tag the service does not
take (``latest`` beside ``release-...``) is ignored (202), because the
registry sent it for a reason outside this service and must not retry it.
"""

from __future__ import annotations

from noman.config import Service
from noman.errors import RepositoryMismatch
from noman.model import same_repository
from noman.release import Ignored, Release, shown, tag_accepted

# Senders that announce pushes on their own; plain and signed CI bodies ask explicitly.
REGISTRY_SENDERS = frozenset({"dockerhub", "github", "harbor", "quay"})


def check_repository(service: Service, repository: str | None) -> None:
    """RepositoryMismatch unless ``repository`` (when given) is the one the service deploys."""
    if repository is not None and not same_repository(service, repository):
        raise RepositoryMismatch(
            f"Repository {shown(repository, 140)} is not the one this service deploys."
        )


def screen(service: Service, parsed: Release | Ignored) -> Release | Ignored:
    """A registry's push of a tag outside ``tag_pattern`` becomes Ignored; the rest passes."""
    if isinstance(parsed, Ignored) or parsed.sender not in REGISTRY_SENDERS:
        return parsed
    # A misdirected push goes on to the deploy policy, which refuses it (403) with the
    # release in hand, so DockerHub still gets its error callback.
    if not same_repository(service, parsed.repository) or tag_accepted(
        service.tag_pattern, parsed.tag
    ):
        return parsed
    return Ignored(
        "tag_not_accepted",
        f"Tag {shown(parsed.tag)} does not match this service's pattern "
        f"{service.tag_pattern.pattern}; nothing to deploy.",
        parsed.sender,
    )
