"""Turning a request into a ``Release``: verify, strict JSON, one parser per sender.

Signed senders (GitHub packages, Standard Webhooks) are recognised by their
headers and verified over the raw body before any parsing; unsigned bodies
(DockerHub, Harbor, Quay, plain curl/CI) are recognised by shape. Nothing
here trusts the body: every field is type-checked and anything odd is a 4xx.

A registry event that announces nothing this service deploys (no tag, a
digest only, a tag outside ``tag_pattern``, another event, a test
notification) is an ``Ignored``, answered 202 so the registry neither marks
the delivery failed nor retries it. An explicit request (plain body, signed
CI body) names its tag on purpose, so a bad one stays a 422.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from noman.config import Service
from noman.errors import InvalidJSON, InvalidPayload, InvalidTag
from noman.release import Ignored, Release
from noman.senders import dockerhub, github, plain, registries, standard
from noman.senders.common import screen

MAX_DEPTH = 32


# Request headers with lower-case names (HTTP header names are case-insensitive).
Headers = Mapping[str, str]


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode ``body`` as one strict JSON object (UTF-8, no duplicates, no NaN)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not valid UTF-8.") from None
    if not text.strip():
        raise InvalidJSON("The body is empty; send a JSON object.")
    if _depth(text) > MAX_DEPTH:
        raise InvalidJSON(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {_reason(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidJSON("The body must be a JSON object.")
    return data


def read_release(service: Service, headers: Headers, body: bytes) -> Release | Ignored | None:
    """What a request asks ``service`` to deploy: a Release, an Ignored, or None for a ping.

    ``headers`` has lower-case names.
    """
    if github.looks_like(headers):
        github.verify(service, headers, body)
        if github.event(headers) == "ping":
            return None
        return screen(service, github.parse_package(parse_json(body), headers, service))
    if standard.looks_like(headers):
        msg_id = standard.verify(service, headers, body)
        parsed = parse_release(parse_json(body), service)
        if isinstance(parsed, Ignored):
            # A signed CI caller asks for its release on purpose: refuse, never ignore.
            raise InvalidTag(parsed.message)
        return dataclasses.replace(
            parsed, sender=f"standard-{parsed.sender}", delivery_id=f"standard:{msg_id}"
        )
    return screen(service, parse_release(parse_json(body), service))


def parse_release(payload: dict[str, Any], service: Service | None = None) -> Release | Ignored:
    """The release an unsigned payload asks for, whichever supported sender sent it.

    ``service`` picks among several pushed tags (Harbor, Quay).
    """
    if dockerhub.looks_like(payload):
        return dockerhub.parse_push(payload, service)
    if plain.looks_like(payload):
        return plain.parse_plain(payload)
    if service is not None and registries.is_harbor(payload):
        return registries.parse_harbor(payload, service)
    if service is not None and registries.is_harbor_cloudevent(payload):
        return registries.parse_harbor_cloudevent(payload, service)
    if service is not None and registries.is_quay(payload):
        return registries.parse_quay(payload, service)
    raise InvalidPayload(
        "Unrecognised payload: send a DockerHub, Harbor (Default or CloudEvents format) or "
        'Quay push webhook, or {"tag": "<tag>"}.'
    )


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
