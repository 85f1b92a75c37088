"""The self-hosted and cloud registries' webhooks, through the real hook route.

Docker distribution (registry:2) and GitLab's container registry, Azure
Container Registry, JFrog Artifactory, Gitea and Forgejo: each sample in
tests/payloads/ is shaped as its sender documents it (tests/payloads/README.md
says where from), sent with the headers that sender sends and the proof it
carries. For each: what deploys lands its tag; what announces nothing is a
202 that writes nothing; a wrong proof is a 401 that writes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noman import create_app
from noman.release import IGNORED_REASONS
from tests.conftest import ConsulHandle, make_settings, memory_client, post_hook

PAYLOADS = Path(__file__).parent / "payloads"
TAG = "release-20230103082900"
OLDER = "release-20221224120000"
DEPLOYED = "release-20221001000000"

REGISTRY_TOKEN = "Bearer 9q2Xv7LmT4kP8sR1wZ6yB3nC5dF0hJ"
ACR_TOKEN = "acr-7Hk2Lm9Pq4Rs8Tv1Wx5Yz3Bc6Df0Gj"
ARTIFACTORY_SECRET = "jfrog-Zq3Xw8Ev5Rt2Yu7Io4Pa9Sd"
GITEA_SECRET = "gitea-Mn4Bv8Cx2Za6Sd1Fg5Hj9Kl3"
GITHUB_SECRET = "github-hook-secret-for-tests-0001"
DISTRIBUTION = "application/vnd.docker.distribution.events.v1+json"


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return payload


def hexmac(key: str, body: bytes) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def gitea_headers(body: bytes, event: str = "package", key: str = GITEA_SECRET) -> dict[str, str]:
    """What Gitea's deliver.go sends: its own headers, Gogs' and GitHub's."""
    signature = hexmac(key, body)
    return {
        "X-Gitea-Delivery": "0b4b7d6e-8f0a-4c55-9b39-6b1f0f3c2a11",
        "X-Gitea-Event": event,
        "X-Gitea-Event-Type": event,
        "X-Gitea-Signature": signature,
        "X-Gogs-Delivery": "0b4b7d6e-8f0a-4c55-9b39-6b1f0f3c2a11",
        "X-Gogs-Event": event,
        "X-Gogs-Event-Type": event,
        "X-Gogs-Signature": signature,
        "X-Hub-Signature": "sha1=" + hmac.new(key.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + signature,
        "X-GitHub-Delivery": "0b4b7d6e-8f0a-4c55-9b39-6b1f0f3c2a11",
        "X-GitHub-Event": event,
        "X-GitHub-Event-Type": event,
    }


def forgejo_headers(body: bytes, event: str = "package", key: str = GITEA_SECRET) -> dict[str, str]:
    """Forgejo sends its own X-Forgejo-* beside all of Gitea's."""
    return {
        **gitea_headers(body, event, key),
        "X-Forgejo-Delivery": "5d0c3b1a-2e4f-4a6b-8c9d-0e1f2a3b4c5d",
        "X-Forgejo-Event": event,
        "X-Forgejo-Event-Type": event,
        "X-Forgejo-Signature": hexmac(key, body),
    }


@dataclass(frozen=True)
class Sender:
    """A registry as configured to call Noman, and the service that listens to it."""

    repository: str
    service: dict[str, Any]
    headers: Callable[[bytes], dict[str, str]]
    environ: dict[str, str] = field(default_factory=dict)


SENDERS = {
    "distribution": Sender(
        "registry.example.com/stut/stut.dev",
        {"auth_header_env": "REGISTRY_TOKEN"},
        lambda body: {"Content-Type": DISTRIBUTION, "Authorization": REGISTRY_TOKEN},
        {"REGISTRY_TOKEN": REGISTRY_TOKEN},
    ),
    "gitlab": Sender(
        "registry.gitlab.example.com/stut/stut.dev",
        {"auth_header_sha256": hashlib.sha256(REGISTRY_TOKEN.encode()).hexdigest()},
        lambda body: {"Content-Type": DISTRIBUTION, "Authorization": REGISTRY_TOKEN},
    ),
    "acr": Sender(
        "myregistry.azurecr.io/stut/stut.dev",
        {"auth_header": "X-Noman-Token", "auth_header_env": "ACR_TOKEN"},
        lambda body: {"Content-Type": "application/json", "X-Noman-Token": ACR_TOKEN},
        {"ACR_TOKEN": ACR_TOKEN},
    ),
    "artifactory": Sender(
        "example.jfrog.io/docker-local/stut/stut.dev",
        {"artifactory_secret_env": "JFROG"},
        lambda body: {
            "Content-Type": "application/json",
            "X-JFrog-Event-Auth": hexmac(ARTIFACTORY_SECRET, body),
        },
        {"JFROG": ARTIFACTORY_SECRET},
    ),
    "gitea": Sender(
        "gitea.example.com/stut/stut.dev",
        {"gitea_secret_env": "GITEA", "github_secret_env": "GITHUB"},
        lambda body: {"Content-Type": "application/json", **gitea_headers(body)},
        {"GITEA": GITEA_SECRET, "GITHUB": GITHUB_SECRET},
    ),
    "forgejo": Sender(
        "gitea.example.com/stut/stut.dev",
        {"gitea_secret_env": "GITEA"},
        lambda body: {"Content-Type": "application/json", **forgejo_headers(body)},
        {"GITEA": GITEA_SECRET},
    ),
}


def setting(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a sample: set the dotted ``path`` (list indexes allowed) to ``value``."""

    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = payload
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


@dataclass(frozen=True)
class Case:
    """One delivery: which sender, which sample, what is changed, what is tampered with."""

    sender: str
    sample: str
    change: Callable[[dict[str, Any]], None] | None = None
    tamper: Callable[[dict[str, str]], None] | None = None
    tag_pattern: str | None = None


class Hook:
    """One service listening to one sender, on the test's Consul."""

    def __init__(self, consul: ConsulHandle, secret: str, case: Case) -> None:
        sender = SENDERS[case.sender]
        service = {"repository": sender.repository, **sender.service}
        if case.tag_pattern is not None:
            service["tag_pattern"] = case.tag_pattern
        self.app = create_app(make_settings(consul, secret, environ=sender.environ, **service))
        self.client = self.app.test_client()
        self.secret = secret
        self.consul = consul

    def post(self, case: Case) -> Any:
        payload = load(case.sample)
        if case.change is not None:
            case.change(payload)
        body = json.dumps(payload).encode()
        headers = SENDERS[case.sender].headers(body)
        if case.tamper is not None:
            case.tamper(headers)
        return self.client.post(f"/hooks/{self.secret}", data=body, headers=headers)

    def history_sender(self) -> str:
        status = self.client.get(f"/hooks/{self.secret}/status").json
        return str(status["history"][0]["sender"])


def tag_of(consul: ConsulHandle) -> str | None:
    return consul.get(consul.key("IMAGE_TAG"))[0]


# -- what deploys ----------------------------------------------------------------------------

DEPLOYS = {
    "distribution-push": (Case("distribution", "distribution-push.json"), TAG, "distribution"),
    "gitlab-registry-push": (Case("gitlab", "gitlab-registry-push.json"), TAG, "distribution"),
    "acr-push": (Case("acr", "acr-push.json"), TAG, "acr"),
    "artifactory-pushed": (
        Case("artifactory", "artifactory-docker-pushed.json"),
        TAG,
        "artifactory",
    ),
    "gitea-package-created": (Case("gitea", "gitea-package-created.json"), TAG, "gitea"),
    "forgejo-package-created": (Case("forgejo", "gitea-package-created.json"), TAG, "forgejo"),
    # The newest accepted tag of the envelope; latest, another repository, a blob and a
    # pull beside it are not deployed.
    "distribution-multi-event": (
        Case("distribution", "distribution-multi.json"),
        TAG,
        "distribution",
    ),
    # The newest by the pattern's order, not the last one pushed.
    "distribution-multi-event-out-of-order": (
        Case(
            "distribution",
            "distribution-multi.json",
            lambda p: p["events"].reverse(),
        ),
        TAG,
        "distribution",
    ),
    # An unordered pattern (commit SHAs): the last one pushed.
    "distribution-unordered-pattern": (
        Case(
            "distribution",
            "distribution-multi.json",
            lambda p: (
                setting("events.0.target.tag", "0e2a89b")(p),
                setting("events.4.target.tag", "a41c3f0")(p),
            ),
            tag_pattern="^([0-9a-f]{7})$",
        ),
        "a41c3f0",
        "distribution",
    ),
    # Without request.host (an event with no request record): the path alone.
    "distribution-no-request": (
        Case("distribution", "distribution-push.json", setting("events.1.request", None)),
        TAG,
        "distribution",
    ),
}


@pytest.mark.parametrize(("case", "tag", "sender"), DEPLOYS.values(), ids=DEPLOYS.keys())
def test_a_push_deploys_its_tag(
    consul: ConsulHandle, secret: str, case: Case, tag: str, sender: str
) -> None:
    hook = Hook(consul, secret, case)
    answer = hook.post(case)
    assert answer.status_code == 200, answer.json
    assert answer.json["tag"] == tag
    assert tag_of(consul) == tag
    assert hook.history_sender() == sender


def test_artifactory_subdomain_method_names_the_image_by_repository_key(
    consul: ConsulHandle, secret: str
) -> None:
    case = Case("artifactory", "artifactory-docker-pushed.json")
    sender = SENDERS["artifactory"]
    app = create_app(
        make_settings(
            consul,
            secret,
            environ=sender.environ,
            repository="docker-local.example.jfrog.io/stut/stut.dev",
            **sender.service,
        )
    )
    body = json.dumps(load(case.sample)).encode()
    answer = app.test_client().post(f"/hooks/{secret}", data=body, headers=sender.headers(body))
    assert answer.status_code == 200, answer.json
    assert tag_of(consul) == TAG


def test_a_retried_envelope_deploys_at_most_once(consul: ConsulHandle, secret: str) -> None:
    """distribution retries until a 2xx: the chosen event's id names the delivery."""
    case = Case("distribution", "distribution-push.json")
    hook = Hook(consul, secret, case)
    assert hook.post(case).status_code == 200
    consul.put(consul.key("IMAGE_TAG"), OLDER)  # an operator went back in between
    again = hook.post(case)
    assert again.status_code == 200, again.json
    assert again.json["duplicate_delivery"] is True
    assert tag_of(consul) == OLDER


def test_an_older_tag_from_a_registry_that_retries_for_ever_is_acknowledged(
    consul: ConsulHandle, secret: str
) -> None:
    """distribution retries a 409 until it is accepted, holding back every later event."""
    newer = "release-20240101000000"
    consul.put(consul.key("IMAGE_TAG"), newer)
    before = consul.get(consul.key("IMAGE_TAG"))
    case = Case("distribution", "distribution-push.json")
    answer = Hook(consul, secret, case).post(case)
    assert answer.status_code == 202, answer.json
    assert answer.json["reason"] == "stale_tag"
    assert consul.get(consul.key("IMAGE_TAG")) == before


def test_an_older_tag_from_a_registry_that_does_not_retry_is_still_409(
    consul: ConsulHandle, secret: str
) -> None:
    consul.put(consul.key("IMAGE_TAG"), "release-20240101000000")
    case = Case("acr", "acr-push.json")
    answer = Hook(consul, secret, case).post(case)
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "stale_tag"


# -- what is acknowledged and ignored --------------------------------------------------------

IGNORED = {
    "distribution-pull": (Case("distribution", "distribution-pull.json"), "not_a_push"),
    "distribution-delete": (Case("distribution", "distribution-delete.json"), "not_a_push"),
    "distribution-mount": (Case("distribution", "distribution-mount.json"), "not_a_push"),
    "distribution-blob-push": (
        Case("distribution", "distribution-push.json", lambda p: p["events"].pop()),
        "digest_only",
    ),
    "distribution-digest-only": (
        Case("distribution", "distribution-push-digest-only.json"),
        "digest_only",
    ),
    "distribution-latest": (
        Case("distribution", "distribution-push.json", setting("events.1.target.tag", "latest")),
        "tag_not_accepted",
    ),
    "distribution-other-repository": (
        Case("distribution", "distribution-other-repository.json"),
        "other_repository",
    ),
    "distribution-other-host": (
        Case(
            "distribution",
            "distribution-push.json",
            lambda p: [e["request"].update(host="mirror.example.com") for e in p["events"]],
        ),
        "other_repository",
    ),
    "gitlab-tag-delete": (
        Case(
            "gitlab",
            "gitlab-registry-push.json",
            setting("events.0.action", "delete"),
        ),
        "not_a_push",
    ),
    "acr-delete": (Case("acr", "acr-delete.json"), "not_a_push"),
    "acr-chart-push": (Case("acr", "acr-chart-push.json"), "not_a_push"),
    "acr-quarantine": (Case("acr", "acr-push.json", setting("action", "quarantine")), "not_a_push"),
    "acr-ping": (Case("acr", "acr-ping.json"), "test_notification"),
    "acr-digest-only": (
        Case("acr", "acr-push.json", lambda p: p["target"].pop("tag")),
        "digest_only",
    ),
    "acr-latest": (
        Case("acr", "acr-push.json", setting("target.tag", "latest")),
        "tag_not_accepted",
    ),
    "acr-other-repository": (
        Case("acr", "acr-push.json", setting("target.repository", "stut/other")),
        "other_repository",
    ),
    "artifactory-deleted": (Case("artifactory", "artifactory-docker-deleted.json"), "not_a_push"),
    "artifactory-promoted": (
        Case("artifactory", "artifactory-docker-pushed.json", setting("event_type", "promoted")),
        "not_a_push",
    ),
    "artifactory-artifact-domain": (
        Case("artifactory", "artifactory-artifact-deployed.json"),
        "not_a_push",
    ),
    "artifactory-other-repository-key": (
        Case("artifactory", "artifactory-docker-pushed.json", setting("data.repo_key", "dev")),
        "other_repository",
    ),
    "artifactory-latest": (
        Case("artifactory", "artifactory-docker-pushed.json", setting("data.tag", "latest")),
        "tag_not_accepted",
    ),
    "gitea-deleted": (Case("gitea", "gitea-package-deleted.json"), "not_a_push"),
    "gitea-digest-version": (Case("gitea", "gitea-package-digest.json"), "digest_only"),
    "gitea-npm-package": (
        Case("gitea", "gitea-package-created.json", setting("package.type", "npm")),
        "not_a_container",
    ),
    "gitea-other-package": (
        Case("gitea", "gitea-package-created.json", setting("package.name", "other")),
        "other_repository",
    ),
    "gitea-push-event": (
        Case(
            "gitea",
            "gitea-package-created.json",
            tamper=lambda h: h.update(
                {"X-Gitea-Event": "push", "X-GitHub-Event": "push", "X-Gogs-Event": "push"}
            ),
        ),
        "not_a_push",
    ),
    "gitea-latest": (
        Case("gitea", "gitea-package-created.json", setting("package.version", "latest")),
        "tag_not_accepted",
    ),
    "forgejo-deleted": (Case("forgejo", "gitea-package-deleted.json"), "not_a_push"),
}


@pytest.mark.parametrize(("case", "reason"), IGNORED.values(), ids=IGNORED.keys())
def test_an_event_with_nothing_to_deploy_is_acknowledged(
    consul: ConsulHandle, secret: str, case: Case, reason: str
) -> None:
    consul.put(consul.key("IMAGE_TAG"), DEPLOYED)
    before = consul.get(consul.key("IMAGE_TAG"))
    answer = Hook(consul, secret, case).post(case)
    assert answer.status_code == 202, answer.json
    assert set(answer.json) == {"service", "ignored", "reason", "message"}
    assert answer.json["reason"] == reason
    assert reason in IGNORED_REASONS
    assert consul.get(consul.key("IMAGE_TAG")) == before


# -- what is refused -------------------------------------------------------------------------


def _drop(name: str) -> Callable[[dict[str, str]], None]:
    return lambda headers: headers.pop(name)


def _set(name: str, value: str) -> Callable[[dict[str, str]], None]:
    return lambda headers: headers.update({name: value})


def _resign_body(headers: dict[str, str]) -> None:
    """Signatures of another body: what a replay with an edited body carries."""
    for name, value in gitea_headers(b'{"action": "created"}').items():
        if name in headers:
            headers[name] = value


BAD_PROOFS = {
    "distribution-no-authorization": Case(
        "distribution", "distribution-push.json", tamper=_drop("Authorization")
    ),
    "distribution-wrong-authorization": Case(
        "distribution", "distribution-push.json", tamper=_set("Authorization", "Bearer nope")
    ),
    "distribution-token-without-bearer": Case(
        "distribution",
        "distribution-push.json",
        tamper=_set("Authorization", REGISTRY_TOKEN.removeprefix("Bearer ")),
    ),
    "gitlab-wrong-authorization": Case(
        "gitlab", "gitlab-registry-push.json", tamper=_set("Authorization", REGISTRY_TOKEN + "x")
    ),
    "acr-no-header": Case("acr", "acr-push.json", tamper=_drop("X-Noman-Token")),
    "acr-header-in-authorization": Case(
        "acr",
        "acr-push.json",
        tamper=lambda h: h.update({"Authorization": h.pop("X-Noman-Token")}),
    ),
    "artifactory-no-header": Case(
        "artifactory", "artifactory-docker-pushed.json", tamper=_drop("X-JFrog-Event-Auth")
    ),
    "artifactory-other-key": Case(
        "artifactory",
        "artifactory-docker-pushed.json",
        tamper=_set("X-JFrog-Event-Auth", "jfrog-some-other-secret-token"),
    ),
    "artifactory-signature-of-another-body": Case(
        "artifactory",
        "artifactory-docker-pushed.json",
        tamper=_set("X-JFrog-Event-Auth", hexmac(ARTIFACTORY_SECRET, b"{}")),
    ),
    "gitea-signature-of-another-body": Case(
        "gitea", "gitea-package-created.json", tamper=_resign_body
    ),
    "gitea-no-signature": Case(
        "gitea",
        "gitea-package-created.json",
        tamper=lambda h: [h.pop(n) for n in ("X-Gitea-Signature", "X-Hub-Signature-256")],
    ),
    # As Gitea sends them when its webhook has no secret.
    "gitea-empty-signatures": Case(
        "gitea",
        "gitea-package-created.json",
        tamper=lambda h: h.update(
            {"X-Gitea-Signature": "", "X-Gogs-Signature": "", "X-Hub-Signature-256": "sha256="}
        ),
    ),
    # A wrong Forgejo signature is not rescued by a right Gitea one.
    "forgejo-wrong-own-signature": Case(
        "forgejo", "gitea-package-created.json", tamper=_set("X-Forgejo-Signature", "0" * 64)
    ),
}


@pytest.mark.parametrize("case", BAD_PROOFS.values(), ids=BAD_PROOFS.keys())
def test_a_delivery_without_its_proof_is_401_and_writes_nothing(
    consul: ConsulHandle, secret: str, case: Case
) -> None:
    answer = Hook(consul, secret, case).post(case)
    assert answer.status_code == 401, answer.json
    assert answer.json["error"] == "invalid_signature"
    assert tag_of(consul) is None
    # The expected values are never echoed.
    for value in (REGISTRY_TOKEN, ACR_TOKEN, ARTIFACTORY_SECRET, GITEA_SECRET):
        assert value not in answer.get_data(as_text=True)


def test_a_wrong_proof_is_refused_before_the_body_is_read(
    consul: ConsulHandle, secret: str
) -> None:
    """A signed sender's bad signature is a 401 even when the body is not JSON at all."""
    case = Case("gitea", "gitea-package-created.json")
    hook = Hook(consul, secret, case)
    headers = {"Content-Type": "application/json", **gitea_headers(b"{}")}
    answer = hook.client.post(f"/hooks/{secret}", data=b"not json", headers=headers)
    assert answer.status_code == 401
    assert answer.json["error"] == "invalid_signature"


@pytest.mark.parametrize(
    "header",
    [
        ARTIFACTORY_SECRET,  # the token itself, without "Use secret for payload signing"
        "sha256={signature}",  # a prefixed signature is tolerated too
        "{SIGNATURE}",  # hex in upper case
    ],
)
def test_artifactory_takes_its_token_or_its_signature(
    consul: ConsulHandle, secret: str, header: str
) -> None:
    case = Case("artifactory", "artifactory-docker-pushed.json")
    hook = Hook(consul, secret, case)
    body = json.dumps(load(case.sample)).encode()
    signature = hexmac(ARTIFACTORY_SECRET, body)
    value = header.format(signature=signature, SIGNATURE=signature.upper())
    answer = hook.client.post(
        f"/hooks/{secret}",
        data=body,
        headers={"Content-Type": "application/json", "X-JFrog-Event-Auth": value},
    )
    assert answer.status_code == 200, answer.json
    assert tag_of(consul) == TAG


def test_artifactory_with_a_token_but_no_key_configured_is_refused(
    consul: ConsulHandle, secret: str
) -> None:
    app = create_app(
        make_settings(consul, secret, repository="example.jfrog.io/docker-local/stut/stut.dev")
    )
    body = json.dumps(load("artifactory-docker-pushed.json")).encode()
    answer = app.test_client().post(
        f"/hooks/{secret}",
        data=body,
        headers={"Content-Type": "application/json", "X-JFrog-Event-Auth": ARTIFACTORY_SECRET},
    )
    assert answer.status_code == 401
    assert "artifactory_secret_env" in answer.json["message"]


@pytest.mark.parametrize(
    ("sample", "repository"),
    [
        ("distribution-push.json", "registry.example.com/stut/stut.dev"),
        ("acr-push.json", "myregistry.azurecr.io/stut/stut.dev"),
        ("artifactory-docker-pushed.json", "example.jfrog.io/docker-local/stut/stut.dev"),
    ],
)
def test_without_a_configured_proof_the_url_secret_is_the_proof(
    consul: ConsulHandle, secret: str, sample: str, repository: str
) -> None:
    app = create_app(make_settings(consul, secret, repository=repository))
    answer = post_hook(app, secret, body=load(sample))
    assert answer.status_code == 200, answer.json
    assert tag_of(consul) == TAG


# -- Gitea and Forgejo are not GitHub --------------------------------------------------------


def test_gitea_is_not_taken_for_github(consul: ConsulHandle, secret: str) -> None:
    """Before: 202 "GitHub package action 'created' is not a publish", and nothing deployed."""
    case = Case("gitea", "gitea-package-created.json")
    hook = Hook(consul, secret, case)
    answer = hook.post(case)
    assert answer.status_code == 200, answer.json
    assert tag_of(consul) == TAG
    assert hook.history_sender() == "gitea"


def test_gitea_to_a_service_with_only_a_github_key_names_the_key_it_needs(
    consul: ConsulHandle, secret: str
) -> None:
    app = create_app(
        make_settings(
            consul,
            secret,
            repository="gitea.example.com/stut/stut.dev",
            github_secret_env="GITHUB",
            environ={"GITHUB": GITHUB_SECRET},
        )
    )
    body = json.dumps(load("gitea-package-created.json")).encode()
    # Even signed with the GitHub key: Gitea's delivery is checked against Gitea's.
    headers = {"Content-Type": "application/json", **gitea_headers(body, key=GITHUB_SECRET)}
    answer = app.test_client().post(f"/hooks/{secret}", data=body, headers=headers)
    assert answer.status_code == 401
    assert "gitea_secret_env" in answer.json["message"]
    assert tag_of(consul) is None


def test_github_deliveries_still_go_to_github(consul: ConsulHandle, secret: str) -> None:
    from noman.auth import sign

    app = create_app(
        make_settings(
            consul,
            secret,
            repository="ghcr.io/stut/stut.dev",
            github_secret_env="GITHUB",
            gitea_secret_env="GITEA",
            environ={"GITHUB": GITHUB_SECRET, "GITEA": GITEA_SECRET},
        )
    )
    body = (PAYLOADS / "github-package-published.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "package",
        "X-GitHub-Delivery": "d-1",
        "X-Hub-Signature-256": sign(GITHUB_SECRET.encode(), body),
    }
    answer = app.test_client().post(f"/hooks/{secret}", data=body, headers=headers)
    assert answer.status_code == 200, answer.json
    assert tag_of(consul) == TAG


# -- never a 500 -----------------------------------------------------------------------------

SECRET = "fuzz-secret-" + "y" * 30
FUZZ = memory_client(SECRET, repository="registry.example.com/stut/stut.dev")

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)
names = st.sampled_from(["stut/stut.dev", "stut/other", "", "registry.example.com"]) | st.text()
targets = st.fixed_dictionaries(
    {},
    optional={"repository": names | values, "tag": st.sampled_from([TAG, "latest", ""]) | values},
)
events = st.fixed_dictionaries(
    {"action": st.sampled_from(["push", "pull", "delete", "mount", "ping"]) | values},
    optional={
        "id": values,
        "target": targets | values,
        "request": st.fixed_dictionaries({}, optional={"host": names | values}) | values,
    },
)
shapes = st.one_of(
    st.fixed_dictionaries({"events": st.lists(events, max_size=4) | values}),
    st.fixed_dictionaries(
        {"id": values, "timestamp": values, "action": values},
        optional={"target": targets | values, "request": values},
    ),
    st.fixed_dictionaries(
        {
            "domain": st.sampled_from(["docker", "artifact"]) | st.text(),
            "event_type": st.sampled_from(["pushed", "deleted"]) | st.text(),
            "data": st.fixed_dictionaries(
                {},
                optional={"repo_key": names | values, "image_name": names | values, "tag": values},
            )
            | values,
        },
        optional={"jpd_origin": st.sampled_from(["https://x.example", "::"]) | values},
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=shapes, content_type=st.sampled_from(["application/json", DISTRIBUTION]))
def test_any_registry_shape_is_answered_never_a_500(payload: Any, content_type: str) -> None:
    answer = FUZZ.post(f"/hooks/{SECRET}", data=json.dumps(payload), content_type=content_type)
    assert answer.status_code in {200, 202, 400, 403, 409, 422}, answer.get_data(as_text=True)
    body = answer.get_json()
    if answer.status_code == 202:
        assert body["reason"] in IGNORED_REASONS
    elif answer.status_code >= 400:
        assert set(body) == {"error", "message"}
