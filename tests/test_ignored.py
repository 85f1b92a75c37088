"""Registry events with nothing to deploy: 202 ignored, and nothing else happens.

Every case goes through the real hook with a body shaped as its sender
documents it (tests/payloads/README.md says where each comes from), a Consul
key already holding a release, a notifier and a DockerHub callback both
pointed at a live local receiver. For each: the status and body, the key
unchanged (value and index), no notification, no callback, one hook log
line and the metric outcome ``ignored``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.auth import sign
from noman.config import Settings
from noman.release import IGNORED_REASONS
from noman.wiring import components
from tests.conftest import ConsulHandle, make_settings, post_hook, settle
from tests.fakes.receiver import Receiver

PAYLOADS = Path(__file__).parent / "payloads"
GITHUB_KEY = "github-hook-secret-for-tests-0001"
DEPLOYED = "release-20221224120000"
TAG = "release-20230103082900"
REPOSITORY = {
    "dockerhub": "stut/stut.dev",
    "github": "ghcr.io/stut/stut.dev",
    "harbor": "harbor.example.com/stut/stut.dev",
    "quay": "quay.io/stut/stut.dev",
}
CLOUDEVENTS = "application/cloudevents+json"


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return payload


def setting(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to the sample: set the dotted ``path`` to ``value``."""

    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = payload
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value

    return change


@dataclasses.dataclass(frozen=True)
class Case:
    """One request as a sender would send it, and what the hook must answer."""

    sender: str
    sample: str
    change: Callable[[dict[str, Any]], None] | None = None
    event: str = "package"
    content_type: str = "application/json"
    tag_pattern: str | None = None


IGNORED: dict[str, tuple[Case, str]] = {
    "dockerhub-latest-beside-releases": (
        Case("dockerhub", "ignored-dockerhub-push-latest.json"),
        "tag_not_accepted",
    ),
    "dockerhub-pre-2017-no-tag": (
        Case("dockerhub", "ignored-dockerhub-push-no-tag.json"),
        "no_tag",
    ),
    "github-multi-arch-untagged-manifest": (
        Case("github", "github-package-untagged.json"),
        "no_tag",
    ),
    "github-latest": (
        Case(
            "github",
            "github-package-published.json",
            setting("package.package_version.container_metadata.tag.name", "latest"),
        ),
        "tag_not_accepted",
    ),
    "github-npm-package": (
        Case(
            "github",
            "github-package-published.json",
            lambda p: p["package"].update(package_type="npm", ecosystem="npm"),
        ),
        "not_a_container",
    ),
    "github-other-event": (
        Case("github", "github-package-published.json", event="push"),
        "not_a_push",
    ),
    "harbor-digest-only": (Case("harbor", "harbor-push-digest-only.json"), "digest_only"),
    "harbor-delete": (Case("harbor", "harbor-delete-artifact.json"), "not_a_push"),
    "harbor-scan-completed": (Case("harbor", "harbor-scanning-completed.json"), "not_a_push"),
    "harbor-latest": (
        Case(
            "harbor",
            "harbor-push-artifact.json",
            lambda p: p["event_data"]["resources"][0].update(
                tag="latest", resource_url="harbor.example.com/stut/stut.dev:latest"
            ),
        ),
        "tag_not_accepted",
    ),
    "harbor-cloudevents-deleted": (
        Case(
            "harbor",
            "harbor-cloudevents-push.json",
            setting("type", "harbor.artifact.deleted"),
            content_type=CLOUDEVENTS,
        ),
        "not_a_push",
    ),
    "harbor-cloudevents-scan": (
        Case(
            "harbor",
            "harbor-cloudevents-push.json",
            setting("type", "harbor.scan.completed"),
            content_type=CLOUDEVENTS,
        ),
        "not_a_push",
    ),
    "harbor-cloudevents-digest-only": (
        Case(
            "harbor",
            "harbor-cloudevents-push.json",
            lambda p: p["data"]["resources"][0].update(
                tag=p["data"]["resources"][0]["digest"],
                resource_url="harbor.example.com/stut/stut.dev@"
                + p["data"]["resources"][0]["digest"],
            ),
            content_type=CLOUDEVENTS,
        ),
        "digest_only",
    ),
    # A permissive pattern would take "foo": the test notification must still never deploy.
    "quay-test-notification": (
        Case("quay", "quay-test-notification.json", tag_pattern="^.+$"),
        "test_notification",
    ),
    "quay-latest-only": (
        Case("quay", "quay-repo-push-one-tag.json", setting("updated_tags", ["latest"])),
        "tag_not_accepted",
    ),
    "quay-no-tag": (
        Case("quay", "quay-repo-push-one-tag.json", setting("updated_tags", [])),
        "no_tag",
    ),
}


