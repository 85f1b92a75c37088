"""The senders table: the order rows are tried in, and the formats it refuses by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.senders import SENDERS, by_headers, by_shape
from tests.conftest import ConsulHandle, make_settings

PAYLOADS = Path(__file__).parent / "payloads"
TAG = "release-20230103082900"


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return payload


# -- the order ----------------------------------------------------------------------------

GITEA_HEADERS = {"x-gitea-event": "package", "x-github-event": "package", "x-gogs-event": "package"}


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        # Gitea and Forgejo send GitHub's (and Gogs') headers too: their own decide.
        (GITEA_HEADERS, "gitea"),
        ({**GITEA_HEADERS, "x-forgejo-event": "package"}, "gitea"),
        ({"x-github-event": "package", "x-hub-signature-256": "sha256=00"}, "github"),
        ({"x-hub-signature-256": "sha256=00"}, "github"),
        ({"webhook-id": "msg_1", "webhook-signature": "v1,AA=="}, "standard"),
        ({"content-type": "application/vnd.docker.distribution.events.v1+json"}, "distribution"),
        ({"content-type": "application/vnd.docker.distribution.events.v2+json"}, "distribution"),
        ({"x-jfrog-event-auth": "x"}, "artifactory"),
        ({"x-gogs-event": "push"}, "gogs"),
        ({"x-gitlab-event": "Push Hook"}, "gitlab"),
        ({"x-event-key": "repo:push"}, "bitbucket"),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_headers_are_tried_first_in_the_documented_order(
    headers: dict[str, str], sender: str | None
) -> None:
    row = by_headers(headers)
    assert (row.name if row else None) == sender


@pytest.mark.parametrize(
    ("sample", "sender"),
    [
        ("dockerhub-push.json", "dockerhub"),
        ("plain-redeploy.json", "plain"),
        ("harbor-push-artifact.json", "harbor"),
        ("harbor-cloudevents-push.json", "harbor"),
        ("quay-repo-push.json", "quay"),
        ("distribution-push.json", "distribution"),
        ("gitlab-registry-push.json", "distribution"),
        ("acr-push.json", "acr"),
        ("acr-ping.json", "acr"),
        ("artifactory-docker-pushed.json", "artifactory"),
        ("ecr-eventbridge-push.json", "eventbridge"),
    ],
)
def test_then_the_body_shape(sample: str, sender: str) -> None:
    row = by_shape(load(sample))
    assert row is not None and row.name == sender


def test_every_row_recognises_by_headers_or_by_shape_and_has_a_name() -> None:
    names = [row.name for row in SENDERS]
    assert all(names)
    for row in SENDERS:
        assert row.headers({}) is False
        assert row.shape({}) is False
    assert names.index("gitea") < names.index("github")


def test_every_sample_is_listed_with_its_source() -> None:
    listed = (PAYLOADS / "README.md").read_text()
    for path in sorted(PAYLOADS.glob("*.json")):
        assert f"`{path.name}`" in listed, f"tests/payloads/README.md lacks {path.name}"


# -- formats Noman does not take ----------------------------------------------------------

FOREIGN = {
    "gitlab-project-hook": (
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "x"},
        load("gitlab-push-hook.json"),
        "a GitLab webhook (event 'Push Hook')",
    ),
    "bitbucket": (
        {"X-Event-Key": "repo:push", "X-Hook-UUID": "x"},
        {"push": {"changes": []}, "repository": {"full_name": "stut/stut.dev"}},
        "a Bitbucket webhook (event 'repo:push')",
    ),
    "gogs": (
        {"X-Gogs-Event": "push", "X-Gogs-Signature": "00"},
        {"ref": "refs/heads/main", "commits": []},
        "a Gogs webhook (event 'push')",
    ),
    "nexus": (
        {"X-Nexus-Webhook-Id": "rm:repository:component"},
        {"timestamp": "2023-01-03T08:30:12.000+0000", "action": "CREATED", "component": {}},
        "a Sonatype Nexus webhook",
    ),
    "sns-header": (
        {"x-amz-sns-message-type": "Notification"},
        {"Type": "Notification", "TopicArn": "arn:aws:sns:us-west-2:123456789012:ecr"},
        "an Amazon SNS message",
    ),
    "cloudevents-binary": (
        {"ce-specversion": "1.0", "ce-type": "com.example.pushed", "ce-id": "1"},
        {"tag": TAG},
        "a CloudEvents event (binary mode, type 'com.example.pushed')",
    ),
    "ecr-eventbridge": (
        {},
        load("ecr-eventbridge-push.json"),
        "an Amazon EventBridge event (source 'aws.ecr', detail-type 'ECR Image Action')",
    ),
    "sns-shape": (
        {},
        {"Type": "Notification", "MessageId": "1", "TopicArn": "arn:aws:sns:x", "Message": "{}"},
        "an Amazon SNS message",
    ),
    "pubsub": (
        {},
        {
            "message": {"data": "e30=", "messageId": "1"},
            "subscription": "projects/p/subscriptions/s",
        },
        "a Google Cloud Pub/Sub push message",
    ),
    "cloudevents": (
        {"Content-Type": "application/cloudevents+json"},
        {"specversion": "1.0", "type": "dev.knative.example", "source": "x", "id": "1"},
        "a CloudEvents event of type 'dev.knative.example'",
    ),
}


@pytest.mark.parametrize(("headers", "payload", "what"), FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_format_is_refused_by_name(
    consul: ConsulHandle, secret: str, headers: dict[str, str], payload: Any, what: str
) -> None:
    client = create_app(make_settings(consul, secret)).test_client()
    answer = client.post(
        f"/hooks/{secret}",
        data=json.dumps(payload),
        headers={"Content-Type": "application/json", **headers},
    )
    assert answer.status_code == 400, answer.json
    assert answer.json["error"] == "invalid_payload"
    message = answer.json["message"]
    assert f"This looks like {what}" in message
    assert "not a format Noman takes" in message
    assert "Docker distribution" in message  # and what it does take
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_an_unknown_shape_names_what_noman_takes(consul: ConsulHandle, secret: str) -> None:
    client = create_app(make_settings(consul, secret)).test_client()
    answer = client.post(f"/hooks/{secret}", json={"hello": "world"})
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_payload"
    assert answer.json["message"].startswith("Unrecognised payload.")
    assert "Azure Container Registry" in answer.json["message"]
