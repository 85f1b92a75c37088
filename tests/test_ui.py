"""The status page's gate: off by default, the login, the session cookie, CSRF, the limiter."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.cli import main
from noman.config import Settings, UISettings, parse_settings
from noman.errors import ConfigError
from noman.ratelimit import FailureLimiter
from noman.ui import START_KEY_ENV, session_key
from noman.wiring import EXTENSION, components
from tests.conftest import SAMPLE_TAG, ConsulHandle, post_hook, settings_toml

UI_PATHS = [
    ("GET", "/ui"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("GET", "/ui/api/overview"),
    ("GET", "/ui/services/web"),
    ("POST", "/ui/services/web/freeze"),
    ("GET", "/ui/static/ui.css"),
    ("GET", "/ui/static/ui.js"),
]


@pytest.fixture
def token() -> str:
    """A fresh admin token."""
    return secrets.token_urlsafe(32)


def ui_settings(settings: Settings, token: str, **ui: Any) -> Settings:
    """``settings`` with the page enabled for ``token``."""
    enabled = UISettings(token_hashes=(hashlib.sha256(token.encode()).digest(),), **ui)
    return dataclasses.replace(settings, ui=enabled)


@pytest.fixture
def ui_app(settings: Settings, token: str, tmp_path: Path) -> Any:
    """An app with the page on, its limiter (2 failures a minute) in a private file."""
    app = create_app(dataclasses.replace(ui_settings(settings, token), auth_failures_per_minute=2))
    limiter = FailureLimiter(2, tmp_path / "limits.sqlite")
    app.extensions[EXTENSION] = dataclasses.replace(components(app), limiter=limiter)
    return app


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every line the noman loggers write during the test, message and fields."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.getMessage()} {getattr(record, 'fields', {})}")

    handler = Collect()
    logger = logging.getLogger("noman")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def csrf_of(page: str) -> str:
    """The CSRF token a page's form carries."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def log_in(client: Any, token: str) -> Any:
    """Open the login form and send ``token`` with the form's CSRF token."""
    form = client.get("/ui")
    return client.post(
        "/ui/login", data={"token": token, "csrf_token": csrf_of(form.get_data(as_text=True))}
    )


def set_cookie_header(answer: Any) -> str:
    headers = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("noman_ui=")]
    assert len(headers) == 1, answer.headers
    header: str = headers[0]
    return header


# -- off by default -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), UI_PATHS)
def test_disabled_page_is_the_usual_json_404(client: Any, method: str, path: str) -> None:
    unknown = client.open("/no-such-route", method=method)
    answer = client.open(path, method=method)
    assert answer.status_code == 404
    assert answer.json == {"error": "not_found", "message": "Not found."}
    assert answer.get_data() == unknown.get_data()
    assert "Set-Cookie" not in answer.headers


# -- the gate when enabled ------------------------------------------------------------------


def test_login_form_sets_a_strict_http_only_cookie_without_secure_over_http(ui_app: Any) -> None:
    answer = ui_app.test_client().get("/ui")
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert 'type="password"' in page and 'action="/ui/login"' in page
    cookie = set_cookie_header(answer)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie


def test_cookie_is_secure_over_tls(ui_app: Any) -> None:
    answer = ui_app.test_client().get("/ui", base_url="https://noman.example")
    assert "Secure" in set_cookie_header(answer)


@pytest.mark.parametrize(("hops", "secure"), [(1, True), (0, False)])
def test_cookie_is_secure_when_a_trusted_proxy_says_https(
    settings: Settings, token: str, hops: int, secure: bool
) -> None:
    app = create_app(dataclasses.replace(ui_settings(settings, token), proxy_hops=hops))
    answer = app.test_client().get("/ui", headers={"X-Forwarded-Proto": "https"})
    assert ("Secure" in set_cookie_header(answer)) is secure


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ui/services/web", 303),
        ("GET", "/ui/services/web/confirm?action=freeze", 303),
        ("POST", "/ui/services/web/freeze", 303),
        ("GET", "/ui/services/no-such-service", 303),
    ],
)
def test_pages_redirect_to_the_login_before_anything_else(
    ui_app: Any, method: str, path: str, status: int
) -> None:
    answer = ui_app.test_client().open(path, method=method)
    assert answer.status_code == status
    assert answer.headers["Location"] == "/ui"


def test_the_polled_json_answers_401_without_a_session(ui_app: Any) -> None:
    answer = ui_app.test_client().get("/ui/api/overview")
    assert answer.status_code == 401
    assert answer.json["error"] == "unauthorized"


