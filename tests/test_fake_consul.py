"""The fake Consul, checked over real HTTP against each numbered item of specs/consul-kv.md.

Test names carry the item number (``test_item_04_...``); tests without one cover the rest of
the fake's contract: routing, key validation, the direct-access API, py-consul and the CLI.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
import requests
from consul.exceptions import ClientError, NotFound

from tests.fakes.consul import (
    ANONYMOUS_ACCESSOR_ID,
    MAX_VALUE_SIZE,
    FakeClock,
    FakeConsul,
    parse_duration,
)

TOKEN = "4a1c5e1e-noman-test-token"
TIMEOUT = 5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakeConsul]:
    with FakeConsul() as server:
        yield server


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[FakeConsul]:
    """A fake whose session TTLs and lock-delays follow a manual clock."""
    with FakeConsul(clock=clock) as server:
        yield server


@pytest.fixture
def acl_fake() -> Iterator[FakeConsul]:
    with FakeConsul(acl_token=TOKEN) as server:
        yield server


@pytest.fixture
def no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """py-consul reads these; a developer's shell must not steer the tests."""
    for name in (
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
    ):
        monkeypatch.delenv(name, raising=False)


def kv(fake: FakeConsul, key: str, method: str = "GET", **kwargs: Any) -> requests.Response:
    """One request to /v1/kv/<key>."""
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.request(method, f"{fake.url}/v1/kv/{key}", **kwargs)


def txn(fake: FakeConsul, ops: list[dict[str, Any]], **kwargs: Any) -> requests.Response:
    """One PUT /v1/txn with the given operations."""
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.put(f"{fake.url}/v1/txn", json=ops, **kwargs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def denied(access: str, key: str) -> str:
    return (
        f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR_ID}' "
        f"lacks permission 'key:{access}' on \"{key}\""
    )


# ---- item 1: missing key ---------------------------------------------------------------------


def test_item_01_missing_key_is_404_with_empty_body_and_index_headers(fake: FakeConsul) -> None:
    response = kv(fake, "noman/missing")
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["X-Consul-Index"]) >= 1
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"


def test_item_01_missing_key_reports_the_store_index_which_never_goes_back(
    fake: FakeConsul,
) -> None:
    fake.set("noman/a", "1")
    newest = fake.set("noman/b", "2")
    assert kv(fake, "noman/missing").headers["X-Consul-Index"] == str(newest)
    kv(fake, "noman/b", "DELETE")
    assert int(kv(fake, "noman/missing").headers["X-Consul-Index"]) > newest


# ---- item 2: existing key --------------------------------------------------------------------


def test_item_02_existing_key_is_a_one_element_array_indexed_by_its_modify_index(
    fake: FakeConsul,
) -> None:
    index = fake.set("noman/web", "v1.2.3", flags=7)
    fake.set("noman/other", "later")  # a later write elsewhere must not move this key's index
    response = kv(fake, "noman/web")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Consul-Index"] == str(index)
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.json() == [
        {
            "LockIndex": 0,
            "Key": "noman/web",
            "Flags": 7,
            "Value": b64(b"v1.2.3"),
            "CreateIndex": index,
            "ModifyIndex": index,
        }
    ]


def test_item_02_empty_value_is_null(fake: FakeConsul) -> None:
    assert kv(fake, "noman/empty", "PUT", data=b"").json() is True
    assert kv(fake, "noman/empty").json()[0]["Value"] is None
    assert fake.value("noman/empty") == b""
    entry = fake.entry("noman/empty")
    assert entry is not None and entry["Value"] is None


def test_item_02_raw_answers_the_bare_bytes_as_text_plain(fake: FakeConsul) -> None:
    index = fake.set("noman/bin", b"\x00\xffv1")
    response = kv(fake, "noman/bin", params={"raw": ""})
    assert response.status_code == 200
    assert response.content == b"\x00\xffv1"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Consul-Index"] == str(index)
    assert kv(fake, "noman/none", params={"raw": ""}).status_code == 404


# ---- item 3: plain PUT -----------------------------------------------------------------------


def test_item_03_plain_put_answers_true_sets_create_index_once_and_grows_modify_index(
    fake: FakeConsul,
) -> None:
    first = kv(fake, "noman/web", "PUT", data=b"v1")
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/json"
    assert first.content == b"true"
    created = fake.entry("noman/web")
    assert kv(fake, "noman/web", "PUT", data=b"v2").json() is True
    updated = fake.entry("noman/web")
    assert created is not None and updated is not None
    assert created["CreateIndex"] == created["ModifyIndex"]
    assert updated["CreateIndex"] == created["CreateIndex"]
    assert updated["ModifyIndex"] > created["ModifyIndex"]
    assert fake.value("noman/web") == b"v2"
    assert fake.writes == 2


# ---- item 4: cas=0 ---------------------------------------------------------------------------


def test_item_04_cas_zero_only_creates(fake: FakeConsul) -> None:
    assert kv(fake, "noman/web", "PUT", data=b"v1", params={"cas": 0}).json() is True
    answer = kv(fake, "noman/web", "PUT", data=b"v2", params={"cas": 0})
    assert answer.status_code == 200
    assert answer.json() is False
    assert fake.value("noman/web") == b"v1"
    assert fake.writes == 1


# ---- item 5: cas=N ---------------------------------------------------------------------------


def test_item_05_cas_with_the_current_modify_index_writes_any_other_does_not(
    fake: FakeConsul,
) -> None:
    index = fake.set("noman/web", "v1")
    stale = kv(fake, "noman/web", "PUT", data=b"v0", params={"cas": index - 1})
    assert stale.status_code == 200 and stale.json() is False
    assert kv(fake, "noman/web", "PUT", data=b"v2", params={"cas": index + 5}).json() is False
    assert kv(fake, "noman/web", "PUT", data=b"v2", params={"cas": index}).json() is True
    assert fake.value("noman/web") == b"v2"
    # The index moved: the same cas is stale now.
    assert kv(fake, "noman/web", "PUT", data=b"v3", params={"cas": index}).json() is False


def test_item_05_cas_on_a_missing_key_is_false(fake: FakeConsul) -> None:
    assert kv(fake, "noman/missing", "PUT", data=b"v1", params={"cas": 3}).json() is False
    assert fake.value("noman/missing") is None


# ---- item 6: unchanged write -----------------------------------------------------------------


def test_item_06_same_value_and_flags_again_is_true_and_keeps_modify_index(
    fake: FakeConsul,
) -> None:
    assert kv(fake, "noman/web", "PUT", data=b"v1", params={"flags": 3}).json() is True
    before = fake.entry("noman/web")
    assert before is not None
    again = kv(fake, "noman/web", "PUT", data=b"v1", params={"flags": 3})
    assert again.json() is True
    assert fake.entry("noman/web") == before
    assert fake.writes == 1
    # A cas at the current index with the same value is also true and changes nothing.
    cas = kv(
        fake, "noman/web", "PUT", data=b"v1", params={"flags": 3, "cas": before["ModifyIndex"]}
    )
    assert cas.json() is True
    assert fake.entry("noman/web") == before
    # Other flags are a change.
    assert kv(fake, "noman/web", "PUT", data=b"v1", params={"flags": 4}).json() is True
    after = fake.entry("noman/web")
    assert after is not None and after["ModifyIndex"] > before["ModifyIndex"]


