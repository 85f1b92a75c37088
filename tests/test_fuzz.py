"""Whatever arrives, the hook answers JSON with a 2xx or 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noman.release import IGNORED_REASONS
from tests.conftest import memory_client

ALLOWED = {200, 202, 400, 403, 409, 413, 415, 422}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
tags = st.one_of(
    st.text(max_size=140),
    st.from_regex(r"release-\d{14}", fullmatch=True),
    st.sampled_from(["latest", "../x", "release-20230103082900", "release-2023010308290\u0000"]),
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"tag": tags}, optional={"force": json_values, "repository": json_values}
    ),
    st.fixed_dictionaries(
        {
            "push_data": st.fixed_dictionaries({"tag": tags}, optional={"pushed_at": json_values}),
            "repository": st.fixed_dictionaries(
                {"repo_name": st.sampled_from(["stut/stut.dev", "evil/x", ""])}
            ),
        },
        optional={"callback_url": json_values},
    ),
)


SECRET = "fuzz-secret-" + "x" * 30
CLIENT = memory_client(SECRET)


def check(answer: Any) -> None:
    assert answer.status_code in ALLOWED, answer.get_data(as_text=True)
    body = answer.get_json()
    assert isinstance(body, dict)
    if answer.status_code == 202:  # a registry push with nothing to deploy
        assert set(body) == {"service", "ignored", "reason", "message"}
        assert body["reason"] in IGNORED_REASONS
    elif answer.status_code != 200:
        assert set(body) == {"error", "message"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000))
def test_any_bytes(body: bytes) -> None:
    check(CLIENT.post(f"/hooks/{SECRET}", data=body, content_type="application/json"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_any_json_shape(payload: Any) -> None:
    check(
        CLIENT.post(f"/hooks/{SECRET}", data=json.dumps(payload), content_type="application/json")
    )


header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)


@settings(max_examples=200, deadline=None)
@given(authorization=header_text)
def test_any_authorization_header(authorization: str) -> None:
    answer = CLIENT.post(
        "/hooks", json={"tag": "release-20230103082900"}, headers={"Authorization": authorization}
    )
    assert answer.status_code in (401, 404)
    assert answer.get_json()["error"] in ("unauthorized", "not_found")


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=100)
)
def test_any_path_secret_is_a_json_404(secret: str) -> None:
    from urllib.parse import quote

    answer = CLIENT.post(f"/hooks/{quote(secret, safe='')}", json={"tag": "x"})
    if secret in ("rollback", "freeze", "unfreeze"):
        # The Authorization-header routes (/hooks/rollback...): 401 without the header.
        assert answer.status_code == 401
    elif secret != SECRET:
        assert answer.status_code == 404
        assert answer.get_json() == {"error": "not_found", "message": "Not found."}
