"""The status page for operators: who is logged in, approve / reject / deploy now, deploy
windows, and the DORA panel's server-rendered SVG."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from noman import create_app
from noman.state import HistoryEntry, Keys, encode
from noman.ui import charts
from noman.wiring import components
from tests.conftest import ConsulHandle, make_settings, post_hook
from tests.test_ui import csrf_of, log_in

T1 = "release-20240101000000"
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
ADMIN = "admin-" + "u" * 40
SVG = "{http://www.w3.org/2000/svg}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def app_with(consul: ConsulHandle, secret: str, admin: bool = True, **service: Any) -> Any:
    extra = (
        f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n'
        f'[[operators]]\nname = "bob"\ntoken_sha256 = "{sha(BOB)}"\n'
    )
    if admin:
        extra += f'[ui]\ntoken_sha256 = "{sha(ADMIN)}"\n'
    return create_app(make_settings(consul, secret, extra=extra, **service))


def logged_in(app: Any, token: str) -> Any:
    client = app.test_client()
    assert log_in(client, token).status_code == 303
    return client


def act(client: Any, action: str, **form: str) -> Any:
    page = client.get("/ui/services/web").get_data(as_text=True)
    return client.post(
        f"/ui/services/web/gate/{action}", data={"csrf_token": csrf_of(page), **form}
    )


def test_an_operator_logs_in_by_name_and_approves_from_the_page(
    consul: ConsulHandle, secret: str
) -> None:
    app = app_with(consul, secret, approvals=2)
    assert post_hook(app, secret, T1).status_code == 202
    alice = logged_in(app, ALICE)
    overview = alice.get("/ui").get_data(as_text=True)
    assert re.search(r'id="who"[^>]*>alice<', overview)
    assert "awaiting approval (0/2): " + T1 in overview
    page = alice.get("/ui/services/web").get_data(as_text=True)
    assert 'id="approve"' in page and 'id="reject"' in page
    assert 'id="deploy-now"' not in page  # no deploy windows: nothing to override
    assert "0 of 2 approvals" in page
    assert ALICE not in page
    answer = act(alice, "approve", tag=T1)
    assert answer.status_code == 303
    shown = alice.get("/ui/services/web").get_data(as_text=True)
    assert "Approved release-20240101000000: 1 of 2 approvals." in shown
    assert "1 of 2 approvals (by alice)" in shown
    bob = logged_in(app, BOB)
    assert act(bob, "approve", tag=T1).status_code == 303
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T1
    history = consul.record().history[0]
    assert (history.approvers, history.sender) == (("alice", "bob"), "plain")
    assert "is being deployed" in bob.get("/ui/services/web").get_data(as_text=True)


def test_the_admin_sees_what_waits_but_approves_nothing(consul: ConsulHandle, secret: str) -> None:
    app = app_with(consul, secret, approvals=1)
    assert post_hook(app, secret, T1).status_code == 202
    admin = logged_in(app, ADMIN)
    page = admin.get("/ui/services/web").get_data(as_text=True)
    assert re.search(r'id="who"[^>]*>admin<', page)
    assert 'id="approve"' not in page and "log in with your operator token" in page
    answer = act(admin, "approve", tag=T1)
    assert (answer.status_code, answer.json["error"]) == (403, "forbidden")
    assert consul.get(consul.key("IMAGE_TAG"))[0] is None


def test_a_stale_proposal_on_the_page_is_refused_not_approved(
    consul: ConsulHandle, secret: str
) -> None:
    app = app_with(consul, secret, approvals=1)
    hooks = app.test_client()
    assert post_hook(hooks, secret, T1).status_code == 202
    alice = logged_in(app, ALICE)
    page = alice.get("/ui/services/web").get_data(as_text=True)
    newer = "release-20240201000000"
    assert post_hook(hooks, secret, newer).status_code == 202
    answer = alice.post(
        "/ui/services/web/gate/approve", data={"csrf_token": csrf_of(page), "tag": T1}
    )
    assert answer.status_code == 409
    assert "not_current" in answer.get_data(as_text=True)
    assert consul.get(consul.key("IMAGE_TAG"))[0] is None
    assert act(alice, "reject", tag=newer, reason="later").status_code == 303
    assert consul.record().history[0].description == "rejected by alice: later"


def test_gate_forms_need_their_csrf_token_and_a_login(consul: ConsulHandle, secret: str) -> None:
    app = app_with(consul, secret, approvals=1)
    assert post_hook(app, secret, T1).status_code == 202
    stranger = app.test_client()
    assert stranger.post("/ui/services/web/gate/approve").status_code == 303
    alice = logged_in(app, ALICE)
    refused = alice.post("/ui/services/web/gate/approve", data={"tag": T1})
    assert (refused.status_code, refused.json["error"]) == (403, "csrf_failed")
    assert consul.record().history[0].outcome == "awaiting_approval"


def test_operators_alone_turn_the_page_on(consul: ConsulHandle, secret: str) -> None:
    app = app_with(consul, secret, admin=False)
    assert app.test_client().get("/ui").status_code == 200
    alice = logged_in(app, ALICE)
    assert "Services" in alice.get("/ui").get_data(as_text=True)


def test_the_page_shows_the_windows_now_and_next(consul: ConsulHandle, secret: str) -> None:
    windows = (
        '[[services.web.windows]]\nkind = "allow"\nschedule = "0 9 * * mon-fri"\nduration = "8h"\n'
    )
    app = create_app(
        make_settings(
            consul,
            secret,
            extra=windows + f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n',
        )
    )
    components(app).deployer.clock = lambda: datetime(2024, 1, 6, 10, tzinfo=UTC).timestamp()
    hold = post_hook(app, secret, T1)
    assert hold.json["rollout"]["state"] == "held"
    alice = logged_in(app, ALICE)
    page = alice.get("/ui/services/web").get_data(as_text=True)
    assert "Deploys are held until" in page and "2024-01-08T09:00:00Z" in page
    assert 'id="window-next"' in page and "0 9 * * mon-fri" in page
    assert "held by its deploy windows until" in page
    assert act(alice, "deploy-now", tag=T1).status_code == 303
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T1
    assert consul.record().history[0].override == "alice"


def seed_history(consul: ConsulHandle) -> None:
    keys = Keys(consul.state_prefix)
    outcomes = ["successful", "failed", "successful", "successful"]
    for seq, outcome in enumerate(outcomes, start=1):
        day = 10 + seq
        entry = HistoryEntry(
            seq=seq,
            tag=f"release-202401{day}000000",
            time=f"2024-01-{day}T01:00:00Z",
            sender="test",
            kind="deploy",
            outcome=outcome,
            ended=f"2024-01-{day}T02:00:00Z",
        )
        consul.put(keys.history("web", seq), encode(entry))


def svgs(html: str) -> list[ET.Element]:
    found = re.findall(r"<svg .*?</svg>", html, re.DOTALL)
    return [ET.fromstring(svg) for svg in found]


def test_the_dora_panel_draws_valid_svg_from_the_history(consul: ConsulHandle, secret: str) -> None:
    seed_history(consul)
    app = app_with(consul, secret)
    components(app).deployer.clock = lambda: datetime(2024, 1, 20, tzinfo=UTC).timestamp()
    alice = logged_in(app, ALICE)
    for path, scope in (("/ui", "all"), ("/ui/services/web", "web")):
        html = alice.get(path).get_data(as_text=True)
        assert 'id="dora"' in html
        assert re.search(r'data-key="failure">25 % of 4', html)
        assert 'id="band"' in html
        daily, lead = svgs(html)
        assert daily.get("data-chart") == f"dora-{scope}-daily"
        assert daily.find(f"{SVG}title") is not None and daily.get("role") == "img"
        bars = daily.findall(f"{SVG}rect[@data-day]")
        assert [(b.get("class"), b.get("data-day")) for b in bars] == [
            ("bar-ok", "2024-01-11"),
            ("bar-failed", "2024-01-12"),
            ("bar-ok", "2024-01-13"),
            ("bar-ok", "2024-01-14"),
        ]
        dots = lead.findall(f"{SVG}circle")
        assert len(dots) == 3 and all(d.get("class") == "dot" for d in dots)
        for svg in (daily, lead):  # no script, no style, no link to anywhere
            for element in svg.iter():
                assert element.tag.rpartition("}")[2] not in ("script", "style", "a", "image")
                assert "style" not in element.attrib and "href" not in element.attrib
    assert '<tr data-dora="web">' in alice.get("/ui").get_data(as_text=True)


def test_chart_text_is_escaped_and_empty_periods_say_so() -> None:
    odd = charts.deploys_per_day('x"><script>', [("2024-01-01", 1, 0, 0)])
    parsed = ET.fromstring(str(odd))
    assert "<script>" not in str(odd)
    assert parsed.get("data-chart") == 'x"><script>'
    empty = charts.lead_times("lead", [], 0.0, 86400.0)
    assert "No successful deploys in this period" in str(empty)
    ET.fromstring(str(empty))


def test_the_chart_colours_come_from_the_theme() -> None:
    """Shapes carry classes only; the stylesheet colours them from the light/dark variables."""
    css = (Path(__file__).resolve().parent.parent / "noman/ui/static/ui.css").read_text()
    for kind in ("bar-ok", "bar-failed", "bar-rolled", "dot"):
        assert re.search(rf"svg\.chart \.{kind} \{{ fill: var\(--\w+\); \}}", css), kind
    assert "prefers-color-scheme: dark" in css