# ---- item 7: flags reset ---------------------------------------------------------------------


def test_item_07_put_without_flags_resets_flags_to_zero(fake: FakeConsul) -> None:
    kv(fake, "noman/web", "PUT", data=b"v1", params={"flags": 50})
    assert kv(fake, "noman/web").json()[0]["Flags"] == 50
    kv(fake, "noman/web", "PUT", data=b"v1")
    assert kv(fake, "noman/web").json()[0]["Flags"] == 0


# ---- item 8: limits --------------------------------------------------------------------------


def test_item_08_value_over_512_kib_is_413_and_at_the_limit_is_fine(fake: FakeConsul) -> None:
    too_big = kv(fake, "noman/big", "PUT", data=b"x" * (MAX_VALUE_SIZE + 1))
    assert too_big.status_code == 413
    assert "too large" in too_big.text
    assert fake.value("noman/big") is None
    assert kv(fake, "noman/big", "PUT", data=b"x" * MAX_VALUE_SIZE).json() is True


def test_item_08_empty_key_is_400_missing_key_name(fake: FakeConsul) -> None:
    for method in ("PUT", "GET", "DELETE"):
        response = kv(fake, "", method, data=b"v1")
        assert response.status_code == 400, method
        assert response.text == "Missing key name"
    assert fake.writes == 0


# ---- item 9: recurse and keys ----------------------------------------------------------------


def test_item_09_recurse_lists_every_key_with_the_string_prefix_sorted(fake: FakeConsul) -> None:
    for key in ("noman/web/tag", "noman/api", "noman/web", "other/x", "noman/web2"):
        fake.set(key, key)
    response = kv(fake, "noman/web", params={"recurse": ""})
    assert response.status_code == 200
    assert [entry["Key"] for entry in response.json()] == [
        "noman/web",
        "noman/web/tag",
        "noman/web2",
    ]
    newest = max(entry["ModifyIndex"] for entry in response.json())
    assert response.headers["X-Consul-Index"] == str(newest)


def test_item_09_recurse_is_a_presence_flag(fake: FakeConsul) -> None:
    fake.set("noman/a", "1")
    fake.set("noman/b", "2")
    response = kv(fake, "noman/", params={"recurse": "false"})
    assert [entry["Key"] for entry in response.json()] == ["noman/a", "noman/b"]


def test_item_09_recurse_without_match_is_404_with_index_header(fake: FakeConsul) -> None:
    fake.set("noman/a", "1")
    response = kv(fake, "absent/", params={"recurse": ""})
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["X-Consul-Index"]) >= 1


def test_item_09_keys_with_separator_lists_names_only(fake: FakeConsul) -> None:
    for key in ("noman/web/tag", "noman/web/history/1", "noman/api/tag", "noman/readme"):
        fake.set(key, "x")
    names = kv(fake, "noman/", params={"keys": ""}).json()
    assert names == ["noman/api/tag", "noman/readme", "noman/web/history/1", "noman/web/tag"]
    folded = kv(fake, "noman/", params={"keys": "", "separator": "/"}).json()
    assert folded == ["noman/api/", "noman/readme", "noman/web/"]
    assert kv(fake, "absent/", params={"keys": ""}).status_code == 404


def test_item_09_prefix_index_does_not_slide_back_after_a_delete(fake: FakeConsul) -> None:
    fake.set("noman/a", "1")
    fake.set("noman/b", "2")
    before = int(kv(fake, "noman/", params={"recurse": ""}).headers["X-Consul-Index"])
    kv(fake, "noman/b", "DELETE")
    after = int(kv(fake, "noman/", params={"recurse": ""}).headers["X-Consul-Index"])
    assert after > before


# ---- item 10: DELETE -------------------------------------------------------------------------


def test_item_10_delete_of_a_missing_key_is_true(fake: FakeConsul) -> None:
    response = kv(fake, "noman/missing", "DELETE")
    assert response.status_code == 200
    assert response.json() is True
    assert fake.writes == 0


def test_item_10_delete_removes_one_key_and_recurse_removes_a_prefix(fake: FakeConsul) -> None:
    for key in ("noman/web", "noman/web/tag", "noman/api"):
        fake.set(key, "x")
    assert kv(fake, "noman/api", "DELETE").json() is True
    assert fake.value("noman/api") is None
    assert kv(fake, "noman/web", "DELETE", params={"recurse": ""}).json() is True
    assert fake.value("noman/web") is None and fake.value("noman/web/tag") is None
    assert fake.writes == 2


