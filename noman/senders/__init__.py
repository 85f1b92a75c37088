"""Turning a request into a ``Release``: one table of senders, tried in one order.

Each sender is one module with one ``Sender`` row (``common.Sender``): how
it recognises a delivery, how it verifies it, how it parses it. A request
is matched in two passes over ``SENDERS``:

1. by headers, before the body is decoded, so that a signature is checked
   over the raw bytes: Gitea/Forgejo (they also send GitHub's headers, so
   they come first), GitHub packages, Standard Webhooks, Docker
   distribution and GitLab (their envelope's media type), Artifactory
   (``X-JFrog-Event-Auth``); then the known foreign senders (GitLab project
   hooks, Bitbucket, Gogs, Nexus, SNS, binary CloudEvents);
2. else by the JSON object's shape: DockerHub, plain curl/CI, Harbor
   (both formats), Quay, the distribution envelope, Azure Container
   Registry, Artifactory; then the known foreign shapes (EventBridge, SNS,
   Pub/Sub, other CloudEvents).

The row found verifies the delivery (a signature, a token, or the
service's ``auth_header``; 401 ``invalid_signature`` when wrong), then
parses it. A body no row recognises is refused (400 ``invalid_payload``)
after the service's ``auth_header`` is checked, naming what Noman takes;
a foreign one, naming what it looks like. Adding a registry is one module
and one row below. Nothing here trusts the body: every field is
type-checked and anything odd is a 4xx.

A registry event that announces nothing this service deploys (no tag, a
digest only, a tag outside ``tag_pattern``, another event, a test
notification, another repository from a registry that sends all of them)
is an ``Ignored``, answered 202 so the registry neither marks the delivery
failed nor retries it. An explicit request (plain body, signed CI body)
names its tag on purpose, so a bad one stays a 422.
"""

from __future__ import annotations

import json
import math
from typing import Any

from noman.config import HookProofs
from noman.errors import InvalidJSON, InvalidPayload
from noman.model import Service
from noman.release import Ignored, Release
from noman.senders import (
    acr,
    artifactory,
    distribution,
    dockerhub,
    foreign,
    gitea,
    github,
    harbor,
    plain,
    quay,
    standard,
)
from noman.senders.common import Headers, Sender, canonical, check_auth_header, never, screen

__all__ = [
    "SENDERS",
    "Headers",
    "Sender",
    "by_headers",
    "by_shape",
    "parse_json",
    "parse_release",
    "read_release",
]

#: Every sender, in the order they are tried (see the module docstring): the rows
#: with a header test first, then the rows with a shape test.
SENDERS: tuple[Sender, ...] = (
    gitea.SENDER,
    github.SENDER,
    standard.SENDER,
    dockerhub.SENDER,
    plain.SENDER,
    harbor.SENDER,
    quay.SENDER,
    distribution.SENDER,
    acr.SENDER,
    artifactory.SENDER,
    *foreign.FOREIGN_BY_HEADERS,
    *foreign.FOREIGN_BY_SHAPE,
)

# The rows each pass asks: a row without a header test (or a shape test) is left out
# of that pass rather than asked and answering False, once per request.
_BY_HEADERS = tuple(row for row in SENDERS if row.headers is not never)
_BY_SHAPE = tuple(row for row in SENDERS if row.shape is not never)

MAX_DEPTH = 32


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode ``body`` as one strict JSON object (UTF-8, no duplicates, no NaN)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not valid UTF-8.") from None
    if not text.strip():
        raise InvalidJSON("The body is empty; send a JSON object.")
    # Deeper than MAX_DEPTH needs more opening brackets than that: the exact count (a
    # Python loop over every character, 19 us of a 668-byte DockerHub push) runs only then.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise InvalidJSON(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {_reason(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidJSON("The body must be a JSON object.")
    return data


def read_release(
    service: Service, headers: Headers, body: bytes, proofs: HookProofs
) -> Release | Ignored | None:
    """What a request asks ``service`` to deploy: a Release, an Ignored, or None for a ping.

    ``headers`` has lower-case names; ``proofs`` is what proves a delivery to
    this service besides its URL secret (``Settings.proofs_for``).
    """
    sender = by_headers(headers)
    payload = None
    if sender is None:
        payload = parse_json(body)
        sender = by_shape(payload)
        if sender is None:
            # Say nothing about formats to a caller without the service's proof.
            check_auth_header(service, proofs, headers, body)
            raise InvalidPayload(_UNRECOGNISED)
    sender.verify(service, proofs, headers, body)
    parsed = sender.parse(parse_json(body) if payload is None else payload, service, headers)
    if parsed is None:
        return None
    parsed = screen(service, parsed)
    return parsed if isinstance(parsed, Ignored) else canonical(service, parsed)


def parse_release(payload: dict[str, Any], service: Service | None = None) -> Release | Ignored:
    """The release a payload asks for, read by shape alone (no headers, no proof checked).

    The body of a Standard Webhooks delivery, once verified; also what tests
    call. ``service`` picks among several pushed tags and names the image;
    without it only DockerHub and plain bodies can be read.
    """
    sender = by_shape(payload)
    if sender is None:
        raise InvalidPayload(_UNRECOGNISED)
    parsed = sender.parse(payload, service, {})
    if parsed is None:
        raise InvalidPayload("This payload is a ping; it names no release.")
    return parsed


_UNRECOGNISED = f"Unrecognised payload. {foreign.TAKEN}"


def by_headers(headers: Headers) -> Sender | None:
    """The first row of the table that recognises these (lower-case) headers."""
    return next((row for row in _BY_HEADERS if row.headers(headers)), None)


def by_shape(payload: dict[str, Any]) -> Sender | None:
    """The first row of the table that recognises this JSON object's shape."""
    return next((row for row in _BY_SHAPE if row.shape(payload)), None)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    # 1e400 parses to inf: valid JSON, but no real payload field holds one.
    value = float(literal)
    if math.isinf(value):
        raise InvalidPayload(f"The number {literal[:40]} is too large.")
    return value


# Built once: json.loads with these hooks would build a decoder per request.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_float=_finite_float
)


def _depth(text: str) -> int:
    """Nesting depth, counted before parsing so a deep body never reaches the parser."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)[:120]
