"""Harbor and Quay push webhooks through the hook, and the choice among several tags."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.errors import AmbiguousTags
from noman.model import Service
from noman.release import Ignored
from noman.senders.common import pick_tag
from tests.conftest import ConsulHandle, make_settings, post_hook

PAYLOADS = Path(__file__).parent / "payloads"
TAG = "release-20230103082900"


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return payload


def post_payload(
    consul: ConsulHandle,
    secret: str,
    repository: str,
    payload: dict[str, Any],
    bearer: bool = False,
) -> Any:
    """POST ``payload`` to an app for one service "web" that deploys ``repository``."""
    client = create_app(make_settings(consul, secret, repository=repository)).test_client()
    if bearer:  # Harbor sends its configured auth header verbatim
        return client.post("/hooks", json=payload, headers={"Authorization": f"Bearer {secret}"})
    return post_hook(client, secret, body=payload)


def test_harbor_push_deploys_with_the_auth_header(consul: ConsulHandle, secret: str) -> None:
    answer = post_payload(
        consul,
        secret,
        "harbor.example.com/stut/stut.dev",
        load("harbor-push-artifact.json"),
        bearer=True,
    )
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG


def test_harbor_other_repository_is_refused(consul: ConsulHandle, secret: str) -> None:
    answer = post_payload(
        consul, secret, "harbor.example.com/stut/other", load("harbor-push-artifact.json")
    )
    assert answer.status_code == 403
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_harbor_non_push_event_is_ignored(consul: ConsulHandle, secret: str) -> None:
    payload = load("harbor-push-artifact.json")
    payload["type"] = "SCANNING_COMPLETED"
    answer = post_payload(consul, secret, "harbor.example.com/stut/stut.dev", payload)
    assert answer.status_code == 202
    assert answer.json["reason"] == "not_a_push"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_quay_push_deploys_the_newest_accepted_tag(consul: ConsulHandle, secret: str) -> None:
    answer = post_payload(consul, secret, "quay.io/stut/stut.dev", load("quay-repo-push.json"))
    assert answer.status_code == 200, answer.json
    assert answer.json["tag"] == TAG
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG


def test_quay_push_of_only_unaccepted_tags_is_ignored(consul: ConsulHandle, secret: str) -> None:
    payload = load("quay-repo-push.json")
    payload["updated_tags"] = ["latest", "main"]
    answer = post_payload(consul, secret, "quay.io/stut/stut.dev", payload)
    assert answer.status_code == 202
    assert answer.json["reason"] == "tag_not_accepted"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": []}},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag": 1}]}},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": ["x"]}},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag": TAG, "resource_url": 3}]}},
        {"type": "PUSH_ARTIFACT", "event_data": None},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag": TAG}]}},
        {"updated_tags": "release-1", "docker_url": "quay.io/a/b"},
        {"updated_tags": [TAG], "docker_url": 5},
        {"updated_tags": [TAG, 5], "docker_url": "quay.io/stut/stut.dev"},
        {"specversion": "1.0", "type": "harbor.artifact.pushed", "data": {"resources": []}},
        {"specversion": "1.0", "type": "harbor.artifact.pushed"},
        {"specversion": "1.0", "type": "dev.knative.example"},
    ],
)
def test_malformed_registry_payloads_are_400(
    consul: ConsulHandle, secret: str, payload: dict[str, Any]
) -> None:
    answer = post_payload(consul, secret, "quay.io/stut/stut.dev", payload)
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_payload"


def service(pattern: str) -> Service:
    return Service("s", "a/b", "k", (b"",), tag_pattern=re.compile(pattern, re.ASCII))


@pytest.mark.parametrize(
    ("pattern", "tags", "picked"),
    [
        (r"^v(\d+)$", ["v9", "v10", "latest"], "v10"),
        (r"^v?(\d+(?:\.\d+)*)$", ["1.2.9", "1.2.10"], "1.2.10"),
        (r"^v?(\d+(?:\.\d+)*)$", ["1.2.10", "v1.3"], "v1.3"),
        (r"^release-(\d{14})$", ["latest", "release-20230103082900"], "release-20230103082900"),
        # One accepted tag needs no order, even with a pattern that gives none.
        (r"^([0-9a-f]{7})$", ["latest", "0e2a89b"], "0e2a89b"),
        # The same tag twice is one tag.
        (r"^([0-9a-f]{7})$", ["0e2a89b", "0e2a89b"], "0e2a89b"),
    ],
)
def test_pick_tag_takes_the_newest_accepted(pattern: str, tags: list[str], picked: str) -> None:
    assert pick_tag(service(pattern), tags) == picked


def test_pick_tag_ignores_a_push_of_no_accepted_tag() -> None:
    result = pick_tag(service(r"^v(\d+)$"), ["latest", "../x"])
    assert isinstance(result, Ignored)
    assert result.reason == "tag_not_accepted"
    assert "'latest'" in result.message


@pytest.mark.parametrize(
    ("pattern", "tags"),
    [
        (r"^([0-9a-f]{7})$", ["0e2a89b", "a41c3f0"]),
        (r"^(main|dev)$", ["main", "dev"]),
        (r"^[a-z]+$", ["abc", "def"]),
    ],
)
def test_pick_tag_refuses_several_unordered_tags(pattern: str, tags: list[str]) -> None:
    with pytest.raises(AmbiguousTags) as raised:
        pick_tag(service(pattern), tags)
    assert all(repr(tag) in raised.value.message for tag in tags)


def test_old_quay_updated_tags_object_is_read_by_its_keys(
    consul: ConsulHandle, secret: str
) -> None:
    # Quay's early docs: "updated_tags": {"<tag>": "<image id>"}.
    payload = load("quay-repo-push-one-tag.json")
    payload["updated_tags"] = {
        TAG: "b750fe79269d2ec9a3c593ef05b4332b1d1a02a62b4accb2c21d589ff2f5f2dc"
    }
    answer = post_payload(consul, secret, "quay.io/stut/stut.dev", payload)
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG


def test_harbor_resources_of_several_tags_deploy_the_newest(
    consul: ConsulHandle, secret: str
) -> None:
    payload = load("harbor-push-artifact.json")
    first = payload["event_data"]["resources"][0]
    older = "release-20221224120000"
    payload["event_data"]["resources"] = [
        first,
        {**first, "tag": older, "resource_url": f"harbor.example.com/stut/stut.dev:{older}"},
        {**first, "tag": "latest", "resource_url": "harbor.example.com/stut/stut.dev:latest"},
    ]
    answer = post_payload(consul, secret, "harbor.example.com/stut/stut.dev", payload)
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG
