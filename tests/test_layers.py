"""Each defence layer on its own: with the others out of the way, it still holds.

A layer that is only ever tested together with another can be removed
without any test noticing; these tests switch the neighbours off (or pick
inputs that only this layer catches) so each one is caught missing.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug import exceptions as werkzeug_errors

from noman import create_app
from noman.config import Settings
from noman.errors import InvalidSignature
from noman.logs import REDACTED, RedactingFilter, redact
from noman.senders import standard
from tests.conftest import ConsulHandle, make_settings, post_hook
from tests.fakes.consul import FakeConsul
from tests.support.crashing_app import CRASH_TAG
from tests.test_gunicorn_logs import Gunicorn, raw, write_config
from tests.test_raw_fuzz import cases


@pytest.fixture
def secret() -> str:
    """A fresh secret that surely has upper case, lower case and digits (as almost all do)."""
    return "Zq3" + secrets.token_urlsafe(30)


# -- tags: the whole-tag fullmatch of tag_pattern, and the OCI grammar ----------------------


@pytest.mark.parametrize(
    ("pattern", "tag"),
    [
        # OCI-valid tags that a search() or match() of a permissive pattern would let through.
        (r"release-(\d+)", "evil-release-1"),
        (r"release-(\d+)", "release-1-evil"),
        (r"release-(\d+)", "release-1.evil"),
        (r"v(\d+)", "xv1"),
    ],
)
def test_the_pattern_must_match_the_whole_tag(
    consul: ConsulHandle, secret: str, pattern: str, tag: str
) -> None:
    client = create_app(make_settings(consul, secret, tag_pattern=pattern)).test_client()
    answer = post_hook(client, secret, tag)
    assert answer.status_code == 422, answer.json
    assert answer.json["error"] == "invalid_tag"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


@pytest.mark.parametrize("tag", ["../x", "a b", ".hidden", "-x", "x" * 129, "x/y", "tag\u00e9"])
def test_the_oci_grammar_holds_even_when_the_pattern_accepts_anything(
    consul: ConsulHandle, secret: str, tag: str
) -> None:
    client = create_app(make_settings(consul, secret, tag_pattern="(.+)")).test_client()
    answer = post_hook(client, secret, tag)
    assert answer.status_code == 422, answer.json
    assert answer.json["error"] == "invalid_tag"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_permissive_patterns_still_deploy_good_tags(consul: ConsulHandle, secret: str) -> None:
    client = create_app(make_settings(consul, secret, tag_pattern="(.+)")).test_client()
    assert post_hook(client, secret, "build-7").status_code == 200


# -- the Content-Length pre-check -----------------------------------------------------------


def test_a_declared_length_over_the_cap_is_refused_before_reading(client: Any, secret: str) -> None:
    # The body is small: only the declared length can make this a 413 (the bounded read
    # alone would find a short body and answer 400).
    answer = client.post(
        f"/hooks/{secret}",
        data=b'{"tag": "release-20230103082900"}',
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(10**9)},
    )
    assert answer.status_code == 413
    assert answer.json["error"] == "payload_too_large"


# -- Standard Webhooks: Noman's own timestamp window --------------------------------------


class _AcceptEverything:
    """Stands in for the reference library, so only Noman's own checks remain."""

    def __init__(self, key: str) -> None:
        self.key = key

    def verify(self, body: bytes, headers: dict[str, str], json_parse: bool = False) -> None:
        return None


@pytest.mark.parametrize(("offset", "accepted"), [(-301, False), (301, False), (-299, True)])
def test_noman_checks_the_standard_webhooks_window_itself(
    monkeypatch: pytest.MonkeyPatch,
    consul: ConsulHandle,
    secret: str,
    offset: int,
    accepted: bool,
) -> None:
    settings = make_settings(
        consul, secret, standard_secret_env="KEYS", environ={"KEYS": "whsec_" + "QUJD" * 8}
    )
    monkeypatch.setattr(standard, "Webhook", _AcceptEverything)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(time.time()) + offset),
        "webhook-signature": "v1,AAAA",
    }
    service = settings.services[0]
    if accepted:
        assert standard.verify(service, headers, b"{}") == "msg_1"
    else:
        with pytest.raises(InvalidSignature, match="300s off"):
            standard.verify(service, headers, b"{}")


# -- every werkzeug HTTP error leaves as the JSON error shape --------------------------------


def test_every_werkzeug_http_error_is_json(settings: Settings) -> None:
    app: Flask = create_app(settings)

    @app.get("/raise/<int:code>")
    def raise_(code: int) -> Any:
        werkzeug_errors.abort(code)

    client = app.test_client()
    codes = sorted(werkzeug_errors.default_exceptions)
    assert len(codes) > 30
    for code in codes:
        answer = client.get(f"/raise/{code}")
        assert answer.status_code == code
        assert answer.content_type == "application/json", code
        body = answer.get_json()
        assert set(body) == {"error", "message"}, code
        assert body["error"] and body["error"].replace("_", "").isalnum(), body


