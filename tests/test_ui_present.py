"""What the status page shows for a status answer: ages, rollout texts, rows, candidates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from noman.model import Service
from noman.ui import present

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
ROLLING = Service("web", "stut/stut.dev", "configs/web/TAG", (b"x",), strategy="rolling")
RESTART = Service("api", "stut/api", "configs/api/TAG", (b"y",))


def iso(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3, "just now"),
        (42, "42 s ago"),
        (130, "2 min ago"),
        (3 * 3600 + 5, "3 h ago"),
        (86400 + 1, "1 day ago"),
        (5 * 86400, "5 days ago"),
    ],
)
def test_ages_read_like_a_person_says_them(seconds: float, text: str) -> None:
    assert present.ago(iso(seconds), NOW) == text


@pytest.mark.parametrize("value", [None, "", "yesterday", 12])
def test_unreadable_times_show_nothing(value: Any) -> None:
    assert present.ago(value, NOW) == ""


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "service": "web",
        "strategy": "rolling",
        "key": "configs/web/TAG",
        "tag": "release-2",
        "running": "release-1",
        "frozen": False,
        "rollout": {
            "state": "running",
            "tag": "release-2",
            "placed": 1,
            "healthy": 0,
            "desired": 2,
            "reason": None,
            "description": "Deployment is running",
        },
        "history": [
            {
                "tag": "release-2",
                "previous": "release-1",
                "time": iso(130),
                "sender": "dockerhub",
                "kind": "deploy",
                "outcome": "pending",
                "description": "",
            },
            {
                "tag": "release-1",
                "previous": "release-0",
                "time": iso(7200),
                "sender": "plain",
                "kind": "deploy",
                "outcome": "successful",
                "description": "done",
            },
            {
                "tag": "release-0",
                "previous": None,
                "time": iso(9000),
                "sender": "plain",
                "kind": "deploy",
                "outcome": "failed",
                "description": "unhealthy",
            },
        ],
    }
    base.update(changes)
    return base


def test_a_running_rollout_row_shows_counts_and_is_active() -> None:
    row = present.overview_row(ROLLING, status(), NOW)
    assert row["active"] is True
    assert row["fields"]["desired"] == "release-2"
    assert row["fields"]["running"] == "release-1"
    assert row["states"]["running"] == "lagging"
    assert row["fields"]["rollout"] == "running: 0/2 healthy, 1 placed"
    assert row["fields"]["last"] == "deploy release-2: pending"
    assert row["fields"]["age"] == "2 min ago"
    assert row["fields"]["frozen"] == ""


def test_a_finished_frozen_row() -> None:
    done = {"state": "successful", "tag": "release-2", "desired": 2, "healthy": 2, "placed": 2}
    row = present.overview_row(ROLLING, status(running="release-2", rollout=done, frozen=True), NOW)
    assert row["active"] is False
    assert row["fields"]["rollout"] == "successful"
    assert row["states"]["running"] == ""
    assert row["frozen"] is True and row["fields"]["frozen"] == "frozen"


def test_a_restart_service_has_no_running_tag_or_rollout() -> None:
    row = present.overview_row(
        RESTART, status(strategy="restart", running=None, rollout=None, history=[]), NOW
    )
    assert row["fields"]["running"] == ""
    assert row["fields"]["rollout"] == present.NONE
    assert row["fields"]["last"] == present.NONE


def test_an_unreachable_service_says_why() -> None:
    row = present.overview_row(ROLLING, None, NOW, error="consul_unavailable")
    assert row["fields"]["rollout"] == "unavailable (consul_unavailable)"
    assert row["states"]["rollout"] == "error"


def test_pending_rollouts_name_their_reason() -> None:
    assert present.rollout_text({"state": "pending", "reason": "nomad_unavailable"}) == (
        "pending (nomad_unavailable)"
    )


def test_rollback_goes_only_to_other_good_tags_newest_first() -> None:
    rows = present.history_rows(status(), NOW)
    assert [row["can_roll_back"] for row in rows] == [False, True, False]
    assert present.rollback_candidates(status()) == ["release-1"]
