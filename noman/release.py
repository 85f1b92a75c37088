"""The plain values that travel through a deploy: what was pushed, what happened."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The OCI distribution spec's tag grammar.
OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Release:
    """A request to deploy ``tag``, as a sender described it (untrusted until checked)."""

    tag: str
    sender: str
    repository: str | None = None
    force: bool = False
    pushed_at: int | None = None
    # A URL with a per-push token in its path: keep it out of reprs and logs.
    callback_url: str | None = field(default=None, repr=False)
    # Signed senders name each delivery; a replayed one is deployed at most once.
    delivery_id: str | None = None


@dataclass(frozen=True)
class Ignored:
    """A registry event that announces nothing this service deploys: answered 202, no write.

    ``reason`` is a stable code (one of ``IGNORED_REASONS``), ``message`` says
    what was received and why it deploys nothing.
    """

    reason: str
    message: str
    sender: str | None = None

    def as_dict(self, service: str) -> dict[str, Any]:
        """The JSON answer of an ignored hook call."""
        return {"service": service, "ignored": True, "reason": self.reason, "message": self.message}


# The codes an Ignored answer carries; callers may branch on them.
IGNORED_REASONS = (
    "no_tag",  # an untagged manifest (one platform of a multi-arch build), or no tag at all
    "digest_only",  # pushed by digest (Harbor)
    "tag_not_accepted",  # every pushed tag is outside tag_pattern (``latest`` beside releases)
    "not_a_push",  # another event: delete, pull, scan, ...
    "not_a_container",  # a GitHub package event for npm, Maven, ...
    "test_notification",  # the registry's "test" button (Quay), or its ping (ACR)
    "other_repository",  # a registry that sends every repository's events to every endpoint
    "stale_tag",  # older than the deployed tag, from a registry that would retry a 409 for ever
)


@dataclass(frozen=True)
class Rollout:
    """The Nomad job version a rolling deploy registered."""

    job: str
    version: int
    eval_id: str
    namespace: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a deploy did; sent to the caller only once the store confirmed it."""

    service: str
    key: str
    tag: str
    previous: str | None
    changed: bool
    rollout: Rollout | None = None
    duplicate_delivery: bool = False
    # Set while Nomad has not accepted the job version yet: why (a code such as
    # "nomad_unavailable"). The deploy is durable all the same; the reconciler carries it on.
    pending_reason: str | None = None
    # Rollout state when it is neither accepted nor pending (e.g. "cancelled").
    state: str | None = None
    # Set while the attempt waits for approvals or a deploy window (noman.gates): its
    # state and what it waits for; the tag key is not written yet.
    waiting: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        """200 when done (or accepted by Nomad), 202 while the rollout is still pending."""
        waiting = (self.pending_reason, self.state, self.waiting)
        return 202 if any(part is not None for part in waiting) else 200

    def as_dict(self) -> dict[str, Any]:
        """The JSON answer of a successful hook call."""
        body: dict[str, Any] = {
            "service": self.service,
            "key": self.key,
            "tag": self.tag,
            "previous": self.previous,
            "changed": self.changed,
        }
        if self.duplicate_delivery:
            body["duplicate_delivery"] = True
        if self.pending_reason is not None or self.state is not None:
            body["rollout"] = {"state": self.state or "pending", "reason": self.pending_reason}
        if self.waiting is not None:
            body["rollout"] = dict(self.waiting)
        if self.rollout is not None:
            body["deployment"] = {"job": self.rollout.job, "version": self.rollout.version}
            # A job that already ran the tag was not registered again: no evaluation.
            if self.rollout.eval_id:
                body["deployment"]["eval_id"] = self.rollout.eval_id
        return body


def tag_accepted(pattern: re.Pattern[str], tag: str) -> bool:
    """True when ``tag`` is a valid OCI tag that ``pattern`` (a service's tag_pattern) takes."""
    return OCI_TAG.fullmatch(tag) is not None and pattern.fullmatch(tag) is not None


def quote(text: str, limit: int = 60) -> str:
    """Quote untrusted text for a message: cut to ``limit``, repr'd so control characters show."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def split_image(image: str) -> tuple[str, str | None]:
    """``registry:5000/owner/app:tag@sha256:..`` -> (``registry:5000/owner/app``, ``tag``)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None
