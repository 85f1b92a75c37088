"""Polling registries: the token flow, tag lists, the poller's decisions, its config.

Everything runs against ``tests.fakes.registry`` over real HTTP; the poller's callbacks
are an in-memory stand-in for the deploy path, so no Consul is involved.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from noman.config import ConfigError, PollSettings, parse_settings
from noman.durations import parse_duration
from noman.errors import (
    ConsulUnavailable,
    Frozen,
    NomanError,
    RegistryInvalidAnswer,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryUnauthorized,
    RegistryUnavailable,
)
from noman.imageref import DOCKER_HUB
from noman.model import Service
from noman.registries import auth
from noman.registries.auth import (
    DockerCredentials,
    credentials_key,
    parse_challenges,
    parse_token,
    read_docker_config,
)
from noman.registries.client import RegistryClient, parse_link_next, parse_retry_after
from noman.registries.poller import BACKOFF_FIRST, Poller, PollState, newest_accepted
from noman.release import Outcome, Release
from tests.fakes._server import FakeClock
from tests.fakes.receiver import closed_port
from tests.fakes.registry import FakeRegistry

VERSION = r"^v?(\d+(?:\.\d+)*)$"
BUILD = r"^build-(\d+)$"
START = 1_700_000_000.0
PASSWORD = "S3cr3t-Pa55word-for-the-registry"


# -- helpers ----------------------------------------------------------------------------------


def make_service(name: str, repository: str, pattern: str = VERSION) -> Service:
    return Service(
        name=name,
        repository=repository,
        key=f"configs/{name}/IMAGE_TAG",
        secret_hashes=(b"\0" * 32,),
        tag_pattern=re.compile(pattern, re.ASCII),
    )


@dataclass
class DeployPath:
    """The poller's three callbacks, in memory: the desired tags, what was deployed, saved."""

    desired: dict[str, str] = field(default_factory=dict)
    releases: list[tuple[str, Release]] = field(default_factory=list)
    saved: dict[str, PollState] = field(default_factory=dict)
    refuse: NomanError | None = None
    desired_error: NomanError | None = None

    def deploy(self, service: Service, release: Release) -> Outcome:
        if self.refuse is not None:
            raise self.refuse
        self.releases.append((service.name, release))
        previous = self.desired.get(service.name)
        self.desired[service.name] = release.tag
        return Outcome(service.name, service.key, release.tag, previous, previous != release.tag)

    def get_desired(self, service: Service) -> str | None:
        if self.desired_error is not None:
            raise self.desired_error
        return self.desired.get(service.name)

    def save(self, service: Service, state: PollState) -> None:
        self.saved[service.name] = state

    def deployed(self, name: str) -> list[str]:
        return [release.tag for service, release in self.releases if service == name]


def make_poller(
    services: list[Service],
    path: DeployPath,
    clock: FakeClock,
    client: RegistryClient | None = None,
    interval: float = 60.0,
    max_parallel: int = 2,
    rng: float = 0.5,
    **client_options: Any,
) -> Poller:
    settings = PollSettings(
        interval=interval,
        max_parallel=max_parallel,
        intervals={s.name: interval for s in services},
    )
    if client is None:
        client = RegistryClient(
            timeout=client_options.pop("timeout", 2.0), clock=clock, **client_options
        )
    return Poller(
        services,
        settings,
        client,
        deploy=path.deploy,
        desired=path.get_desired,
        save=path.save,
        clock=clock,
        rng=lambda: rng,
    )


def tag_list_requests(fake: FakeRegistry, name: str) -> int:
    return fake.tag_list_requests(name)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[FakeRegistry]:
    with FakeRegistry(clock=clock, token_lifetime=60, default_page=100) as fake:
        yield fake


def docker_config(tmp_path: Path, entries: dict[str, Any], **extra: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": entries, **extra}))
    return path


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- challenges, credentials, tokens ------------------------------------------------------------


def test_challenges_are_parsed_robustly() -> None:
    (bearer,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.realm == "https://auth.docker.io/token"
    assert bearer.params["scope"] == "repository:samalba/my-app:pull,push"
    (odd,) = parse_challenges(
        'BEARER  Realm = "https://a.example/t?x=1,y=2" , Service=reg,'
        'error="insufficient_scope", scope="a:\\"b\\":pull"'
    )
    assert odd.scheme == "bearer"
    assert odd.params == {
        "realm": "https://a.example/t?x=1,y=2",
        "service": "reg",
        "error": "insufficient_scope",
        "scope": 'a:"b":pull',
    }
    assert odd.error == "insufficient_scope"
    two = parse_challenges('Basic realm="Registry Realm", Bearer realm="https://x/token",service=x')
    assert [c.scheme for c in two] == ["basic", "bearer"]
    assert two[0].realm == "Registry Realm"
    assert two[1].params == {"realm": "https://x/token", "service": "x"}
    assert parse_challenges("") == []
    assert parse_challenges('Bearer realm="unterminated')[0].realm == "unterminated"
    assert parse_challenges("Basic")[0].params == {}


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", DOCKER_HUB),
        ("index.docker.io", DOCKER_HUB),
        ("docker.io", DOCKER_HUB),
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("https://ghcr.io/v2/", "ghcr.io"),
        ("Registry.Example:5000", "registry.example:5000"),
        ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
    ],
)
def test_config_json_keys_name_registry_hosts(key: str, host: str) -> None:
    assert credentials_key(key) == host


