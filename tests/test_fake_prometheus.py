"""Tests of the fake Prometheus and the canary stand-in, over real HTTP."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import requests

from tests.fakes.canary import CanaryApp
from tests.fakes.prometheus import FakePrometheus

QUERY = 'sum(rate(http_requests_total{code=~"5.."}[1m]))'


def query(fake: FakePrometheus, text: str, method: str = "GET") -> requests.Response:
    url = f"{fake.url}/api/v1/query"
    if method == "POST":
        return requests.post(url, data={"query": text}, timeout=5)
    return requests.get(url, params={"query": text}, timeout=5)


def test_an_unscripted_query_is_an_empty_vector(prometheus: FakePrometheus) -> None:
    answer = query(prometheus, "up")
    assert answer.status_code == 200
    assert answer.json() == {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert prometheus.queries == ["up"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_vector_answer_has_prometheus_s_shape(prometheus: FakePrometheus, method: str) -> None:
    prometheus.answer(QUERY, ({"job": "web"}, 0.25), ({"job": "api"}, 2.0))
    data = query(prometheus, QUERY, method).json()["data"]
    assert data["resultType"] == "vector"
    first, second = data["result"]
    assert first["metric"] == {"job": "web"}
    assert isinstance(first["value"][0], float) and first["value"][1] == "0.25"
    assert second["value"][1] == "2"


def test_special_values_are_spelled_like_prometheus(prometheus: FakePrometheus) -> None:
    prometheus.answer("a", math.nan, math.inf, -math.inf)
    values = [r["value"][1] for r in query(prometheus, "a").json()["data"]["result"]]
    assert values == ["NaN", "+Inf", "-Inf"]
    prometheus.answer_scalar("b", 0.5)
    assert query(prometheus, "b").json()["data"] == {
        "resultType": "scalar",
        "result": [pytest.approx(0, abs=1e12), "0.5"],
    }


def test_errors_use_the_error_envelope(prometheus: FakePrometheus) -> None:
    prometheus.refuse("bad(")
    answer = query(prometheus, "bad(")
    assert answer.status_code == 400
    assert answer.json()["status"] == "error" and answer.json()["errorType"] == "bad_data"
    prometheus.refuse("slow", status=503, error_type="timeout", error="query timed out")
    assert query(prometheus, "slow").json() == {
        "status": "error",
        "errorType": "timeout",
        "error": "query timed out",
    }
    empty = query(prometheus, "")
    assert empty.status_code == 400 and "no expression found" in empty.json()["error"]
    assert requests.get(f"{prometheus.url}/api/v1/other", timeout=5).status_code == 404


def test_faults_fail_or_hang(prometheus: FakePrometheus) -> None:
    prometheus.fail_next(status=500, body="internal")
    assert query(prometheus, "up").status_code == 500
    prometheus.hang(5)
    with pytest.raises(requests.RequestException):
        requests.get(f"{prometheus.url}/api/v1/query", params={"query": "up"}, timeout=0.3)
    prometheus.heal()
    assert query(prometheus, "up").status_code == 200


def test_the_canary_stand_in_answers_paths_and_metrics() -> None:
    with CanaryApp() as app:
        assert requests.get(f"{app.url}/healthz", timeout=5).status_code == 200
        app.set_status(503)
        assert requests.get(f"{app.url}/", timeout=5).status_code == 503
        app.set_gauge("canary_error_ratio", 0.002, version="release-1")
        app.set_gauge("canary_up", 1.0)
        metrics = requests.get(f"{app.url}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert metrics.text.splitlines() == [
            "# TYPE canary_error_ratio gauge",
            'canary_error_ratio{version="release-1"} 0.002',
            "# TYPE canary_up gauge",
            "canary_up 1.0",
        ]
        assert app.paths == ["/healthz", "/", "/metrics"]


@pytest.mark.parametrize("module", ["tests.fakes.prometheus", "tests.fakes.canary"])
def test_module_entry_points(module: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", module], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            path = "/api/v1/query?query=up" if "prometheus" in module else "/"
            assert requests.get(f"{url}{path}", timeout=5).status_code == 200
            proc.terminate()
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
