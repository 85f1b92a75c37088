"""The pure part of the stages: decisions, texts and the analysis clock."""

from __future__ import annotations

import math

import pytest

from noman.model import CanaryCheck, CanaryPlan
from noman.stages import (
    AnalysisState,
    JobStep,
    Measurement,
    analysis_done,
    canaries_healthy,
    current,
    event,
    job_steps,
    judge,
    measured_text,
    needs_noman,
    next_round,
    query_text,
    threshold_text,
    with_step,
)
from noman.state import RolloutState
from tests.test_nomad_stages import SERVICE as SHOP

PROM = CanaryCheck("prometheus", "error ratio", url="http://p", query="q", max=0.01)


def test_placeholders_are_filled_and_promql_braces_stay() -> None:
    check = CanaryCheck(
        "prometheus",
        "q",
        query='sum(rate(x{job="{job}",v="{tag}",d="{deployment}",s="{service}",o="{other}"}[1m]))',
    )
    assert query_text(check, "shop", "release-1", "web", "d-1") == (
        'sum(rate(x{job="web",v="release-1",d="d-1",s="shop",o="{other}"}[1m]))'
    )


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (PROM, "≤ 0.01"),
        (CanaryCheck("prometheus", "n", min=5.0), "≥ 5"),
        (CanaryCheck("prometheus", "n", min=1.0, max=2.5), "≥ 1 and ≤ 2.5"),
        (CanaryCheck("http", "GET /"), "2xx"),
        (CanaryCheck("http", "GET /", expect=(200, 204)), "200 or 204"),
    ],
)
def test_threshold_texts(check: CanaryCheck, text: str) -> None:
    assert threshold_text(check) == text


def test_judge_and_the_texts_of_reports() -> None:
    good = judge(PROM, [0.002], 1.0)
    assert measured_text(good) == "error ratio 0.002 ≤ 0.01"
    bad = judge(PROM, [0.02, 0.001], 1.0)
    assert (bad.ok, bad.value) == (False, 0.02)
    assert measured_text(bad) == "error ratio 0.02 not ≤ 0.01"
    empty = judge(PROM, [math.nan], 1.0)
    assert (empty.ok, measured_text(empty)) == (False, "error ratio: no data")
    http = Measurement("GET /", False, 500.0, "2xx", "10.0.0.5:8080", 1.0)
    assert measured_text(http) == "GET / 500 not 2xx (10.0.0.5:8080)"


def test_the_analysis_clock_counts_the_bake_from_healthy_canaries() -> None:
    plan = CanaryPlan(bake=60, interval=10)
    analysis = AnalysisState("web", "d-1", started_at=100.0, next_at=100.0)
    assert not analysis_done(analysis, plan, 100.0)  # no round yet
    assert next_round(analysis, plan, 100.0) == 110.0
    late = AnalysisState("web", "d-1", 100.0, next_at=130.0, rounds=3)
    # A leader that comes back late keeps the beat and never schedules in the past.
    assert next_round(late, plan, 147.0) == 150.0
    assert next_round(late, plan, 158.5) == 160.0  # the bake ends at 160: the last round
    assert next_round(late, plan, 175.0) == 175.0
    assert analysis_done(late, plan, 160.0) and not analysis_done(late, plan, 159.9)


def test_deployment_shapes() -> None:
    waiting = {"status": "running", "healthy": 0, "canaries": {"desired": 1, "promoted": False}}
    assert needs_noman(waiting) and not canaries_healthy(waiting)
    assert canaries_healthy({**waiting, "healthy": 1})
    assert not needs_noman({**waiting, "canaries": {"desired": 1, "auto_promote": True}})
    assert not needs_noman({**waiting, "canaries": {"desired": 1, "promoted": True}})
    assert not needs_noman({"status": "running", "healthy": 2})


def test_job_steps_and_events() -> None:
    rollout = RolloutState(seq=4, tag="t", state="running", jobs=job_steps(SHOP))
    assert [s.job for s in rollout.jobs] == ["web", "worker"]
    assert current(rollout) == 0
    moved = RolloutState(
        seq=4, tag="t", state="running", jobs=with_step(rollout, 0, state="successful")
    )
    assert current(moved) == 1
    assert moved.jobs[0] == JobStep("web", "successful")
    assert rollout.public()["jobs"][1] == {"job": "worker", "state": "waiting"}
    assert event("canary", moved, 1) == "canary.2"
    single = RolloutState(seq=1, tag="t", state="running", jobs=(JobStep("web", "waiting"),))
    assert event("canary", single, 0) == "canary"
    assert current(RolloutState(seq=1, tag="t", state="running", jobs=())) is None


def test_a_plain_rollout_shows_no_stage_fields() -> None:
    """Status of services without stages reads exactly as before."""
    plain = RolloutState(seq=1, tag="t", state="running", version=3)
    assert set(plain.public()) == {
        "seq", "state", "tag", "version", "deployment_id", "reason", "description", "attempts",
        "placed", "healthy", "desired", "updated_at",
    }  # fmt: skip
    staged = RolloutState(seq=1, tag="t", state="running", stage="analysis", stage_since=2.0)
    assert staged.public()["stage"] == "analysis" and "stage_since" not in staged.public()