def test_config_json_entries_are_read_and_kept_out_of_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = docker_config(
        tmp_path,
        {
            "https://index.docker.io/v1/": auth_entry("hub", PASSWORD),
            "ghcr.io": {"username": "gh", "password": PASSWORD},
            "broken.example": {"auth": "not base64!"},
            "nocolon.example": {"auth": base64.b64encode(b"nocolon").decode()},
            "empty.example": {},
        },
        credsStore="desktop",
    )
    found = read_docker_config(path)
    assert set(found) == {DOCKER_HUB, "ghcr.io"}
    assert base64.b64decode(found["ghcr.io"]).decode() == f"gh:{PASSWORD}"
    credentials = DockerCredentials(path)
    with caplog.at_level(logging.WARNING, logger="noman.registries"):
        assert credentials.basic(DOCKER_HUB) == auth_entry("hub", PASSWORD)["auth"]
        path.write_text(path.read_text().replace("desktop", "pass"))
        assert credentials.basic(DOCKER_HUB) is not None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "credential helpers" in warning and PASSWORD not in warning
    assert not credentials.has("quay.io")
    text = repr(credentials)
    assert PASSWORD not in text and found["ghcr.io"] not in text
    assert "ghcr.io" in text


def test_a_rotated_config_json_is_read_again(tmp_path: Path) -> None:
    path = docker_config(tmp_path, {"ghcr.io": auth_entry("a", "first-password")})
    credentials = DockerCredentials(path)
    assert credentials.basic("ghcr.io") == auth_entry("a", "first-password")["auth"]
    docker_config(tmp_path, {"ghcr.io": auth_entry("a", "second-password-longer")})
    assert credentials.basic("ghcr.io") == auth_entry("a", "second-password-longer")["auth"]


def test_threads_that_ask_while_the_config_is_read_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The leader polls services in parallel: on a fresh start they all ask for the
    # credentials at once, while the first of them is still reading config.json.
    path = docker_config(tmp_path, {"ghcr.io": auth_entry("a", PASSWORD)})
    read = auth._load_docker_config

    def slow_read(where: Path) -> Any:
        time.sleep(0.2)
        return read(where)

    monkeypatch.setattr(auth, "_load_docker_config", slow_read)
    credentials = DockerCredentials(path)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: credentials.basic("ghcr.io"), range(8)))
    assert found == [auth_entry("a", PASSWORD)["auth"]] * 8


def test_a_broken_config_json_is_named_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"ghcr.io": {"auth": "' + PASSWORD + '"}')
    with pytest.raises(ValueError, match="not a JSON Docker config") as error:
        read_docker_config(path)
    assert PASSWORD not in str(error.value)
    with pytest.raises(ValueError, match="cannot read"):
        read_docker_config(tmp_path / "missing.json")


def test_token_answers_and_their_lifetime() -> None:
    now = START
    token = parse_token({"token": "t", "expires_in": 300, "issued_at": "2023-11-14T22:13:10Z"}, now)
    assert token is not None
    # issued 10 s before now: counts from then; margin 10 s.
    assert token.expires == pytest.approx(START - 10 + 300 - 10)
    only_access = parse_token({"access_token": "a"}, now)
    assert only_access is not None and only_access.value == "a"
    # No expires_in: 60 s, a tenth of it as margin.
    assert only_access.expires == pytest.approx(now + 54)
    # An issued_at hours off (a server clock) is not believed.
    skewed = parse_token({"token": "t", "expires_in": 60, "issued_at": "2001-01-01T00:00:00Z"}, now)
    assert skewed is not None and skewed.expires == pytest.approx(now + 54)
    assert parse_token({"nothing": 1}, now) is None
    assert parse_token(["token"], now) is None
    assert "t" not in repr(token).replace("Token", "").replace("expires", "")


# -- the client against the fake registry -------------------------------------------------------


