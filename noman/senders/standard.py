"""Standard Webhooks (signed generic sender, e.g. CI), verified by the reference library.

Headers ``webhook-id``, ``webhook-timestamp`` (integer seconds, within
300 s either way) and ``webhook-signature`` (space-separated
``v1,<base64>``); the body is any body the unsigned senders take (plain or
DockerHub, usually). The library raises bare ``ValueError``/``UnicodeDecodeError``
on some malformed input, so headers are checked here first and anything it
raises becomes a 401. A signed CI caller asks for its release on purpose: a
tag the service does not take is refused (422), never ignored.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from standardwebhooks import Webhook

from noman.config import HookProofs
from noman.errors import InvalidSignature, InvalidTag
from noman.model import Service
from noman.release import Ignored, Release
from noman.senders.common import Headers, Sender

TOLERANCE_SECONDS = 300
MAX_SIGNATURES = 10
_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_SIGNATURE_RE = re.compile(r"^v1a?,[A-Za-z0-9+/=_-]{1,200}$")


def looks_like(headers: Headers) -> bool:
    """Standard Webhooks carry ``webhook-signature`` (or at least ``webhook-id``)."""
    return "webhook-signature" in headers or "webhook-id" in headers


def verify(service: Service, headers: Headers, body: bytes) -> str:
    """Check the signature and time window; returns the message id for de-duplication."""
    if not service.standard_keys:
        raise InvalidSignature("This service has no Standard Webhooks key configured.")
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "").split()
    if not _ID_RE.match(msg_id):
        raise InvalidSignature("webhook-id is missing or malformed.")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise InvalidSignature("webhook-timestamp must be whole seconds.")
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        raise InvalidSignature(f"webhook-timestamp is more than {TOLERANCE_SECONDS}s off.")
    if not 0 < len(signatures) <= MAX_SIGNATURES or not all(
        _SIGNATURE_RE.match(s) for s in signatures
    ):
        raise InvalidSignature("webhook-signature must be 1 to 10 'v1,<base64>' entries.")
    clean = {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": " ".join(signatures),
    }
    for key in service.standard_keys:
        try:
            Webhook(key).verify(body, clean, json_parse=False)
        except Exception:  # noqa: S112 (the library's errors are untyped; try the next key)
            continue
        return str(msg_id)
    raise InvalidSignature("The webhook signature does not match.")


def _verify(service: Service, proofs: HookProofs, headers: Headers, body: bytes) -> None:
    verify(service, headers, body)


def parse(payload: dict[str, Any], service: Service | None, headers: Headers) -> Release:
    """The release the verified body asks for, read by the unsigned senders' shapes."""
    # Imported here: the table in noman.senders imports this module.
    from noman.senders import parse_release

    parsed = parse_release(payload, service)
    if isinstance(parsed, Ignored):
        raise InvalidTag(parsed.message)
    return dataclasses.replace(
        parsed,
        sender=f"standard-{parsed.sender}",
        delivery_id=f"standard:{headers['webhook-id']}",
    )


SENDER = Sender("standard", parse, headers=looks_like, verify=_verify)
