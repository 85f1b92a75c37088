"""Signed senders: GitHub packages and Standard Webhooks; signatures, windows, replays."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from noman import create_app
from noman.config import Settings
from noman.notify import sign
from tests.conftest import ConsulHandle, make_settings

PAYLOADS = Path(__file__).parent / "payloads"
GITHUB_KEY = "github-hook-secret-for-tests-0001"
STANDARD_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_STANDARD_KEY = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
TAG = "release-20230103082900"


@pytest.fixture
def signed(consul: ConsulHandle, secret: str) -> Settings:
    return make_settings(
        consul,
        secret,
        repository="ghcr.io/stut/stut.dev",
        github_secret_env="GITHUB_KEYS",
        standard_secret_env="STANDARD_KEYS",
        environ={
            "GITHUB_KEYS": GITHUB_KEY,
            "STANDARD_KEYS": f"{OTHER_STANDARD_KEY} {STANDARD_KEY}",
        },
    )


def github_package(tag: str = TAG) -> bytes:
    payload = json.loads((PAYLOADS / "github-package-published.json").read_text())
    payload["package"]["package_version"]["container_metadata"]["tag"]["name"] = tag
    return json.dumps(payload).encode()


def github_headers(
    body: bytes, key: str = GITHUB_KEY, delivery: str = "d-1", event: str = "package"
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(key.encode(), body),
    }


def standard_headers(
    body: bytes, key: str = STANDARD_KEY, msg_id: str = "msg_1", timestamp: int | None = None
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(key).sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }


def test_standard_webhooks_vector_with_our_key_format() -> None:
    signature = Webhook(STANDARD_KEY).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        datetime.fromtimestamp(1614265330, tz=UTC),
        '{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_github_package_deploys_once_per_delivery(
    signed: Settings, consul: ConsulHandle, secret: str
) -> None:
    client = create_app(signed).test_client()
    body = github_package()
    first = client.post(f"/hooks/{secret}", data=body, headers=github_headers(body))
    assert first.status_code == 200, first.json
    assert first.json["changed"] is True
    value, index = consul.get(consul.key("IMAGE_TAG"))
    assert value == TAG
    # A redelivery of the same id: answered, never written again.
    consul.put(consul.key("IMAGE_TAG"), "release-20220101000000")
    _, index = consul.get(consul.key("IMAGE_TAG"))
    again = client.post(f"/hooks/{secret}", data=body, headers=github_headers(body))
    assert again.status_code == 200
    assert again.json["duplicate_delivery"] is True
    assert consul.get(consul.key("IMAGE_TAG")) == ("release-20220101000000", index)
    # Another Noman instance on the same Consul knows the delivery too.
    other = create_app(signed).test_client()
    assert (
        other.post(f"/hooks/{secret}", data=body, headers=github_headers(body)).json[
            "duplicate_delivery"
        ]
        is True
    )
    # Remembered in the service's record under Noman's prefix, never beside the key.
    assert "github:d-1" in consul.record().deliveries
    assert consul.folder(consul.prefix) == [consul.key("IMAGE_TAG")]


def test_github_ping_is_acknowledged(signed: Settings, secret: str) -> None:
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    answer = (
        create_app(signed)
        .test_client()
        .post(f"/hooks/{secret}", data=body, headers=github_headers(body, event="ping"))
    )
    assert answer.json == {"service": "web", "event": "ping"}


def reserialised(body: bytes) -> bytes:
    return json.dumps(json.loads(body), indent=2).encode()


@pytest.mark.parametrize(
    "tamper",
    [
        "reserialised body",
        "other key",
        "sha1 only",
        "garbage",
        "wrong scheme",
        "63 hex digits",
        "10000 signatures",
        "non-ascii",
        "missing",
    ],
)
def test_bad_github_signatures_are_401_and_write_nothing(
    signed: Settings, consul: ConsulHandle, secret: str, tamper: str
) -> None:
    body = github_package()
    headers = github_headers(body)
    if tamper == "reserialised body":
        body = reserialised(body)
    elif tamper == "other key":
        headers = github_headers(body, key="some-other-secret-of-enough-length")
    elif tamper == "sha1 only":
        del headers["X-Hub-Signature-256"]
        headers["X-Hub-Signature"] = (
            "sha1=" + hmac.new(GITHUB_KEY.encode(), body, hashlib.sha1).hexdigest()
        )
    elif tamper == "garbage":
        headers["X-Hub-Signature-256"] = "\x00\xff garbage"
    elif tamper == "wrong scheme":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].replace("sha256", "md5")
    elif tamper == "63 hex digits":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"][:-1]
    elif tamper == "10000 signatures":
        headers["X-Hub-Signature-256"] = ",".join([headers["X-Hub-Signature-256"]] * 10000)
    elif tamper == "non-ascii":
        headers["X-Hub-Signature-256"] = "sha256=" + "é" * 64
    elif tamper == "missing":
        del headers["X-Hub-Signature-256"]
    answer = create_app(signed).test_client().post(f"/hooks/{secret}", data=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json["error"] == "invalid_signature"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_github_push_to_another_registry_image_is_refused(
    signed: Settings, consul: ConsulHandle, secret: str
) -> None:
    payload = json.loads(github_package())
    payload["package"]["name"] = "other-app"
    body = json.dumps(payload).encode()
    answer = (
        create_app(signed)
        .test_client()
        .post(f"/hooks/{secret}", data=body, headers=github_headers(body))
    )
    assert answer.status_code == 403
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_github_untagged_push_is_ignored(signed: Settings, secret: str) -> None:
    # One per platform of a multi-arch build; more cases in tests/test_ignored.py.
    body = github_package(tag="")
    answer = (
        create_app(signed)
        .test_client()
        .post(f"/hooks/{secret}", data=body, headers=github_headers(body))
    )
    assert answer.status_code == 202
    assert (answer.json["ignored"], answer.json["reason"]) == (True, "no_tag")


def test_service_without_a_github_key_refuses_github_events(
    settings: Settings, secret: str
) -> None:
    body = github_package()
    answer = (
        create_app(settings)
        .test_client()
        .post(f"/hooks/{secret}", data=body, headers=github_headers(body))
    )
    assert answer.status_code == 401
    assert answer.json["error"] == "invalid_signature"


PLAIN = json.dumps({"tag": TAG, "repository": "ghcr.io/stut/stut.dev"}).encode()


def test_standard_webhook_deploys_with_either_rotation_key(
    signed: Settings, consul: ConsulHandle, secret: str
) -> None:
    client = create_app(signed).test_client()
    answer = client.post(f"/hooks/{secret}", data=PLAIN, headers=standard_headers(PLAIN))
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == TAG
    newer = json.dumps({"tag": "release-20240101000000"}).encode()
    answer = client.post(
        f"/hooks/{secret}",
        data=newer,
        headers=standard_headers(newer, key=OTHER_STANDARD_KEY, msg_id="msg_2"),
    )
    assert answer.status_code == 200
    assert consul.get(consul.key("IMAGE_TAG"))[0] == "release-20240101000000"


def test_standard_webhook_replay_writes_at_most_once(
    signed: Settings, consul: ConsulHandle, secret: str
) -> None:
    client = create_app(signed).test_client()
    rollback = json.dumps({"tag": "release-20200101000000", "force": True}).encode()
    consul.put(consul.key("IMAGE_TAG"), TAG)
    headers = standard_headers(rollback, msg_id="msg_rollback")
    assert client.post(f"/hooks/{secret}", data=rollback, headers=headers).status_code == 200
    consul.put(consul.key("IMAGE_TAG"), "release-20250101000000")
    replay = client.post(f"/hooks/{secret}", data=rollback, headers=headers)
    assert replay.json["duplicate_delivery"] is True
    assert consul.get(consul.key("IMAGE_TAG"))[0] == "release-20250101000000"


@pytest.mark.parametrize(
    "tamper",
    [
        "past",
        "future",
        "fractional",
        "negative",
        "huge",
        "no id",
        "no signature",
        "bad entry",
        "10000 signatures",
        "reserialised",
        "other key",
        "v2 only",
    ],
)
def test_bad_standard_webhooks_are_401_never_500(
    signed: Settings, consul: ConsulHandle, secret: str, tamper: str
) -> None:
    body, now = PLAIN, int(time.time())
    headers = standard_headers(body)
    if tamper == "past":
        headers = standard_headers(body, timestamp=now - 301)
    elif tamper == "future":
        headers = standard_headers(body, timestamp=now + 301)
    elif tamper == "fractional":
        headers["webhook-timestamp"] += ".5"
    elif tamper == "negative":
        headers["webhook-timestamp"] = "-" + headers["webhook-timestamp"]
    elif tamper == "huge":
        headers["webhook-timestamp"] = "9" * 400
    elif tamper == "no id":
        del headers["webhook-id"]
    elif tamper == "no signature":
        del headers["webhook-signature"]
    elif tamper == "bad entry":
        headers["webhook-signature"] = "v1"
    elif tamper == "10000 signatures":
        headers["webhook-signature"] = " ".join([headers["webhook-signature"]] * 10000)
    elif tamper == "reserialised":
        body = reserialised(body)
    elif tamper == "other key":
        headers = standard_headers(body, key="whsec_" + "Wlla" * 8)
    elif tamper == "v2 only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    answer = create_app(signed).test_client().post(f"/hooks/{secret}", data=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json["error"] == "invalid_signature"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_signed_keys_are_validated_at_start(consul: ConsulHandle, secret: str) -> None:
    from noman.errors import ConfigError

    with pytest.raises(ConfigError, match="standard_secret_env: keys must be whsec_"):
        make_settings(
            consul, secret, standard_secret_env="K", environ={"K": "not-base64-!!!!!!!!!!!!!"}
        )
    with pytest.raises(ConfigError, match="github_secret_env: environment G is not set"):
        make_settings(consul, secret, github_secret_env="G")


@pytest.mark.parametrize(
    "payload",
    [
        {"tag": "latest"},
        # A DockerHub body, signed by CI: the caller asked explicitly, so never "ignored".
        {"push_data": {"tag": "latest"}, "repository": {"repo_name": "ghcr.io/stut/stut.dev"}},
        {"push_data": {"pusher": "ci"}, "repository": {"repo_name": "ghcr.io/stut/stut.dev"}},
    ],
)
def test_standard_webhook_with_a_bad_tag_is_still_422(
    signed: Settings, secret: str, consul: ConsulHandle, payload: dict[str, object]
) -> None:
    body = json.dumps(payload).encode()
    answer = (
        create_app(signed)
        .test_client()
        .post(f"/hooks/{secret}", data=body, headers=standard_headers(body))
    )
    assert answer.status_code == 422
    assert answer.json["error"] == "invalid_tag"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)