def test_item_10_delete_with_cas_deletes_only_at_that_index(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    assert kv(fake, "noman/web", "DELETE", params={"cas": index - 1}).json() is False
    assert fake.value("noman/web") == b"v1"
    assert kv(fake, "noman/web", "DELETE", params={"cas": index}).json() is True
    assert fake.value("noman/web") is None


# ---- item 11: transactions -------------------------------------------------------------------


def test_item_11_txn_with_a_stale_cas_is_409_and_applies_nothing(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    response = txn(
        fake,
        [
            {"KV": {"Verb": "set", "Key": "noman/web/history/2", "Value": b64(b"v2")}},
            {"KV": {"Verb": "cas", "Key": "noman/web", "Value": b64(b"v2"), "Index": index - 1}},
        ],
    )
    assert response.status_code == 409
    assert response.json() == {
        "Results": None,
        "Errors": [{"OpIndex": 1, "What": 'failed to set key "noman/web", index is stale'}],
    }
    assert fake.value("noman/web") == b"v1"
    assert fake.value("noman/web/history/2") is None
    assert fake.writes == 0


def test_item_11_txn_success_applies_everything_at_one_index(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    response = txn(
        fake,
        [
            {"KV": {"Verb": "cas", "Key": "noman/web", "Value": b64(b"v2"), "Index": index}},
            {"KV": {"Verb": "check-not-exists", "Key": "noman/web/history/2"}},
            {"KV": {"Verb": "set", "Key": "noman/web/history/2", "Value": b64(b"v2"), "Flags": 1}},
            {"KV": {"Verb": "get", "Key": "noman/web"}},
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert body["Errors"] is None
    written, history, read = (result["KV"] for result in body["Results"])
    assert written["Value"] is None and history["Value"] is None
    assert read["Value"] == b64(b"v2")
    assert written["ModifyIndex"] == history["ModifyIndex"] == read["ModifyIndex"] > index
    assert history["CreateIndex"] == history["ModifyIndex"] and history["Flags"] == 1
    assert fake.value("noman/web") == b"v2"
    assert fake.value("noman/web/history/2") == b"v2"
    assert fake.writes == 2


def test_item_11_txn_reports_every_failed_operation(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    response = txn(
        fake,
        [
            {"KV": {"Verb": "check-not-exists", "Key": "noman/web"}},
            {"KV": {"Verb": "get", "Key": "noman/missing"}},
            {"KV": {"Verb": "check-index", "Key": "noman/web", "Index": 999}},
            {"KV": {"Verb": "delete", "Key": "noman/web"}},
            {"KV": {"Verb": "frobnicate", "Key": "noman/web"}},
        ],
    )
    assert response.status_code == 409
    errors = response.json()["Errors"]
    assert [error["OpIndex"] for error in errors] == [0, 1, 2, 4]
    assert errors[0]["What"] == 'key "noman/web" exists'
    assert errors[1]["What"] == 'key "noman/missing" doesn\'t exist'
    assert errors[2]["What"].startswith('failed index check for key "noman/web"')
    assert errors[3]["What"] == 'unknown KV verb "frobnicate"'
    assert fake.value("noman/web") == b"v1"


def test_item_11_txn_delete_verbs(fake: FakeConsul) -> None:
    index = fake.set("noman/a", "1")
    fake.set("noman/tree/x", "1")
    fake.set("noman/tree/y", "1")
    stale = txn(fake, [{"KV": {"Verb": "delete-cas", "Key": "noman/a", "Index": index + 9}}])
    assert stale.status_code == 409
    ok = txn(
        fake,
        [
            {"KV": {"Verb": "delete-cas", "Key": "noman/a", "Index": index}},
            {"KV": {"Verb": "delete-tree", "Key": "noman/tree/"}},
        ],
    )
    assert ok.status_code == 200
    assert ok.json() == {"Results": [], "Errors": None}
    assert fake.value("noman/a") is None and fake.value("noman/tree/x") is None


def test_item_11_txn_bad_bodies(fake: FakeConsul) -> None:
    url = f"{fake.url}/v1/txn"
    assert requests.put(url, data=b"{", timeout=TIMEOUT).status_code == 400
    assert requests.put(url, json={"KV": {}}, timeout=TIMEOUT).status_code == 400
    bad_value = [{"KV": {"Verb": "set", "Key": "k", "Value": "not base64!"}}]
    assert requests.put(url, json=bad_value, timeout=TIMEOUT).status_code == 400
    many = [{"KV": {"Verb": "get", "Key": f"k{i}"}} for i in range(65)]
    assert requests.put(url, json=many, timeout=TIMEOUT).status_code == 413
    no_key = txn(fake, [{"KV": {"Verb": "set", "Value": b64(b"v")}}])
    assert no_key.status_code == 409
    assert no_key.json()["Errors"] == [{"OpIndex": 0, "What": "Must provide key"}]
    assert requests.get(url, timeout=TIMEOUT).status_code == 405


# ---- item 12: ACLs ---------------------------------------------------------------------------


def test_item_12_missing_token_is_403_permission_denied(acl_fake: FakeConsul) -> None:
    acl_fake.set("noman/web", "v1")
    read = kv(acl_fake, "noman/web")
    assert read.status_code == 403
    assert read.text == denied("read", "noman/web")
    assert read.headers["Content-Type"].startswith("text/plain")
    write = kv(acl_fake, "noman/web", "PUT", data=b"v2")
    assert write.status_code == 403
    assert write.text == denied("write", "noman/web")
    assert kv(acl_fake, "noman/web", "DELETE").text == denied("write", "noman/web")
    assert acl_fake.value("noman/web") == b"v1"
    assert acl_fake.writes == 0


def test_item_12_wrong_token_is_403_acl_not_found(acl_fake: FakeConsul) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = kv(acl_fake, "noman/web", method, headers={"X-Consul-Token": "wrong"})
        assert response.status_code == 403, method
        assert response.text == "ACL not found"
    assert txn(acl_fake, [], headers={"X-Consul-Token": "wrong"}).status_code == 403
    assert acl_fake.writes == 0


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"X-Consul-Token": TOKEN}, {}),
        ({}, {"token": TOKEN}),
        ({"Authorization": f"Bearer {TOKEN}"}, {}),
    ],
    ids=["x-consul-token", "query", "bearer"],
)
def test_item_12_token_is_accepted_from_every_source(
    acl_fake: FakeConsul, headers: dict[str, str], params: dict[str, str]
) -> None:
    put = kv(acl_fake, "noman/web", "PUT", data=b"v1", headers=headers, params=params)
    assert put.json() is True
    assert kv(acl_fake, "noman/web", headers=headers, params=params).status_code == 200


def test_item_12_token_sources_first_wins_query_then_header_then_bearer(
    acl_fake: FakeConsul,
) -> None:
    acl_fake.set("noman/web", "v1")
    good_query = kv(
        acl_fake, "noman/web", params={"token": TOKEN}, headers={"X-Consul-Token": "wrong"}
    )
    assert good_query.status_code == 200
    bad_query = kv(
        acl_fake, "noman/web", params={"token": "wrong"}, headers={"X-Consul-Token": TOKEN}
    )
    assert bad_query.text == "ACL not found"
    header_first = {"X-Consul-Token": TOKEN, "Authorization": "Bearer wrong"}
    assert kv(acl_fake, "noman/web", headers=header_first).status_code == 200
    bearer_last = {"X-Consul-Token": "wrong", "Authorization": f"Bearer {TOKEN}"}
    assert kv(acl_fake, "noman/web", headers=bearer_last).text == "ACL not found"


def test_item_12_txn_without_token_is_409_with_permission_denied_per_operation(
    acl_fake: FakeConsul,
) -> None:
    response = txn(
        acl_fake,
        [
            {"KV": {"Verb": "set", "Key": "noman/web", "Value": b64(b"v1")}},
            {"KV": {"Verb": "cas", "Key": "noman/web/history/1", "Value": b64(b"v1"), "Index": 0}},
        ],
    )
    assert response.status_code == 409
    assert response.json() == {
        "Results": None,
        "Errors": [
            {"OpIndex": 0, "What": denied("write", "noman/web")},
            {"OpIndex": 1, "What": denied("write", "noman/web/history/1")},
        ],
    }
    assert acl_fake.value("noman/web") is None
    with_token = txn(
        acl_fake,
        [{"KV": {"Verb": "set", "Key": "noman/web", "Value": b64(b"v1")}}],
        headers={"X-Consul-Token": TOKEN},
    )
    assert with_token.status_code == 200
    assert acl_fake.value("noman/web") == b"v1"


def test_item_12_lists_without_token_are_filtered_like_consul(acl_fake: FakeConsul) -> None:
    # Consul does not refuse a recurse or keys read: it drops what the token may not read.
    acl_fake.set("noman/web", "v1")
    response = kv(acl_fake, "noman/", params={"recurse": ""})
    assert response.status_code == 404
    assert response.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    allowed = kv(acl_fake, "noman/", params={"recurse": ""}, headers={"X-Consul-Token": TOKEN})
    assert [entry["Key"] for entry in allowed.json()] == ["noman/web"]


def test_item_12_txn_reads_without_token_are_filtered_not_refused(acl_fake: FakeConsul) -> None:
    acl_fake.set("noman/web", "v1")
    response = txn(acl_fake, [{"KV": {"Verb": "get", "Key": "noman/web"}}])
    assert response.status_code == 200
    assert response.json() == {"Results": [], "Errors": None}


def test_item_12_status_leader_needs_no_token(acl_fake: FakeConsul) -> None:
    response = requests.get(f"{acl_fake.url}/v1/status/leader", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == "127.0.0.1:8300"


# ---- item 13: leader -------------------------------------------------------------------------


def test_item_13_status_leader_is_a_json_string(fake: FakeConsul) -> None:
    response = requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == b'"127.0.0.1:8300"'
    fake.leader = ""
    assert requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT).json() == ""
    assert kv(fake, "noman/missing").headers["X-Consul-KnownLeader"] == "false"


# ---- item 14: blocking reads -----------------------------------------------------------------


def test_item_14_blocking_get_waits_then_answers_the_same_index(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    started = time.monotonic()
    response = kv(fake, "noman/web", params={"index": index, "wait": "1s"})
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 3
    assert response.status_code == 200
    assert response.headers["X-Consul-Index"] == str(index)


def test_item_14_a_write_wakes_a_blocking_get_at_once(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    url = f"{fake.url}/v1/kv/noman/web"
    writer = threading.Timer(0.3, requests.put, args=(url,), kwargs={"data": b"v2", "timeout": 5})
    writer.start()
    try:
        started = time.monotonic()
        response = kv(fake, "noman/web", params={"index": index, "wait": "5s"})
        elapsed = time.monotonic() - started
    finally:
        writer.join()
    assert elapsed < 2
    assert int(response.headers["X-Consul-Index"]) > index
    assert base64.b64decode(response.json()[0]["Value"]) == b"v2"


def test_item_14_a_write_elsewhere_does_not_wake_a_key_read(fake: FakeConsul) -> None:
    index = fake.set("noman/web", "v1")
    timer = threading.Timer(0.2, fake.set, args=("noman/api", "x"))
    timer.start()
    started = time.monotonic()
    response = kv(fake, "noman/web", params={"index": index, "wait": "800ms"})
    timer.join()
    assert time.monotonic() - started >= 0.7
    assert response.headers["X-Consul-Index"] == str(index)


def test_item_14_a_write_under_the_prefix_wakes_a_recurse_read(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    index = int(kv(fake, "noman/", params={"recurse": ""}).headers["X-Consul-Index"])
    timer = threading.Timer(0.3, fake.set, args=("noman/api", "x"))
    timer.start()
    started = time.monotonic()
    response = kv(fake, "noman/", params={"recurse": "", "index": index, "wait": "5s"})
    timer.join()
    assert time.monotonic() - started < 2
    assert [entry["Key"] for entry in response.json()] == ["noman/api", "noman/web"]


def test_item_14_bad_wait_or_index_is_400(fake: FakeConsul) -> None:
    assert kv(fake, "noman/web", params={"index": 1, "wait": "soon"}).text == "Invalid wait time"
    assert kv(fake, "noman/web", params={"index": "x"}).text == "Invalid index"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("5m", 300.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0)],
)
def test_item_14_wait_takes_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "1 s"])
def test_item_14_bad_go_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# ---- item 15: faults -------------------------------------------------------------------------


def test_item_15_fail_next_answers_500_once_then_serves(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    fake.fail_next()
    failed = kv(fake, "noman/web")
    assert failed.status_code == 500
    assert failed.text == "rpc error making call: No cluster leader"
    assert failed.headers["Content-Type"].startswith("text/plain")
    assert kv(fake, "noman/web").status_code == 200


def test_item_15_failed_requests_change_nothing(fake: FakeConsul) -> None:
    fake.fail_next(2, status=503, body="unavailable")
    for _ in range(2):
        response = kv(fake, "noman/web", "PUT", data=b"v1")
        assert (response.status_code, response.text) == (503, "unavailable")
    assert fake.value("noman/web") is None
    assert fake.writes == 0
    assert kv(fake, "noman/web", "PUT", data=b"v1").json() is True


def test_item_15_fail_always_lasts_until_heal(fake: FakeConsul) -> None:
    fake.fail_always(status=502, body="bad gateway")
    for _ in range(3):
        assert requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT).status_code == 502
    fake.heal()
    assert requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT).status_code == 200


