"""The four DORA keys from hand-built histories with known answers; the API, CLI and metrics."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from noman import create_app, dora
from noman.cli import main
from noman.config import parse_settings
from noman.model import DEFAULT_TAG_PATTERN, Service
from noman.state import HistoryEntry, Keys, encode
from noman.wiring import components
from tests.conftest import ConsulHandle, make_settings, post_hook

ALICE = "alice-" + "a" * 40
DIGEST = hashlib.sha256(ALICE.encode()).hexdigest()
OPERATOR = f'[[operators]]\nname = "alice"\ntoken_sha256 = "{DIGEST}"\n'
NOW = datetime(2024, 1, 31, tzinfo=UTC).timestamp()
HOUR = 3600.0


def service(name: str, pattern: str = DEFAULT_TAG_PATTERN) -> Service:
    return Service(
        name=name,
        repository=f"stut/{name}",
        key=f"configs/{name}/IMAGE_TAG",
        secret_hashes=(hashlib.sha256(name.encode()).digest(),),
        tag_pattern=re.compile(pattern, re.ASCII),
    )


def entry(
    seq: int,
    tag: str,
    outcome: str,
    time: str,
    ended: str = "",
    kind: str = "deploy",
    previous: str | None = None,
) -> HistoryEntry:
    return HistoryEntry(
        seq=seq,
        tag=tag,
        time=time,
        sender="test",
        kind=kind,  # type: ignore[arg-type]
        outcome=outcome,
        previous=previous,
        ended=ended,
    )


WEB = service("web")
API = service("api", r"^([0-9a-f]{7})$")  # commit SHAs: no order, lead time from the push
WEB_HISTORY = [
    entry(
        1, "release-20231220000000", "successful", "2023-12-20T01:00:00Z", "2023-12-20T01:10:00Z"
    ),
    # lead 2 h (from the tag's 00:00)
    entry(
        2, "release-20240102000000", "successful", "2024-01-02T01:00:00Z", "2024-01-02T02:00:00Z"
    ),
    entry(3, "release-20240105000000", "failed", "2024-01-05T00:30:00Z", "2024-01-05T01:00:00Z"),
    # lead 6 h; restores the failure above after 29 h
    entry(
        4, "release-20240106000000", "successful", "2024-01-06T00:00:00Z", "2024-01-06T06:00:00Z"
    ),
    # lead 1 h; rolled back by 6, 2.5 h after it went live
    entry(
        5, "release-20240110000000", "successful", "2024-01-10T00:00:00Z", "2024-01-10T01:00:00Z"
    ),
    entry(
        6,
        "release-20240106000000",
        "successful",
        "2024-01-10T03:00:00Z",
        "2024-01-10T03:30:00Z",
        kind="rollback",
        previous="release-20240110000000",
    ),
    entry(7, "release-20240120000000", "cancelled", "2024-01-20T00:00:00Z", "2024-01-20T00:01:00Z"),
    entry(8, "release-20240121000000", "rejected", "2024-01-21T00:00:00Z", "2024-01-21T05:00:00Z"),
    # lead 30 min
    entry(
        9, "release-20240125000000", "successful", "2024-01-25T00:00:00Z", "2024-01-25T00:30:00Z"
    ),
    # a failure nobody restored yet
    entry(
        10, "release-20240128000000", "timed_out", "2024-01-28T00:00:00Z", "2024-01-28T00:15:00Z"
    ),
    entry(11, "release-20240130000000", "awaiting_approval", "2024-01-30T00:00:00Z"),
]
API_HISTORY = [
    # a restart deploy: ended when it was written (no "ended" in entries of older versions)
    entry(1, "abc1234", "successful", "2024-01-15T10:00:00Z"),
    entry(2, "def5678", "successful", "2024-01-16T10:00:00Z", "2024-01-16T10:05:00Z"),
]


def test_each_key_of_a_hand_built_history() -> None:
    measured = dora.measure({WEB: WEB_HISTORY, API: API_HISTORY}, now=NOW, days=30)
    web = measured.as_dict()["services"]["web"]
    assert (web["deployments"], web["successful"], web["failed"], web["rolled_back"]) == (
        6,
        4,
        2,
        1,
    )
    assert web["deployment_frequency_per_day"] == round(4 / 30, 4)
    # lead times 2 h, 6 h, 1 h, 30 min: median of 1 h and 2 h, p90 the largest (nearest rank)
    assert web["lead_time_seconds"] == {"median": 1.5 * HOUR, "p90": 6 * HOUR}
    assert web["change_failure_rate"] == 0.5  # (failed 1 + timed out 1 + rolled back 1) / 6
    # restores of 29 h and 2.5 h; the timed-out deploy is not restored yet
    assert web["time_to_restore_seconds"] == {"median": (29 * HOUR + 2.5 * HOUR) / 2}
    assert web["unrestored_failures"] == 1
    assert web["bands"] == {
        "deployment_frequency": "medium",
        "lead_time": "elite",
        "change_failure_rate": "low",
        "time_to_restore": "high",
    }
    assert web["band"] == "low"
    api = measured.as_dict()["services"]["api"]
    assert api["lead_time_seconds"] == {"median": 150.0, "p90": 300.0}
    assert (api["change_failure_rate"], api["time_to_restore_seconds"]["median"]) == (0.0, None)
    assert api["bands"]["time_to_restore"] is None
    assert api["band"] == "medium"  # frequency 2/30 a day; no failure to restore from
    everything = measured.as_dict()["all"]
    assert (everything["deployments"], everything["successful"]) == (8, 6)
    assert everything["deployment_frequency_per_day"] == 0.2
    assert everything["lead_time_seconds"] == {"median": 2700.0, "p90": 6 * HOUR}
    assert everything["change_failure_rate"] == 0.375
    assert everything["band"] == "low"


def test_the_period_counts_what_ended_in_it() -> None:
    week = dora.measure({WEB: WEB_HISTORY}, now=NOW, days=7).as_dict()["services"]["web"]
    # From 2024-01-24: deploys 9 (successful) and 10 (timed out).
    assert (week["deployments"], week["successful"], week["failed"]) == (2, 1, 1)
    assert week["lead_time_seconds"]["median"] == 1800.0
    assert week["time_to_restore_seconds"]["median"] is None
    assert week["unrestored_failures"] == 1
    nothing = dora.measure({WEB: []}, now=NOW).as_dict()["services"]["web"]
    assert nothing["deployments"] == 0 and nothing["change_failure_rate"] is None
    assert nothing["bands"]["deployment_frequency"] == "low"


def test_failures_in_a_row_are_one_outage_and_a_nomad_revert_restores() -> None:
    history = [
        entry(1, "release-20240101000000", "successful", "2024-01-01T00:00:00Z"),
        entry(
            2, "release-20240102000000", "failed", "2024-01-02T00:00:00Z", "2024-01-02T00:10:00Z"
        ),
        entry(
            3, "release-20240103000000", "failed", "2024-01-03T00:00:00Z", "2024-01-03T00:10:00Z"
        ),
        entry(
            4,
            "release-20240104000000",
            "successful",
            "2024-01-04T00:00:00Z",
            "2024-01-04T00:10:00Z",
        ),
        entry(
            5, "release-20240105000000", "failed", "2024-01-05T00:00:00Z", "2024-01-05T00:10:00Z"
        ),
        # Nomad auto-reverted: recorded as a rollback by "nomad", successful
        entry(
            6,
            "release-20240104000000",
            "successful",
            "2024-01-05T00:10:00Z",
            kind="rollback",
            previous="release-20240105000000",
        ),
    ]
    keys = dora.measure({WEB: history}, now=NOW, days=30).as_dict()["services"]["web"]
    assert keys["time_to_restore_seconds"]["median"] == (2 * 86400 + 0.0) / 2  # 2 d and 0 s
    assert keys["rolled_back"] == 0  # a failed deploy reverted counts as failed, once
    assert keys["change_failure_rate"] == 0.6


@pytest.mark.parametrize(
    ("pattern", "tag", "expected"),
    [
        (DEFAULT_TAG_PATTERN, "release-20230103082900", "2023-01-03T08:29:00+00:00"),
        (r"^build-(\d+)$", "build-20230103082900", "2023-01-03T08:29:00+00:00"),
        (r"^build-(\d+)$", "build-123", None),  # numeric, not 14 digits: the push's time
        (DEFAULT_TAG_PATTERN, "release-20231399000000", None),  # not a date
        (r"^v?(\d+(?:\.\d+)*)$", "20230103082900", None),  # a version order, not a number
        (r"^([0-9a-f]{14})$", "20230103082900", None),  # no order at all
    ],
)
def test_the_time_a_tag_encodes(pattern: str, tag: str, expected: str | None) -> None:
    found = dora.tag_time(service("x", pattern), tag)
    assert (datetime.fromtimestamp(found, UTC).isoformat() if found else None) == expected


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0.0, "elite"),
        (0.05, "elite"),
        (0.06, "high"),
        (0.1, "high"),
        (0.15, "medium"),
        (0.2, "low"),
    ],
)
def test_change_failure_rate_bands(value: float, band: str) -> None:
    assert dora.bounded_band(value, dora.FAILURE_RATE_BOUNDS, inclusive=True) == band


@pytest.mark.parametrize(
    ("per_day", "band"),
    [(3.0, "elite"), (1.0, "elite"), (0.5, "high"), (0.1, "medium"), (0.01, "low")],
)
def test_deployment_frequency_bands(per_day: float, band: str) -> None:
    assert dora.frequency_band(per_day) == band


def test_a_history_that_does_not_reach_back_is_named() -> None:
    short = WEB_HISTORY[-3:]
    measured = dora.measure({WEB: short, API: API_HISTORY}, now=NOW, days=30, history_size=3)
    assert measured.partial == ("web",)
    assert "The history of web starts after the period" in dora.table(measured.as_dict())


def seed(consul: ConsulHandle, name: str, history: list[HistoryEntry]) -> None:
    keys = Keys(consul.state_prefix)
    for item in history:
        consul.put(keys.history(name, item.seq), encode(item))


def test_the_api_and_the_cli_agree_with_the_known_answers(
    consul: ConsulHandle, secret: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    settings = make_settings(consul, secret, extra=OPERATOR)
    seed(consul, "web", WEB_HISTORY)
    app = create_app(settings)
    components(app).deployer.clock = lambda: NOW
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ALICE}"}
    answer = client.get("/api/metrics/dora?service=web&days=30", headers=headers)
    assert answer.status_code == 200, answer.json
    web = answer.json["services"]["web"]
    assert web["lead_time_seconds"] == {"median": 1.5 * HOUR, "p90": 6 * HOUR}
    assert web["change_failure_rate"] == 0.5
    assert answer.json["all"]["deployments"] == 6
    assert (answer.json["since"], answer.json["until"]) == (
        "2024-01-01T00:00:00Z",
        "2024-01-31T00:00:00Z",
    )
    for bad in ("0", "x", "99999", "1.5"):
        refused = client.get(f"/api/metrics/dora?days={bad}", headers=headers)
        assert (refused.status_code, refused.json["error"]) == (400, "bad_request")
    assert client.get("/api/metrics/dora?service=nope", headers=headers).status_code == 404

    config = tmp_path / "noman.toml"
    config.write_text(settings_text(consul, secret), encoding="utf-8")
    assert main(["report", "--config", str(config), "--days", "3650", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["services"]["web"]["deployments"] == 7  # the December deploy counts too
    assert main(["report", "--config", str(config), "--days", "3650"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("DORA keys over 3650 days")
    assert re.search(r"^web\s+7\s+", text, re.MULTILINE)
    assert re.search(r"^all\s+7\s+", text, re.MULTILINE)


def settings_text(consul: ConsulHandle, secret: str) -> str:
    from tests.conftest import settings_toml

    text = settings_toml(consul, secret, OPERATOR)
    parse_settings(text, source="check", environ={})
    return text


def test_prometheus_counts_outcomes_and_observes_lead_times(
    consul: ConsulHandle, secret: str
) -> None:
    app = create_app(make_settings(consul, secret))
    parts = components(app)
    tag = "release-20230103082900"
    parts.deployer.clock = lambda: datetime(2023, 1, 3, 9, 29, tzinfo=UTC).timestamp()
    labels = {"service": "web"}
    count = REGISTRY.get_sample_value("noman_lead_time_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("noman_lead_time_seconds_sum", labels) or 0.0
    outcome = {"service": "web", "outcome": "successful"}
    successes = REGISTRY.get_sample_value("noman_deploy_outcomes_total", outcome) or 0.0
    assert post_hook(app, secret, tag).status_code == 200
    assert parts.courier.wait(5)
    assert REGISTRY.get_sample_value("noman_lead_time_seconds_count", labels) == count + 1
    # Pushed at 09:29, built at 08:29 (the tag says): one hour.
    assert REGISTRY.get_sample_value("noman_lead_time_seconds_sum", labels) == total + 3600
    assert REGISTRY.get_sample_value("noman_deploy_outcomes_total", outcome) == successes + 1
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'noman_lead_time_seconds_bucket{le="3600.0",service="web"}' in text


def test_the_daily_series_and_lead_points_feed_the_charts() -> None:
    measured = dora.measure({WEB: WEB_HISTORY}, now=NOW, days=30)
    days = measured.daily()
    assert len(days) == 31 and days[0][0] == "2024-01-01" and days[-1][0] == "2024-01-31"
    by_day = {day: counts for day, *counts in days}
    assert by_day["2024-01-05"] == [0, 1, 0]  # failed
    assert by_day["2024-01-10"] == [0, 0, 1]  # rolled back
    assert by_day["2024-01-25"] == [1, 0, 0]
    assert [round(lead) for _, lead in measured.lead_points("web")] == [7200, 21600, 3600, 1800]
