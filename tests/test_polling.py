"""The leader's registry poller wired to the deploy path, the store and status.

A fake OCI registry (tests/fakes/registry.py) over real HTTP; Noman's app, its
store (the test's Consul) and its leader, as deployed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.cli import main
from noman.wiring import components
from tests.conftest import ConsulHandle, make_settings, post_hook, settings_toml
from tests.fakes.registry import FakeRegistry

T1 = "release-20240101000000"
T2 = "release-20240201000000"
T3 = "release-20240301000000"


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry(default_page=100) as fake:
        yield fake


def poll_settings(consul: ConsulHandle, secret: str, registry: FakeRegistry, **extra: Any) -> Any:
    return make_settings(
        consul,
        secret,
        repository=registry.image("acme/web"),
        poll="1s",
        **extra,
    )


def test_a_release_without_a_webhook_is_found_and_deployed(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    registry.add_repository("acme/web", ["latest", T1, T2, "release-2023", "v9"])
    app = create_app(poll_settings(consul, secret, registry))
    parts = components(app)
    assert parts.reconciler.run_once() is False  # takes the lock: this process leads
    parts.polling.run_once()
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T2
    status = app.test_client().get(f"/hooks/{secret}/status").json
    entry = status["history"][0]
    assert (entry["tag"], entry["sender"]) == (T2, "poll")
    assert "found by polling" in entry["description"]
    poll = status["poll"]
    assert (poll["interval"], poll["newest_seen"], poll["error"]) == (1.0, T2, None)
    assert poll["last_polled"] and poll["next_poll"]
    assert poll["webhooks_missing"] is False
    parts.reconciler.stop()


def test_a_webhook_then_a_poll_of_the_same_tag_is_one_deploy(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    registry.add_repository("acme/web", [T1])
    app = create_app(poll_settings(consul, secret, registry))
    parts = components(app)
    client = app.test_client()
    assert post_hook(client, secret, T1).status_code == 200
    parts.reconciler.run_once()
    parts.polling.run_once()
    history = client.get(f"/hooks/{secret}/status").json["history"]
    assert [(h["tag"], h["sender"]) for h in history] == [(T1, "plain")]
    # And the other way round: found by polling first, the webhook is a no-op.
    registry.push("acme/web", T2)
    time.sleep(1.1)
    parts.polling.run_once()
    answer = post_hook(client, secret, T2)
    assert (answer.status_code, answer.json["changed"]) == (200, False)
    history = client.get(f"/hooks/{secret}/status").json["history"]
    assert [(h["tag"], h["sender"]) for h in history] == [(T2, "poll"), (T1, "plain")]
    parts.reconciler.stop()


def test_a_frozen_service_is_not_deployed_and_status_says_why(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    registry.add_repository("acme/web", [T1])
    app = create_app(poll_settings(consul, secret, registry))
    parts = components(app)
    client = app.test_client()
    assert client.post(f"/hooks/{secret}/freeze").status_code == 200
    parts.reconciler.run_once()
    parts.polling.run_once()
    assert consul.get(consul.key("IMAGE_TAG"))[0] is None
    assert client.get(f"/hooks/{secret}/status").json["poll"]["error"] == "frozen"
    parts.reconciler.stop()


def test_only_the_leader_polls(consul: ConsulHandle, secret: str, registry: FakeRegistry) -> None:
    registry.add_repository("acme/web", [T1])
    settings = poll_settings(consul, secret, registry)
    leader, follower = components(create_app(settings)), components(create_app(settings))
    leader.reconciler.run_once()
    follower.reconciler.run_once()
    assert (leader.reconciler.leader, follower.reconciler.leader) == (True, False)
    follower.polling.run_once()
    assert registry.tag_list_requests("acme/web") == 0
    leader.polling.run_once()
    assert registry.tag_list_requests("acme/web") >= 1  # a 401 challenge, then the list
    leader.reconciler.stop()
    follower.reconciler.stop()


def test_a_private_repository_without_credentials_is_an_error_in_status_only(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    registry.add_repository("acme/web", [T1], private=True)
    app = create_app(poll_settings(consul, secret, registry))
    parts = components(app)
    parts.reconciler.run_once()
    parts.polling.run_once()
    client = app.test_client()
    poll = client.get(f"/hooks/{secret}/status").json["poll"]
    assert poll["error"] == "registry_unauthorized"
    # Hooks are unaffected.
    assert post_hook(client, secret, T2).status_code == 200
    assert client.get("/readyz").status_code == 200
    parts.reconciler.stop()


def test_a_hanging_registry_never_slows_a_hook(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    registry.add_repository("acme/web", [T1])
    registry.fault("acme/web", "hang")
    settings = poll_settings(consul, secret, registry, extra="[poll]\ntimeout = 2\n")
    app = create_app(settings)
    parts = components(app)
    parts.reconciler.start()
    try:
        deadline = time.monotonic() + 5
        while registry.tag_list_requests("acme/web") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert registry.tag_list_requests("acme/web") >= 1  # the poller is stuck in it
        started = time.monotonic()
        answer = post_hook(app, secret, T2)
        assert answer.status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        registry.heal()
        parts.reconciler.stop()


def test_webhooks_that_never_arrive_are_flagged(
    consul: ConsulHandle,
    secret: str,
    registry: FakeRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry.add_repository("acme/web", [T1])
    app = create_app(poll_settings(consul, secret, registry))
    parts = components(app)
    parts.reconciler.run_once()
    for tag in (T1, T2, T3):
        registry.push("acme/web", tag)
        parts.polling.poller.poll(parts.settings.service("web"))
        parts.polling.run_once()
    poll = app.test_client().get(f"/hooks/{secret}/status").json["poll"]
    assert poll["webhooks_missing"] is True
    assert "webhooks from this registry may not be arriving" in poll["warning"]
    config = tmp_path / "noman.toml"
    config.write_text(
        settings_toml(consul, secret, repository=registry.image("acme/web"), poll="1s")
    )
    assert main(["--config", str(config), "status", "web"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["poll"]["webhooks_missing"] is True
    parts.reconciler.stop()


def test_the_status_page_shows_the_poll_and_the_flag(
    consul: ConsulHandle, secret: str, registry: FakeRegistry
) -> None:
    from tests.test_ui import log_in, ui_settings

    registry.add_repository("acme/web", [T1])
    token = "t" * 43
    app = create_app(ui_settings(poll_settings(consul, secret, registry), token))
    parts = components(app)
    parts.reconciler.run_once()
    for tag in (T1, T2, T3):
        registry.push("acme/web", tag)
        parts.polling.poller.poll(parts.settings.service("web"))
        parts.polling.run_once()
    client = app.test_client()
    assert log_in(client, token).status_code == 303
    html = client.get("/ui/services/web").get_data(as_text=True)
    assert 'data-field="poll"' in html
    assert T3 in html
    assert "webhooks from this registry may not be arriving" in html
    parts.reconciler.stop()