def test_item_15_hang_outlasts_the_client_timeout_and_applies_nothing(fake: FakeConsul) -> None:
    fake.hang(0.6)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        kv(fake, "noman/web", "PUT", data=b"v1", timeout=0.3)
    # Past the hang the fake has dropped the request, still without applying it.
    time.sleep(max(0.0, 0.9 - (time.monotonic() - started)))
    assert fake.value("noman/web") is None
    assert fake.writes == 0
    fake.heal()
    assert kv(fake, "noman/web").status_code == 404


def test_item_17_a_late_answer_means_the_write_landed_unbeknown_to_the_client(
    fake: FakeConsul,
) -> None:
    fake.answer_late(10)
    with pytest.raises(requests.Timeout):
        kv(fake, "noman/web", "PUT", data=b"v1", timeout=0.3)
    assert fake.value("noman/web") == b"v1"  # it landed while the client gave up
    assert fake.writes == 1
    fake.heal()  # releases the held answer
    started = time.monotonic()
    assert kv(fake, "noman/web").status_code == 200  # count=1: the next answer is on time
    assert time.monotonic() - started < 2


def test_item_17_answer_late_for_every_request_until_heal(fake: FakeConsul) -> None:
    fake.answer_late(10, count=None)
    for value in (b"v1", b"v2"):
        with pytest.raises(requests.Timeout):
            kv(fake, "noman/web", "PUT", data=value, timeout=0.3)
        assert fake.value("noman/web") == value
    fake.heal()
    assert kv(fake, "noman/web", "PUT", data=b"v3").json() is True


def test_item_17_a_slow_failure_answers_late_and_applies_nothing(fake: FakeConsul) -> None:
    fake.fail_next(status=500, body="rpc error making call: EOF", after=0.3)
    started = time.monotonic()
    answer = kv(fake, "noman/web", "PUT", data=b"v1")
    assert time.monotonic() - started >= 0.25
    assert (answer.status_code, answer.text) == (500, "rpc error making call: EOF")
    assert fake.value("noman/web") is None
    fake.fail_always(after=0.2)
    started = time.monotonic()
    assert kv(fake, "noman/web").status_code == 500
    assert time.monotonic() - started >= 0.15
    fake.heal()
    assert kv(fake, "noman/web").status_code == 404


def test_item_15_hang_ends_with_a_connection_closed_without_answer(fake: FakeConsul) -> None:
    fake.hang(0.1)
    with pytest.raises(requests.ConnectionError):
        kv(fake, "noman/web", timeout=TIMEOUT)
    fake.hang(30)
    threading.Timer(0.2, fake.heal).start()  # heal releases requests already hanging
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        kv(fake, "noman/web", timeout=TIMEOUT)
    assert time.monotonic() - started < 2
    assert kv(fake, "noman/web").status_code == 404


def test_item_15_refused_connections_then_resume_on_the_same_port_with_state(
    fake: FakeConsul,
) -> None:
    fake.set("noman/web", "v1")
    port = fake.port
    with requests.Session() as session:
        url = f"{fake.url}/v1/kv/noman/web"
        assert session.get(url, timeout=TIMEOUT).status_code == 200  # a pooled connection
        fake.refuse_connections()
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=TIMEOUT)
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=TIMEOUT)
        fake.resume()
        assert fake.port == port
        response = session.get(url, timeout=TIMEOUT)
    assert base64.b64decode(response.json()[0]["Value"]) == b"v1"