class Hook:
    """One service for one case, with a notifier and a DockerHub callback to ``receiver``."""

    def __init__(self, consul: ConsulHandle, secret: str, receiver: Receiver, case: Case) -> None:
        service: dict[str, Any] = {
            "repository": REPOSITORY[case.sender],
            "github_secret_env": "GITHUB_KEYS",
        }
        if case.tag_pattern is not None:
            service["tag_pattern"] = case.tag_pattern
        settings: Settings = make_settings(
            consul,
            secret,
            extra=(
                '[notify]\non = ["success", "failure"]\nretries = 1\ntimeout = 1\n'
                f'[[notify.targets]]\nkind = "webhook"\nurl = "{receiver.url}/notify"\n'
            ),
            environ={"GITHUB_KEYS": GITHUB_KEY},
            **service,
        )
        settings = dataclasses.replace(
            settings, callback_hosts=("127.0.0.1",), callback_allow_http=True
        )
        self.app = create_app(settings)
        self.client = self.app.test_client()
        self.secret = secret
        self.receiver = receiver

    def post(self, case: Case) -> Any:
        payload = load(case.sample)
        if case.change is not None:
            case.change(payload)
        if case.sender == "dockerhub":
            payload["callback_url"] = f"{self.receiver.url}/callback"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": case.content_type}
        if case.sender == "github":
            headers.update(
                {
                    "X-GitHub-Event": case.event,
                    "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                    "X-Hub-Signature-256": sign(GITHUB_KEY.encode(), body),
                }
            )
        return self.client.post(f"/hooks/{self.secret}", data=body, headers=headers)

    def metric(self, outcome: str) -> float:
        text = self.client.get("/metrics").get_data(as_text=True)
        prefix = f'noman_hook_requests_total{{outcome="{outcome}",service="web"}}'
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def quiet(self) -> bool:
        """True when every report finished and none reached the receiver."""
        parts = components(self.app)
        # Success reports come from the reconciler's record transitions: let it act first.
        settled = settle(parts.reconciler, 10) and parts.reporter.wait(5)
        return bool(settled) and not self.receiver.received


