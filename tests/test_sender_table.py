"""The senders table: the order rows are tried in."""

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


# -- what it does not recognise ------------------------------------------------------


def test_an_unknown_shape_names_what_noman_takes(consul: ConsulHandle, secret: str) -> None:
    client = create_app(make_settings(consul, secret)).test_client()
    answer = client.post(f"/hooks/{secret}", json={"hello": "world"})
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_payload"
    assert answer.json["message"].startswith("Unrecognised payload.")
    assert "Azure Container Registry" in answer.json["message"]
