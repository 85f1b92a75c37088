"""The hook over HTTP (Flask test client) against Consul: answers, rejections, no writes."""

from __future__ import annotations

import copy
import gc
import json
import types
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import EnvironHeaders

import noman
from noman import create_app
from noman.web import lowercase_headers
from noman.wiring import components
from tests.conftest import SAMPLE_TAG, ConsulHandle, make_settings, post_hook

PAYLOADS = Path(__file__).parent / "payloads"
PACKAGE = str(Path(noman.__file__).parent)  # Noman's own code, wherever it is checked out
JSON = {"Content-Type": "application/json"}


def dockerhub(tag: str = SAMPLE_TAG, repo: str = "stut/stut.dev") -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / "dockerhub-push.json").read_text())
    payload["push_data"]["tag"] = tag
    payload["repository"]["repo_name"] = repo
    return payload


def test_dockerhub_push_writes_the_tag(client: Any, consul: ConsulHandle, secret: str) -> None:
    answer = post_hook(client, secret, body=dockerhub())
    assert answer.status_code == 200
    assert answer.json == {
        "service": "web",
        "key": consul.key("IMAGE_TAG"),
        "tag": SAMPLE_TAG,
        "previous": None,
        "changed": True,
    }
    assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG


@pytest.mark.parametrize("name", sorted(p.name for p in PAYLOADS.glob("dockerhub-*.json")))
def test_every_sample_dockerhub_payload_deploys(
    client: Any, consul: ConsulHandle, secret: str, name: str
) -> None:
    payload = json.loads((PAYLOADS / name).read_text())
    answer = post_hook(client, secret, body=payload)
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == payload["push_data"]["tag"]


