"""Manual gates: promote and abort from the API (path and Bearer), the CLI and the page.

A request writes the service's gate and wakes the leader; the leader (the app's
reconciler, driven by the test) acts and records who asked. Everything goes over
the live HTTP server, the CLI runs as its own set of components on a config file.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import requests

from noman.cli import main
from tests.conftest import ConsulHandle
from tests.fakes.nomad import FakeNomad, sample_service_job
from tests.fakes.prometheus import FakePrometheus
from tests.fakes.receiver import Receiver
from tests.test_staged import FILLED, NEW, OLD, Stack, add_jobs, prometheus_check

WHO = ["api", "bearer", "cli", "ui"]


@pytest.fixture
def nomad(bare_nomad: FakeNomad) -> FakeNomad:
    return bare_nomad


@pytest.fixture
def healthy(prometheus: FakePrometheus) -> FakePrometheus:
    """Prometheus measuring the canary's error ratio well under the threshold."""
    prometheus.answer(FILLED, 0.002)
    return prometheus


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def page_action(stack: Stack, token: str, action: str) -> requests.Response:
    """Log in to the page, open the action's confirmation, confirm it (the button)."""
    http = stack.live.http
    login = http.get(f"{stack.live.url}/ui", timeout=10)
    http.post(
        f"{stack.live.url}/ui/login",
        data={"token": token, "csrf_token": csrf_of(login.text)},
        timeout=10,
    )
    page = http.get(f"{stack.live.url}/ui/services/web", timeout=10)
    assert f'id="{action}"' in page.text, page.text  # the button is there
    confirm = http.get(
        f"{stack.live.url}/ui/services/web/confirm", params={"action": action}, timeout=10
    )
    assert confirm.status_code == 200
    return http.post(
        f"{stack.live.url}/ui/services/web/{action}",
        data={"csrf_token": csrf_of(confirm.text)},
        timeout=10,
        allow_redirects=False,
    )


def ask(stack: Stack, who: str, action: str, tmp_path: Path, token: str, capsys: Any) -> Any:
    """``action`` asked by ``who``; what the asker got back."""
    if who == "api":
        return stack.live.post(f"/hooks/{stack.secret}/{action}")
    if who == "bearer":
        return stack.live.post(
            f"/hooks/{action}", headers={"Authorization": f"Bearer {stack.secret}"}
        )
    if who == "cli":
        config = tmp_path / "noman.toml"
        config.write_text(stack.toml)
        capsys.readouterr()
        code = main(["--config", str(config), action, "web"])
        return code, capsys.readouterr()
    return page_action(stack, token, action)


def accepted(who: str, answer: Any) -> None:
    if who in ("api", "bearer"):
        assert answer.status_code == 202, answer.text
        assert answer.json()["requested_by"] == "api"
    elif who == "cli":
        code, out = answer
        assert code == 0, out.err
        assert '"requested_by": "cli"' in out.out
    else:
        assert answer.status_code == 303  # back to the service page, with a notice


def by(who: str) -> str:
    return "api" if who == "bearer" else who


def manual_stack(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    healthy: FakePrometheus,
    token: str,
) -> Stack:
    add_jobs(nomad, ("web",), canary=True)
    nomad.script_deployments("successful", after=0.2)
    return Stack(
        consul,
        nomad,
        secret,
        receiver,
        canary='bake = "400ms"\ninterval = "200ms"\npromote = "manual"',
        checks=prometheus_check(healthy.url),
        ui_token=token,
    )


@pytest.mark.parametrize("who", WHO)
def test_a_manual_promotion(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    healthy: FakePrometheus,
    token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    who: str,
) -> None:
    with manual_stack(consul, nomad, secret, receiver, healthy, token) as stack:
        stack.deploy()
        early = stack.live.post(f"/hooks/{secret}/promote")
        assert (early.status_code, early.json()["error"]) == (409, "nothing_to_promote")
        waiting = stack.stage("awaiting_promotion")
        assert waiting["analysis"]["passed_at"] is not None
        for _ in range(5):  # it waits: no promotion without someone asking
            stack.parts.reconciler.run_once(wait=0.05)
        assert nomad.promotions == [] and stack.rollout()["stage"] == "awaiting_promotion"
        assert "web:1:awaiting_promotion" in stack.reports()
        accepted(who, ask(stack, who, "promote", tmp_path, token, capsys))
        done = stack.finish()
        assert done["state"] == "successful"
        assert done["promoted_by"] == by(who)
        assert len(nomad.promotions) == 1
        entry = stack.status()["history"][0]
        assert (entry["outcome"], entry["promoted_by"]) == ("successful", by(who))
        assert stack.reports()["web:1:promoted"]["description"] == f"promoted by {by(who)}: web"
        late = stack.live.post(f"/hooks/{secret}/promote")
        assert (late.status_code, late.json()["error"]) == (409, "nothing_to_promote")
    # A template listing the tag key's folder sees the tag key alone: the gate, the
    # stages and their reports live under Noman's own prefix.
    assert consul.folder(consul.prefix) == [consul.key("IMAGE_TAG")]