def test_the_right_token_logs_in_and_the_cookie_holds_no_secret(
    ui_app: Any, token: str, logs: list[str]
) -> None:
    client = ui_app.test_client()
    answer = log_in(client, token)
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui"
    cookie = set_cookie_header(answer)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Expires=" in cookie  # ends with ui.session_hours, not with the browser
    for secret in (token, hashlib.sha256(token.encode()).hexdigest()):
        assert secret not in cookie
        assert secret not in " ".join(logs)
    assert any(line.startswith("ui login ") for line in logs)
    assert client.get("/ui/api/overview").status_code == 200


def test_a_tampered_cookie_is_no_session(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    log_in(client, token)
    cookie = client.get_cookie("noman_ui", path="/ui")
    assert cookie is not None
    payload, _, signature = cookie.value.rpartition(".")
    client.set_cookie("noman_ui", payload + "." + signature[::-1], path="/ui")
    assert client.get("/ui/api/overview").status_code == 401


def test_a_session_signed_with_another_key_is_no_session(
    settings: Settings, token: str, ui_app: Any
) -> None:
    client = ui_app.test_client()
    log_in(client, token)
    cookie = client.get_cookie("noman_ui", path="/ui")
    assert cookie is not None
    restarted = create_app(ui_settings(settings, token)).test_client()
    restarted.set_cookie("noman_ui", cookie.value, path="/ui")
    assert restarted.get("/ui/api/overview").status_code == 401


def test_a_session_ends_when_its_token_leaves_the_config(settings: Settings, token: str) -> None:
    key = secrets.token_bytes(32)
    before = create_app(ui_settings(settings, token, session_key=key)).test_client()
    log_in(before, token)
    cookie = before.get_cookie("noman_ui", path="/ui")
    assert cookie is not None
    rotated = create_app(ui_settings(settings, "another-" + token, session_key=key))
    after = rotated.test_client()
    after.set_cookie("noman_ui", cookie.value, path="/ui")
    assert after.get("/ui/api/overview").status_code == 401
    same = create_app(ui_settings(settings, token, session_key=key)).test_client()
    same.set_cookie("noman_ui", cookie.value, path="/ui")
    assert same.get("/ui/api/overview").status_code == 200


def test_a_session_ends_after_session_hours(
    ui_app: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from itsdangerous.timed import TimestampSigner

    client = ui_app.test_client()
    # Logged in 13 hours ago: the cookie's signed timestamp says so.
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 13 * 3600)
    log_in(client, token)
    monkeypatch.undo()
    assert client.get("/ui/api/overview").status_code == 401


def test_a_login_ends_on_time_even_when_the_cookie_was_re_signed(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    log_in(client, token)
    with client.session_transaction(path="/ui") as session:
        session["since"] -= 12 * 3600 + 1  # ui.session_hours is 12
    assert client.get("/ui/api/overview").status_code == 401


def test_login_without_the_forms_csrf_token_is_refused(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    client.get("/ui")
    for form in ({"token": token}, {"token": token, "csrf_token": "forged"}):
        answer = client.post("/ui/login", data=form)
        assert answer.status_code == 403
        assert answer.json["error"] == "csrf_failed"
    assert client.get("/ui/api/overview").status_code == 401


def test_wrong_tokens_count_toward_the_hook_failure_limit(
    ui_app: Any, token: str, secret: str, consul: ConsulHandle, logs: list[str]
) -> None:
    client = ui_app.test_client()
    for _ in range(2):
        answer = log_in(client, "wrong-" + token)
        assert answer.status_code == 401
        assert "Wrong token." in answer.get_data(as_text=True)
    # The limit now holds for this address: the right token and the hooks too.
    answer = log_in(client, token)
    assert answer.status_code == 429
    assert int(answer.headers["Retry-After"]) > 0
    hook = post_hook(client, secret, SAMPLE_TAG)
    assert hook.status_code == 429
    assert consul.get(consul.key("IMAGE_TAG"))[0] is None
    assert sum(line.startswith("ui login failed") for line in logs) == 2
    assert token not in " ".join(logs)


def test_wrong_hook_secrets_count_toward_the_login_limit(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    for _ in range(2):
        assert client.post("/hooks/wrong", json={"tag": SAMPLE_TAG}).status_code == 404
    assert log_in(client, token).status_code == 429


def test_logged_in_forms_still_need_their_csrf_token(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    log_in(client, token)
    for path in ("/ui/services/web/freeze", "/ui/services/web/rollback", "/ui/logout"):
        answer = client.post(path, data={"csrf_token": "forged"})
        assert answer.status_code == 403, path
        assert answer.json["error"] == "csrf_failed"
    assert client.get("/ui/api/overview").status_code == 200  # still logged in


def test_logout_ends_the_session(ui_app: Any, token: str) -> None:
    client = ui_app.test_client()
    page = log_in(client, token)
    assert page.status_code == 303
    # The login changed the CSRF token; the logout form carries the new one.
    cookie = client.get_cookie("noman_ui", path="/ui")
    assert cookie is not None
    session = ui_app.session_interface.get_signing_serializer(ui_app).loads(cookie.value)
    answer = client.post("/ui/logout", data={"csrf_token": session["csrf_token"]})
    assert answer.status_code == 303
    assert "noman_ui=;" in set_cookie_header(answer)
    assert client.get("/ui/api/overview").status_code == 401


def test_pages_are_never_cached_framed_or_fed_from_elsewhere(ui_app: Any) -> None:
    answer = ui_app.test_client().get("/ui")
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    page = answer.get_data(as_text=True)
    assert "http://" not in page and "https://" not in page


def test_static_assets_are_served_by_noman(ui_app: Any) -> None:
    client = ui_app.test_client()
    with client.get("/ui/static/ui.css") as css:
        assert css.status_code == 200
        assert b"prefers-color-scheme: dark" in css.get_data()
    with client.get("/ui/static/ui.js") as js:
        assert js.status_code == 200
        assert b"document.hidden" in js.get_data()  # no polling from a hidden tab


# -- the session key -------------------------------------------------------------------------


def test_session_key_configured_wins() -> None:
    key = b"k" * 32
    assert session_key(UISettings(token_hashes=(b"x",), session_key=key)) == key


def test_session_key_is_shared_by_workers_of_one_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_KEY_ENV, "s" * 43)
    assert session_key(UISettings(token_hashes=(b"x",))) == b"s" * 43


def test_session_key_is_random_per_start_otherwise() -> None:
    ui = UISettings(token_hashes=(b"x",))
    assert session_key(ui) != session_key(ui)


# -- configuration ---------------------------------------------------------------------------


def parse(consul: ConsulHandle, secret: str, ui: str, environ: dict[str, str] | None = None) -> Any:
    text = settings_toml(consul, secret) + "\n[ui]\n" + ui
    return parse_settings(text, source="test.toml", environ=environ or {})


def test_ui_is_off_without_a_table(settings: Settings) -> None:
    assert not settings.ui.enabled


def test_ui_token_sha256_and_token_env(consul: ConsulHandle, secret: str, token: str) -> None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    by_hash = parse(consul, secret, f'token_sha256 = "{digest}"\nsession_hours = 2')
    assert by_hash.ui.enabled and by_hash.ui.session_hours == 2
    assert by_hash.ui.token_hashes == (bytes.fromhex(digest),)
    by_env = parse(consul, secret, 'token_env = "ADMIN"', {"ADMIN": token})
    assert by_env.ui.token_hashes == by_hash.ui.token_hashes
    assert "token" not in repr(by_env.ui).replace("token_", "")


@pytest.mark.parametrize(
    ("ui", "environ", "problem"),
    [
        ("session_hours = 2", {}, "set token_sha256 or token_env to enable the page"),
        ('token_sha256 = "abc"', {}, "must be 64 hex characters"),
        ('token_env = "ADMIN"', {}, "environment ADMIN is not set"),
        ('token_env = "ADMIN"', {"ADMIN": "short"}, "too short"),
        (f'token_sha256 = "{"a" * 64}"\ntoken_env = "ADMIN"', {"ADMIN": "x" * 40}, "exactly one"),
        ('token_env = "HOOK"', {}, "hook secret"),
        (f'token_sha256 = "{"a" * 64}"\nsession_key_env = "KEY"', {"KEY": "x" * 8}, "32"),
        (f'token_sha256 = "{"a" * 64}"\nsession_hours = 0', {}, "greater than 0"),
    ],
)
def test_ui_config_mistakes_stop_start_up(
    consul: ConsulHandle, secret: str, ui: str, environ: dict[str, str], problem: str
) -> None:
    env = {"HOOK": secret, **environ}
    with pytest.raises(ConfigError, match=r"\[ui\]") as caught:
        parse(consul, secret, ui, env)
    assert problem in str(caught.value)


def test_secret_new_ui_prints_a_token_and_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secret", "new", "--ui"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"token: (\S+)", out).group(1)  # type: ignore[union-attr]
    digest = re.search(r'\[ui\]\ntoken_sha256 = "([0-9a-f]{64})"', out).group(1)  # type: ignore[union-attr]
    assert hashlib.sha256(token.encode()).hexdigest() == digest
    assert len(token) >= 22


def test_secret_new_wants_a_service_or_ui(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secret", "new"]) == 2
    assert main(["secret", "new", "web", "--ui"]) == 2


# -- the browser test's own gate ---------------------------------------------------------------


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("", "skip")])
def test_without_a_browser_the_browser_test_skips_except_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: str
) -> None:
    from tests import test_ui_browser

    monkeypatch.setattr(test_ui_browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="no-chromium"):
        test_ui_browser.require_browser()