def test_plain_body_and_bearer_header(client: Any, consul: ConsulHandle, secret: str) -> None:
    answer = client.post(
        "/hooks",
        json={"tag": SAMPLE_TAG},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200
    assert answer.json["changed"] is True
    assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG


def test_same_tag_again_is_a_no_op(client: Any, consul: ConsulHandle, secret: str) -> None:
    assert post_hook(client, secret, SAMPLE_TAG).status_code == 200
    _, index = consul.get(consul.key("IMAGE_TAG"))
    again = post_hook(client, secret, body=dockerhub())
    assert again.status_code == 200
    assert again.json["changed"] is False
    assert again.json["previous"] == SAMPLE_TAG
    assert consul.get(consul.key("IMAGE_TAG")) == (SAMPLE_TAG, index)


def test_newer_tag_replaces_and_reports_previous(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    post_hook(client, secret, SAMPLE_TAG)
    answer = post_hook(client, secret, "release-20240101000000")
    assert answer.json["previous"] == SAMPLE_TAG
    assert consul.get(consul.key("IMAGE_TAG"))[0] == "release-20240101000000"


def test_force_rolls_back(client: Any, consul: ConsulHandle, secret: str) -> None:
    post_hook(client, secret, "release-20240101000000")
    answer = post_hook(client, secret, SAMPLE_TAG, force=True)
    assert answer.status_code == 200
    assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG


def test_a_hand_set_value_does_not_block_the_first_release(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    consul.put(consul.key("IMAGE_TAG"), "latest")
    assert post_hook(client, secret, SAMPLE_TAG).status_code == 200
    assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG


DEPLOYED = "release-20230103082900"
WRONG = "wrong-" + "x" * 40

# (case name, request kwargs builder, status, error code)
REJECTIONS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "unknown secret",
        {"secret": WRONG, "body": {"tag": "release-20250101000000"}},
        404,
        "not_found",
    ),
    ("malformed json", {"body": b'{"tag": '}, 400, "invalid_json"),
    ("not utf-8", {"body": b'{"tag": "\xff\xfe"}'}, 400, "invalid_json"),
    (
        "duplicate keys",
        {"body": b'{"tag": "a", "tag": "release-20250101000000"}'},
        400,
        "invalid_json",
    ),
    ("NaN", {"body": b'{"tag": "release-20250101000000", "force": NaN}'}, 400, "invalid_json"),
    ("deep nesting", {"body": ("[" * 5000 + "]" * 5000).encode()}, 400, "invalid_json"),
    ("top-level array", {"body": [{"tag": "release-20250101000000"}]}, 400, "invalid_json"),
    ("empty body", {"body": b""}, 400, "invalid_json"),
    ("unknown shape", {"body": {"hello": "world"}}, 400, "invalid_payload"),
    ("tag not a string", {"body": {"tag": 20250101000000}}, 400, "invalid_payload"),
    (
        "force not a bool",
        {"body": {"tag": "release-20250101000000", "force": "yes"}},
        400,
        "invalid_payload",
    ),
    (
        "unknown field",
        {"body": {"tag": "release-20250101000000", "froce": True}},
        400,
        "invalid_payload",
    ),
    (
        "dockerhub without repository",
        {"body": {"push_data": {"tag": "x"}, "repository": 1}},
        400,
        "invalid_payload",
    ),
    (
        "form content type",
        {
            "body": {"tag": "release-20250101000000"},
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
        415,
        "unsupported_media_type",
    ),
    (
        "no content type",
        {"body": {"tag": "release-20250101000000"}, "headers": {}},
        415,
        "unsupported_media_type",
    ),
    (
        "body over the cap",
        {"body": {"tag": "release-20250101000000", "repository": "x" * 70000}},
        413,
        "payload_too_large",
    ),
    (
        "other repository",
        {"body": "dockerhub:release-20250101000000:evil/stut.dev"},
        403,
        "repository_mismatch",
    ),
    (
        "plain body names other repository",
        {"body": {"tag": "release-20250101000000", "repository": "evil/x"}},
        403,
        "repository_mismatch",
    ),
    ("latest", {"body": {"tag": "latest"}}, 422, "invalid_tag"),
    ("path traversal", {"body": {"tag": "../x"}}, 422, "invalid_tag"),
    ("spaces", {"body": {"tag": "release-2023 0103082900"}}, 422, "invalid_tag"),
    ("129 characters", {"body": {"tag": "release-" + "1" * 121}}, 422, "invalid_tag"),
    ("pattern suffix", {"body": {"tag": "release-20250101000000-rc1"}}, 422, "invalid_tag"),
    ("stale tag", {"body": "dockerhub:release-20220101000000:stut/stut.dev"}, 409, "stale_tag"),
    ("stale plain tag", {"body": {"tag": "release-20220101000000"}}, 409, "stale_tag"),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "code"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_rejections_answer_json_and_write_nothing(
    client: Any,
    consul: ConsulHandle,
    secret: str,
    case: str,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    key = consul.key("IMAGE_TAG")
    consul.put(key, DEPLOYED)
    before = consul.get(key)
    body = request_kwargs["body"]
    if isinstance(body, str) and body.startswith("dockerhub:"):
        _, tag, repo = body.split(":")
        body = dockerhub(tag, repo)
    headers = request_kwargs.get("headers", JSON)
    answer = post_hook(client, request_kwargs.get("secret", secret), body=body, headers=headers)
    assert answer.status_code == status
    assert answer.mimetype == "application/json"
    assert answer.json["error"] == code
    assert answer.json["message"]
    assert set(answer.json) == {"error", "message"}
    assert consul.get(key) == before


def test_unknown_and_wrong_secrets_are_byte_identical(client: Any, secret: str) -> None:
    wrong = post_hook(client, secret[:-1] + ("A" if secret[-1] != "A" else "B"), DEPLOYED)
    unknown = post_hook(client, "nothing-here", DEPLOYED)
    no_route = client.post("/no/such/route", json={})
    assert wrong.status_code == unknown.status_code == no_route.status_code == 404
    assert wrong.data == unknown.data == no_route.data
    assert dict(wrong.headers) == dict(unknown.headers)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/hooks/anything", 405, "method_not_allowed"),
        ("PUT", "/hooks/anything", 405, "method_not_allowed"),
        ("DELETE", "/hooks", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", "/", 404, "not_found"),
        ("GET", "/hooks/a/b/c", 404, "not_found"),
        ("GET", "/hooks/wrong/deployment", 404, "not_found"),
        ("POST", "/hooks", 401, "unauthorized"),
        ("OPTIONS", "/hooks/anything", 405, "method_not_allowed"),
        ("OPTIONS", "/hooks", 405, "method_not_allowed"),
    ],
)
def test_every_route_error_is_json(
    client: Any, method: str, path: str, status: int, code: str
) -> None:
    answer = client.open(path, method=method, json={})
    assert answer.status_code == status
    assert answer.json["error"] == code
    assert "<html" not in answer.get_data(as_text=True).lower()


@pytest.mark.parametrize("authorization", ["", "Basic abc", "Bearer", "Bearer    ", "bearer"])
def test_bearer_route_needs_a_bearer_token(client: Any, authorization: str) -> None:
    answer = client.post("/hooks", json={"tag": DEPLOYED}, headers={"Authorization": authorization})
    assert answer.status_code == 401
    assert answer.json["error"] == "unauthorized"


def test_wrong_bearer_token_is_the_same_404(client: Any, secret: str) -> None:
    answer = client.post("/hooks", json={"tag": DEPLOYED}, headers={"Authorization": "Bearer x"})
    path = post_hook(client, "x", DEPLOYED)
    assert answer.status_code == 404
    assert answer.data == path.data


def test_no_redirect_on_hook_paths(client: Any, secret: str) -> None:
    for path in (f"/hooks/{secret}/", f"//hooks/{secret}", f"/hooks//{secret}"):
        answer = client.post(path, json={"tag": DEPLOYED})
        assert answer.status_code < 300 or answer.status_code >= 400
        assert "Location" not in answer.headers
        assert secret not in answer.get_data(as_text=True)


def test_another_services_secret_cannot_deploy_its_repository(
    consul: ConsulHandle, secret: str
) -> None:
    import hashlib

    other_secret = "other-" + secret
    extra = (
        "[services.api]\n"
        'repository = "stut/api"\n'
        f'key = "{consul.key("API_TAG")}"\n'
        f'secret_sha256 = "{hashlib.sha256(other_secret.encode()).hexdigest()}"\n'
    )
    settings = make_settings(consul, secret, extra=extra)
    client = create_app(settings).test_client()
    # api's secret with web's repository: refused, nothing written anywhere.
    answer = post_hook(
        client, other_secret, body=dockerhub("release-20250101000000", "stut/stut.dev")
    )
    assert answer.status_code == 403
    assert consul.get(consul.key("API_TAG")) == (None, 0)
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)
    assert post_hook(client, other_secret, body=dockerhub(repo="stut/api")).status_code == 200
    assert consul.get(consul.key("API_TAG"))[0] == SAMPLE_TAG


def test_healthz_and_readyz(client: Any) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["status"] == "ready"


def test_readyz_without_a_leader_is_503(client: Any, consul: ConsulHandle) -> None:
    consul.require_fake().leader = ""
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json["error"] == "consul_unavailable"


def test_readyz_with_consul_down_is_503(client: Any, consul: ConsulHandle) -> None:
    consul.require_fake().refuse_connections()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json["status"] == "unavailable"


def test_dockerhub_payload_is_not_mutated_by_parsing() -> None:
    payload = dockerhub()
    original = copy.deepcopy(payload)
    from noman.senders import parse_release

    parse_release(payload)
    assert payload == original


def test_metrics_count_hooks_by_service_and_outcome(client: Any, secret: str) -> None:
    def count(outcome: str, service: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        for line in text.splitlines():
            if line.startswith(
                f'noman_hook_requests_total{{outcome="{outcome}",service="{service}"}}'
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    deployed, stale = count("deployed", "web"), count("stale_tag", "web")
    post_hook(client, secret, "release-20240101000000")
    post_hook(client, secret, "release-20230101000000")
    assert count("deployed", "web") == deployed + 1
    assert count("stale_tag", "web") == stale + 1
    assert secret not in client.get("/metrics").get_data(as_text=True)


def test_a_body_cut_off_mid_way_is_refused_without_a_write(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    import io

    answer = client.post(
        f"/hooks/{secret}",
        input_stream=io.BytesIO(b'{"tag": "rel'),
        content_length=100,
        content_type="application/json",
    )
    assert answer.status_code == 400
    assert answer.json["error"] in ("bad_request", "invalid_json")
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_werkzeug_400s_are_json_bad_request(secret: str, settings: Any) -> None:
    from flask import abort

    app = create_app(settings)
    app.add_url_rule("/test-400", view_func=lambda: abort(400))
    answer = app.test_client().get("/test-400")
    assert answer.status_code == 400
    assert answer.json == {"error": "bad_request", "message": "The HTTP request is malformed."}


def test_an_unexpected_error_is_a_json_500_with_a_hook_line(
    app: Any, client: Any, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(service: object, release: object, request_id: object = None) -> object:
        raise RuntimeError(f"bug while handling {secret}")

    components(app).deployer.deploy = broken  # type: ignore[method-assign,assignment]
    answer = post_hook(client, secret, DEPLOYED)
    assert answer.status_code == 500
    assert answer.json == {
        "error": "internal_error",
        "message": "Internal error; the operator's log has the details.",
    }
    assert secret not in answer.get_data(as_text=True)
    hook_lines = [r for r in caplog.records if r.name == "noman.hooks"]
    assert hook_lines[-1].fields["outcome"] == "internal_error"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("secret_in_path", "body"),
    [
        ("wrong-secret-wrong-secret-wrong", {"tag": SAMPLE_TAG}),  # 404
        (None, b'{"tag": "release-'),  # 400 invalid_json
        (None, {"tag": "../release-1"}),  # 422 invalid_tag
    ],
)
def test_a_refused_hook_leaves_no_reference_cycle(
    client: Any, secret: str, secret_in_path: str | None, body: Any
) -> None:
    # A refusal's error held by the view's frame would keep that frame, and with it the
    # whole request, alive until the garbage collector runs: under a flood of
    # rejections, six times as many collections and a worker's memory held in cycles.
    path = f"/hooks/{secret_in_path or secret}"
    kwargs = {"data": body, "headers": JSON} if isinstance(body, bytes) else {"json": body}
    client.post(path, **kwargs)  # warm up: first-request setup may allocate cycles
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        answer = client.post(path, **kwargs)
        gc.collect()
        frames = [
            item.f_code.co_name
            for item in gc.garbage
            if isinstance(item, types.FrameType) and item.f_code.co_filename.startswith(PACKAGE)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert answer.status_code in (400, 404, 422), answer.json
    assert frames == []


def test_hook_headers_are_werkzeugs_with_lower_case_names() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "noman.example",
        "HTTP_X_GITHUB_EVENT": "package",
        "HTTP_X_HUB_SIGNATURE_256": "sha256=00",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "",  # empty: no header, as werkzeug reads it
        "HTTP_CONTENT_TYPE": "text/plain",  # the CGI variable wins, as in werkzeug
        "wsgi.input": None,
    }
    expected = {name.lower(): value for name, value in EnvironHeaders(environ).items()}
    assert lowercase_headers(environ) == expected
    assert expected["content-type"] == "application/json"
    assert "content-length" not in expected
