"""The noman command, as an operator uses it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from noman.cli import main
from tests.conftest import SAMPLE_TAG, ConsulHandle, free_port, settings_toml
from tests.fakes.nomad import FakeNomad, sample_service_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path, consul: ConsulHandle, secret: str) -> Path:
    path = tmp_path / "noman.toml"
    path.write_text(settings_toml(consul, secret))
    return path


def test_secret_new_prints_a_usable_secret_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secret", "new", "stut-dev"]) == 0
    out = capsys.readouterr().out
    secret = re.search(r"secret:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    digest = re.search(r'secret_sha256 = "([0-9a-f]{64})"', out).group(1)  # type: ignore[union-attr]
    assert hashlib.sha256(secret.encode()).hexdigest() == digest
    assert len(secret) >= 22
    assert f"/hooks/{secret}" in out
    assert "[services.stut-dev]" in out


def test_deploy_and_status_share_the_hook_policy(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "deploy", "web", SAMPLE_TAG]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert consul.get(consul.key("IMAGE_TAG"))[0] == SAMPLE_TAG
    assert main(["--config", str(config), "deploy", "web", "release-20200101000000"]) == 1
    assert "stale_tag" in capsys.readouterr().err
    # --config after the command works too, as operators type it.
    assert (
        main(["deploy", "web", "release-20200101000000", "--force", "--config", str(config)]) == 0
    )
    capsys.readouterr()
    assert main(["--config", str(config), "deploy", "web", "latest"]) == 1
    assert "invalid_tag" in capsys.readouterr().err
    assert main(["status", "--config", str(config)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["service"], line["tag"]) == ("web", "release-20200101000000")


def test_deploy_unknown_service_is_a_usage_error_that_suggests_the_name(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "deploy", "nope", SAMPLE_TAG]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noman: usage error: ")
    assert "no service named 'nope'" in err
    assert "did you mean" not in err  # nothing close to 'nope'
    assert main(["--config", str(config), "deploy", "wbe", SAMPLE_TAG]) == 2
    assert "no service named 'wbe'; did you mean 'web'?" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback(config: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from noman.cli import main; "
        f"sys.exit(main(['--config', {str(config)!r}, 'status']))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # as `| head -0` would
        err = child.stderr.read().decode()
        child.wait(30)
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_check_reports_each_service(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    consul.put(consul.key("IMAGE_TAG"), SAMPLE_TAG)
    assert main(["--config", str(config), "check"]) == 0
    out = capsys.readouterr().out
    assert f"web: {consul.key('IMAGE_TAG')} = {SAMPLE_TAG}" in out
    assert f"records: {consul.state_prefix} (0 key(s)); reconciler lock: none yet" in out


def test_check_fails_when_consul_is_down(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    consul.require_fake().refuse_connections()
    assert main(["--config", str(config), "check"]) == 1
    assert "consul_unavailable" in capsys.readouterr().out


def test_status_with_consul_down_says_it_once(tmp_path: Path, secret: str) -> None:
    # Run as the operator runs it: no test logging setup that would catch a stray warning.
    path = tmp_path / "noman.toml"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    path.write_text(
        f'[consul]\naddress = "http://127.0.0.1:{free_port()}"\n'
        f'[services.web]\nrepository = "a/b"\nkey = "web/IMAGE_TAG"\nsecret_sha256 = "{digest}"\n'
    )
    command = [sys.executable, "-m", "noman.cli", "--config", str(path), "status"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    line = json.loads(done.stdout)
    assert (line["service"], line["error"]) == ("web", "consul_unavailable")
    assert done.stderr == ""


def test_a_commands_warnings_are_prefixed_and_redacted(tmp_path: Path, secret: str) -> None:
    # A key whose folder looks like a generated token: the store's warning names the key.
    token, port = "AbCdEfGhIjKlMnOpQrSt12", free_port()
    path = tmp_path / "noman.toml"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    path.write_text(
        f'[consul]\naddress = "http://127.0.0.1:{port}"\n'
        f'[services.web]\nrepository = "a/b"\nkey = "{token}/IMAGE_TAG"\n'
        f'secret_sha256 = "{digest}"\n'
    )
    command = [sys.executable, "-m", "noman.cli", "--config", str(path), "deploy", "web"]
    done = subprocess.run(
        [*command, SAMPLE_TAG], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    # Before, the store's warning came bare and whole, through Python's last-resort handler.
    assert lines[0] == (
        "noman: warning: consul read <redacted>/IMAGE_TAG,noman/service/web/desired: "
        f"http://127.0.0.1:{port}: cannot connect (refused, reset or unknown host)"
    )
    assert lines[-1].startswith("noman: consul_unavailable: ")
    assert token not in done.stderr


def test_check_fails_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[services.x]\nrepository = 'a/b'\n")
    assert main(["--config", str(bad), "check"]) == 2
    assert "bad.toml" in capsys.readouterr().err


def test_check_verifies_rolling_jobs(
    tmp_path: Path, consul: ConsulHandle, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeNomad() as nomad:
        job = sample_service_job("web")
        job["TaskGroups"][0]["Tasks"][0]["Templates"][0]["ChangeMode"] = "restart"
        nomad.add_job(job)
        text = settings_toml(
            consul,
            secret,
            key="configs/web/IMAGE_TAG",
            strategy="rolling",
            extra=f'[services.web.nomad]\njob = "web"\n[nomad]\naddress = "{nomad.url}"\n',
        )
        path = tmp_path / "noman.toml"
        path.write_text(text)
        assert main(["--config", str(path), "check"]) == 0
        out = capsys.readouterr().out
        assert 'change_mode = "restart"' in out
        path.write_text(text.replace('job = "web"', 'job = "missing"'))
        assert main(["--config", str(path), "check"]) == 1
        assert "nomad_job_not_found" in capsys.readouterr().out


def test_healthcheck(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["healthcheck", "--url", f"http://127.0.0.1:{free_port()}/healthz"]) == 1


def test_serve_dev_runs_with_no_consul_and_deploys(tmp_path: Path) -> None:
    """The README's run command: `noman serve --dev` on a machine with no Consul."""
    port = free_port()
    env = {**os.environ, "NOMAN_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "noman.cli", "serve", "--dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 20
        while "Status:" not in banner and time.monotonic() < deadline:
            banner += process.stdout.readline()  # type: ignore[union-attr]
        secret = re.search(r"/hooks/([A-Za-z0-9_-]{22,})", banner).group(1)  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        payload = json.loads((ROOT / "tests/payloads/dockerhub-push.json").read_text())
        payload.pop("callback_url")
        answer = requests.post(f"{url}/hooks/{secret}", json=payload, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["tag"] == SAMPLE_TAG
        assert requests.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
        store = json.loads((tmp_path / ".noman-dev/store.json").read_text())
        assert store["keys"]["configs/stut.dev/IMAGE_TAG"]["value"] == SAMPLE_TAG
        # The status command the banner prints works as printed.
        status = re.search(r"Status: (.+)", banner).group(1).split()  # type: ignore[union-attr]
        shown = subprocess.run(status, cwd=tmp_path, capture_output=True, text=True, check=True)
        assert json.loads(shown.stdout)["tag"] == SAMPLE_TAG
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert secret not in err


def test_serve_runs_gunicorn_with_the_given_config(config: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "NOMAN_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "noman.cli", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        ready = None
        while time.monotonic() < deadline and ready is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            except requests.RequestException:
                time.sleep(0.1)
        assert ready is not None and ready.json()["status"] == "ready"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_serve_refuses_a_bad_config_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "noman.toml"
    bad.write_text("[services.web]\nrepository = 'a/b'\nkey = 'k'\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "set exactly one of secret_sha256, secret_env" in capsys.readouterr().err
