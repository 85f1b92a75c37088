"""Parsing bodies into releases: strict JSON, DockerHub, plain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noman.errors import InvalidJSON, InvalidPayload
from noman.release import Ignored
from noman.senders import MAX_DEPTH, parse_json, parse_release

PAYLOADS = Path(__file__).parent / "payloads"


def test_dockerhub_sample() -> None:
    payload = json.loads((PAYLOADS / "dockerhub-push.json").read_text())
    release = parse_release(payload)
    assert release.sender == "dockerhub"
    assert release.tag == "release-20230103082900"
    assert release.repository == "stut/stut.dev"
    assert release.pushed_at == 1672734600
    assert release.callback_url and release.callback_url.startswith("https://registry.hub")
    assert release.force is False
    assert "callback" not in repr(release)


def test_dockerhub_cannot_force() -> None:
    payload = json.loads((PAYLOADS / "dockerhub-push.json").read_text())
    payload["force"] = True
    assert parse_release(payload).force is False


@pytest.mark.parametrize("tag", [None, ""])
def test_dockerhub_push_without_a_tag_is_ignored(tag: str | None) -> None:
    payload = json.loads((PAYLOADS / "dockerhub-push.json").read_text())
    payload["push_data"]["tag"] = tag
    result = parse_release(payload)
    assert isinstance(result, Ignored)
    assert (result.reason, result.sender) == ("no_tag", "dockerhub")


def test_plain_sample() -> None:
    release = parse_release(json.loads((PAYLOADS / "plain-redeploy.json").read_text()))
    assert (release.sender, release.tag, release.repository) == (
        "plain",
        "release-20230103082900",
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff",
        b"[]",
        b'"x"',
        b"1",
        b"{",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1, "a": 2}',
        b"[" * 100 + b"]" * 100,
        b'{"a": "\xed\xa0\x80"}',
    ],
)
def test_strict_json_refuses(body: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_json(body)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert parse_json(json.dumps({"tag": "[" * 1000}).encode()) == {"tag": "[" * 1000}


def test_depth_is_counted_exactly_once_brackets_outnumber_the_limit() -> None:
    # Many shallow objects pass; one level past MAX_DEPTH, in few brackets, does not.
    shallow = {"layers": [{"size": n} for n in range(100)]}
    assert parse_json(json.dumps(shallow).encode()) == shallow
    at_limit = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_json(f'{{"a": {at_limit}}}'.encode()) == {"a": json.loads(at_limit)}
    past = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    with pytest.raises(InvalidJSON, match="nested more than"):
        parse_json(f'{{"a": {past}}}'.encode())


@pytest.mark.parametrize(
    "payload",
    [
        {"push_data": None, "repository": {"repo_name": "a/b"}},
        {"push_data": {"tag": 5}, "repository": {"repo_name": "a/b"}},
        {"push_data": {"tag": "x"}, "repository": {}},
        {"push_data": {"tag": "x"}, "repository": {"repo_name": 5}},
        {"push_data": {"tag": "x", "pushed_at": "yesterday"}, "repository": {"repo_name": "a/b"}},
        {"push_data": {"tag": "x", "pushed_at": True}, "repository": {"repo_name": "a/b"}},
        {"push_data": {"tag": "x"}, "repository": {"repo_name": "a/b"}, "callback_url": 3},
        {"tag": None},
        {"tag": "x", "force": 1},
        {"tag": "x", "repository": ["a"]},
        {"tag": "x", "extra": 1},
        {},
    ],
)
def test_bad_shapes_are_invalid_payloads(payload: dict[str, object]) -> None:
    with pytest.raises(InvalidPayload):
        parse_release(payload)
