"""Operators on the status page in a real browser (Debian's Chromium, as test_ui_browser.py).

Noman under its shipped gunicorn configuration (two workers) against the fake Consul:
alice logs in by name, sees a deploy awaiting two approvals and the DORA panel's
charts, approves; bob approves and the tag lands; a deploy held by a deploy window is
sent on with Deploy now; the charts stay readable in dark mode. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from noman.state import HistoryEntry, Keys, encode
from tests.fakes.consul import FakeConsul
from tests.test_gunicorn_logs import Gunicorn
from tests.test_ui_browser import artifacts_dir, browser, wait_for  # noqa: F401

pytestmark = pytest.mark.browser

T1 = "release-20260101000000"
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
SECRETS = {"web": "w" * 43, "api": "p" * 43, "db": "d" * 43}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class OperatorStack:
    """The fake Consul, a history to measure, and Noman with two operators."""

    def __init__(self, tmp: Path, consul: FakeConsul) -> None:
        self.consul = consul
        self.seed_history()
        services = ""
        for name in ("web", "api", "db"):
            services += (
                f'[services.{name}]\nrepository = "stut/{name}"\n'
                f'key = "configs/{name}/IMAGE_TAG"\nsecret_sha256 = "{sha(SECRETS[name])}"\n'
            )
            if name == "web":
                services += "approvals = 2\n"
            if name == "api":  # a deny window that never closes: every deploy is held
                services += (
                    '[[services.api.windows]]\nkind = "deny"\nschedule = "* * * * *"\n'
                    'duration = "2m"\n'
                )
            services += "\n"
        config = tmp / "noman.toml"
        config.write_text(
            f'[consul]\naddress = "{consul.url}"\ntimeout = 2\n\n'
            f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n\n'
            f'[[operators]]\nname = "bob"\ntoken_sha256 = "{sha(BOB)}"\n\n{services}'
        )
        self.server = Gunicorn(tmp, config, workers=2)
        self.url = self.server.url

    def seed_history(self) -> None:
        """Six deploys of db over the last days: four good, one failed, one rolled back."""
        keys = Keys("noman/")
        now = time.time()
        outcomes = ["successful", "failed", "successful", "successful", "successful"]
        for seq, outcome in enumerate(outcomes, start=1):
            ended = now - (8 - seq) * 86400
            tag = "release-" + datetime.fromtimestamp(ended - 7200, UTC).strftime("%Y%m%d%H%M%S")
            entry = HistoryEntry(
                seq=seq,
                tag=tag,
                time=_iso(ended - 600),
                sender="test",
                kind="deploy",
                outcome=outcome,
                ended=_iso(ended),
            )
            self.put(keys.history("db", seq), encode(entry))

    def put(self, key: str, value: str) -> None:
        answer = requests.put(f"{self.consul.url}/v1/kv/{key}", data=value.encode(), timeout=5)
        assert answer.status_code == 200

    def hook(self, service: str, tag: str) -> requests.Response:
        return requests.post(
            f"{self.url}/hooks",
            json={"tag": tag},
            timeout=10,
            headers={"Authorization": f"Bearer {SECRETS[service]}"},
        )

    def tag(self, service: str) -> str | None:
        answer = requests.get(
            f"{self.url}/hooks/status",
            timeout=10,
            headers={"Authorization": f"Bearer {SECRETS[service]}"},
        )
        value: str | None = answer.json()["tag"]
        return value


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[OperatorStack]:
    with FakeConsul() as consul:
        built = OperatorStack(tmp_path, consul)
        try:
            yield built
        finally:
            if built.server.process.poll() is None:
                built.server.stop()


def test_operators_approve_override_and_read_their_delivery_numbers(
    stack: OperatorStack,
    browser: Any,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys as KeyPress

    shots = artifacts_dir()

    def log_in(token: str) -> None:
        browser.get(f"{stack.url}/ui")
        browser.find_element(By.ID, "token").send_keys(token + KeyPress.ENTER)
        wait_for(lambda: browser.find_elements(By.ID, "who"), what="logged in")

    def notice() -> str:
        found = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".notice"), what="notice")
        text: str = found[0].text
        return text

    assert stack.hook("web", T1).status_code == 202
    log_in(ALICE)
    assert browser.find_element(By.ID, "who").text == "alice"
    web_rollout = browser.find_element(
        By.CSS_SELECTOR, '[data-service="web"] [data-field="rollout"]'
    )
    assert web_rollout.text == f"awaiting approval (0/2): {T1}"
    assert web_rollout.get_attribute("data-state") == "awaiting_approval"
    # The DORA panel: four keys, a band, two charts drawn by the server.
    panel = browser.find_element(By.ID, "dora")
    assert "20 % of 5" in panel.find_element(By.CSS_SELECTOR, '[data-key="failure"]').text
    assert panel.find_element(By.ID, "band").text in ("elite", "high", "medium", "low")
    bars = panel.find_elements(By.CSS_SELECTOR, "svg[data-chart='dora-all-daily'] rect[data-day]")
    assert len(bars) == 5
    dots = panel.find_elements(By.CSS_SELECTOR, "svg[data-chart='dora-all-lead'] circle.dot")
    assert len(dots) == 4
    chart = panel.find_element(By.CSS_SELECTOR, "svg[data-chart='dora-all-daily']")
    assert chart.size["width"] > 200 and chart.size["height"] > 50  # laid out, not collapsed
    browser.execute_script("arguments[0].scrollIntoView();", panel)
    browser.save_screenshot(str(shots / "ui-dora.png"))

    # Alice approves from the service page: one of two.
    browser.find_element(By.LINK_TEXT, "web").click()
    wait_for(lambda: browser.find_elements(By.ID, "gate"), what="the waiting deploy")
    assert "0 of 2 approvals" in browser.find_element(By.ID, "approvals").text
    browser.save_screenshot(str(shots / "ui-approval.png"))
    browser.find_element(By.ID, "approve").click()
    assert "1 of 2 approvals" in notice()
    assert stack.tag("web") is None  # nothing lands on one approval

    # Bob logs in and gives the second: the tag is written.
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: browser.find_elements(By.ID, "token"), what="login form")
    log_in(BOB)
    browser.get(f"{stack.url}/ui/services/web")
    assert "(by alice)" in browser.find_element(By.ID, "approvals").text
    browser.find_element(By.ID, "approve").click()
    assert "is being deployed" in notice()
    assert stack.tag("web") == T1
    assert not browser.find_elements(By.ID, "gate")

    # A deploy held by a window that never opens: bob sends it on.
    held = stack.hook("api", T1)
    assert held.status_code == 202 and held.json()["rollout"]["state"] == "held"
    browser.get(f"{stack.url}/ui/services/api")
    assert "Deploys are held" in browser.find_element(By.ID, "window-now").text
    assert "held by its deploy windows" in browser.find_element(By.ID, "held").text
    browser.find_element(By.ID, "deploy-now").click()
    assert "is being deployed" in notice()
    assert stack.tag("api") == T1

    # Dark mode: the charts take the dark theme's colours (no hard-coded fills).
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    browser.get(f"{stack.url}/ui/services/db")
    bar = browser.find_element(By.CSS_SELECTOR, "svg.chart rect.bar-ok[data-day]")
    assert browser.execute_script("return getComputedStyle(arguments[0]).fill;", bar) == (
        "rgb(111, 208, 143)"  # --ok in the dark theme
    )
    label = browser.find_element(By.CSS_SELECTOR, "svg.chart text.label")
    assert browser.execute_script("return getComputedStyle(arguments[0]).fill;", label) == (
        "rgb(163, 167, 177)"  # --muted in the dark theme, readable on its background
    )
    browser.execute_script("arguments[0].scrollIntoView();", browser.find_element(By.ID, "dora"))
    browser.save_screenshot(str(shots / "ui-dora-dark.png"))
    stack.server.stop()
    logs = stack.server.logs()
    assert ALICE not in logs and BOB not in logs
