"""Consul down, slow, failing or refusing the token: a clear error, and nothing written."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
import requests_mock

from noman import create_app
from noman.config import ConsulSettings
from noman.errors import ConsulForbidden
from noman.stores import Write
from noman.stores.consul import ConsulStore
from tests.conftest import ConsulHandle, make_settings, post_hook
from tests.fakes.consul import FakeConsul

NEW_TAG = "release-20250101000000"


def test_consul_500_is_503_with_retry_after_and_no_write(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    fake = consul.require_fake()
    fake.fail_always(500, "rpc error: No cluster leader")
    answer = post_hook(client, secret, NEW_TAG)
    fake.heal()
    assert answer.status_code == 503
    assert answer.json["error"] == "consul_unavailable"
    assert int(answer.headers["Retry-After"]) > 0
    assert fake.writes == 0
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_consul_hanging_answers_503_within_the_timeout(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    fake = consul.require_fake()
    fake.hang(5)
    started = time.monotonic()
    answer = post_hook(client, secret, NEW_TAG)
    elapsed = time.monotonic() - started
    fake.heal()
    assert answer.status_code == 503
    assert answer.json["error"] == "consul_unavailable"
    assert "Retry-After" in answer.headers
    # The configured timeout is 1 s: a generous bound that still proves we
    # did not wait for the 5 s hang (or py-consul's 30 s default).
    assert elapsed < 4
    assert fake.writes == 0


def test_consul_refusing_connections_is_503(client: Any, consul: ConsulHandle, secret: str) -> None:
    fake = consul.require_fake()
    fake.refuse_connections()
    answer = post_hook(client, secret, NEW_TAG)
    fake.resume()
    assert answer.status_code == 503
    assert answer.json["error"] == "consul_unavailable"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_replay_after_recovery_lands_exactly_once(
    client: Any, consul: ConsulHandle, secret: str
) -> None:
    fake = consul.require_fake()
    fake.fail_always(500)
    assert post_hook(client, secret, NEW_TAG).status_code == 503
    fake.heal()
    first = post_hook(client, secret, NEW_TAG)
    _, index = consul.get(consul.key("IMAGE_TAG"))
    second = post_hook(client, secret, NEW_TAG)
    assert (first.status_code, first.json["changed"]) == (200, True)
    assert (second.status_code, second.json["changed"]) == (200, False)
    assert consul.get(consul.key("IMAGE_TAG")) == (NEW_TAG, index)


@pytest.mark.parametrize(("token", "status"), [(None, 502), ("wrong-token", 502)])
def test_consul_refusing_the_token_is_502(secret: str, token: str | None, status: int) -> None:
    with FakeConsul(acl_token="the-right-token") as fake:
        handle = ConsulHandle(fake.url, token, fake)
        settings = make_settings(handle, secret)
        answer = post_hook(create_app(settings), secret, NEW_TAG)
        assert answer.status_code == status
        assert answer.json["error"] == "consul_forbidden"
        assert "the-right-token" not in answer.get_data(as_text=True)
        assert fake.writes == 0


def test_the_right_token_deploys_under_acls(secret: str) -> None:
    with FakeConsul(acl_token="the-right-token") as fake:
        handle = ConsulHandle(fake.url, "the-right-token", fake)
        settings = make_settings(handle, secret)
        assert post_hook(create_app(settings), secret, NEW_TAG).status_code == 200
        assert fake.value(handle.key("IMAGE_TAG")) == NEW_TAG.encode()


def test_consul_token_from_the_environment(secret: str) -> None:
    with FakeConsul(acl_token="env-token") as fake:
        handle = ConsulHandle(fake.url, None, fake)
        settings = make_settings(handle, secret, environ={"CONSUL_HTTP_TOKEN": "env-token"})
        assert post_hook(create_app(settings), secret, NEW_TAG).status_code == 200


MOCK_URL = "http://consul.invalid:8500"
KV = f"{MOCK_URL}/v1/kv/configs/web/IMAGE_TAG"
TXN = f"{MOCK_URL}/v1/txn"
RECORD = re.compile(r".*/v1/kv/noman-test/[0-9a-f]+-noman/web$")  # the 0.x record


def is_read(request: Any) -> bool:
    """The hook's one read: a read-only transaction of get-tree operations."""
    return all(op["KV"]["Verb"] == "get-tree" for op in request.json())


def is_write(request: Any) -> bool:
    return not is_read(request)


def writes(mock: Any) -> list[Any]:
    return [r for r in mock.request_history if r.method == "PUT" and is_write(r)]


NOTHING_STORED = {"json": {"Results": [], "Errors": None}, "headers": {"X-Consul-Index": "7"}}


