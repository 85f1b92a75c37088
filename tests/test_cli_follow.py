"""`noman deploy --wait`, `noman check` and `noman status` against the fake Consul and Nomad.

No Noman server runs in these tests: `deploy --wait` either carries the rollout itself
(nobody holds the leader lock) or follows the leader that does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noman.cli import main
from noman.config import parse_settings
from noman.wiring import build
from tests.conftest import RUNNING_TAG, ConsulHandle, rolling_extra, settings_toml
from tests.fakes.consul import FakeConsul, _denied
from tests.fakes.nomad import FakeNomad

ROOT = Path(__file__).resolve().parent.parent
OLD = RUNNING_TAG
NEW = "release-20240101000000"


def rolling_toml(consul: ConsulHandle, nomad: FakeNomad, secret: str, extra: str = "") -> str:
    return settings_toml(
        consul,
        secret,
        strategy="rolling",
        extra=rolling_extra(nomad, extra),
    )


@pytest.fixture
def config(tmp_path: Path, consul: ConsulHandle, nomad: FakeNomad, secret: str) -> Path:
    path = tmp_path / "noman.toml"
    path.write_text(rolling_toml(consul, nomad, secret))
    return path


def progress(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("web ")]


# -- deploy --wait -------------------------------------------------------------------------


def test_deploy_wait_carries_the_rollout_when_no_server_leads(
    config: Path, consul: ConsulHandle, nomad: FakeNomad, capsys: pytest.CaptureFixture[str]
) -> None:
    # Long enough after registration for the first watch to see the deployment running.
    nomad.script_deployments("successful", after=1.0)
    assert main(["--config", str(config), "deploy", "web", NEW, "--wait"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rollout"]["state"] == "successful"
    assert "this command carries the rollout" in err
    # One line per change, in order, each once (no spinner, no repeats).
    assert progress(err) == [
        f"web {NEW}: registered, job version 1",
        f"web {NEW}: running, job version 1, placed 0/2, healthy 0/2",
        f"web {NEW}: successful, job version 1, placed 2/2, healthy 2/2",
    ]
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
    record = consul.record()
    assert record.history[0].outcome == "successful"
    assert record.reports == ()  # the final report was sent by this command
    # The leader lock is given back: a server starting now leads at once.
    lock = consul.require_fake().entry(f"{consul.state_prefix}.leader")
    assert lock is None or "Session" not in lock


def test_deploy_wait_failure_is_one_line_and_exit_1(
    config: Path, consul: ConsulHandle, nomad: FakeNomad
) -> None:
    """Run as an operator does (a process of its own): stderr holds our lines and no log noise."""
    nomad.fail_next(1, 500, "no leader")  # the inline registration: one retry reason shown
    nomad.script_deployments("failed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "noman.cli",
            "--config",
            str(config),
            "deploy",
            "web",
            NEW,
            "--wait",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["rollout"]["state"] == "failed"
    lines = done.stderr.splitlines()
    assert (
        lines[0] == "noman: no Noman instance leads: this command carries the rollout until it ends"
    )
    assert lines[1] == f"web {NEW}: pending (nomad_unavailable, attempt 1)"
    assert lines[-2] == f"web {NEW}: failed, job version 1, placed 1/2, healthy 0/2"
    # Every other line is progress; the last, the one-line reason.
    assert all(line.startswith(f"web {NEW}: ") for line in lines[1:-1])
    assert lines[-1].startswith(f"noman: web {NEW} failed: Nomad deployment of job version 1")
    assert lines[-1].endswith(f"{NEW} failed, running {OLD}")
    assert consul.get(consul.key("IMAGE_TAG"))[0] == OLD  # Nomad reverted; the key says so


def test_deploy_wait_of_a_deployed_tag_ends_at_once(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "deploy", "web", NEW, "--wait"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "deploy", "web", NEW, "--wait", "--timeout", "30"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["changed"] is False
    assert progress(err) == [f"web {NEW}: successful, job version 1, placed 2/2, healthy 2/2"]


def test_deploy_wait_gives_up_at_its_timeout(
    config: Path, nomad: FakeNomad, capsys: pytest.CaptureFixture[str]
) -> None:
    nomad.script_deployments("stall")
    args = ["--config", str(config), "deploy", "web", NEW, "--wait", "--timeout", "0.5"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"noman: web {NEW} still running after 0.5s; it goes on" in err


def test_deploy_timeout_must_be_positive(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["--config", str(config), "deploy", "web", NEW, "--wait", "--timeout", "0"])
    assert usage.value.code == 2
    assert "'0' is not a positive number of seconds" in capsys.readouterr().err
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)  # refused before any write


def test_deploy_wait_follows_the_leader_that_carries_it(
    config: Path, consul: ConsulHandle, nomad: FakeNomad, capsys: pytest.CaptureFixture[str]
) -> None:
    nomad.script_deployments("successful", after=0.3)
    server = build(parse_settings(config.read_text(), source=str(config), environ={}))
    server.reconciler.run_once()
    assert server.reconciler.leader
    server.reconciler.start()
    try:
        assert main(["--config", str(config), "deploy", "web", NEW, "--wait"]) == 0
    finally:
        assert server.reconciler.stop()
    err = capsys.readouterr().err
    assert "the rollout is carried by the Noman leader (noman " in err
    assert progress(err)[-1] == f"web {NEW}: successful, job version 1, placed 2/2, healthy 2/2"
    assert consul.record().rollout.state == "successful"  # type: ignore[union-attr]


def test_deploy_wait_with_nomad_down_shows_each_retry_reason(
    config: Path, consul: ConsulHandle, nomad: FakeNomad, capsys: pytest.CaptureFixture[str]
) -> None:
    nomad.fail_next(3, 500, "no leader")
    assert main(["--config", str(config), "deploy", "web", NEW, "--wait"]) == 0
    lines = progress(capsys.readouterr().err)
    assert any("pending (nomad_unavailable, attempt" in line for line in lines)
    assert lines[-1].startswith(f"web {NEW}: successful")
    assert len(lines) == len(set(lines))


def test_deploy_wait_of_a_restart_service_sends_its_report(
    tmp_path: Path, consul: ConsulHandle, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "noman.toml"
    path.write_text(settings_toml(consul, secret))
    assert main(["--config", str(path), "deploy", "web", NEW, "--wait"]) == 0
    assert json.loads(capsys.readouterr().out)["tag"] == NEW
    assert consul.record().reports == ()


# -- the JSON answers ----------------------------------------------------------------------


def test_every_json_answer_of_the_cli_is_one_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (
        ["deploy", "web", NEW],
        ["freeze", "web"],
        ["unfreeze", "web"],
        ["rollback", "web", "--to", OLD],
        ["status"],
        ["status", "web"],
        ["report", "--json"],
    ):
        assert main(["--config", str(config), *command]) == 0, command
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and out.endswith("\n"), (command, out)
        assert isinstance(json.loads(out), dict), command


@pytest.mark.parametrize("through", ["cli", "http"])
def test_a_deploy_of_the_tag_the_job_runs_shows_no_empty_eval_id(
    through: str, config: Path, nomad: FakeNomad, capsys: pytest.CaptureFixture[str], secret: str
) -> None:
    from noman import create_app

    # The job already runs OLD: nothing is registered, so there is no evaluation to name.
    job = nomad.job("web")
    assert job is not None
    if through == "cli":
        assert main(["--config", str(config), "deploy", "web", OLD]) == 0
        answer = json.loads(capsys.readouterr().out)
    else:
        app = create_app(parse_settings(config.read_text(), source="t", environ={}))
        response = app.test_client().post(f"/hooks/{secret}", json={"tag": OLD})
        assert response.status_code == 200, response.json
        answer = response.json
    assert answer["changed"] is True
    assert answer["deployment"] == {"job": "web", "version": job["Version"]}


# -- check ---------------------------------------------------------------------------------


def test_check_reports_the_job_tag_disagreement_and_the_write_proof(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = consul.require_fake()
    consul.put(consul.key("IMAGE_TAG"), NEW)
    before = fake.writes, consul.get(consul.key("IMAGE_TAG"))
    assert main(["--config", str(config), "check"]) == 0
    out = capsys.readouterr().out
    record_key = f"{consul.state_prefix}service/web/desired"
    assert f"web: job web runs {OLD}" in out
    assert (
        f"web: warning: key and job disagree: the key says {NEW}, job web runs {OLD} "
        "(no rollout recorded)"
    ) in out
    assert f"web: the token may write {consul.key('IMAGE_TAG')} and {record_key}" in out
    # The proof wrote nothing: same key index, no new key, no applied operation.
    assert (fake.writes, consul.get(consul.key("IMAGE_TAG"))) == before
    assert consul.get(record_key) == (None, 0)


def test_check_agreeing_key_and_job_say_nothing_of_disagreement(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    consul.put(consul.key("IMAGE_TAG"), OLD)
    assert main(["--config", str(config), "check"]) == 0
    assert "disagree" not in capsys.readouterr().out


def test_check_warns_when_the_key_is_unset_while_the_job_runs_a_tag(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    key = consul.key("IMAGE_TAG")
    assert consul.get(key) == (None, 0)  # the job runs OLD; nobody wrote the key yet
    assert main(["--config", str(config), "check"]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    assert f"web: {key} = (not set) [rolling]" in out
    assert (
        f"web: warning: {key} is not set, but job web runs {OLD}: a template that reads "
        f"the key holds new allocations until it is set; write the running tag with "
        f"`noman deploy web {OLD}`"
    ) in out
    # The command it names clears the warning.
    assert main(["--config", str(config), "deploy", "web", OLD]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "check"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_check_names_a_key_the_token_may_not_write(
    config: Path,
    consul: ConsulHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = consul.require_fake()
    record_key = f"{consul.state_prefix}service/web/desired"

    def precheck(op: object, anonymous: bool) -> str | None:
        # A policy with key:write on the service key but only key:read on Noman's prefix.
        key = getattr(op, "key", "")
        return (
            _denied("write", key)
            if key == record_key and getattr(op, "verb", "") == "cas"
            else None
        )

    monkeypatch.setattr(fake, "_txn_precheck", precheck)
    assert main(["--config", str(config), "check"]) == 1
    out = capsys.readouterr().out
    assert (
        f"web: FAILED: consul_forbidden: the token may not write {record_key} (at {fake.url})"
        in out
    )
    assert "lacks permission 'key:write'" in out
    assert "the token may write" not in out


def test_check_with_an_acl_token_proves_writes(
    tmp_path: Path, nomad: FakeNomad, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeConsul(acl_token="the-token") as fake:
        handle = ConsulHandle(fake.url, "the-token", fake)
        path = tmp_path / "noman.toml"
        path.write_text(rolling_toml(handle, nomad, secret))
        assert main(["--config", str(path), "check"]) == 0
        assert "web: the token may write" in capsys.readouterr().out
        # Without the token, the refusal is a read's: nothing about writes.
        path.write_text(rolling_toml(handle, nomad, secret).replace('token = "the-token"\n', ""))
        assert main(["--config", str(path), "check"]) == 1
        out = capsys.readouterr().out
        assert (
            "web: FAILED: consul_forbidden: Consul refused the request and Noman has no token"
            in out
        )
        assert f"(at {fake.url})" in out
        assert "nothing was written" not in out
        assert fake.writes == 0


def test_check_with_consul_down_names_it_and_wrote_nothing_is_not_said(
    config: Path, consul: ConsulHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = consul.require_fake()
    fake.refuse_connections()
    assert main(["--config", str(config), "check"]) == 1
    out = capsys.readouterr().out
    assert "store: FAILED: consul_unavailable: Consul is unavailable (unreachable)" in out
    assert f"(at {fake.url})" in out
    assert "nothing was written" not in out


def test_check_with_nomad_down_names_nomad(
    config: Path, nomad: FakeNomad, capsys: pytest.CaptureFixture[str]
) -> None:
    nomad.fail_always(500, "no leader")
    assert main(["--config", str(config), "check"]) == 1
    out = capsys.readouterr().out
    assert (
        f"web: FAILED: nomad_unavailable: Nomad is unavailable. Retry later. (at {nomad.url})"
        in out
    )
    assert "deploy was not started" not in out


# -- status --------------------------------------------------------------------------------


def two_services(consul: ConsulHandle, secret: str) -> str:
    return settings_toml(
        consul,
        secret,
        extra=(
            '[services.api]\nrepository = "stut/api"\n'
            f'key = "{consul.key("API_TAG")}"\nsecret_env = "API_SECRET"\n'
        ),
    )


def test_status_prints_every_service_even_when_one_fails(
    tmp_path: Path,
    consul: ConsulHandle,
    secret: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = consul.require_fake()
    monkeypatch.setenv("API_SECRET", "x" * 32)
    path = tmp_path / "noman.toml"
    path.write_text(two_services(consul, secret))
    consul.put(consul.key("API_TAG"), NEW)
    fake.fail_next(1, 500, "No cluster leader")  # the first service's first read
    assert main(["--config", str(path), "status"]) == 1
    web, api = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert web["service"] == "web" and web["error"] == "consul_unavailable"
    assert web["message"].startswith("Consul is unavailable")
    assert f"(at {fake.url})" in web["message"]
    assert "nothing was written" not in web["message"]
    assert set(web) == {"service", "error", "message"}
    assert (api["service"], api["tag"], api["strategy"]) == ("api", NEW, "restart")
    assert {"key", "running", "frozen", "rollout", "history"} <= set(api)
    # Healthy again: every line is a status, exit 0.
    assert main(["--config", str(path), "status"]) == 0
    assert [json.loads(x)["service"] for x in capsys.readouterr().out.splitlines()] == [
        "web",
        "api",
    ]


def test_status_of_a_rolling_service_shows_the_running_tag(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "status", "web"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["tag"], line["running"]) == (None, OLD)