STAGES: list[tuple[str, str]] = [
    ("api", "release_phase"),
    ("bearer", "canary"),
    ("cli", "analysis"),
    ("ui", "awaiting_promotion"),
]


@pytest.mark.parametrize(("who", "stage"), STAGES)
def test_an_abort_at_any_stage(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    healthy: FakePrometheus,
    token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    who: str,
    stage: str,
) -> None:
    add_jobs(nomad, ("web",), canary=True)
    consul.put(consul.key("IMAGE_TAG"), OLD)
    nomad.script_deployments("stall")
    nomad.script_dispatches("stall")
    if stage == "canary":
        nomad.script_canaries(healthy_after=None)
    bake = '"400ms"' if stage == "awaiting_promotion" else '"30s"'
    with Stack(
        consul,
        nomad,
        secret,
        receiver,
        release='job = "migrate"',
        canary=f'bake = {bake}\ninterval = "200ms"\npromote = "manual"',
        checks=prometheus_check(healthy.url),
        ui_token=token,
    ) as stack:
        stack.deploy()
        if stage != "release_phase":
            running = stack.stage("release_phase")
            nomad.finish_dispatch(running["release"]["child"], "complete")
        assert stack.stage(stage)["stage"] == stage
        accepted(who, ask(stack, who, "abort", tmp_path, token, capsys))
        done = stack.finish()
        assert (done["state"], done["reason"], done["aborted_by"]) == (
            "failed",
            "aborted",
            by(who),
        )
        assert done["description"] == f"Aborted by {by(who)}. Running {OLD}."
        assert stack.key() == OLD
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == OLD  # type: ignore[index]
        assert nomad.promotions == []
        # The deployment was failed (Nomad reverted the job); a release phase had none.
        assert len(nomad.failures) == (0 if stage == "release_phase" else 1)
        entry = next(h for h in stack.status()["history"] if h["tag"] == NEW)
        assert (entry["outcome"], entry["aborted_by"], entry["reason"]) == (
            "failed",
            by(who),
            "aborted",
        )
        again = stack.live.post(f"/hooks/{secret}/abort")
        assert (again.status_code, again.json()["error"]) == (409, "nothing_to_abort")
    assert consul.folder(consul.prefix) == [consul.key("IMAGE_TAG")]
    gate = consul.get(f"{consul.state_prefix}service/web/promotion")[0]
    assert gate is not None and f'"by":"{by(who)}"' in gate


def test_a_plain_rolling_deploy_can_be_aborted_too(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    job = sample_service_job("web", image=f"stut/stut.dev:{OLD}")
    job["Meta"]["NOMAN_IMAGE_TAG"] = OLD
    nomad.add_job(job)
    consul.put(consul.key("IMAGE_TAG"), OLD)
    nomad.script_deployments("stall")
    with Stack(consul, nomad, secret, receiver, jobs=("web",)) as stack:
        assert stack.deploy()["deployment"]["version"] == 1  # inline, as before
        stack.drive(lambda r: r["state"] == "running")
        answer = stack.live.post(f"/hooks/{secret}/abort")
        assert answer.status_code == 202
        assert answer.json() == {
            "service": "web",
            "tag": NEW,
            "seq": 1,
            "action": "abort",
            "requested_by": "api",
            "stage": None,
            "message": f"abort of {NEW} requested; the leader carries it out.",
        }
        done = stack.finish()
        assert (done["state"], done["reason"]) == ("failed", "aborted")
        assert len(nomad.failures) == 1
        assert stack.key() == OLD


def test_gates_refuse_what_has_no_rollout(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web",), canary=False)
    with Stack(consul, nomad, secret, receiver) as stack:
        for action, code in (("promote", "nothing_to_promote"), ("abort", "nothing_to_abort")):
            answer = stack.live.post(f"/hooks/{secret}/{action}")
            assert (answer.status_code, answer.json()["error"]) == (409, code)
            wrong = stack.live.post(f"/hooks/wrong-secret/{action}")
            assert wrong.status_code == 404
            unauthorized = stack.live.post(f"/hooks/{action}")
            assert unauthorized.status_code == 401