def test_item_15_stop_releases_blocking_reads_and_is_idempotent() -> None:
    fake = FakeConsul().start()
    index = fake.set("noman/web", "v1")
    errors: list[BaseException] = []

    def blocked_read() -> None:
        try:
            kv(fake, "noman/web", params={"index": index, "wait": "30s"}, timeout=10)
        except requests.ConnectionError as exc:
            errors.append(exc)

    reader = threading.Thread(target=blocked_read)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    fake.stop()
    fake.stop()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 3
    assert len(errors) == 1


# ---- item 16: speed --------------------------------------------------------------------------


def test_item_16_keep_alive_requests_do_not_stall_on_nagle(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    url = f"{fake.url}/v1/kv/noman/web"
    with requests.Session() as session:
        session.get(url, timeout=TIMEOUT)  # connect once; the loop measures keep-alive only
        started = time.perf_counter()
        for _ in range(50):
            assert session.get(url, timeout=TIMEOUT).status_code == 200
        average = (time.perf_counter() - started) / 50
    assert average < 0.02


# ---- routing and keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/v1/kv//noman/web", "/v1/kv/noman/web"),
        ("/v1/kv/noman//web", "/v1/kv/noman/web"),
        ("/v1/kv//noman/?recurse", "/v1/kv/noman/?recurse"),
        ("/v1/kv", "/v1/kv/"),
    ],
)
def test_unclean_paths_are_redirected_like_consuls_router(
    fake: FakeConsul, path: str, location: str
) -> None:
    response = requests.get(f"{fake.url}{path}", allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 301
    assert response.headers["Location"] == location


def test_a_put_to_a_leading_slash_key_is_redirected_and_not_written(fake: FakeConsul) -> None:
    response = kv(fake, "/noman/web", "PUT", data=b"v1", allow_redirects=False)
    assert response.status_code == 301
    assert fake.writes == 0


def raw_get(fake: FakeConsul, path: str) -> bytes:
    """GET ``path`` byte for byte: requests would normalise dot segments away."""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=TIMEOUT) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_dot_dot_segments_and_invalid_characters_are_400(fake: FakeConsul) -> None:
    answer = raw_get(fake, "/v1/kv/noman/../etc")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b"URL path contains invalid traversal sequence")
    assert raw_get(fake, "/v1/kv/noman/..").startswith(b"HTTP/1.1 400 ")
    assert b"\r\nLocation: /v1/kv/noman/web\r\n" in raw_get(fake, "/v1/kv/noman/./web")
    spaced = kv(fake, "noman/my web", "PUT", data=b"v1")
    assert spaced.status_code == 400
    assert "invalid character ' ' at position 8" in spaced.text
    assert kv(fake, "noman/web-1.2_x,y", "PUT", data=b"v1").json() is True


