"""The status page in a real browser: Debian's Chromium driven by Selenium, against gunicorn.

Noman runs under its shipped gunicorn configuration (two workers, so the
session key shared by the workers of one start is exercised) against the fake
Consul and Nomad. An operator logs in, sees both services, watches a rolling
deploy go from running to successful without reloading, rolls back from the
service page, freezes and sees a webhook refused with 423, and logs out.
Screenshots go to ``test-artifacts/`` (or ``$TEST_ARTIFACTS_DIR``).

Only Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` are used
(``CHROMIUM_BIN``/``CHROMEDRIVER_BIN`` name another installed pair): Selenium
is given the driver's path and runs offline, so nothing is ever downloaded.
Without them the test is skipped, except with ``CI=true``, where a missing
browser is a failure.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad, sample_service_job
from tests.test_gunicorn_logs import Gunicorn

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
# Debian's packages; a CI runner with its own matched pair may point elsewhere.
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN") or "/usr/bin/chromium")
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BIN") or "/usr/bin/chromedriver")
V0 = "release-20230101000000"
V1 = "release-20240101000000"
V2 = "release-20250101000000"
V3 = "release-20260101000000"
# The flags the machine notes prescribe: no network beyond 127.0.0.1, no sandbox (root).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,860",
)


def artifacts_dir() -> Path:
    """Where screenshots go (git-ignored)."""
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_browser() -> None:
    """Skip without Chromium, its driver or Selenium; under CI=true, fail instead."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    message = f"browser test needs {', '.join(missing)} (scripts/test installs them as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Debian Chromium through /usr/bin/chromedriver, with a fresh profile."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager would look for (and download) drivers; it must never run.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


class Stack:
    """Fake Consul and Nomad, and Noman under gunicorn with two services and the page on."""

    def __init__(self, tmp: Path, consul: FakeConsul, nomad: FakeNomad) -> None:
        self.consul, self.nomad = consul, nomad
        self.token = secrets.token_urlsafe(32)
        self.secrets = {"web": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}
        job = sample_service_job("web", image=f"stut/web:{V0}")
        job["Meta"]["NOMAN_IMAGE_TAG"] = V0
        nomad.add_job(job)
        config = tmp / "noman.toml"
        config.write_text(
            f'[consul]\naddress = "{consul.url}"\ntimeout = 2\n\n'
            f'[nomad]\naddress = "{nomad.url}"\ntimeout = 2\n\n'
            f'[ui]\ntoken_sha256 = "{sha256(self.token)}"\n\n'
            "[services.web]\n"
            'repository = "stut/web"\n'
            'key = "configs/web/IMAGE_TAG"\n'
            f'secret_sha256 = "{sha256(self.secrets["web"])}"\n'
            'strategy = "rolling"\n\n'
            '[services.web.nomad]\njob = "web"\n\n'
            "[services.api]\n"
            'repository = "stut/api"\n'
            'key = "configs/api/IMAGE_TAG"\n'
            f'secret_sha256 = "{sha256(self.secrets["api"])}"\n'
        )
        self.server = Gunicorn(tmp, config, workers=2)
        self.url = self.server.url

    def hook(self, service: str, tag: str) -> requests.Response:
        """A deploy webhook, as CI would send it."""
        return requests.post(
            f"{self.url}/hooks",
            json={"tag": tag},
            timeout=10,
            headers={"Authorization": f"Bearer {self.secrets[service]}"},
        )

    def status(self, service: str) -> dict[str, Any]:
        """The HTTP API's status of ``service``."""
        answer = requests.get(
            f"{self.url}/hooks/status",
            timeout=10,
            headers={"Authorization": f"Bearer {self.secrets[service]}"},
        )
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def settled(self, service: str, tag: str) -> dict[str, Any] | None:
        """The status once ``tag``'s rollout ended successfully, else None."""
        status = self.status(service)
        rollout = status.get("rollout") or {}
        done = status["tag"] == tag and (
            status["strategy"] == "restart"
            or (rollout.get("tag") == tag and rollout.get("state") == "successful")
        )
        return status if done else None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with FakeConsul() as consul, FakeNomad() as nomad:
        built = Stack(tmp_path, consul, nomad)
        try:
            yield built
        finally:
            if built.server.process.poll() is None:
                built.server.stop()


def test_an_operator_watches_rolls_back_freezes_and_logs_out(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = artifacts_dir()

    def cell(service: str, field: str) -> str:
        selector = f'[data-service="{service}"] [data-field="{field}"]'
        text: str = browser.find_element(By.CSS_SELECTOR, selector).text
        return text

    # History first: both services deployed V1, then V2, through the hooks.
    for tag in (V1, V2):
        for service in ("web", "api"):
            assert stack.hook(service, tag).status_code in (200, 202)
            wait_for(lambda s=service, t=tag: stack.settled(s, t), what=f"{service} at {tag}")

    # Log in, by keyboard.
    browser.get(f"{stack.url}/ui")
    browser.save_screenshot(str(shots / "ui-login.png"))
    browser.find_element(By.ID, "token").send_keys(stack.token + Keys.ENTER)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "table.services"), what="overview")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr[data-service]")
    assert [row.get_attribute("data-service") for row in rows] == ["web", "api"]
    assert cell("web", "desired") == V2 and cell("api", "desired") == V2
    assert cell("web", "strategy") == "rolling" and cell("api", "strategy") == "restart"
    assert stack.token not in browser.page_source

    # A rolling deploy that takes a while: the page follows it without a reload.
    stack.nomad.script_deployments("successful", after=10)
    assert stack.hook("web", V3).status_code in (200, 202)
    browser.get(f"{stack.url}/ui")
    browser.execute_script("window.notReloaded = true;")
    wait_for(lambda: cell("web", "rollout").startswith("running"), what="running", timeout=15)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-active") == "true"
    assert "updates itself" in browser.find_element(By.ID, "live").text
    browser.save_screenshot(str(shots / "ui-overview.png"))
    wait_for(lambda: cell("web", "rollout") == "successful", what="successful", timeout=30)
    assert browser.execute_script("return window.notReloaded === true;")
    assert cell("web", "desired") == V3 and cell("web", "running") == V3
    assert "successful" in cell("web", "last")

    # Roll back from the service page, through the confirmation step.
    stack.nomad.script_deployments("successful", after=0)
    browser.find_element(By.LINK_TEXT, "web").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "ol.timeline li"), what="history")
    assert [
        li.find_element(By.TAG_NAME, "code").text
        for li in browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    ][:3] == [V3, V2, V1]
    browser.save_screenshot(str(shots / "ui-service.png"))
    browser.find_element(By.ID, "rollback").click()
    assert "Roll back web?" in browser.find_element(By.TAG_NAME, "h1").text
    assert V2 in browser.find_element(By.CSS_SELECTOR, ".confirm p").text
    browser.find_element(By.ID, "confirm").click()
    notice = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".notice"), what="notice")
    assert f"Rolling back web to {V2}" in notice[0].text
    status = wait_for(lambda: stack.settled("web", V2), what="rollback done")
    assert status["history"][0]["kind"] == "rollback"
    assert status["history"][0]["sender"] == "ui"
    assert stack.nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == V2  # type: ignore[index]

    # Freeze, confirmed; a webhook is then refused with 423 and writes nothing.
    browser.get(f"{stack.url}/ui/services/web")
    browser.find_element(By.ID, "freeze").click()
    browser.find_element(By.ID, "confirm").click()
    wait_for(lambda: browser.find_elements(By.ID, "unfreeze"), what="frozen page")
    assert "frozen" in browser.find_element(By.TAG_NAME, "h1").text
    refused = stack.hook("web", V3)
    assert refused.status_code == 423
    assert refused.json()["error"] == "frozen"
    assert stack.status("web")["tag"] == V2
    browser.get(f"{stack.url}/ui")
    assert cell("web", "frozen") == "frozen"
    browser.save_screenshot(str(shots / "ui-overview-frozen.png"))

    # On a phone, in the dark: no sideways scrolling, a dark background.
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    browser.get(f"{stack.url}/ui")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth;"
    )
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor;")
    assert background == "rgb(18, 19, 22)"
    browser.save_screenshot(str(shots / "ui-overview-phone-dark.png"))

    # Log out: back to the login form; the pages are closed again.
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: browser.find_elements(By.ID, "token"), what="login form")
    browser.get(f"{stack.url}/ui/services/web")
    assert browser.find_elements(By.ID, "token")
    assert not browser.get_cookies() or all(
        stack.token not in cookie["value"] for cookie in browser.get_cookies()
    )
    stack.server.stop()
    assert stack.token not in stack.server.logs()
