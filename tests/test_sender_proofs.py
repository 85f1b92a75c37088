"""What proves a delivery besides the URL secret: a service's auth_header, and its config.

Also how a payload's repository is compared with the service's: as Docker names images.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from noman import create_app
from noman.errors import ConfigError
from tests.conftest import ConsulHandle, make_settings, post_hook

PAYLOADS = Path(__file__).parent / "payloads"
TAG = "release-20230103082900"
TOKEN = "Bearer Kd8Vn2Qx7Ls4Pz9Rw1Ty6Hb3Mj5Fc0"
STANDARD_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return payload


# -- a service's auth_header: every unsigned delivery carries it --------------------------


@pytest.fixture
def guarded(consul: ConsulHandle, secret: str) -> Any:
    """A Docker Hub service that requires ``X-Deploy-Token``, and takes Standard Webhooks."""
    settings = make_settings(
        consul,
        secret,
        auth_header="X-Deploy-Token",
        auth_header_env="TOKEN",
        standard_secret_env="STANDARD",
        environ={"TOKEN": TOKEN, "STANDARD": STANDARD_KEY},
    )
    return create_app(settings).test_client()


UNSIGNED = {
    "plain": {"tag": TAG},
    "dockerhub": load("dockerhub-push.json"),
    "unknown": {"hello": "world"},
}


@pytest.mark.parametrize("body", UNSIGNED.values(), ids=UNSIGNED.keys())
def test_without_the_header_an_unsigned_delivery_is_401(
    guarded: Any, consul: ConsulHandle, secret: str, body: dict[str, Any]
) -> None:
    answer = post_hook(guarded, secret, body=body)
    assert answer.status_code == 401, answer.json
    # A format Noman does not take too: a caller without the header learns nothing.
    foreign = guarded.post(f"/hooks/{secret}", json=body, headers={"X-Gitlab-Event": "Push Hook"})
    assert foreign.status_code == 401, foreign.json
    assert answer.status_code == 401, answer.json
    assert answer.json["error"] == "invalid_signature"
    assert "X-Deploy-Token" in answer.json["message"]
    assert TOKEN not in answer.get_data(as_text=True)
    wrong = guarded.post(f"/hooks/{secret}", json=body, headers={"X-Deploy-Token": TOKEN[:-1]})
    assert wrong.status_code == 401
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_with_the_header_it_deploys_whatever_the_case_of_its_name(
    guarded: Any, consul: ConsulHandle, secret: str
) -> None:
    answer = guarded.post(f"/hooks/{secret}", json={"tag": TAG}, headers={"x-deploy-token": TOKEN})
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG
    # The bearer route too: the secret in Authorization, the token in its own header.
    newer = "release-20240101000000"
    answer = guarded.post(
        "/hooks",
        json={"tag": newer},
        headers={"Authorization": f"Bearer {secret}", "X-Deploy-Token": TOKEN},
    )
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == newer


def test_a_signed_sender_needs_its_signature_not_the_header(
    guarded: Any, consul: ConsulHandle, secret: str
) -> None:
    body = json.dumps({"tag": TAG}).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": Webhook(STANDARD_KEY).sign(
            "msg_1", datetime.fromtimestamp(stamp, tz=UTC), body.decode()
        ),
    }
    answer = guarded.post(f"/hooks/{secret}", data=body, headers=headers)
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG


def test_the_header_value_may_be_given_as_hashes_for_a_rotation(
    consul: ConsulHandle, secret: str
) -> None:
    old, new = "Bearer " + "o" * 30, "Bearer " + "n" * 30
    settings = make_settings(
        consul,
        secret,
        auth_header_sha256=[hashlib.sha256(v.encode()).hexdigest() for v in (new, old)],
    )
    client = create_app(settings).test_client()
    for value in (old, new):
        answer = client.post(
            f"/hooks/{secret}", json={"tag": TAG}, headers={"Authorization": value}
        )
        assert answer.status_code == 200, answer.json


# -- one image, several spellings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "named"),
    [
        ("stut/stut.dev", "docker.io/stut/stut.dev"),
        ("stut/stut.dev", "index.docker.io/stut/stut.dev"),
        ("nginx", "library/nginx"),
        ("ghcr.io/stut/stut.dev", "GHCR.IO/stut/stut.dev"),
    ],
)
def test_a_repository_is_matched_as_docker_names_images(
    consul: ConsulHandle, secret: str, configured: str, named: str
) -> None:
    client = create_app(make_settings(consul, secret, repository=configured)).test_client()
    answer = client.post(f"/hooks/{secret}", json={"tag": TAG, "repository": named})
    assert answer.status_code == 200, answer.json
    other = client.post(f"/hooks/{secret}", json={"tag": TAG, "repository": "quay.io/x/y"})
    assert other.status_code == 403
    assert other.json["error"] == "repository_mismatch"


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "environ", "problem"),
    [
        (
            {"auth_header": "X-Token"},
            {},
            "auth_header: needs auth_header_sha256 or auth_header_env",
        ),
        (
            {"auth_header": "X Token", "auth_header_env": "T"},
            {"T": TOKEN},
            "must be an HTTP header",
        ),
        (
            {"auth_header_env": "T", "auth_header_sha256": "ab" * 32},
            {"T": TOKEN},
            "set exactly one of auth_header_sha256, auth_header_env",
        ),
        ({"auth_header_env": "T"}, {}, "auth_header_env: environment T is not set"),
        ({"auth_header_env": "T"}, {"T": "short"}, "holds a header value that is too short"),
        (
            {"auth_header_sha256": hashlib.sha256(b"").hexdigest()},
            {},
            "is the hash of an empty header value",
        ),
        ({"gitea_secret_env": "G"}, {}, "gitea_secret_env: environment G is not set"),
        ({"artifactory_secret_env": "A"}, {"A": "short"}, "holds a key that is too short"),
    ],
)
def test_the_new_keys_are_checked_at_start(
    consul: ConsulHandle,
    secret: str,
    service: dict[str, Any],
    environ: dict[str, str],
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_settings(consul, secret, environ=environ, **service)
    message = str(raised.value)
    assert re.match(r"test\.toml, line \d+: \[services\.web\] ", message), message
    assert problem in message
    assert TOKEN not in message