def test_unknown_endpoints_and_methods(fake: FakeConsul) -> None:
    unknown = requests.get(f"{fake.url}/v1/agent/self", timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"].startswith("text/plain")
    assert kv(fake, "noman/web", "POST", data=b"v1").status_code == 405
    response = requests.get(f"{fake.url}/v1/kv/noman/web?dc=dc1", timeout=TIMEOUT)
    assert response.status_code == 404  # the fake's own datacenter is served


def test_bad_cas_or_flags_are_500_like_consul(fake: FakeConsul) -> None:
    response = kv(fake, "noman/web", "PUT", data=b"v1", params={"cas": "x"})
    assert response.status_code == 500
    assert response.text == 'strconv.ParseUint: parsing "x": invalid syntax'
    assert kv(fake, "noman/web", "DELETE", params={"cas": 1, "recurse": ""}).status_code == 400
    assert fake.writes == 0


# ---- direct access and bookkeeping -----------------------------------------------------------


def test_set_follows_put_rules_and_does_not_count_as_a_write(fake: FakeConsul) -> None:
    first = fake.set("noman/web", "v1", flags=2)
    assert fake.set("noman/web", b"v1", flags=2) == first
    second = fake.set("noman/web", "v2")
    assert second > first
    assert fake.entry("noman/web") == {
        "Key": "noman/web",
        "Value": b"v2",
        "Flags": 0,
        "CreateIndex": first,
        "ModifyIndex": second,
        "LockIndex": 0,
    }
    assert fake.entry("noman/missing") is None
    assert fake.value("noman/missing") is None
    assert fake.writes == 0


def test_requests_are_recorded_in_order_with_query_and_headers(acl_fake: FakeConsul) -> None:
    kv(
        acl_fake,
        "noman/web",
        "PUT",
        data=b"v1",
        params={"cas": 0},
        headers={"X-Consul-Token": TOKEN},
    )
    requests.get(f"{acl_fake.url}/v1/status/leader", timeout=TIMEOUT)
    (method, path, query, headers), leader = acl_fake.requests
    assert (method, path, query) == ("PUT", "/v1/kv/noman/web", {"cas": ["0"]})
    assert headers["X-Consul-Token"] == TOKEN
    assert leader[:2] == ("GET", "/v1/status/leader")


def test_requests_from_many_threads_are_all_recorded(fake: FakeConsul) -> None:
    threads = [
        threading.Thread(target=kv, args=(fake, f"noman/k{i}", "PUT"), kwargs={"data": b"v"})
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.requests) == 20
    assert fake.writes == 20
    assert kv(fake, "noman/", params={"keys": ""}).json() == sorted(
        f"noman/k{i}" for i in range(20)
    )


# ---- py-consul -------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_consul_env")
def test_py_consul_get_missing_put_with_cas_and_read_back(fake: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=fake.port, connections_timeout=2)
    index, data = client.kv.get("noman/web")
    assert isinstance(index, str) and int(index) >= 1
    assert data is None
    assert client.kv.put("noman/web", "v1", cas=0) is True
    assert client.kv.put("noman/web", "v2", cas=0) is False
    index, data = client.kv.get("noman/web")
    assert data["Value"] == b"v1"
    assert index == str(data["ModifyIndex"])
    assert client.kv.put("noman/web", "v2", cas=data["ModifyIndex"]) is True
    _, entries = client.kv.get("noman/", recurse=True)
    assert [entry["Value"] for entry in entries] == [b"v2"]


@pytest.mark.usefixtures("no_consul_env")
def test_py_consul_blocking_get_is_woken_by_a_write(fake: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=fake.port, connections_timeout=2)
    index = fake.set("noman/web", "v1")
    timer = threading.Timer(0.2, fake.set, args=("noman/web", "v2"))
    timer.start()
    new_index, data = client.kv.get("noman/web", index=index, wait="5s")
    timer.join()
    assert int(new_index) > index
    assert data["Value"] == b"v2"


@pytest.mark.usefixtures("no_consul_env")
def test_py_consul_with_a_token_in_acl_mode(acl_fake: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=acl_fake.port, token=TOKEN, connections_timeout=2)
    assert client.kv.put("noman/web", "v1") is True
    assert client.kv.get("noman/web")[1]["Value"] == b"v1"
    anonymous = consul.Consul(host="127.0.0.1", port=acl_fake.port, connections_timeout=2)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        anonymous.kv.get("noman/web")
    ops = [{"KV": {"Verb": "set", "Key": "noman/api", "Value": b64(b"v1")}}]
    # py-consul's txn.put sends no token: under ACLs that is a 409 per operation.
    with pytest.raises(ClientError, match="409"):
        client.txn.put(ops)
    client.http.session.headers["X-Consul-Token"] = TOKEN
    assert client.txn.put(ops)["Errors"] is None
    assert acl_fake.value("noman/api") == b"v1"


# ---- item 16: sessions, locks, lock-delay, TTL expiry ------------------------------------------


def create_session(fake: FakeConsul, **body: Any) -> str:
    """PUT /v1/session/create with ``body``; returns the new session's ID."""
    response = requests.put(f"{fake.url}/v1/session/create", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    session_id: str = response.json()["ID"]
    return session_id


def session_call(fake: FakeConsul, action: str, session_id: str) -> requests.Response:
    method = "GET" if action == "info" else "PUT"
    url = f"{fake.url}/v1/session/{action}/{session_id}"
    return requests.request(method, url, timeout=TIMEOUT)


def acquire(fake: FakeConsul, key: str, session: str, value: bytes = b"") -> Any:
    response = kv(fake, key, "PUT", data=value, params={"acquire": session})
    assert response.status_code == 200, response.text
    return response.json()


def release(fake: FakeConsul, key: str, session: str, value: bytes = b"") -> Any:
    response = kv(fake, key, "PUT", data=value, params={"release": session})
    assert response.status_code == 200, response.text
    return response.json()


def read(fake: FakeConsul, key: str) -> dict[str, Any]:
    response = kv(fake, key)
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()[0]
    return entry


def test_item_16_session_create_defaults_info_and_list(fake: FakeConsul) -> None:
    bare = requests.put(f"{fake.url}/v1/session/create", timeout=TIMEOUT)
    assert bare.status_code == 200
    session_id = bare.json()["ID"]
    info = session_call(fake, "info", session_id)
    assert info.status_code == 200
    assert int(info.headers["X-Consul-Index"]) >= 1
    [session] = info.json()
    assert session["ID"] == session_id
    assert session["Behavior"] == "release"
    assert session["LockDelay"] == 15_000_000_000  # Consul's default, in nanoseconds
    assert session["TTL"] == ""
    assert session["Node"] == fake.node_name
    assert session["NodeChecks"] == ["serfHealth"]
    assert session["CreateIndex"] == session["ModifyIndex"] >= 1
    named = create_session(fake, Name="noman-leader", TTL="15s", LockDelay="1s", Behavior="delete")
    listed = requests.get(f"{fake.url}/v1/session/list", timeout=TIMEOUT).json()
    assert [one["ID"] for one in listed] == [session_id, named]
    assert listed[1] | {"ID": "x", "CreateIndex": 0, "ModifyIndex": 0} == {
        "ID": "x",
        "Name": "noman-leader",
        "Node": fake.node_name,
        "LockDelay": 1_000_000_000,
        "Behavior": "delete",
        "TTL": "15s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }
    assert fake.session(named) == listed[1]
    assert session_call(fake, "info", "4a1c5e1e-0000-0000-0000-000000000000").json() == []


@pytest.mark.parametrize(
    ("lock_delay", "nanoseconds"),
    [("1s", 10**9), ("0s", 0), ("250ms", 250_000_000), (5, 5 * 10**9), (2 * 10**9, 2 * 10**9)],
    ids=["1s", "0s", "250ms", "bare-seconds", "bare-nanoseconds"],
)
def test_item_16_lock_delay_takes_durations_seconds_or_nanoseconds(
    fake: FakeConsul, lock_delay: str | int, nanoseconds: int
) -> None:
    session_id = create_session(fake, LockDelay=lock_delay)
    assert fake.session(session_id)["LockDelay"] == nanoseconds  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"TTL": "5s"}, 500, "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"),
        (
            {"TTL": "86401s"},
            500,
            "Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]",
        ),
        ({"TTL": "soon"}, 500, "Session TTL 'soon' invalid: time: invalid duration \"soon\""),
        ({"Behavior": "explode"}, 500, "Invalid Behavior setting 'explode'"),
        ({"LockDelay": "later"}, 400, 'Request decode failed: time: invalid duration "later"'),
        ({"Node": "elsewhere"}, 500, "Missing node registration"),
    ],
    ids=["ttl-too-short", "ttl-too-long", "ttl-not-a-duration", "behavior", "lock-delay", "node"],
)
def test_item_16_session_create_refusals(
    fake: FakeConsul, body: dict[str, Any], status: int, text: str
) -> None:
    response = requests.put(f"{fake.url}/v1/session/create", json=body, timeout=TIMEOUT)
    assert (response.status_code, response.text) == (status, text)
    assert fake.sessions() == []


def test_item_16_ttl_bounds_are_inclusive(fake: FakeConsul) -> None:
    create_session(fake, TTL="10s")
    create_session(fake, TTL="24h")
    assert [one["TTL"] for one in fake.sessions()] == ["10s", "24h"]


def test_item_16_renew_destroy_and_the_404_after(fake: FakeConsul) -> None:
    session_id = create_session(fake, TTL="15s")
    renewed = session_call(fake, "renew", session_id)
    assert renewed.status_code == 200
    assert [one["ID"] for one in renewed.json()] == [session_id]
    destroyed = session_call(fake, "destroy", session_id)
    assert (destroyed.status_code, destroyed.json()) == (200, True)
    gone = session_call(fake, "renew", session_id)
    assert (gone.status_code, gone.text) == (404, f"Session id '{session_id}' not found")
    assert session_call(fake, "info", session_id).json() == []
    assert session_call(fake, "destroy", session_id).json() is True  # again: still true
    assert requests.get(f"{fake.url}/v1/session/create", timeout=TIMEOUT).status_code == 405


def test_item_16_acquire_and_release_follow_consul(fake: FakeConsul) -> None:
    first, second = create_session(fake), create_session(fake)
    assert acquire(fake, "noman/leader", first, b"instance-a") is True
    entry = read(fake, "noman/leader")
    assert (entry["Session"], entry["LockIndex"]) == (first, 1)
    assert base64.b64decode(entry["Value"]) == b"instance-a"
    # Another session cannot take it; the value stays.
    assert acquire(fake, "noman/leader", second, b"instance-b") is False
    assert read(fake, "noman/leader")["Session"] == first
    assert fake.value("noman/leader") == b"instance-a"
    # The holder may acquire again: no new lock, LockIndex unchanged, the body is written.
    assert acquire(fake, "noman/leader", first, b"instance-a2") is True
    assert read(fake, "noman/leader")["LockIndex"] == 1
    assert fake.value("noman/leader") == b"instance-a2"
    # A plain write keeps the lock.
    assert kv(fake, "noman/leader", "PUT", data=b"plain").json() is True
    assert read(fake, "noman/leader")["Session"] == first
    # Only the holder releases; the release body becomes the value; Session disappears.
    assert release(fake, "noman/leader", second) is False
    before = read(fake, "noman/leader")["ModifyIndex"]
    assert release(fake, "noman/leader", first, b"free") is True
    entry = read(fake, "noman/leader")
    assert "Session" not in entry
    assert entry["LockIndex"] == 1
    assert entry["ModifyIndex"] > before
    assert fake.value("noman/leader") == b"free"
    # A plain release starts no lock-delay: the other session gets it at once, a new lock.
    assert acquire(fake, "noman/leader", second) is True
    assert read(fake, "noman/leader")["LockIndex"] == 2
    assert fake.entry("noman/leader")["Session"] == second  # type: ignore[index]