@pytest.fixture
def mocked(secret: str) -> Any:
    handle = ConsulHandle(MOCK_URL, None, None)
    settings = make_settings(handle, secret, key="configs/web/IMAGE_TAG")
    with requests_mock.Mocker() as mock:
        yield mock, create_app(settings).test_client()


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        (
            {"status_code": 403, "text": "Permission denied: token lacks 'key:read'"},
            502,
            "consul_forbidden",
        ),
        ({"status_code": 403, "text": "ACL not found"}, 502, "consul_forbidden"),
        (
            {"status_code": 500, "text": "rpc error making call: No cluster leader"},
            503,
            "consul_unavailable",
        ),
        ({"status_code": 502, "text": "<html>Bad gateway</html>"}, 503, "consul_unavailable"),
        ({"status_code": 429, "text": "rate limit exceeded"}, 502, "consul_error"),
        ({"status_code": 400, "text": "Bad request"}, 502, "consul_error"),
        # A web page where Consul should be: no retry helps, the address is wrong.
        ({"status_code": 200, "text": "<html>not consul</html>"}, 502, "consul_wrong_address"),
        ({"exc": requests.exceptions.ConnectTimeout}, 503, "consul_unavailable"),
        ({"exc": requests.exceptions.ReadTimeout}, 503, "consul_unavailable"),
        ({"exc": requests.exceptions.ConnectionError}, 503, "consul_unavailable"),
    ],
)
def test_consul_error_shapes_on_read(
    mocked: Any, secret: str, response: dict[str, Any], status: int, code: str
) -> None:
    mock, client = mocked
    mock.put(TXN, additional_matcher=is_read, **response)
    mock.put(TXN, additional_matcher=is_write, json={"Results": [], "Errors": None})
    answer = post_hook(client, secret, NEW_TAG)
    assert answer.status_code == status
    assert answer.json["error"] == code
    assert not writes(mock)


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        ({"status_code": 403, "text": "Permission denied"}, 502, "consul_forbidden"),
        (
            {"status_code": 409, "json": {"Errors": [{"OpIndex": 0, "What": "Permission denied"}]}},
            502,
            "consul_forbidden",
        ),
        ({"status_code": 500, "text": "internal error"}, 503, "consul_unavailable"),
        ({"exc": requests.exceptions.ReadTimeout}, 503, "consul_unavailable"),
    ],
)
def test_consul_error_shapes_on_write(
    mocked: Any, secret: str, response: dict[str, Any], status: int, code: str
) -> None:
    mock, client = mocked
    mock.put(TXN, additional_matcher=is_read, **NOTHING_STORED)
    mock.get(RECORD, status_code=404, headers={"X-Consul-Index": "7"})
    mock.put(TXN, additional_matcher=is_write, **response)
    # After a timeout, the re-read of the entry the write would have created.
    mock.get(re.compile(r".*/history/\d+$"), status_code=404, headers={"X-Consul-Index": "7"})
    answer = post_hook(client, secret, NEW_TAG)
    assert answer.status_code == status
    assert answer.json["error"] == code
    # One transaction, never a blind retry, never a compensating write.
    assert len(writes(mock)) == 1


def test_losing_every_cas_race_is_a_retryable_503(mocked: Any, secret: str) -> None:
    mock, client = mocked
    mock.put(TXN, additional_matcher=is_read, **NOTHING_STORED)
    mock.get(RECORD, status_code=404, headers={"X-Consul-Index": "7"})
    stale = {"OpIndex": 0, "What": 'failed to set key "configs/web/IMAGE_TAG", index is stale'}
    mock.put(TXN, additional_matcher=is_write, status_code=409, json={"Errors": [stale]})
    answer = post_hook(client, secret, NEW_TAG)
    assert answer.status_code == 503
    assert answer.json["error"] == "write_conflict"
    assert "Retry-After" in answer.headers
    puts = writes(mock)
    assert len(puts) == 8  # consul.cas_retries' default
    # Tag key, desired state, new history entry: each created only if still missing.
    assert all([op["KV"]["Verb"] for op in r.json()] == ["cas", "cas", "cas"] for r in puts)
    assert all(op["KV"]["Index"] == 0 for r in puts for op in r.json())


def test_readyz_names_a_refused_token(secret: str) -> None:
    with FakeConsul(acl_token="the-right-token") as fake:
        handle = ConsulHandle(fake.url, "wrong-token", fake)
        answer = create_app(make_settings(handle, secret)).test_client().get("/readyz")
        assert answer.status_code == 503
        assert answer.json["error"] == "consul_forbidden"


@pytest.mark.parametrize("token", [None, "some-token"])
@pytest.mark.parametrize("call", ["read", "list", "transact"])
def test_every_refusal_says_whether_a_token_was_configured(token: str | None, call: str) -> None:
    """py-consul's calls, the raw list and the raw transaction map a refusal alike."""
    store = ConsulStore(ConsulSettings(address=MOCK_URL, token=token, timeout=1))
    with requests_mock.Mocker() as mock:
        mock.get(re.compile(r".*/v1/kv/.*"), status_code=403, text="Permission denied")
        denied = {"OpIndex": 0, "What": "Permission denied"}
        mock.put(TXN, status_code=409, json={"Results": None, "Errors": [denied]})
        with pytest.raises(ConsulForbidden) as refused:
            if call == "read":
                store.read("configs/web/IMAGE_TAG")
            elif call == "list":
                store.list("noman/")
            else:
                store.transact([Write("configs/web/IMAGE_TAG", "release-1", 0)])
    assert refused.value.address == MOCK_URL
    assert ("no token configured" in refused.value.message) is (token is None)
    assert ("nothing was written" in refused.value.message) is (call == "transact")
