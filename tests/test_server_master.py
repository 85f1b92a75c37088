"""Serving as an operator meets it: the start line, the metrics listener, busy ports, dev mode."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from noman import __version__, metrics
from noman.cli import _prepare_dev, main
from noman.config import parse_settings
from noman.errors import ConsulUnavailable
from noman.notify import Reporter
from noman.release import Release
from noman.server.master import start_fields
from tests.conftest import (
    SAMPLE_TAG,
    ConsulHandle,
    free_port,
    gunicorn_command,
    make_settings,
    settings_toml,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def wait_for(url: str, deadline: float) -> requests.Response:
    """The first answer from ``url`` before ``deadline`` (the server is starting)."""
    while True:
        try:
            return requests.get(url, timeout=1)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "noman.cli", "serve", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return out, err


def test_serve_logs_one_start_line_and_keeps_metrics_on_their_own_listener(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, consul: ConsulHandle, secret: str
) -> None:
    port, metrics_port = free_port(), free_port()
    # A short folder name: log redaction blanks path segments long enough to be secrets.
    config = tmp_path_factory.mktemp("etc") / "noman.toml"
    text = settings_toml(consul, secret)
    config.write_text(f'[server]\nmetrics_bind = "127.0.0.1:{metrics_port}"\n\n{text}')
    process = start(["--config", str(config)], tmp_path, NOMAN_BIND=f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        assert wait_for(f"http://127.0.0.1:{port}/readyz", deadline).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
        refused = requests.post(f"http://127.0.0.1:{port}/hooks", json={}, timeout=5)
        assert refused.status_code == 401
        scraped = wait_for(f"http://127.0.0.1:{metrics_port}/metrics", deadline).text
    finally:
        _, err = stop(process)
    assert process.returncode == 0
    assert f'noman_build_info{{version="{__version__}"}} 1.0' in scraped
    assert 'noman_hook_requests_total{outcome="unauthorized",service=""} 1.0' in scraped
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = [line for line in lines if line["msg"] == "noman started"]
    assert len(started) == 1
    assert started[0]["config"] == str(config)
    assert started[0]["services"] == 1
    assert started[0]["service_names"] == ["web"]
    assert (started[0]["store"], started[0]["consul"]) == ("consul", consul.url)
    assert started[0]["nomad"] is None  # no rolling service
    assert started[0]["metrics_bind"] == f"127.0.0.1:{metrics_port}"
    assert re.fullmatch(r"gunicorn gevent, 2 worker\(s\) x 1000 connections", started[0]["serving"])
    hook = [line for line in lines if line["msg"] == "hook unauthorized"]
    assert hook and hook[0]["status"] == 401
    assert secret not in err


def test_a_busy_port_is_one_line_naming_it_and_bind(
    tmp_path: Path, consul: ConsulHandle, secret: str, listening: int, capsys: Any
) -> None:
    config = tmp_path / "noman.toml"
    config.write_text(settings_toml(consul, secret))
    bind = f"127.0.0.1:{listening}"
    assert main(["serve", "--config", str(config), "--bind", bind]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"noman: cannot listen on {bind}: ")
    assert "--bind HOST:PORT" in err


def test_a_busy_metrics_port_names_the_setting(
    tmp_path: Path, consul: ConsulHandle, secret: str, listening: int, capsys: Any
) -> None:
    config = tmp_path / "noman.toml"
    text = settings_toml(consul, secret)
    config.write_text(f'[server]\nmetrics_bind = "127.0.0.1:{listening}"\n{text}')
    assert main(["serve", "--config", str(config), "--bind", f"127.0.0.1:{free_port()}"]) == 1
    assert "server.metrics_bind" in capsys.readouterr().err


def test_dev_banner_waits_for_the_port(tmp_path: Path, listening: int, capsys: Any) -> None:
    args = ["serve", "--dev", "--data-dir", str(tmp_path), "--bind", f"127.0.0.1:{listening}"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no curl commands for a server that never listened
    assert f"127.0.0.1:{listening}" in err and "--bind" in err


def test_dev_secret_survives_restarts_until_rotated(tmp_path: Path) -> None:
    def banner_secret(**kwargs: Any) -> str:
        env = {"NOMAN_BIND": "127.0.0.1:8000"}
        _prepare_dev(tmp_path, env, **kwargs)
        text = Path(env["NOMAN_DEV_BANNER"]).read_text()
        found = re.search(r"/hooks/([A-Za-z0-9_-]{22,})", text)
        assert found is not None
        return found.group(1)

    first = banner_secret()
    assert banner_secret() == first
    rotated = banner_secret(new_secret=True)
    assert rotated != first
    assert banner_secret() == rotated
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0
    assert (tmp_path / "banner.txt").stat().st_mode & 0o077 == 0
    settings = parse_settings((tmp_path / "noman.toml").read_text(), environ={})
    assert settings.notify.dry_run is True


def test_dev_server_logs_the_demo_payloads_callback_instead_of_calling_dockerhub(
    tmp_path: Path,
) -> None:
    port = free_port()
    process = start(["--dev"], tmp_path, NOMAN_BIND=f"127.0.0.1:{port}")
    try:
        banner = ""
        deadline = time.monotonic() + 20
        while "Status:" not in banner and time.monotonic() < deadline:
            banner += process.stdout.readline()  # type: ignore[union-attr]
        assert "reports (DockerHub callbacks, notifications) are logged, not sent" in banner
        found = re.search(r"/hooks/([A-Za-z0-9_-]{22,})", banner)
        assert found is not None
        # The banner is printed once the port listens: this connects at once.
        payload = (ROOT / "tests/payloads/dockerhub-push.json").read_bytes()
        answer = requests.post(
            f"http://127.0.0.1:{port}/hooks/{found.group(1)}",
            data=payload,
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert answer.status_code == 200
        assert answer.json()["tag"] == SAMPLE_TAG
        err = ""
        while "callback not sent (dry run)" not in err and time.monotonic() < deadline:
            err += process.stderr.readline()  # type: ignore[union-attr]
    finally:
        _, rest = stop(process)
    assert "callback not sent (dry run)" in err
    assert "callback failed" not in err + rest


def test_dry_run_reports_are_logged_not_sent(
    consul: ConsulHandle, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noman")
    settings = make_settings(consul, secret, extra="[notify]\ndry_run = true\n")
    settings = dataclasses.replace(settings, callback_hosts=("hub.docker.com",))

    class NoNetwork:
        def post(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a dry run sent a report")

    reporter = Reporter(settings, session=NoNetwork())  # type: ignore[arg-type]
    release = Release(tag=SAMPLE_TAG, sender="dockerhub", callback_url="https://hub.docker.com/x")
    reporter.failed(settings.services[0], release, ConsulUnavailable())
    assert reporter.wait(5)
    lines = [r for r in caplog.records if r.getMessage() == "callback not sent (dry run)"]
    assert lines and lines[0].fields["report"]["state"] == "error"  # type: ignore[attr-defined]


def test_post_hooks_without_authorization_gets_its_line_and_metric(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    labels = {"service": "", "outcome": "unauthorized"}
    before = REGISTRY.get_sample_value("noman_hook_requests_total", labels) or 0
    answer = client.post("/hooks", json={"tag": SAMPLE_TAG})
    assert answer.status_code == 401
    assert REGISTRY.get_sample_value("noman_hook_requests_total", labels) == before + 1
    lines = [r for r in caplog.records if r.name == "noman.hooks"]
    assert lines[-1].fields["outcome"] == "unauthorized"  # type: ignore[attr-defined]
    assert lines[-1].fields["status"] == 401  # type: ignore[attr-defined]


def test_metrics_carry_the_build_info(client: Any) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    assert f'noman_build_info{{version="{__version__}"}} 1.0' in text


@pytest.mark.parametrize("outcome", metrics.OUTCOMES)
def test_every_non_error_outcome_is_documented(outcome: str) -> None:
    assert f"`{outcome}`" in README[README.index("noman_hook_requests_total") :]


def test_the_start_line_names_nomad_when_a_service_rolls() -> None:
    text = (
        '[nomad]\naddress = "http://nomad.internal:4646"\n'
        f'[services.web]\nrepository = "a/b"\nkey = "k"\nsecret_sha256 = "{"ab" * 32}"\n'
        'strategy = "rolling"\n[services.web.nomad]\njob = "web"\n'
    )
    settings = parse_settings(text, source="n.toml", environ={})
    cfg = SimpleNamespace(
        worker_class_str="noman.server.worker.NomanWorker",
        workers=3,
        worker_connections=500,
        bind=["0.0.0.0:8000"],
    )
    fields = start_fields(settings, cfg)
    assert fields["nomad"] == "http://nomad.internal:4646"
    assert fields["serving"] == "gunicorn gevent, 3 worker(s) x 500 connections"
    assert fields["service_names"] == ["web"]
    assert "ab" * 32 not in json.dumps(fields)


def test_new_secret_goes_with_dev(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--new-secret"]) == 2
    assert "--dev" in capsys.readouterr().err


def test_plain_gunicorn_stops_when_the_metrics_port_is_busy(
    tmp_path: Path, consul: ConsulHandle, secret: str, listening: int
) -> None:
    config = tmp_path / "noman.toml"
    text = settings_toml(consul, secret)
    config.write_text(f'[server]\nmetrics_bind = "127.0.0.1:{listening}"\n{text}')
    done = subprocess.run(
        gunicorn_command(),
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NOMAN_CONFIG": str(config),
            "NOMAN_BIND": f"127.0.0.1:{free_port()}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"cannot listen on server.metrics_bind 127.0.0.1:{listening}" in done.stderr
    assert "Booting worker" not in done.stderr