def test_item_16_acquire_with_an_unknown_or_missing_session_is_500(fake: FakeConsul) -> None:
    unknown = kv(fake, "noman/leader", "PUT", params={"acquire": "nope"})
    assert (unknown.status_code, unknown.text) == (500, 'invalid session "nope"')
    missing = kv(fake, "noman/leader", "PUT", params={"acquire": ""})
    assert (missing.status_code, missing.text) == (500, "missing session")
    assert fake.value("noman/leader") is None
    assert release(fake, "noman/leader", "nope") is False  # release checks only the holder
    conflict = kv(fake, "noman/leader", "PUT", params={"acquire": "a", "cas": "0"})
    assert conflict.status_code == 400


def test_item_16_ttl_expiry_releases_the_lock_at_exactly_the_ttl(
    clocked: FakeConsul, clock: FakeClock
) -> None:
    session_id = create_session(clocked, TTL="15s", LockDelay="0s")
    assert acquire(clocked, "noman/leader", session_id) is True
    clock.advance(10)
    assert session_call(clocked, "renew", session_id).status_code == 200  # TTL starts again
    clock.advance(14.9)
    assert read(clocked, "noman/leader")["Session"] == session_id
    clock.advance(0.1)
    assert "Session" not in read(clocked, "noman/leader")
    assert clocked.value("noman/leader") == b""  # release behaviour keeps the key
    assert session_call(clocked, "renew", session_id).status_code == 404
    assert clocked.session(session_id) is None


def test_item_16_ttl_multiplier_models_consuls_grace_period(clock: FakeClock) -> None:
    with FakeConsul(clock=clock, session_ttl_multiplier=2) as fake:
        session_id = create_session(fake, TTL="10s")
        clock.advance(19.9)
        assert fake.session(session_id) is not None
        clock.advance(0.1)
        assert fake.session(session_id) is None


def test_item_16_delete_behaviour_deletes_the_held_keys(
    clocked: FakeConsul, clock: FakeClock
) -> None:
    session_id = create_session(clocked, TTL="10s", Behavior="delete")
    other = create_session(clocked)
    assert acquire(clocked, "noman/leader", session_id, b"a") is True
    assert acquire(clocked, "noman/other", other, b"b") is True
    clock.advance(10)
    assert kv(clocked, "noman/leader").status_code == 404
    assert read(clocked, "noman/other")["Session"] == other  # another session's lock stays


def test_item_16_lock_delay_blocks_every_session_after_invalidation(
    clocked: FakeConsul, clock: FakeClock
) -> None:
    holder = create_session(clocked, LockDelay="5s")
    successor = create_session(clocked)
    assert acquire(clocked, "noman/leader", holder) is True
    assert session_call(clocked, "destroy", holder).json() is True
    assert "Session" not in read(clocked, "noman/leader")
    assert clocked.lock_delay("noman/leader") == 5
    assert acquire(clocked, "noman/leader", successor) is False
    clock.advance(4.9)
    assert acquire(clocked, "noman/leader", successor) is False
    clock.advance(0.1)
    assert acquire(clocked, "noman/leader", successor) is True
    assert read(clocked, "noman/leader")["LockIndex"] == 2


def test_item_16_lock_delay_is_capped_at_sixty_seconds(
    clocked: FakeConsul, clock: FakeClock
) -> None:
    holder = create_session(clocked, LockDelay="10m")
    assert clocked.session(holder)["LockDelay"] == 600 * 10**9  # type: ignore[index]
    assert acquire(clocked, "noman/leader", holder) is True
    assert clocked.expire_session(holder) is True
    assert clocked.expire_session(holder) is False
    clock.advance(60)
    assert acquire(clocked, "noman/leader", create_session(clocked)) is True


def test_item_16_expiry_wakes_a_blocking_read_on_the_lock_key(
    clocked: FakeConsul, clock: FakeClock
) -> None:
    session_id = create_session(clocked, TTL="15s")
    assert acquire(clocked, "noman/leader", session_id) is True
    index = read(clocked, "noman/leader")["ModifyIndex"]
    answers: list[requests.Response] = []
    reader = threading.Thread(
        target=lambda: answers.append(
            kv(clocked, "noman/leader", params={"index": index, "wait": "10s"})
        )
    )
    reader.start()
    clock.advance(15)
    reader.join(timeout=5)
    assert not reader.is_alive()
    [answer] = answers
    assert int(answer.headers["X-Consul-Index"]) > index
    assert "Session" not in answer.json()[0]


def test_item_16_on_the_wall_clock_expiry_wakes_blocked_readers_without_requests() -> None:
    # 10 s (the shortest TTL) * 0.03: the session dies 0.3 s of wall time after its creation.
    with FakeConsul(session_ttl_multiplier=0.03) as fake:
        session_id = create_session(fake, TTL="10s", LockDelay="0s")
        assert acquire(fake, "noman/leader", session_id) is True
        index = read(fake, "noman/leader")["ModifyIndex"]
        started = time.monotonic()
        answer = kv(fake, "noman/leader", params={"index": index, "wait": "5s"})
        assert time.monotonic() - started < 3
        assert "Session" not in answer.json()[0]
        assert fake.session(session_id) is None


def test_item_16_expire_session_hook_releases_like_a_ttl(fake: FakeConsul) -> None:
    session_id = create_session(fake, LockDelay="0s")
    assert acquire(fake, "noman/leader", session_id) is True
    assert fake.expire_session(session_id) is True
    assert "Session" not in read(fake, "noman/leader")
    assert session_call(fake, "info", session_id).json() == []


def lock_op(verb: str, key: str, session: str, value: bytes = b"") -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, "Value": b64(value), "Session": session}}