class Lines(logging.Handler):
    """Collects the structured fields of each hook log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(dict(getattr(record, "fields", {})))


@pytest.fixture
def hook_lines() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("noman.hooks")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.fields
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize(("case", "reason"), IGNORED.values(), ids=IGNORED.keys())
def test_registry_events_with_nothing_to_deploy_are_ignored(
    consul: ConsulHandle,
    secret: str,
    receiver: Receiver,
    hook_lines: list[dict[str, Any]],
    case: Case,
    reason: str,
) -> None:
    consul.put(consul.key("IMAGE_TAG"), DEPLOYED)
    before = consul.get(consul.key("IMAGE_TAG"))
    hook = Hook(consul, secret, receiver, case)
    ignored_before = hook.metric("ignored")

    answer = hook.post(case)

    assert answer.status_code == 202, answer.json
    assert set(answer.json) == {"service", "ignored", "reason", "message"}
    assert (answer.json["service"], answer.json["ignored"]) == ("web", True)
    assert answer.json["reason"] == reason
    assert reason in IGNORED_REASONS
    assert answer.json["message"]
    assert consul.get(consul.key("IMAGE_TAG")) == before
    assert hook.quiet(), [r.path for r in receiver.received]
    lines = hook_lines
    assert len(lines) == 1
    assert (lines[0]["outcome"], lines[0]["status"], lines[0]["ignored"]) == (
        "ignored",
        202,
        reason,
    )
    assert hook.metric("ignored") == ignored_before + 1


def test_the_harness_sees_notifications_and_callbacks(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    """Control: a real DockerHub push through the same harness does reach the receiver."""
    hook = Hook(consul, secret, receiver, Case("dockerhub", "dockerhub-push.json"))
    answer = hook.post(Case("dockerhub", "dockerhub-push.json"))
    assert answer.status_code == 200, answer.json
    assert settle(components(hook.app).reconciler, 10)
    paths = sorted(r.path for r in receiver.wait_for(2))
    assert paths == ["/callback", "/notify"]


@pytest.mark.parametrize(
    ("case", "tag"),
    [
        (Case("harbor", "harbor-cloudevents-push.json", content_type=CLOUDEVENTS), TAG),
        (Case("harbor", "harbor-push-artifact.json"), TAG),
        (Case("quay", "quay-repo-push-one-tag.json"), TAG),
        (Case("quay", "quay-repo-push.json"), TAG),
        (Case("github", "github-package-published.json"), TAG),
        (Case("dockerhub", "dockerhub-push.json"), TAG),
    ],
    ids=["harbor-cloudevents", "harbor-default", "quay-one", "quay-several", "github", "dockerhub"],
)
def test_pushes_of_an_accepted_tag_deploy(
    consul: ConsulHandle, secret: str, receiver: Receiver, case: Case, tag: str
) -> None:
    answer = Hook(consul, secret, receiver, case).post(case)
    assert answer.status_code == 200, answer.json
    assert answer.json["tag"] == tag
    assert consul.get(consul.key("IMAGE_TAG"))[0] == tag


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        # Misdirected beats ignored: another repository is always refused.
        (
            Case(
                "dockerhub",
                "ignored-dockerhub-push-latest.json",
                setting("repository.repo_name", "stut/other"),
            ),
            403,
            "repository_mismatch",
        ),
        (
            Case(
                "harbor",
                "harbor-push-digest-only.json",
                lambda p: p["event_data"]["resources"][0].update(
                    resource_url="harbor.example.com/stut/other@sha256:" + "a" * 64
                ),
            ),
            403,
            "repository_mismatch",
        ),
        (
            Case(
                "github",
                "github-package-untagged.json",
                setting("package.name", "other-app"),
            ),
            403,
            "repository_mismatch",
        ),
        (
            Case("quay", "quay-test-notification.json", setting("docker_url", "quay.io/x/y")),
            403,
            "repository_mismatch",
        ),
        # Several accepted tags and no order: never an arbitrary one.
        (
            Case(
                "quay",
                "quay-repo-push.json",
                setting("updated_tags", ["0e2a89b", "latest", "a41c3f0"]),
                tag_pattern="^([0-9a-f]{7})$",
            ),
            422,
            "ambiguous_tags",
        ),
    ],
    ids=[
        "dockerhub-other-repo",
        "harbor-other-repo",
        "github-other-repo",
        "quay-other-repo",
        "quay-ambiguous-shas",
    ],
)
def test_refusals_stay_refusals(
    consul: ConsulHandle,
    secret: str,
    receiver: Receiver,
    case: Case,
    status: int,
    error: str,
) -> None:
    consul.put(consul.key("IMAGE_TAG"), DEPLOYED)
    before = consul.get(consul.key("IMAGE_TAG"))
    answer = Hook(consul, secret, receiver, case).post(case)
    assert answer.status_code == status, answer.json
    assert answer.json["error"] == error
    assert consul.get(consul.key("IMAGE_TAG")) == before


def test_ambiguous_tags_are_named(consul: ConsulHandle, secret: str, receiver: Receiver) -> None:
    case = Case(
        "quay",
        "quay-repo-push.json",
        setting("updated_tags", ["0e2a89b", "a41c3f0"]),
        tag_pattern="^([0-9a-f]{7})$",
    )
    message = Hook(consul, secret, receiver, case).post(case).json["message"]
    assert "'0e2a89b'" in message and "'a41c3f0'" in message
    assert "tag_pattern" in message


@pytest.mark.parametrize(
    ("tags", "pattern", "deployed"),
    [
        (["1.2.9", "1.2.10", "latest"], r"^v?(\d+(?:\.\d+)*)$", "1.2.10"),
        (["v1.3", "v1.2.10"], r"^v?(\d+(?:\.\d+)*)$", "v1.3"),
        (["build-9", "build-10"], r"^build-(\d+)$", "build-10"),
        (["latest", "release-20230103082900", "release-20221224120000"], None, TAG),
    ],
)
def test_several_accepted_tags_deploy_the_newest(
    consul: ConsulHandle,
    secret: str,
    receiver: Receiver,
    tags: list[str],
    pattern: str | None,
    deployed: str,
) -> None:
    case = Case("quay", "quay-repo-push.json", setting("updated_tags", tags), tag_pattern=pattern)
    answer = Hook(consul, secret, receiver, case).post(case)
    assert answer.status_code == 200, answer.json
    assert consul.get(consul.key("IMAGE_TAG"))[0] == deployed


def test_harbor_1x_is_refused_with_a_message_naming_it(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    case = Case("harbor", "harbor1-push-image.json")
    answer = Hook(consul, secret, receiver, case).post(case)
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_payload"
    assert "Harbor 1.x" in answer.json["message"]
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


@pytest.mark.parametrize("tag", ["latest", "foo"])
def test_an_explicit_request_for_a_bad_tag_is_still_422(
    consul: ConsulHandle, secret: str, receiver: Receiver, tag: str
) -> None:
    hook = Hook(consul, secret, receiver, Case("dockerhub", "plain-redeploy.json"))
    answer = post_hook(hook.client, secret, tag)
    assert answer.status_code == 422
    assert answer.json["error"] == "invalid_tag"
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)


def test_github_ping_is_still_a_200_ping(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    case = Case("github", "github-ping.json", event="ping")
    answer = Hook(consul, secret, receiver, case).post(case)
    assert answer.status_code == 200
    assert answer.json == {"service": "web", "event": "ping"}
