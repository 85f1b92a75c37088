"""One round of canary checks against the fake Prometheus and a canary stand-in."""

from __future__ import annotations

import math

import pytest

from noman.analysis import Analyst
from noman.model import CanaryCheck, CanaryPlan
from noman.rollouts.nomad import Canary
from noman.stages import Measurement
from tests.fakes.canary import CanaryApp
from tests.fakes.prometheus import FakePrometheus
from tests.fakes.receiver import closed_port

QUERY = 'max(canary_error_ratio{job="{job}", version="{tag}"})'
FILLED = 'max(canary_error_ratio{job="web", version="release-1"})'


@pytest.fixture
def app(canary_app: CanaryApp) -> CanaryApp:
    return canary_app


def check(url: str, **fields: object) -> CanaryCheck:
    values: dict[str, object] = {"name": "error ratio", "url": url, "query": QUERY, "max": 0.01}
    values.update(fields)
    return CanaryCheck("prometheus", **values)  # type: ignore[arg-type]


def one(analyst: Analyst, item: CanaryCheck, canaries: list[Canary] | None = None) -> Measurement:
    plan = CanaryPlan(checks=(item,))
    [measured] = analyst.round(plan, "shop", "release-1", "web", "d-1", lambda port: canaries or [])
    return measured


def test_the_query_is_filled_in_and_a_value_under_max_passes(prometheus: FakePrometheus) -> None:
    prometheus.answer(FILLED, 0.002)
    measured = one(Analyst(clock=lambda: 5.0), check(prometheus.url))
    assert prometheus.queries == [FILLED]
    assert measured == Measurement("error ratio", True, 0.002, "≤ 0.01", "", 5.0)


@pytest.mark.parametrize(
    ("series", "bounds", "ok", "value"),
    [
        ([0.2], {"max": 0.01}, False, 0.2),
        ([0.001, 0.5], {"max": 0.01}, False, 0.5),  # every series must hold
        ([0.001, 0.004], {"max": 0.01}, True, 0.004),  # the worst one is shown
        ([3.0], {"max": None, "min": 5.0}, False, 3.0),
        ([7.0, 9.0], {"max": None, "min": 5.0}, True, 7.0),
        ([1.5], {"max": 2.0, "min": 1.0}, True, 1.5),
        ([math.inf], {"max": 2.0}, False, math.inf),
    ],
)
def test_bounds(
    prometheus: FakePrometheus,
    series: list[float],
    bounds: dict[str, float | None],
    ok: bool,
    value: float,
) -> None:
    prometheus.answer(FILLED, *[({"alloc": str(i)}, v) for i, v in enumerate(series)])
    measured = one(Analyst(), check(prometheus.url, **bounds))
    assert (measured.ok, measured.value) == (ok, value)


@pytest.mark.parametrize("on_no_data", ["fail", "pass"])
@pytest.mark.parametrize("answer", ["empty", "nan"])
def test_no_data(prometheus: FakePrometheus, on_no_data: str, answer: str) -> None:
    if answer == "nan":
        prometheus.answer(FILLED, math.nan)  # 0/0 of a canary that had no traffic
    measured = one(Analyst(), check(prometheus.url, on_no_data=on_no_data))
    assert measured.ok is (on_no_data == "pass")
    assert (measured.value, measured.detail) == (None, "no data")


def test_a_scalar_counts_too(prometheus: FakePrometheus) -> None:
    prometheus.answer_scalar(FILLED, 0.5)
    assert one(Analyst(), check(prometheus.url)).ok is False


@pytest.mark.parametrize(
    ("status", "kind", "error", "detail"),
    [
        (400, "bad_data", "parse error", "Prometheus refused the query (bad_data: parse error)"),
        (
            503,
            "timeout",
            "query timed out",
            "Prometheus refused the query (timeout: query timed out)",
        ),
        (
            422,
            "execution",
            "many-to-many",
            "Prometheus refused the query (execution: many-to-many)",
        ),
    ],
)
def test_prometheus_errors_fail_the_check_and_say_why(
    prometheus: FakePrometheus, status: int, kind: str, error: str, detail: str
) -> None:
    prometheus.refuse(FILLED, status=status, error_type=kind, error=error)
    measured = one(Analyst(), check(prometheus.url))
    assert (measured.ok, measured.value, measured.detail) == (False, None, detail)


def test_a_prometheus_that_does_not_answer_in_time_fails_the_check(
    prometheus: FakePrometheus,
) -> None:
    prometheus.hang(5)
    measured = one(Analyst(), check(prometheus.url, timeout=0.3))
    prometheus.heal()
    assert measured.ok is False
    assert measured.detail == "Prometheus: no answer within 0.3s"


def test_a_prometheus_that_is_gone_fails_the_check() -> None:
    measured = one(Analyst(), check(f"http://127.0.0.1:{closed_port()}"))
    assert measured.detail == "Prometheus: cannot connect (refused, reset or unknown host)"


def http_check(**fields: object) -> CanaryCheck:
    return CanaryCheck("http", **{"name": "GET /healthz", "path": "/healthz", **fields})  # type: ignore[arg-type]


def canary(app: CanaryApp, alloc: str = "a1b2c3d4-0000") -> Canary:
    return Canary(alloc, "127.0.0.1", app.port, True)


def test_http_asks_every_canary(app: CanaryApp) -> None:
    measured = one(Analyst(), http_check(), [canary(app), canary(app, "b")])
    assert (measured.ok, measured.value, measured.detail) == (True, 200.0, "2 canaries")
    assert app.paths == ["/healthz", "/healthz"]


def test_http_fails_on_a_wrong_status(app: CanaryApp) -> None:
    app.set_status(500)
    measured = one(Analyst(), http_check(), [canary(app)])
    assert (measured.ok, measured.value) == (False, 500.0)
    assert (measured.threshold, measured.detail) == ("2xx", f"127.0.0.1:{app.port}")
    app.set_status(204)
    assert one(Analyst(), http_check(expect=(200,)), [canary(app)]).ok is False
    assert one(Analyst(), http_check(expect=(200, 204)), [canary(app)]).ok is True


def test_http_without_canaries_ports_or_answers_fails() -> None:
    assert one(Analyst(), http_check(), []).detail == "no running canary to check"
    portless = Canary("a1b2c3d4-9999", "127.0.0.1", None)
    assert one(Analyst(), http_check(port="http"), [portless]).detail == (
        "allocation a1b2c3d4 has no port 'http'"
    )
    gone = Canary("x", "127.0.0.1", closed_port())
    assert one(Analyst(), http_check(), [gone]).detail == (
        f"127.0.0.1:{gone.port}: cannot connect (refused, reset or unknown host)"
    )