# -- the two log layers ------------------------------------------------------------------------


def test_redaction_alone_covers_raw_lines(secret: str) -> None:
    """Layer 2 on lines that layer 1 would never write."""
    lines = [
        f'127.0.0.1 - - "POST /hooks/{secret} HTTP/1.1" 200',
        f"GET /hook/{secret} HTTP/1.1",
        f"/webhooks/{secret}",
        f"/hooks/%2e%2e/{secret}",
        f"/hooks/../{secret}",
        f"/%2568ooks/{secret}",
        f"/HOOKS/{secret}",
        f"/healthz?token={secret}",
        f"/metrics?{secret}",
        f"/anything/{secret}/else",
        f"Invalid Request Line 'POST  /x/{secret}  HTTP/1.1'",
        f"Authorization: Bearer {secret}",
        f"Invalid Header: ' {secret}'",
    ]
    for line in lines:
        assert secret not in redact(line), line
        assert REDACTED in redact(line), line
    record = logging.LogRecord("gunicorn.error", logging.ERROR, "x", 1, "%s", (lines[0],), None)
    try:
        raise ValueError(f"boom in /hooks/{secret}")
    except ValueError as exc:
        record.exc_info = (ValueError, exc, exc.__traceback__)
    RedactingFilter().filter(record)
    assert secret not in record.getMessage() and secret not in (record.exc_text or "")
    # Structured fields are client text too (a tag, a reason).
    from noman.logs import JsonFormatter

    hook = logging.LogRecord("noman.hooks", logging.INFO, "x", 1, "hook", None, None)
    hook.fields = {"tag": secret, "reason": f"bad tag {secret!r}", "nested": [{"x": secret}]}
    line = JsonFormatter().format(hook)
    assert secret not in line
    assert json.loads(line)["tag"] == REDACTED


def test_redaction_keeps_route_templates_and_file_paths() -> None:
    for line in (
        '"POST /hooks/<secret> HTTP/1.1" 200',
        '"GET /hooks/<secret>/deployment HTTP/1.1" 409',
        'File "/usr/lib/python3.11/site-packages/flask/app.py", line 12',
        "eval 550e8400-e29b-41d4-a716-446655440000 digest " + "ab12" * 16,
    ):
        assert redact(line) == line


def hostile_requests(secret: str, rounds: int = 300) -> list[bytes]:
    rng = random.Random(8)
    generators = cases(secret)
    sent = [generators[rng.randrange(len(generators))](rng) for _ in range(rounds)]
    hook = f"/hooks/{secret}"
    crash = b'{"tag": "%s"}' % CRASH_TAG.encode()
    sent += [
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (hook.encode(), len(crash), crash),
        f"POST {hook}?token={secret} HTTP/1.1 junk\r\n\r\n".encode(),
        f"GET /healthz?token={secret} HTTP/1.1\r\nReferer: /hooks/{secret}\r\n\r\n".encode(),
        f"POST /webhooks/{secret} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{".encode(),
    ]
    return sent


@pytest.mark.parametrize(
    ("conf", "proof"),
    [
        # Layer 1 alone: the filter is off, so nothing is ever redacted...
        ("python:tests.support.routes_only", "unmatched"),
        # ...layer 2 alone: raw paths reach the filter, which redacts them.
        ("python:tests.support.redaction_only", REDACTED),
    ],
    ids=["route-templates-alone", "redaction-alone"],
)
def test_each_log_layer_alone_keeps_the_secret_out(
    tmp_path: Path, secret: str, conf: str, proof: str
) -> None:
    with FakeConsul() as fake:
        server = Gunicorn(
            tmp_path,
            write_config(tmp_path, fake.url, secret),
            "tests.support.crashing_app:create_app()",
            conf=conf,
        )
        try:
            for data in hostile_requests(secret):
                raw(server.port, data)
        finally:
            assert server.stop() == 0
    logs = server.logs()
    assert secret not in logs
    assert proof in logs
    if proof == "unmatched":
        assert REDACTED not in logs  # the filter really was off
        assert "unexpected error in POST /hooks/<secret>" in logs
    else:
        assert "Invalid request from ip=" in logs  # gunicorn's raw texts really were logged


def test_noman_log_lines_carry_the_route_template_not_the_path(
    settings: Settings, secret: str
) -> None:
    from noman.logs import JsonFormatter

    app = create_app(settings)
    record = logging.LogRecord("noman.hooks", logging.INFO, "x", 1, "hook", None, None)
    for path, method, route in [
        (f"/hooks/{secret}", "POST", "/hooks/<secret>"),
        (f"/hooks/{secret}/deployment", "GET", "/hooks/<secret>/deployment"),
        (f"/webhooks/{secret}?token={secret}", "POST", "unmatched"),
    ]:
        with app.test_request_context(path, method=method):
            line = JsonFormatter().format(record)
        assert secret not in line
        assert json.loads(line)["route"] == route
    assert "route" not in json.loads(JsonFormatter().format(record))  # outside a request