def test_item_16_txn_lock_unlock_and_check_session(fake: FakeConsul) -> None:
    first, second = create_session(fake), create_session(fake)
    locked = txn(fake, [lock_op("lock", "noman/leader", first, b"a")])
    assert locked.status_code == 200, locked.text
    [result] = locked.json()["Results"]
    assert result["KV"]["Session"] == first
    assert (result["KV"]["LockIndex"], result["KV"]["Value"]) == (1, None)
    checked = txn(
        fake,
        [
            {"KV": {"Verb": "check-session", "Key": "noman/leader", "Session": first}},
            {"KV": {"Verb": "set", "Key": "noman/state", "Value": b64(b"s1")}},
        ],
    )
    assert checked.status_code == 200
    assert fake.value("noman/state") == b"s1"
    stale = txn(
        fake,
        [
            {"KV": {"Verb": "check-session", "Key": "noman/leader", "Session": second}},
            {"KV": {"Verb": "set", "Key": "noman/state", "Value": b64(b"s2")}},
        ],
    )
    assert stale.status_code == 409
    assert stale.json()["Errors"] == [
        {
            "OpIndex": 0,
            "What": f'failed session check for key "noman/leader", '
            f'current session "{first}" != "{second}"',
        }
    ]
    assert fake.value("noman/state") == b"s1"
    held = txn(fake, [lock_op("lock", "noman/leader", second)])
    assert held.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to lock key "noman/leader", lock is already held'}
    ]
    not_holder = txn(fake, [lock_op("unlock", "noman/leader", second)])
    assert not_holder.json()["Errors"][0]["What"] == (
        'failed to unlock key "noman/leader", lock isn\'t held, or is held by another session'
    )
    unlocked = txn(fake, [lock_op("unlock", "noman/leader", first, b"free")])
    assert unlocked.status_code == 200
    assert "Session" not in unlocked.json()["Results"][0]["KV"]
    assert fake.value("noman/leader") == b"free"
    unknown = txn(fake, [lock_op("lock", "noman/leader", "nope")])
    assert unknown.json()["Errors"][0]["What"] == 'invalid session "nope"'
    missing = txn(fake, [lock_op("lock", "noman/leader", "")])
    assert missing.json()["Errors"][0]["What"] == "missing session"


def test_item_16_txn_lock_respects_lock_delay(clocked: FakeConsul, clock: FakeClock) -> None:
    holder = create_session(clocked, LockDelay="2s")
    successor = create_session(clocked)
    assert acquire(clocked, "noman/leader", holder) is True
    clocked.expire_session(holder)
    delayed = txn(clocked, [lock_op("lock", "noman/leader", successor)])
    assert delayed.status_code == 409
    assert delayed.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to lock key "noman/leader" due to lock delay'}
    ]
    clock.advance(2)
    assert txn(clocked, [lock_op("lock", "noman/leader", successor)]).status_code == 200


def test_item_16_txn_check_session_of_an_unlocked_key(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    ok = txn(fake, [{"KV": {"Verb": "check-session", "Key": "noman/web"}}])
    assert ok.status_code == 200
    missing = txn(fake, [{"KV": {"Verb": "check-session", "Key": "noman/none", "Session": "s"}}])
    assert missing.json()["Errors"][0]["What"] == (
        'failed to check session, key "noman/none" doesn\'t exist'
    )


def test_item_16_sessions_need_a_token_under_acls(acl_fake: FakeConsul) -> None:
    denied_create = requests.put(f"{acl_fake.url}/v1/session/create", timeout=TIMEOUT)
    assert denied_create.status_code == 403
    assert denied_create.text.startswith("Permission denied")
    headers = {"X-Consul-Token": TOKEN}
    created = requests.put(f"{acl_fake.url}/v1/session/create", headers=headers, timeout=TIMEOUT)
    session_id = created.json()["ID"]
    anonymous = requests.get(f"{acl_fake.url}/v1/session/list", timeout=TIMEOUT)
    assert anonymous.json() == []
    listed = requests.get(f"{acl_fake.url}/v1/session/list", headers=headers, timeout=TIMEOUT)
    assert [one["ID"] for one in listed.json()] == [session_id]


@pytest.mark.usefixtures("no_consul_env")
def test_item_16_py_consul_session_and_lock_round_trip(fake: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=fake.port, connections_timeout=2)
    session_id = client.session.create(name="noman", ttl=15, lock_delay=1, behavior="release")
    assert client.kv.put("noman/leader", "me", acquire=session_id) is True
    _, data = client.kv.get("noman/leader")
    assert data["Session"] == session_id
    assert client.session.renew(session_id)["ID"] == session_id
    assert client.session.info(session_id)[1]["TTL"] == "15s"
    assert client.session.destroy(session_id) is True
    with pytest.raises(NotFound, match="not found"):
        client.session.renew(session_id)
    _, data = client.kv.get("noman/leader")
    assert "Session" not in data


# ---- datacenters and a leaderless cluster (issue 8) -------------------------------------------


def test_an_unknown_datacenter_is_500_no_path_to_datacenter(fake: FakeConsul) -> None:
    fake.set("noman/web", "v1")
    for method, path in [
        ("GET", "/v1/kv/noman/web"),
        ("PUT", "/v1/kv/noman/web"),
        ("PUT", "/v1/txn"),
        ("PUT", "/v1/session/create"),
    ]:
        answer = requests.request(
            method, f"{fake.url}{path}", params={"dc": "dc2"}, data=b"[]", timeout=TIMEOUT
        )
        assert (answer.status_code, answer.text) == (500, "No path to datacenter"), path
    assert fake.value("noman/web") == b"v1"
    assert kv(fake, "noman/web", params={"dc": "dc1"}).status_code == 200


@pytest.mark.usefixtures("no_consul_env")
def test_the_datacenter_is_configurable_and_py_consul_sends_it_on_every_request() -> None:
    with FakeConsul(datacenter="eu-west") as fake:
        client = consul.Consul(host="127.0.0.1", port=fake.port, dc="eu-west")
        assert client.kv.put("noman/web", "v1") is True
        assert client.kv.get("noman/web")[1]["Value"] == b"v1"
        assert all(query.get("dc") == ["eu-west"] for _, _, query, _ in fake.requests)
        wrong = consul.Consul(host="127.0.0.1", port=fake.port, dc="dc1")
        with pytest.raises(consul.ConsulException, match="No path to datacenter"):
            wrong.kv.get("noman/web")


def test_a_leaderless_cluster_fails_reads_and_writes_with_no_cluster_leader(
    fake: FakeConsul,
) -> None:
    fake.set("noman/web", "v1")
    fake.set_leader(False)
    assert requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT).json() == ""
    read_answer = kv(fake, "noman/web")
    assert (read_answer.status_code, read_answer.text) == (500, "No cluster leader")
    assert kv(fake, "noman/web", "PUT", data=b"v2").status_code == 500
    assert txn(fake, []).status_code == 500
    assert requests.put(f"{fake.url}/v1/session/create", timeout=TIMEOUT).status_code == 500
    stale = kv(fake, "noman/web", params={"stale": ""})  # a follower still serves stale reads
    assert stale.status_code == 200
    assert stale.headers["X-Consul-KnownLeader"] == "false"
    assert fake.value("noman/web") == b"v1"
    fake.set_leader(True)
    assert requests.get(f"{fake.url}/v1/status/leader", timeout=TIMEOUT).json() == "127.0.0.1:8300"
    assert kv(fake, "noman/web", "PUT", data=b"v2").json() is True


# ---- command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_prints_its_url_serves_and_exits_zero_on_signal(signum: signal.Signals) -> None:
    command = [sys.executable, "-m", "tests.fakes.consul", "--acl-token", TOKEN]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            leader = requests.get(f"{url}/v1/status/leader", timeout=TIMEOUT)
            assert leader.json() == "127.0.0.1:8300"
            assert requests.get(f"{url}/v1/kv/noman/web", timeout=TIMEOUT).status_code == 403
            process.send_signal(signum)
            assert process.wait(timeout=10) == 0
            assert process.stdout.read() == ""
        finally:
            if process.poll() is None:
                process.kill()
