"""The status page's pages and actions against the real Deployer and the fake Consul.

Every action goes through the same Deployer operations as the HTTP API, so the
tests check the result through the HTTP API (``/hooks/<secret>/status``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest

from noman import create_app
from noman.config import Settings
from tests.conftest import ConsulHandle, post_hook
from tests.test_ui import csrf_of, log_in, ui_settings

V1 = "release-20240101000000"
V2 = "release-20250101000000"
V3 = "release-20260101000000"


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def page(settings: Settings, token: str) -> Any:
    """A logged-in test client of an app with the page on."""
    app = create_app(ui_settings(settings, token))
    client = app.test_client()
    assert log_in(client, token).status_code == 303
    return client


def status(client: Any, secret: str) -> dict[str, Any]:
    answer = client.get(f"/hooks/{secret}/status")
    assert answer.status_code == 200, answer.json
    result: dict[str, Any] = answer.json
    return result


def form_token(client: Any, path: str) -> str:
    return csrf_of(client.get(path).get_data(as_text=True))


def test_overview_shows_each_service_and_the_json_matches(
    page: Any, secret: str, token: str
) -> None:
    assert post_hook(page, secret, V1).status_code == 200
    html = page.get("/ui").get_data(as_text=True)
    assert 'data-service="web"' in html
    assert f"<code>{V1}</code>" in html
    assert "restart" in html
    assert token not in html
    data = page.get("/ui/api/overview").json
    assert data["active"] is False
    [row] = data["services"]
    assert row["name"] == "web"
    assert row["fields"]["desired"] == V1
    assert row["fields"]["age"] == "just now"
    assert row["frozen"] is False


def test_service_page_shows_the_history_newest_first(page: Any, secret: str) -> None:
    for tag in (V1, V2):
        assert post_hook(page, secret, tag).status_code == 200
    html = page.get("/ui/services/web").get_data(as_text=True)
    timeline = html[html.index('<ol class="timeline">') :]
    assert timeline.index(V2) < timeline.index(V1)
    assert f"from <code>{V1}</code>" in timeline
    assert 'id="rollback"' in html and 'id="freeze"' in html


def test_the_confirmation_step_changes_nothing(page: Any, secret: str) -> None:
    for tag in (V1, V2):
        post_hook(page, secret, tag)
    before = status(page, secret)
    for action in ("rollback", "freeze"):
        answer = page.get(f"/ui/services/web/confirm?action={action}")
        assert answer.status_code == 200
        assert 'name="csrf_token"' in answer.get_data(as_text=True)
    assert status(page, secret) == before


def test_rollback_goes_through_the_deployer_as_the_api_does(page: Any, secret: str) -> None:
    for tag in (V1, V2):
        post_hook(page, secret, tag)
    csrf = form_token(page, "/ui/services/web/confirm?action=rollback")
    answer = page.post("/ui/services/web/rollback", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/services/web"
    after = status(page, secret)
    assert after["tag"] == V1
    assert after["history"][0]["kind"] == "rollback"
    assert after["history"][0]["sender"] == "ui"
    assert f"Rolling back web to {V1}" in page.get("/ui/services/web").get_data(as_text=True)


def test_rollback_to_a_tag_picked_from_the_history(page: Any, secret: str) -> None:
    for tag in (V1, V2, V3):
        post_hook(page, secret, tag)
    html = page.get("/ui/services/web").get_data(as_text=True)
    assert f"action=rollback&amp;tag={V1}" in html
    confirm = page.get(f"/ui/services/web/confirm?action=rollback&tag={V1}")
    text = confirm.get_data(as_text=True)
    assert f'name="tag" value="{V1}"' in text
    answer = page.post("/ui/services/web/rollback", data={"csrf_token": csrf_of(text), "tag": V1})
    assert answer.status_code == 303
    assert status(page, secret)["tag"] == V1


def test_a_tag_not_in_the_history_cannot_be_confirmed(page: Any, secret: str) -> None:
    post_hook(page, secret, V1)
    answer = page.get("/ui/services/web/confirm?action=rollback&tag=release-20990101000000")
    assert answer.status_code == 404
    assert answer.json["error"] == "not_found"


def test_nothing_to_roll_back_is_shown_with_its_status(page: Any, secret: str) -> None:
    post_hook(page, secret, V1)
    before = status(page, secret)
    csrf = form_token(page, "/ui/services/web")
    answer = page.post("/ui/services/web/rollback", data={"csrf_token": csrf})
    assert answer.status_code == 409
    assert "nothing_to_roll_back" in answer.get_data(as_text=True)
    assert status(page, secret) == before


def test_freeze_refuses_webhooks_with_423_until_unfrozen(page: Any, secret: str) -> None:
    post_hook(page, secret, V1)
    csrf = form_token(page, "/ui/services/web")
    assert page.post("/ui/services/web/freeze", data={"csrf_token": csrf}).status_code == 303
    assert status(page, secret)["frozen"] is True
    refused = post_hook(page, secret, V2)
    assert refused.status_code == 423
    assert refused.json["error"] == "frozen"
    assert page.get("/ui/api/overview").json["services"][0]["fields"]["frozen"] == "frozen"
    html = page.get("/ui/services/web").get_data(as_text=True)
    assert 'id="unfreeze"' in html
    assert page.post("/ui/services/web/unfreeze", data={"csrf_token": csrf}).status_code == 303
    assert post_hook(page, secret, V2).status_code == 200


def test_an_action_without_csrf_writes_nothing(page: Any, secret: str) -> None:
    for tag in (V1, V2):
        post_hook(page, secret, tag)
    before = status(page, secret)
    for action in ("rollback", "freeze"):
        assert page.post(f"/ui/services/web/{action}").status_code == 403
    assert status(page, secret) == before


@pytest.mark.parametrize(
    "path",
    ["/ui/services/nope", "/ui/services/web/confirm?action=delete", "/ui/services/web/confirm"],
)
def test_unknown_services_and_actions_are_json_404s(page: Any, path: str) -> None:
    answer = page.get(path)
    assert answer.status_code == 404
    assert answer.json["error"] == "not_found"


def test_an_unreachable_store_does_not_hide_the_page(
    settings: Settings, token: str, consul: ConsulHandle
) -> None:
    fake = consul.require_fake()
    client = create_app(ui_settings(settings, token)).test_client()
    log_in(client, token)
    fake.fail_always()
    answer = client.get("/ui")
    assert answer.status_code == 200
    assert re.search(r"unavailable \(consul_\w+\)", answer.get_data(as_text=True))
