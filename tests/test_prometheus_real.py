"""The canary analysis against a real Prometheus (Debian's package) scraping a canary.

The test starts ``/usr/bin/prometheus`` itself on a free 127.0.0.1 port, with a
config and a data directory of its own, scraping a canary stand-in's ``/metrics``
every second. Noman's check asks it the PromQL query of the service's
``[[canary.checks]]``: the canary of one tag reports a low error ratio and is
promoted, the canary of another a high one and its deployment is failed.
Without the binary the test is skipped with one line (``./scripts/test``
installs it when run as root), except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ConsulHandle, free_port
from tests.fakes.canary import CanaryApp
from tests.fakes.nomad import FakeNomad
from tests.fakes.receiver import Receiver
from tests.test_staged import OLD, Stack, add_jobs

PROMETHEUS = Path(os.environ.get("PROMETHEUS_BIN") or "/usr/bin/prometheus")
GOOD = "release-20240101000000"
BAD = "release-20240201000000"
QUERY = 'max(canary_error_ratio{version="{tag}"})'


def require_prometheus() -> None:
    """Skip without Prometheus; under CI=true, fail instead."""
    if os.access(PROMETHEUS, os.X_OK):
        return
    message = f"needs {PROMETHEUS} (Debian's prometheus; scripts/test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Prometheus:
    """A Prometheus server of the test's own, scraping one target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: canary\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def query(self, text: str) -> list[Any]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": text}, timeout=5)
        answer.raise_for_status()
        result: list[Any] = answer.json()["data"]["result"]
        return result

    def wait_for_data(self, text: str, timeout: float = 30) -> None:
        """Block until the server answers and ``text`` has a sample (a scrape happened)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()}")
            try:
                if self.query(text):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no data for {text}: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module")
def canary() -> Iterator[CanaryApp]:
    with CanaryApp() as app:
        app.set_gauge("canary_error_ratio", 0.002, version=GOOD)
        app.set_gauge("canary_error_ratio", 0.2, version=BAD)
        yield app


@pytest.fixture(scope="module")
def prometheus(canary: CanaryApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    require_prometheus()
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{canary.port}")
    try:
        server.wait_for_data(QUERY.replace("{tag}", BAD))
        yield server
    finally:
        server.stop()


@pytest.fixture
def nomad(bare_nomad: FakeNomad) -> FakeNomad:
    add_jobs(bare_nomad, ("web",), canary=True)
    return bare_nomad


def stack(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver, url: str
) -> Stack:
    checks = (
        '[[services.web.canary.checks]]\nkind = "prometheus"\nname = "error ratio"\n'
        f"url = \"{url}\"\nquery = '{QUERY}'\nmax = 0.01\n"
    )
    return Stack(
        consul, nomad, secret, receiver, canary='bake = "2s"\ninterval = "500ms"', checks=checks
    )


def test_a_canary_real_prometheus_measures_low_is_promoted(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    prometheus: Prometheus,
) -> None:
    nomad.script_deployments("successful", after=0.2)
    with stack(consul, nomad, secret, receiver, prometheus.url) as running:
        running.deploy(GOOD)
        done = running.finish()
        assert done["state"] == "successful", done
        assert len(nomad.promotions) == 1
        [measured] = done["analysis"]["last"]
        assert (measured["ok"], measured["value"]) == (True, 0.002)
        assert running.reports()["web:1:analysis_passed"]["description"] == (
            "analysis passed: error ratio 0.002 ≤ 0.01"
        )


def test_a_canary_real_prometheus_measures_high_is_failed(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    prometheus: Prometheus,
) -> None:
    nomad.script_deployments("stall")
    consul.put(consul.key("IMAGE_TAG"), OLD)
    with stack(consul, nomad, secret, receiver, prometheus.url) as running:
        running.deploy(BAD)
        done = running.finish()
        assert (done["state"], done["reason"]) == ("failed", "analysis_failed")
        assert done["description"] == f"Analysis failed: error ratio 0.2 not ≤ 0.01. Running {OLD}."
        assert nomad.promotions == [] and len(nomad.failures) == 1
        assert running.key() == OLD