def test_anonymous_token_flow_for_a_public_repository(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0", "1.1"])
    client = RegistryClient(clock=clock, timeout=2)
    assert client.list_tags(client.reference(registry.image("acme/shop"))) == ["1.0", "1.1"]
    assert registry.tokens_issued == 1
    token_requests = [r for r in registry.requests if r[1] == "/token"]
    assert len(token_requests) == 1
    _, _, query, headers = token_requests[0]
    assert "Authorization" not in headers
    assert query["scope"] == ["repository:acme/shop:pull"]
    assert query["service"] == ["fake-registry"]
    listed = [r for r in registry.requests if r[1].endswith("/tags/list")]
    assert "Authorization" not in listed[0][3]  # the first one meets the challenge
    assert listed[1][3]["Authorization"].startswith("Bearer ")
    assert listed[1][3]["User-Agent"].startswith("noman/")


def test_basic_credentials_from_config_json_for_a_private_repository(
    registry: FakeRegistry, clock: FakeClock, tmp_path: Path
) -> None:
    registry.add_repository("acme/secret", ["2.0", "2.1"], private=True)
    registry.add_user("ci", PASSWORD, ["acme/secret"])
    # The key as `docker login http://127.0.0.1:PORT` may write it: scheme and all.
    path = docker_config(
        tmp_path, {f"http://{registry.registry_host}/": auth_entry("ci", PASSWORD)}
    )
    client = RegistryClient(DockerCredentials(path), clock=clock, timeout=2)
    assert client.list_tags(client.reference(registry.image("acme/secret"))) == ["2.0", "2.1"]
    (token_request,) = [r for r in registry.requests if r[1] == "/token"]
    assert token_request[3]["Authorization"] == "Basic " + auth_entry("ci", PASSWORD)["auth"]


def test_tokens_are_reused_until_they_expire(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    client = RegistryClient(clock=clock, timeout=2)
    ref = client.reference(registry.image("acme/shop"))
    for _ in range(4):
        client.list_tags(ref)
        clock.advance(13)  # 52 s in all: inside 60 s minus the 6 s margin
    assert registry.tokens_issued == 1
    # One 401 at the start, then one request per list: the token is sent up front.
    assert tag_list_requests(registry, "acme/shop") == 5
    clock.advance(3)  # 55 s: past the margin
    client.list_tags(ref)
    assert registry.tokens_issued == 2
    assert tag_list_requests(registry, "acme/shop") == 6


def test_a_token_the_registry_forgot_is_replaced_once(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    client = RegistryClient(clock=clock, timeout=2)
    ref = client.reference(registry.image("acme/shop"))
    client.list_tags(ref)
    registry.expire_tokens()
    assert client.list_tags(ref) == ["1.0"]
    assert registry.tokens_issued == 2


def test_a_token_server_without_expires_in_gets_60_seconds(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    registry.token_fields = {"access_token"}
    client = RegistryClient(clock=clock, timeout=2)
    ref = client.reference(registry.image("acme/shop"))
    client.list_tags(ref)
    clock.advance(50)
    client.list_tags(ref)
    assert registry.tokens_issued == 1
    clock.advance(5)
    client.list_tags(ref)
    assert registry.tokens_issued == 2


def test_250_tags_over_three_pages(registry: FakeRegistry, clock: FakeClock) -> None:
    tags = [f"build-{i}" for i in range(1, 251)] + ["latest"]
    registry.add_repository("acme/many", tags)
    client = RegistryClient(clock=clock, timeout=2)
    listed = client.list_tags(client.reference(registry.image("acme/many")))
    assert sorted(listed) == sorted(tags)
    # 401, then three pages with the token.
    assert tag_list_requests(registry, "acme/many") == 4
    service = make_service("many", registry.image("acme/many"), BUILD)
    # Lexically the last page ends with build-99; the newest is build-250.
    assert listed[-2:] == ["build-99", "latest"]
    assert newest_accepted(service, listed) == "build-250"
    path = DeployPath(desired={"many": "build-249"})
    make_poller([service], path, clock, client=client).poll_due(clock())
    assert path.deployed("many") == ["build-250"]
    assert tag_list_requests(registry, "acme/many") == 7  # three more pages, token reused


def test_pages_asked_with_n_and_capped_by_the_registry(clock: FakeClock) -> None:
    with FakeRegistry(auth="none", max_page=50) as fake:
        fake.add_repository("a/b", [str(i) for i in range(120)])
        client = RegistryClient(clock=clock, timeout=2, page_size=50)
        assert len(client.list_tags(client.reference(fake.image("a/b")))) == 120
        assert fake.tag_list_requests("a/b") == 3
        too_big = RegistryClient(clock=clock, timeout=2, page_size=51)
        with pytest.raises(Exception) as error:
            too_big.list_tags(too_big.reference(fake.image("a/b")))
        assert getattr(error.value, "code", None) == "registry_error"
        assert "PAGINATION_NUMBER_INVALID" in str(error.value)


def test_a_registry_that_pages_forever_is_an_invalid_answer(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/loop", ["1"])
    registry.fault("acme/loop", "loop")
    client = RegistryClient(clock=clock, timeout=2)
    with pytest.raises(RegistryInvalidAnswer, match="page already read"):
        client.list_tags(client.reference(registry.image("acme/loop")))
    registry.fault("acme/loop", None)
    registry.add_repository("acme/long", [str(i) for i in range(30)])
    registry.default_page = 5
    short = RegistryClient(clock=clock, timeout=2, max_pages=3)
    with pytest.raises(RegistryInvalidAnswer, match="more than 3 pages"):
        short.list_tags(short.reference(registry.image("acme/long")))


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("500", RegistryUnavailable, "registry_unavailable"),
        ("garbage", RegistryInvalidAnswer, "registry_invalid_answer"),
        ("no_tags", RegistryInvalidAnswer, "registry_invalid_answer"),
    ],
)
def test_faults_map_to_registry_errors(
    registry: FakeRegistry, clock: FakeClock, fault: str, error: type[Exception], code: str
) -> None:
    registry.add_repository("acme/shop", ["1"])
    registry.fault("acme/shop", fault)
    client = RegistryClient(clock=clock, timeout=2)
    with pytest.raises(error) as raised:
        client.list_tags(client.reference(registry.image("acme/shop")))
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert str(raised.value).startswith(f"{registry.registry_host}")


def test_unknown_repository_and_refused_connection(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    client = RegistryClient(clock=clock, timeout=2)
    with pytest.raises(RegistryNotFound, match="NAME_UNKNOWN"):
        client.list_tags(client.reference(registry.image("acme/none")))
    with pytest.raises(RegistryUnavailable, match="cannot connect"):
        client.list_tags(client.reference(f"127.0.0.1:{closed_port()}/a/b"))


def test_a_hanging_registry_times_out_within_the_bound(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1"])
    registry.fault("acme/shop", "hang")
    client = RegistryClient(clock=clock, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"no answer within 0\.3s"):
        client.list_tags(client.reference(registry.image("acme/shop")))
    assert time.monotonic() - started < 2


def test_a_next_page_on_another_host_is_refused(clock: FakeClock) -> None:
    with FakeRegistry(auth="none") as fake, FakeRegistry(auth="none") as other:
        fake.add_repository("a/b", ["1"])
        client = RegistryClient(clock=clock, timeout=2)
        ref = client.reference(fake.image("a/b"))
        with pytest.raises(RegistryInvalidAnswer, match="another host"):
            client._next_url(ref, ref.tags_url, f"{other.url}/v2/a/b/tags/list?last=1")
        assert client._next_url(ref, ref.tags_url, "/v2/a/b/tags/list?last=1") == (
            f"{fake.url}/v2/a/b/tags/list?last=1"
        )


def test_429_carries_retry_after_and_the_rate_limit_gauge(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1"])
    registry.set_ratelimit(limit=100, remaining=77, retry_after="120")
    client = RegistryClient(clock=clock, timeout=2)
    ref = client.reference(registry.image("acme/shop"))
    client.list_tags(ref)
    gauge = "noman_registry_ratelimit_remaining"
    assert metric(gauge, registry=registry.registry_host) == 76
    registry.rate_limit(42)
    with pytest.raises(RegistryRateLimited) as error:
        client.list_tags(ref)
    assert error.value.retry_after == 42
    assert error.value.code == "registry_rate_limited"


def test_retry_after_and_link_headers_are_parsed() -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 0 ", now) == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now) == 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("99999999", now) == 86400
    assert (
        parse_link_next('</v2/a/tags/list?last=x&n=2>; rel="next"') == "/v2/a/tags/list?last=x&n=2"
    )
    assert parse_link_next("<https://r.example/v2/a/tags/list?last=x>; rel=next") == (
        "https://r.example/v2/a/tags/list?last=x"
    )
    assert parse_link_next('<a>; rel="prev", <b>; title="x"; rel="Next last"') == "b"
    assert parse_link_next('<a>; rel="prev"') is None
    assert parse_link_next(None) is None


def test_insufficient_scope_with_credentials_says_they_were_refused(
    registry: FakeRegistry, clock: FakeClock, tmp_path: Path
) -> None:
    registry.add_repository("acme/secret", ["1"], private=True)
    registry.add_user("ci", PASSWORD, ["acme/elsewhere"])
    path = docker_config(tmp_path, {registry.registry_host: auth_entry("ci", PASSWORD)})
    client = RegistryClient(DockerCredentials(path), clock=clock, timeout=2)
    with pytest.raises(RegistryUnauthorized, match="credentials refused"):
        client.list_tags(client.reference(registry.image("acme/secret")))
    wrong = docker_config(tmp_path, {registry.registry_host: auth_entry("ci", "wrong")})
    client = RegistryClient(DockerCredentials(wrong), clock=clock, timeout=2)
    with pytest.raises(RegistryUnauthorized, match="credentials refused by the token server"):
        client.list_tags(client.reference(registry.image("acme/secret")))


def test_a_basic_auth_registry_gets_the_credentials_directly(
    clock: FakeClock, tmp_path: Path
) -> None:
    with FakeRegistry(auth="basic") as fake:
        fake.add_repository("a/b", ["1"], private=True)
        fake.add_user("u", PASSWORD)
        path = docker_config(tmp_path, {fake.registry_host: auth_entry("u", PASSWORD)})
        client = RegistryClient(DockerCredentials(path), clock=clock, timeout=2)
        ref = client.reference(fake.image("a/b"))
        assert client.list_tags(ref) == ["1"]
        assert client.list_tags(ref) == ["1"]
        assert fake.tag_list_requests("a/b") == 3  # the challenge once, then up front
        anonymous = RegistryClient(clock=clock, timeout=2)
        with pytest.raises(RegistryUnauthorized, match="has none"):
            anonymous.list_tags(anonymous.reference(fake.image("a/b")))


# -- the poller ----------------------------------------------------------------------------------


def test_a_new_tag_is_found_and_deployed_with_sender_poll(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0", "1.1"])
    service = make_service("shop-found", registry.image("acme/shop"))
    path = DeployPath(desired={"shop-found": "1.0"})
    poller = make_poller([service], path, clock)
    assert poller.due(clock()) == [service]
    poller.poll_due(clock())
    assert path.releases == [
        ("shop-found", Release(tag="1.1", sender="poll", repository=service.repository))
    ]
    state = path.saved["shop-found"]
    assert state == poller.state(service)
    assert (state.newest_seen, state.error, state.found_by_poll) == ("1.1", None, True)
    assert state.last_polled == state.last_success == START
    assert state.next_poll == START + 60
    assert poller.due(clock()) == []
    assert poller.next_due() == START + 60
    assert metric("noman_polls_total", service="shop-found", outcome="deployed") == 1
    assert metric("noman_poll_last_success_timestamp_seconds", service="shop-found") == START


def test_pattern_and_ordering_are_respected(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.add_repository(
        "acme/shop",
        ["latest", "1.2.9", "1.2.10", "1.3", "v1.2.11", "nightly-2024", "1.4-rc1", "main", "0.9"],
    )
    service = make_service("shop-order", registry.image("acme/shop"))
    path = DeployPath(desired={"shop-order": "1.2.10"})
    make_poller([service], path, clock).poll_due(clock())
    assert path.deployed("shop-order") == ["1.3"]


def test_no_deploy_when_the_desired_tag_is_already_the_newest(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0", "1.1", "1.1.0"])
    service = make_service("shop-same", registry.image("acme/shop"))
    path = DeployPath(desired={"shop-same": "1.1"})
    poller = make_poller([service], path, clock)
    poller.poll_due(clock())
    assert path.releases == []
    state = poller.state(service)
    assert state is not None and (state.newest_seen, state.found_by_poll) == ("1.1", False)
    assert metric("noman_polls_total", service="shop-same", outcome="unchanged") == 1
    # A newer desired tag (a webhook's) is never moved back.
    path.desired["shop-same"] = "2.0"
    clock.advance(60)
    poller.poll_due(clock())
    assert path.releases == []


def test_a_desired_tag_set_by_hand_outside_the_pattern_does_not_block(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    service = make_service("shop-hand", registry.image("acme/shop"))
    path = DeployPath(desired={"shop-hand": "hotfix"})
    make_poller([service], path, clock).poll_due(clock())
    assert path.deployed("shop-hand") == ["1.0"]


def test_nothing_accepted_deploys_nothing(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.add_repository("acme/shop", ["latest", "main"])
    service = make_service("shop-none", registry.image("acme/shop"))
    path = DeployPath()
    poller = make_poller([service], path, clock)
    poller.poll_due(clock())
    state = poller.state(service)
    assert path.releases == [] and state is not None
    assert (state.newest_seen, state.error) == (None, None)


def test_a_private_repository_without_credentials_does_not_touch_the_others(
    registry: FakeRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add_repository("acme/secret", ["2.0"], private=True)
    registry.add_repository("acme/shop", ["1.1"])
    secret = make_service("secret-private", registry.image("acme/secret"))
    shop = make_service("shop-private", registry.image("acme/shop"))
    path = DeployPath()
    poller = make_poller([secret, shop], path, clock)
    with caplog.at_level(logging.INFO, logger="noman.registries"):
        poller.poll_due(clock())
    assert path.deployed("shop-private") == ["1.1"]
    assert path.deployed("secret-private") == []
    state = poller.state(secret)
    assert state is not None and state.error == "registry_unauthorized"
    assert state.last_success is None
    # A permanent error: the next try after one interval, not sooner.
    assert state.next_poll == START + 60
    assert "no credentials for private repository" in caplog.text
    assert (
        metric("noman_polls_total", service="secret-private", outcome="registry_unauthorized") == 1
    )


def test_429_retry_after_holds_every_service_of_that_registry(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    for name in ("a/one", "a/two", "a/three"):
        registry.add_repository(name, ["1.0"])
    services = [make_service(f"rl-{n}", registry.image(f"a/{n}")) for n in ("one", "two", "three")]
    path = DeployPath()
    poller = make_poller(services, path, clock, max_parallel=1)
    registry.rate_limit(120, count=1)
    poller.poll_due(clock())
    states = [poller.state(s) for s in services]
    assert states[0] is not None and states[0].error == "registry_rate_limited"
    # Neither of the others asked anything: the host was blocked before their turn.
    assert tag_list_requests(registry, "a/two") == tag_list_requests(registry, "a/three") == 0
    assert all(s is not None and s.next_poll >= START + 120 for s in states)
    assert poller.next_due() == START + 120
    clock.advance(119)
    assert poller.due(clock()) == []
    poller.poll_due(clock())
    assert tag_list_requests(registry, "a/two") == 0
    clock.advance(1)
    assert len(poller.due(clock())) == 3
    poller.poll_due(clock())
    assert sorted(path.desired) == ["rl-one", "rl-three", "rl-two"]
    assert all(poller.state(s).error is None for s in services)  # type: ignore[union-attr]


def test_429_with_an_http_date(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.add_repository("a/one", ["1.0"])
    service = make_service("rl-date", registry.image("a/one"))
    poller = make_poller([service], DeployPath(), clock)
    registry.rate_limit("Tue, 14 Nov 2023 22:18:20 GMT")  # START + 300
    poller.poll_due(clock())
    state = poller.state(service)
    assert state is not None and state.next_poll == START + 300


def test_a_hanging_registry_is_bounded_and_the_others_go_on(
    clock: FakeClock, registry: FakeRegistry
) -> None:
    registry.add_repository("slow/app", ["1.0"])
    registry.fault("slow/app", "hang")
    with FakeRegistry(clock=clock) as other:
        other.add_repository("fast/app", ["1.0"])
        registry.add_repository("fast/same", ["1.0"])
        slow = make_service("hang-slow", registry.image("slow/app"))
        same_host = make_service("hang-same", registry.image("fast/same"))
        other_host = make_service("hang-other", other.image("fast/app"))
        path = DeployPath()
        poller = make_poller([slow, same_host, other_host], path, clock, timeout=0.5)
        started = time.monotonic()
        poller.poll_due(clock())
        assert time.monotonic() - started < 3
        assert path.deployed("hang-same") == ["1.0"]
        assert path.deployed("hang-other") == ["1.0"]
        state = poller.state(slow)
        assert state is not None and state.error == "registry_unavailable"
        # Temporary: back off, starting at BACKOFF_FIRST with jitter (rng 0.5: three quarters).
        assert state.next_poll == START + BACKOFF_FIRST * 0.75


def test_backoff_doubles_with_jitter_up_to_the_interval(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    registry.fault("acme/shop", "500")
    service = make_service("backoff", registry.image("acme/shop"))
    poller = make_poller([service], DeployPath(), clock, interval=30, rng=1.0)
    waits = []
    for _ in range(5):
        poller.poll_due(clock())
        state = poller.state(service)
        assert state is not None
        waits.append(state.next_poll - clock())
        clock.advance(state.next_poll - clock())
    assert waits == [5, 10, 20, 30, 30]
    assert state.failures == 5
    registry.fault("acme/shop", None)
    poller.poll_due(clock())
    state = poller.state(service)
    assert state is not None and (state.error, state.failures) == (None, 0)


def test_a_frozen_service_records_the_refusal_and_carries_on(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0", "1.1"])
    service = make_service("frozen-shop", registry.image("acme/shop"))
    path = DeployPath(desired={"frozen-shop": "1.0"}, refuse=Frozen())
    poller = make_poller([service], path, clock)
    poller.poll_due(clock())
    state = poller.state(service)
    assert state is not None
    assert (state.error, state.newest_seen, state.last_success) == ("frozen", "1.1", START)
    assert state.next_poll == START + 60
    assert path.saved["frozen-shop"] == state
    path.refuse = None
    clock.advance(60)
    poller.poll_due(clock())
    assert path.deployed("frozen-shop") == ["1.1"]
    assert poller.state(service).error is None  # type: ignore[union-attr]


def test_trouble_in_the_deploy_path_is_temporary_or_a_bug(
    registry: FakeRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add_repository("acme/shop", ["1.1"])
    service = make_service("consul-down", registry.image("acme/shop"))
    path = DeployPath(desired_error=ConsulUnavailable())
    poller = make_poller([service], path, clock)
    poller.poll_due(clock())
    state = poller.state(service)
    assert state is not None and state.error == "consul_unavailable"
    assert state.next_poll == START + BACKOFF_FIRST * 0.75

    def broken(service: Service, release: Release) -> Outcome:
        raise KeyError("a bug")

    path.desired_error = None
    poller._deploy = broken
    clock.advance(60)
    with caplog.at_level(logging.ERROR, logger="noman.registries"):
        poller.poll_due(clock())
    assert poller.state(service).error == "internal_error"  # type: ignore[union-attr]
    assert "KeyError" in caplog.text


def test_each_change_of_state_is_logged_once(
    registry: FakeRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    registry.fault("acme/shop", "500")
    service = make_service("log-once", registry.image("acme/shop"))
    path = DeployPath()
    poller = make_poller([service], path, clock, interval=10)
    with caplog.at_level(logging.INFO, logger="noman.registries"):
        for _ in range(4):
            poller.poll_due(clock())
            clock.advance(10)
        registry.fault("acme/shop", "garbage")
        for _ in range(3):
            poller.poll_due(clock())
            clock.advance(10)
        registry.fault("acme/shop", None)
        for _ in range(3):
            poller.poll_due(clock())
            clock.advance(10)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("noman.registries")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "registry_unavailable",
        "registry_invalid_answer",
        "found 1.0 in the registry (desired was None)",
        "works again (was registry_invalid_answer)",
    ]


def test_credentials_and_tokens_never_reach_logs_errors_or_metrics(
    registry: FakeRegistry, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add_repository("acme/secret", ["2.0"], private=True)
    registry.add_repository("acme/other", ["1.0"], private=True)
    registry.add_user("ci", PASSWORD, ["acme/secret"])
    path = docker_config(tmp_path, {registry.registry_host: auth_entry("ci", PASSWORD)})
    client = RegistryClient(DockerCredentials(path), clock=clock, timeout=10)
    good = make_service("creds-good", registry.image("acme/secret"))
    refused = make_service("creds-refused", registry.image("acme/other"))
    deploys = DeployPath()
    poller = make_poller([good, refused], deploys, clock, client=client)
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        poller.poll_due(clock())
        try:
            client.list_tags(client.reference(registry.image("acme/other")))
        except RegistryUnauthorized as exc:
            errors.append(str(exc))
            errors.append(repr(exc))
        wrong = docker_config(tmp_path, {registry.registry_host: auth_entry("ci", "x" + PASSWORD)})
        bad = RegistryClient(DockerCredentials(wrong), clock=clock, timeout=2)
        try:
            bad.list_tags(bad.reference(registry.image("acme/secret")))
        except RegistryUnauthorized as exc:
            errors.append(str(exc))
    assert deploys.deployed("creds-good") == ["2.0"]
    assert poller.state(refused).error == "registry_unauthorized"  # type: ignore[union-attr]
    tokens = list(registry._tokens)
    assert tokens
    secrets = [PASSWORD, auth_entry("ci", PASSWORD)["auth"], *tokens]
    shown = "\n".join(
        [
            caplog.text,
            *errors,
            repr(client),
            repr(client.tokens),
            repr(poller.states()),
            json.dumps([s.public() for s in poller.states().values()]),
            generate_latest(REGISTRY).decode(),
        ]
    )
    assert len(errors) == 3
    for secret in secrets:
        assert secret not in shown


def test_a_new_leader_resumes_from_the_saved_state(
    registry: FakeRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add_repository("acme/secret", ["1"], private=True)
    service = make_service("resume", registry.image("acme/secret"))
    first = DeployPath()
    make_poller([service], first, clock).poll_due(clock())
    saved = PollState.parse(json.loads(json.dumps(first.saved["resume"].dump())), 60)
    assert saved == first.saved["resume"]
    clock.advance(30)
    second = make_poller([service], DeployPath(), clock)
    second.load(service, saved)
    assert second.due(clock()) == []
    clock.advance(30)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="noman.registries"):
        second.poll_due(clock())
    assert second.state(service).error == "registry_unauthorized"  # type: ignore[union-attr]
    assert "resume" not in caplog.text  # the condition was already logged by the first leader
    # A shorter interval configured since: the next poll comes forward.
    third = make_poller([service], DeployPath(), clock, interval=10)
    third.load(service, replace_next_poll(saved, START + 3600))
    assert third.state(service).next_poll == START + 10  # type: ignore[union-attr]


def replace_next_poll(state: PollState, next_poll: float) -> PollState:
    from dataclasses import replace

    return replace(state, next_poll=next_poll)


def test_poll_state_parse_is_tolerant_and_public_uses_iso_times() -> None:
    assert PollState.parse(None, 60) == PollState(60)
    assert PollState.parse(
        {"error": 3, "next_poll": "x", "failures": -1, "found_by_poll": 1}, 5
    ) == (PollState(5))
    state = PollState(300, last_polled=START, next_poll=START + 300, error="frozen")
    assert state.public() == {
        "interval": 300,
        "last_polled": "2023-11-14T22:13:20Z",
        "last_success": None,
        "newest_seen": None,
        "error": "frozen",
        "next_poll": "2023-11-14T22:18:20Z",
        "found_by_poll": False,
    }


def test_services_without_an_interval_are_not_polled(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    polled = make_service("polled", registry.image("acme/shop"))
    quiet = make_service("quiet", registry.image("acme/shop"))
    settings = PollSettings(intervals={"polled": 60.0})
    client = RegistryClient(clock=clock, timeout=2)
    path = DeployPath()
    poller = Poller(
        [polled, quiet], settings, client, path.deploy, path.get_desired, path.save, clock=clock
    )
    assert poller.services == (polled,)
    assert poller.state(quiet) is None
    poller.poll_due(clock())
    assert list(path.desired) == ["polled"]


def test_services_of_one_repository_share_its_tag_list(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.add_repository("acme/web", ["1.0", "1.1", "build-7", "build-8", "latest"])
    versions = make_service("web-versions", registry.image("acme/web"))
    builds = make_service("web-builds", registry.image("acme/web"), BUILD)
    path = DeployPath()
    make_poller([versions, builds], path, clock).poll_due(clock())
    assert path.deployed("web-versions") == ["1.1"]
    assert path.deployed("web-builds") == ["build-8"]
    assert tag_list_requests(registry, "acme/web") == 2  # the challenge's 401, then one list


def test_poll_now_ignores_the_schedule(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.add_repository("acme/shop", ["1.0"])
    service = make_service("poll-now", registry.image("acme/shop"))
    path = DeployPath()
    poller = make_poller([service], path, clock)
    poller.poll_due(clock())
    registry.push("acme/shop", "1.1")
    assert poller.poll(service).newest_seen == "1.1"
    assert path.deployed("poll-now") == ["1.0", "1.1"]


# -- configuration -------------------------------------------------------------------------------

HASH = "a" * 64
BASE = f"""
[services.web]
repository = "acme/shop"
key = "configs/web/IMAGE_TAG"
secret_sha256 = "{HASH}"
"""


def settings_with(
    service_lines: str = "", extra: str = "", environ: dict[str, str] | None = None
) -> Any:
    return parse_settings(
        BASE + service_lines + "\n" + extra, source="noman.toml", environ=environ or {}
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("90s", 90),
        ("1m1s", 61),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_poll_settings_from_the_file() -> None:
    settings = settings_with('poll = "5m"')
    assert settings.poll.intervals == {"web": 300}
    assert settings.poll.enabled
    assert settings.poll.interval_of("web") == 300
    assert settings_with("poll = true").poll.intervals == {"web": 300}
    assert settings_with("poll = true", '[poll]\ninterval = "1h30m"').poll.intervals == {
        "web": 5400
    }
    off = settings_with("poll = false")
    assert off.poll.intervals == {} and not off.poll.enabled
    assert settings_with().poll == PollSettings()
    full = settings_with(
        'poll = "1s"',
        "[poll]\nmax_parallel = 4\ntimeout = 2.5\n"
        'insecure_registries = ["Reg.Local:5000", "other"]\n',
    ).poll
    assert (full.max_parallel, full.insecure_registries, full.timeout) == (
        4,
        ("reg.local:5000", "other"),
        2.5,
    )


def test_docker_config_is_named_or_found(tmp_path: Path) -> None:
    named = docker_config(tmp_path, {"ghcr.io": auth_entry("a", PASSWORD)})
    assert settings_with(extra=f'[poll]\ndocker_config = "{named}"').poll.docker_config == str(
        named
    )
    # $DOCKER_CONFIG names a folder; Docker reads config.json in it.
    assert settings_with(environ={"DOCKER_CONFIG": str(tmp_path)}).poll.docker_config == str(named)
    assert (
        settings_with(environ={"DOCKER_CONFIG": str(tmp_path / "none")}).poll.docker_config is None
    )
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    assert settings_with(environ={"HOME": str(home)}).poll.docker_config is None
    (home / ".docker" / "config.json").write_text('{"auths": {}}')
    assert settings_with(environ={"HOME": str(home)}).poll.docker_config == str(
        home / ".docker" / "config.json"
    )


@pytest.mark.parametrize(
    ("service_lines", "extra", "message"),
    [
        ('poll = "0s"', "", r'line 6: \[services.web\] poll: must be a duration like "30s"'),
        ('poll = "500ms"', "", r"\[services.web\] poll: must be a duration"),
        ('poll = "0.5s"', "", r"\[services.web\] poll: must be a duration"),
        ('poll = "5 minutes"', "", r"\[services.web\] poll: must be a duration"),
        ("poll = 5", "", r"\[services.web\] poll: expected a string or true or false"),
        (
            "poll = true\ntag_pattern = '^([0-9a-f]{7})$'",
            "",
            r"\[services.web\] poll: service 'web' cannot poll: its tag_pattern "
            r"\^\(\[0-9a-f\]\{7\}\)\$ gives tags no order",
        ),
        ("poll = true", '[poll]\ninterval = "never"', r"\[poll\] interval: must be a duration"),
        ("", "[poll]\nmax_parallel = 0", r"\[poll\] max_parallel: must be at least 1"),
        ("", '[poll]\ninsecure_registries = ["a b"]', r"insecure_registries: must be a list"),
        ("", "[poll]\ninsecure_registries = [5]", r"insecure_registries: must be a list"),
        ("", "[poll]\ntimeout = 0", r"\[poll\] timeout: must be greater than 0"),
        ("", '[poll]\ncolour = "blue"', r"\[poll\] colour: unknown key"),
        ("", '[poll]\ndocker_config = "/nonexistent/config.json"', r"docker_config: .*cannot read"),
    ],
)
def test_poll_mistakes_stop_start_up_with_a_one_line_message(
    service_lines: str, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        settings_with(service_lines, extra)
    assert str(error.value).startswith("noman.toml")
    assert "\n" not in str(error.value)


def test_a_repository_that_cannot_be_polled_is_refused_only_when_polled() -> None:
    text = BASE.replace('"acme/shop"', '"acme/shop:1.0"')
    assert parse_settings(text, environ={}).poll.intervals == {}
    with pytest.raises(ConfigError, match=r"repository: cannot be polled: .*without a tag"):
        parse_settings(text + "poll = true\n", source="noman.toml", environ={})


def test_a_broken_docker_config_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(PASSWORD)
    with pytest.raises(ConfigError, match="not a JSON Docker config") as error:
        settings_with(extra=f'[poll]\ndocker_config = "{path}"')
    assert PASSWORD not in str(error.value)


def test_the_client_is_built_from_the_settings(tmp_path: Path) -> None:
    path = docker_config(tmp_path, {"ghcr.io": auth_entry("a", PASSWORD)})
    settings = settings_with(
        'poll = "1m"',
        f'[poll]\ndocker_config = "{path}"\ninsecure_registries = ["reg.local:5000"]\ntimeout = 3',
    )
    client = RegistryClient.from_settings(settings.poll)
    assert client.timeout == 3
    assert client.credentials.has("ghcr.io")
    assert client.reference("reg.local:5000/a/b").scheme == "http"
    assert client.reference("reg.local:5001/a/b").scheme == "https"
    client.close()
