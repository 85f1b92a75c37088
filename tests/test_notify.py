"""Outcome reports: notifier retries and signatures, callback host rules, never blocking."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from noman import create_app
from noman.config import Settings
from noman.notify import callback_allowed, sign
from noman.wiring import components
from tests.conftest import SAMPLE_TAG, ConsulHandle, make_settings, post_hook, settle
from tests.fakes.receiver import Receiver, closed_port

KEY = "whsec-test-key"


def notify_settings(
    consul: ConsulHandle,
    secret: str,
    url: str,
    on: str = '["success", "failure"]',
    kind: str = "webhook",
    retries: int = 3,
) -> Settings:
    return make_settings(
        consul,
        secret,
        extra=(
            f"[notify]\non = {on}\nretries = {retries}\nbackoff = 0.05\ntimeout = 1\n"
            f'[[notify.targets]]\nkind = "{kind}"\nurl = "{url}"\nsecret_env = "HOOK_KEY"\n'
        ),
        environ={"HOOK_KEY": KEY},
    )


def deliver(app: Any) -> None:
    """Let the reconciler send the reports the deploys left in the records."""
    assert settle(components(app).reconciler, 10)


def test_github_style_signature_vector() -> None:
    # GitHub's documented vector: the same scheme as X-Noman-Signature-256.
    assert sign(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_success_is_notified_with_a_valid_signature(consul: ConsulHandle, secret: str) -> None:
    with Receiver() as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/n"))
        assert post_hook(app, secret, SAMPLE_TAG).status_code == 200
        deliver(app)
        note = receiver.wait_for(1)[0]
        expected = "sha256=" + hmac.new(KEY.encode(), note.body, hashlib.sha256).hexdigest()
        assert note.headers["X-Noman-Signature-256"] == expected
        body = note.json()
        assert (body["status"], body["service"], body["tag"]) == ("success", "web", SAMPLE_TAG)
        assert body["key"] == consul.key("IMAGE_TAG")


def test_notifications_are_retried_with_backoff(consul: ConsulHandle, secret: str) -> None:
    with Receiver(statuses=[500, 503, 200]) as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/n"))
        post_hook(app, secret, SAMPLE_TAG)
        deliver(app)
        notes = receiver.wait_for(3)
        assert len(notes) == 3
        assert notes[0].body == notes[2].body  # the same report, retried


def test_retries_are_bounded(consul: ConsulHandle, secret: str) -> None:
    with Receiver(statuses=[500] * 10) as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/n", retries=2))
        post_hook(app, secret, SAMPLE_TAG)
        deliver(app)
        assert len(receiver.received) == 2


def test_client_errors_are_not_retried(consul: ConsulHandle, secret: str) -> None:
    with Receiver(statuses=[404, 404, 404]) as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/n"))
        post_hook(app, secret, SAMPLE_TAG)
        deliver(app)
        assert len(receiver.received) == 1


def test_on_failure_only_skips_successes(consul: ConsulHandle, secret: str) -> None:
    with Receiver() as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/n", on='["failure"]'))
        client = app.test_client()
        post_hook(client, secret, SAMPLE_TAG)
        deliver(app)
        assert receiver.received == []
        consul.require_fake().fail_always(500)
        assert post_hook(client, secret, "release-20990101000000").status_code == 503
        note = receiver.wait_for(1)[0].json()
        assert note["status"] == "failure"
        assert "Consul" in note["description"]


def test_slack_format(consul: ConsulHandle, secret: str) -> None:
    with Receiver() as receiver:
        app = create_app(notify_settings(consul, secret, f"{receiver.url}/s", kind="slack"))
        post_hook(app, secret, SAMPLE_TAG)
        deliver(app)
        text = receiver.wait_for(1)[0].json()["text"]
        assert "web" in text and SAMPLE_TAG in text


def test_unreachable_notifier_never_fails_or_slows_the_deploy(
    consul: ConsulHandle, secret: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/n"
    app = create_app(notify_settings(consul, secret, url))
    started = time.monotonic()
    answer = post_hook(app, secret, SAMPLE_TAG)
    assert answer.status_code == 200
    assert time.monotonic() - started < 1.0  # reports are the reconciler's business
    deliver(app)


def dockerhub_payload(callback: str) -> dict[str, Any]:
    return {
        "callback_url": callback,
        "push_data": {"tag": SAMPLE_TAG, "pushed_at": 1672734600, "pusher": "stut"},
        "repository": {"repo_name": "stut/stut.dev", "name": "stut.dev", "namespace": "stut"},
    }


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://registry.hub.docker.com/u/stut/stut.dev/hook/abc/", True),
        ("https://hub.docker.com/api/build/v1/hook/abc/", True),
        ("https://REGISTRY.HUB.DOCKER.COM/u/x/", True),
        ("http://registry.hub.docker.com/u/stut/", False),
        ("https://registry.hub.docker.com.evil.example/u/", False),
        ("https://evil.example/registry.hub.docker.com/", False),
        ("https://user@registry.hub.docker.com/u/", False),
        ("https://169.254.169.254/latest/meta-data", False),
        ("http://127.0.0.1:8500/v1/kv/x", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_callback_only_to_dockerhub_hosts(url: str, allowed: bool) -> None:
    settings = Settings(services=())
    assert callback_allowed(url, settings) is allowed


def test_callback_to_a_non_dockerhub_host_is_never_called(
    consul: ConsulHandle, secret: str
) -> None:
    with Receiver() as receiver:
        settings = make_settings(consul, secret)
        settings = dataclasses.replace(
            settings, callback_hosts=("registry.hub.docker.com",), callback_allow_http=True
        )
        app = create_app(settings)
        answer = app.test_client().post(
            f"/hooks/{secret}", json=dockerhub_payload(f"{receiver.url}/cb")
        )
        assert answer.status_code == 200
        deliver(app)
        assert receiver.received == []


def test_failing_callback_never_fails_the_deploy(consul: ConsulHandle, secret: str) -> None:
    with Receiver(statuses=[500, 500, 500]) as receiver:
        settings = dataclasses.replace(
            make_settings(consul, secret), callback_hosts=("127.0.0.1",), callback_allow_http=True
        )
        app = create_app(settings)
        answer = app.test_client().post(
            f"/hooks/{secret}", json=dockerhub_payload(f"{receiver.url}/cb")
        )
        assert answer.status_code == 200
        assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG
        deliver(app)
        states = [json.loads(r.body)["state"] for r in receiver.received]
        assert states == ["success"] * 3


def test_refused_dockerhub_push_calls_back_error(consul: ConsulHandle, secret: str) -> None:
    with Receiver() as receiver:
        settings = dataclasses.replace(
            make_settings(consul, secret), callback_hosts=("127.0.0.1",), callback_allow_http=True
        )
        app = create_app(settings)
        payload = dockerhub_payload(f"{receiver.url}/cb")
        # A push of `latest` is ignored (tests/test_ignored.py); another repository is refused.
        payload["repository"]["repo_name"] = "stut/other"
        assert post_hook(app, secret, body=payload).status_code == 403
        body = receiver.wait_for(1)[0].json()
        assert body["state"] == "error"
        assert "stut/other" in body["description"]
        assert len(body["context"]) <= 100
