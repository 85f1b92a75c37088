"""The fake registry answers as the OCI distribution spec and Docker's token spec say."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from noman.registries.auth import parse_challenges
from tests.fakes._server import FakeClock
from tests.fakes.registry import SERVICE, FakeRegistry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        fake.add_repository("acme/shop", ["1.0", "1.1", "latest"])
        fake.add_repository("acme/secret", ["2.0"], private=True)
        fake.add_user("ci", "hunter2-password", ["acme/secret"])
        yield fake


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def token(
    http: requests.Session, fake: FakeRegistry, scope: str, authorization: str | None = None
) -> str:
    answer = http.get(
        fake.realm,
        params={"service": SERVICE, "scope": scope},
        headers={"Authorization": authorization} if authorization else {},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    value: str = answer.json()["token"]
    return value


def tags(http: requests.Session, fake: FakeRegistry, name: str, bearer: str) -> requests.Response:
    return http.get(
        f"{fake.url}/v2/{name}/tags/list", headers={"Authorization": f"Bearer {bearer}"}, timeout=5
    )


def test_a_request_without_a_token_gets_the_challenge(
    registry: FakeRegistry, http: requests.Session
) -> None:
    answer = http.get(f"{registry.url}/v2/acme/shop/tags/list", timeout=5)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    (challenge,) = parse_challenges(answer.headers["WWW-Authenticate"])
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": registry.realm,
        "service": SERVICE,
        "scope": "repository:acme/shop:pull",
    }
    assert http.get(f"{registry.url}/v2/", timeout=5).status_code == 401


def test_an_anonymous_token_lists_a_public_repository(
    registry: FakeRegistry, http: requests.Session
) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    answer = tags(http, registry, "acme/shop", bearer)
    assert answer.status_code == 200
    assert answer.json() == {"name": "acme/shop", "tags": ["1.0", "1.1", "latest"]}
    assert "Link" not in answer.headers
    assert registry.tokens_issued == 1
    assert registry.tag_list_requests("acme/shop") == 1


def test_the_token_answer_has_the_spec_fields(
    registry: FakeRegistry, http: requests.Session
) -> None:
    answer = http.get(
        registry.realm, params={"service": SERVICE, "scope": "repository:x/y:pull"}, timeout=5
    ).json()
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] == 300
    assert answer["issued_at"].endswith("Z")
    registry.token_fields = {"access_token"}
    answer = http.get(registry.realm, params={"service": SERVICE}, timeout=5).json()
    assert set(answer) == {"access_token"}


def test_a_private_repository_needs_the_users_basic_credentials(
    registry: FakeRegistry, http: requests.Session
) -> None:
    scope = "repository:acme/secret:pull"
    # Anonymous: the token server grants what it can (nothing here), without failing.
    anonymous = token(http, registry, scope)
    refused = tags(http, registry, "acme/secret", anonymous)
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    wrong = http.get(
        registry.realm,
        params={"service": SERVICE, "scope": scope},
        headers={"Authorization": basic("ci", "wrong")},
        timeout=5,
    )
    assert wrong.status_code == 401
    good = token(http, registry, scope, basic("ci", "hunter2-password"))
    assert tags(http, registry, "acme/secret", good).json()["tags"] == ["2.0"]
    # A user limited to other repositories gets nothing for this one.
    registry.add_user("other", "password-of-other", ["acme/elsewhere"])
    limited = token(http, registry, scope, basic("other", "password-of-other"))
    assert tags(http, registry, "acme/secret", limited).status_code == 401


def test_a_token_is_for_its_scope_only(registry: FakeRegistry, http: requests.Session) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    registry.add_repository("acme/other", ["1"], private=True)
    answer = tags(http, registry, "acme/other", bearer)
    assert answer.status_code == 401
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]


def test_tokens_expire_on_the_fakes_clock(http: requests.Session) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    with FakeRegistry(clock=clock, token_lifetime=60) as fake:
        fake.add_repository("acme/shop", ["1"])
        bearer = token(http, fake, "repository:acme/shop:pull")
        assert tags(http, fake, "acme/shop", bearer).status_code == 200
        clock.advance(59)
        assert tags(http, fake, "acme/shop", bearer).status_code == 200
        clock.advance(1)
        expired = tags(http, fake, "acme/shop", bearer)
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        assert tags(http, fake, "acme/shop", "made-up").status_code == 401


def test_pages_follow_n_and_last_with_relative_links(
    registry: FakeRegistry, http: requests.Session
) -> None:
    registry.add_repository("acme/many", [f"{i:03d}" for i in range(250)])
    bearer = token(http, registry, "repository:acme/many:pull")
    url = f"{registry.url}/v2/acme/many/tags/list?n=100"
    seen: list[str] = []
    links: list[str] = []
    while url:
        answer = http.get(url, headers={"Authorization": f"Bearer {bearer}"}, timeout=5)
        assert answer.status_code == 200
        seen += answer.json()["tags"]
        link = answer.headers.get("Link")
        if link is None:
            break
        links.append(link)
        url = registry.url + link.split(">")[0].lstrip("<")
    assert seen == [f"{i:03d}" for i in range(250)]
    assert links == [
        '</v2/acme/many/tags/list?n=100&last=099>; rel="next"',
        '</v2/acme/many/tags/list?n=100&last=199>; rel="next"',
    ]


def test_a_registry_may_page_unasked_and_cap_n(http: requests.Session) -> None:
    with FakeRegistry(auth="none", default_page=2, max_page=5) as fake:
        fake.add_repository("a/b", ["1", "2", "3"])
        answer = http.get(f"{fake.url}/v2/a/b/tags/list", timeout=5)
        assert answer.json()["tags"] == ["1", "2"]
        assert answer.headers["Link"] == '</v2/a/b/tags/list?n=2&last=2>; rel="next"'
        too_many = http.get(f"{fake.url}/v2/a/b/tags/list?n=6", timeout=5)
        assert too_many.status_code == 400
        assert too_many.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_an_unknown_repository_is_name_unknown(
    registry: FakeRegistry, http: requests.Session
) -> None:
    bearer = token(http, registry, "repository:acme/none:pull")
    answer = tags(http, registry, "acme/none", bearer)
    assert answer.status_code == 404
    assert answer.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_429_on_demand_with_retry_after(registry: FakeRegistry, http: requests.Session) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    registry.rate_limit(30)
    registry.rate_limit("Wed, 21 Oct 2015 07:28:00 GMT")
    first, second = (
        tags(http, registry, "acme/shop", bearer),
        tags(http, registry, "acme/shop", bearer),
    )
    assert (first.status_code, first.headers["Retry-After"]) == (429, "30")
    assert second.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert first.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert tags(http, registry, "acme/shop", bearer).status_code == 200


def test_docker_hub_rate_limit_headers_count_down_to_429(
    registry: FakeRegistry, http: requests.Session
) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    registry.set_ratelimit(limit=100, remaining=2, retry_after="60")
    answer = tags(http, registry, "acme/shop", bearer)
    assert answer.headers["ratelimit-limit"] == "100;w=21600"
    assert answer.headers["ratelimit-remaining"] == "1;w=21600"
    assert tags(http, registry, "acme/shop", bearer).headers["ratelimit-remaining"] == "0;w=21600"
    limited = tags(http, registry, "acme/shop", bearer)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "60")


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("500", 500, lambda r: r.json()["errors"][0]["code"] == "UNKNOWN"),
        ("garbage", 200, lambda r: r.text.startswith("<html>")),
        ("no_tags", 200, lambda r: "tags" not in r.json()),
        ("loop", 200, lambda r: r.headers["Link"] == '</v2/acme/shop/tags/list>; rel="next"'),
    ],
)
def test_faults_on_one_repository(
    registry: FakeRegistry, http: requests.Session, kind: str, status: int, check: object
) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    registry.fault("acme/shop", kind, count=1)
    answer = tags(http, registry, "acme/shop", bearer)
    assert answer.status_code == status
    assert check(answer)  # type: ignore[operator]
    assert tags(http, registry, "acme/shop", bearer).json()["tags"] == ["1.0", "1.1", "latest"]


def test_a_hanging_repository_holds_only_its_own_requests(
    registry: FakeRegistry, http: requests.Session
) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    registry.add_repository("acme/fast", ["1"])
    fast = token(http, registry, "repository:acme/fast:pull")
    registry.fault("acme/shop", "hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(
            f"{registry.url}/v2/acme/shop/tags/list",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=0.3,
        )
    assert tags(http, registry, "acme/fast", fast).status_code == 200
    registry.heal()


def test_basic_and_open_registries(http: requests.Session) -> None:
    with FakeRegistry(auth="basic") as fake:
        fake.add_repository("a/b", ["1"], private=True)
        fake.add_user("u", "password-of-u")
        refused = http.get(f"{fake.url}/v2/a/b/tags/list", timeout=5)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == f'Basic realm="{SERVICE}"'
        ok = http.get(
            f"{fake.url}/v2/a/b/tags/list",
            headers={"Authorization": basic("u", "password-of-u")},
            timeout=5,
        )
        assert ok.json()["tags"] == ["1"]
    with FakeRegistry(auth="none") as fake:
        fake.add_repository("a/b", [])
        fake.null_empty = True
        assert http.get(f"{fake.url}/v2/a/b/tags/list", timeout=5).json()["tags"] is None


def test_requests_are_counted_per_path(registry: FakeRegistry, http: requests.Session) -> None:
    bearer = token(http, registry, "repository:acme/shop:pull")
    for _ in range(3):
        tags(http, registry, "acme/shop", bearer)
    assert registry.counts["/token"] == 1
    assert registry.counts["/v2/acme/shop/tags/list"] == 3
    assert registry.tag_list_requests("acme/shop") == 3
    assert registry.tokens_issued == 1


def test_it_runs_standalone() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.registry"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        answer = requests.get(f"{url}/v2/demo/app/tags/list", timeout=5)
        assert answer.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
