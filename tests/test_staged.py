"""Staged rollouts end to end: the hook over a real HTTP server, Consul, Nomad, Prometheus.

Every case starts from a webhook sent over a socket to the app (werkzeug's server
in a thread) and lets the leader run its passes against the fake Consul, the fake
Nomad (parameterized jobs, canaries, promote, fail, revert) and the fake
Prometheus or a canary stand-in; what the status API shows, what Nomad was asked,
what Consul holds and what was reported is then checked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from noman import create_app
from noman.wiring import components
from tests.conftest import RUNNING_TAG, ConsulHandle, make_settings, settings_toml, settle
from tests.fakes.canary import CanaryApp
from tests.fakes.nomad import (
    FakeNomad,
    sample_canary_job,
    sample_parameterized_job,
    sample_service_job,
)
from tests.fakes.prometheus import FakePrometheus
from tests.fakes.receiver import Receiver
from tests.support.live import Live

OLD = RUNNING_TAG
NEW = "release-20240101000000"
QUERY = 'max(canary_error_ratio{job="{job}", version="{tag}"})'
FILLED = f'max(canary_error_ratio{{job="web", version="{NEW}"}})'
TERMINAL = ("successful", "failed", "cancelled", "timed_out")


def add_jobs(nomad: FakeNomad, jobs: tuple[str, ...], canary: bool) -> None:
    """Service jobs running OLD (the first with a canary when asked) and job "migrate"."""
    for n, name in enumerate(jobs):
        image = f"stut/stut.dev:{OLD}"
        job = (
            sample_canary_job(name, image=image)
            if canary and n == 0
            else sample_service_job(name, image=image)
        )
        job["Meta"]["NOMAN_IMAGE_TAG"] = OLD
        nomad.add_job(job)
    nomad.add_job(sample_parameterized_job("migrate"))


def close_sessions(parts: Any) -> None:
    """Close Noman's keep-alive connections, so the fakes' connection threads end now."""
    parts.store.client.http.session.close()
    if parts.nomad is not None:
        parts.nomad._session.close()
    parts.reporter.session.close()
    parts.reconciler.stages.analyst.session.close()


class Stack:
    """One staged service "web" behind a live server, with its leader driven by the test."""

    def __init__(
        self,
        consul: ConsulHandle,
        nomad: FakeNomad,
        secret: str,
        receiver: Receiver,
        *,
        jobs: tuple[str, ...] = ("web",),
        release: str = "",
        canary: str = "",
        checks: str = "",
        watch_timeout: float = 30,
        ui_token: str | None = None,
    ) -> None:
        self.consul, self.nomad, self.secret = consul, nomad, secret
        self.receiver = receiver
        listed = ", ".join(f'"{j}"' for j in jobs)
        extra = (
            f"[services.web.nomad]\njobs = [{listed}]\n"
            + (f"[services.web.release_phase]\n{release}\n" if release else "")
            + (f"[services.web.canary]\n{canary}\n" if canary or checks else "")
            + checks
            + f'[nomad]\naddress = "{nomad.url}"\ntimeout = 1\npoll_interval = 0.05\n'
            f"watch_timeout = {watch_timeout}\n"
            "[rollout]\nretry_backoff = 0.05\nretry_max = 0.2\n"
            '[notify]\non = ["success", "failure", "stage"]\n'
            f'[[notify.targets]]\nurl = "{receiver.url}/notify"\n'
        )
        if ui_token is not None:
            digest = hashlib.sha256(ui_token.encode()).hexdigest()
            extra += f'[ui]\ntoken_sha256 = "{digest}"\n'
        #: The config file's text, for the CLI.
        self.toml = settings_toml(consul, secret, extra, strategy="rolling")
        self.settings = make_settings(consul, secret, strategy="rolling", extra=extra)
        self.app = create_app(self.settings)
        self.parts = components(self.app)
        self.live = Live(self.app)

    def __enter__(self) -> Stack:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.parts.reconciler.stop()
        self.live.__exit__(None, None, None)
        close_sessions(self.parts)

    def deploy(self, tag: str = NEW) -> Any:
        """The webhook, over HTTP."""
        answer = self.live.post(f"/hooks/{self.secret}", json={"tag": tag})
        assert answer.status_code in (200, 202), answer.text
        return answer.json()

    def status(self) -> dict[str, Any]:
        """GET /hooks/<secret>/status."""
        answer = self.live.get(f"/hooks/{self.secret}/status")
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def rollout(self) -> dict[str, Any]:
        rollout: dict[str, Any] = self.status()["rollout"]
        return rollout

    def drive(
        self, until: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Run the leader's passes until the rollout satisfies ``until``."""
        deadline = time.monotonic() + timeout
        while True:
            self.parts.reconciler.run_once(wait=0.1)
            rollout = self.rollout()
            if until(rollout):
                return rollout
            if time.monotonic() > deadline:
                pytest.fail(f"the rollout never got there: {rollout}")
            time.sleep(0.02)

    def finish(self) -> dict[str, Any]:
        """Drive the rollout to its end, then deliver what is left to deliver."""
        rollout = self.drive(lambda r: r["state"] in TERMINAL)
        assert settle(self.parts.reconciler, 10)
        return rollout

    def stage(self, name: str) -> dict[str, Any]:
        return self.drive(lambda r: r.get("stage") == name or r["state"] in TERMINAL)

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every report received so far, by event id."""
        return {r.json()["event_id"]: r.json() for r in self.receiver.received}

    def key(self) -> str | None:
        return self.consul.get(self.consul.key("IMAGE_TAG"))[0]

    def registered(self) -> list[str]:
        """The jobs registered over HTTP, in order."""
        return [r["Job"]["ID"] for r in self.nomad.registrations if "Job" in r]


@pytest.fixture
def nomad(bare_nomad: FakeNomad) -> FakeNomad:
    """No job yet: each test adds the jobs it rolls (``add_jobs``)."""
    return bare_nomad


def prometheus_check(url: str, extra: str = "") -> str:
    return (
        '[[services.web.canary.checks]]\nkind = "prometheus"\nname = "error ratio"\n'
        f"url = \"{url}\"\nquery = '{QUERY}'\nmax = 0.01\n{extra}"
    )


# -- 1. the release phase ------------------------------------------------------------------


def test_the_release_phase_runs_before_any_job_is_registered(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web",), canary=False)
    nomad.script_dispatches("stall")
    with Stack(consul, nomad, secret, receiver, release='job = "migrate"') as stack:
        answer = stack.deploy()
        assert answer["rollout"] == {"state": "pending", "reason": "staged"}
        rollout = stack.stage("release_phase")
        child = rollout["release"]["child"]
        assert child.startswith("migrate/dispatch-")
        assert stack.registered() == []  # nothing registered while it runs
        assert nomad.job(child)["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
        for _ in range(3):  # passes while it runs dispatch nothing more
            stack.parts.reconciler.run_once(wait=0.05)
        assert len(nomad.dispatches) == 1
        _, query, _ = nomad.dispatches[0]
        assert query["idempotency_token"] == [f"noman:web:1:{NEW}"]
        nomad.finish_dispatch(child, "complete")
        done = stack.finish()
        assert done["state"] == "successful"
        assert done["release"]["state"] == "complete" and done["release"]["exit_code"] == 0
        assert stack.registered() == ["web"]
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
        reports = stack.reports()
        assert reports["web:1:release_phase"]["status"] == "stage"
        assert reports["web:1:release_phase_complete"]["description"] == (
            f"release phase: {child} complete"
        )
        assert reports["web:1:successful"]["status"] == "success"


@pytest.mark.parametrize("how", ["failed", "timeout"])
def test_a_release_phase_that_fails_or_times_out_registers_nothing_and_sets_the_key_back(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver, how: str
) -> None:
    add_jobs(nomad, ("web",), canary=False)
    consul.put(consul.key("IMAGE_TAG"), OLD)
    if how == "failed":
        nomad.script_dispatches("failed", exit_code=3, message="relation users already exists")
        release = 'job = "migrate"'
    else:
        nomad.script_dispatches("stall")
        release = 'job = "migrate"\ntimeout = "700ms"'
    with Stack(consul, nomad, secret, receiver, release=release) as stack:
        stack.deploy()
        assert stack.key() == NEW
        done = stack.finish()
        child = done["release"]["child"]
        assert (done["state"], done["reason"]) == ("failed", "release_phase_failed")
        if how == "failed":
            assert done["release"]["exit_code"] == 3
            assert done["description"] == (
                f"Release phase job {child} failed with exit code 3: "
                'Exit Code: 3, Exit Message: "relation users already exists"; '
                f"Policy allows no restarts. Running {OLD}."
            )
        else:
            assert done["release"]["state"] == "timed_out"
            assert done["description"] == (
                f"Release phase {child} did not finish within 0.7s. Running {OLD}."
            )
        assert stack.registered() == []
        assert nomad.job("web")["Version"] == 0  # type: ignore[index]
        assert stack.key() == OLD  # set back to what runs, as after an auto-revert
        status = stack.status()
        assert status["tag"] == OLD
        entry = next(h for h in status["history"] if h["tag"] == NEW)
        assert (entry["outcome"], entry["reason"]) == ("failed", "release_phase_failed")
        assert child in entry["description"]
        assert status["history"][0]["kind"] == "rollback"  # the key's way back, recorded
        report = stack.reports()["web:1:failed"]
        assert report["status"] == "failure" and child in report["description"]
        assert len(nomad.dispatches) == 1
    assert consul.folder(consul.prefix) == [consul.key("IMAGE_TAG")]


def test_a_release_job_nomad_refuses_to_dispatch_fails_at_once(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web", "other"), canary=False)
    with Stack(consul, nomad, secret, receiver, release='job = "other"') as stack:
        stack.deploy()
        done = stack.finish()
        assert (done["state"], done["reason"]) == ("failed", "release_phase_failed")
        assert done["description"].startswith(
            'Nomad refused to dispatch: Specified job "other" is not a parameterized job.'
        )
        assert stack.registered() == [] and nomad.children("other") == []


def test_a_release_job_that_never_ends_holds_the_next_push_only_its_timeout(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web",), canary=False)
    nomad.script_dispatches("stall")
    by_hand = requests.post(  # `nomad job dispatch`, by an operator
        f"{nomad.url}/v1/job/migrate/dispatch", json={"Meta": {"NOMAN_IMAGE_TAG": OLD}}, timeout=5
    )
    child = by_hand.json()["DispatchedJobID"]
    release = 'job = "migrate"\ntimeout = "600ms"'
    with Stack(consul, nomad, secret, receiver, release=release) as stack:
        stack.deploy()
        done = stack.finish()
        assert (done["state"], done["reason"]) == ("failed", "release_phase_failed")
        assert done["description"].startswith(
            f"Release phase: {child} still ran after 0.6s; not dispatched."
        )
        assert [c["ID"] for c in nomad.children("migrate")] == [child]


def test_a_newer_push_waits_for_the_release_job_still_running(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    """Two migrations never run at once: the newer push dispatches once the older one ended."""
    add_jobs(nomad, ("web",), canary=False)
    nomad.script_dispatches("stall")
    newer = "release-20240201000000"
    with Stack(consul, nomad, secret, receiver, release='job = "migrate"') as stack:
        stack.deploy()
        first = stack.stage("release_phase")["release"]["child"]
        stack.deploy(newer)
        waiting = stack.drive(
            lambda r: r["tag"] == newer and "waiting for" in (r["description"] or "")
        )
        assert waiting["description"] == (
            f"Release phase: waiting for {first} to end before dispatching."
        )
        for _ in range(3):
            stack.parts.reconciler.run_once(wait=0.05)
        assert len(nomad.children("migrate")) == 1
        nomad.finish_dispatch(first, "complete")
        second = stack.drive(lambda r: (r.get("release") or {}).get("child") not in (None, first))
        nomad.finish_dispatch(second["release"]["child"], "complete")
        done = stack.finish()
        assert (done["tag"], done["state"]) == (newer, "successful")
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == newer  # type: ignore[index]
        history = {h["tag"]: h["outcome"] for h in stack.status()["history"]}
        assert history == {NEW: "cancelled", newer: "successful"}


# -- 2. several jobs -----------------------------------------------------------------------


def test_two_jobs_roll_in_order(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web", "worker"), canary=False)
    nomad.script_deployments("stall")
    with Stack(consul, nomad, secret, receiver, jobs=("web", "worker")) as stack:
        stack.deploy()
        rollout = stack.drive(lambda r: (r.get("jobs") or [{}])[0].get("deployment_id"))
        assert stack.registered() == ["web"]  # the worker waits for web's deployment
        assert [j["state"] for j in rollout["jobs"]] == ["running", "waiting"]
        nomad.finish_deployment(rollout["jobs"][0]["deployment_id"], "successful")
        rollout = stack.drive(lambda r: r["jobs"][1].get("deployment_id"))
        assert stack.registered() == ["web", "worker"]
        nomad.finish_deployment(rollout["jobs"][1]["deployment_id"], "successful")
        done = stack.finish()
        assert done["state"] == "successful"
        assert [(j["job"], j["state"], j["version"]) for j in done["jobs"]] == [
            ("web", "successful", 1),
            ("worker", "successful", 1),
        ]
        assert stack.reports()["web:1:job_successful.1"]["description"] == (
            "job web version 1 successful; next worker"
        )


def test_the_second_job_failing_reverts_the_first(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    add_jobs(nomad, ("web", "worker"), canary=False)
    consul.put(consul.key("IMAGE_TAG"), OLD)
    nomad.script_deployments("stall")
    with Stack(consul, nomad, secret, receiver, jobs=("web", "worker")) as stack:
        stack.deploy()
        rollout = stack.drive(lambda r: (r.get("jobs") or [{}])[0].get("deployment_id"))
        nomad.finish_deployment(rollout["jobs"][0]["deployment_id"], "successful")
        rollout = stack.drive(lambda r: r["jobs"][1].get("deployment_id"))
        nomad.finish_deployment(rollout["jobs"][1]["deployment_id"], "failed")  # auto-reverts
        done = stack.finish()
        assert (done["state"], done["reason"]) == ("failed", "deployment_failed")
        assert done["description"].startswith("Job worker: Nomad deployment of version 1: failed")
        web, worker = done["jobs"]
        assert (web["state"], web["description"]) == ("reverted", "reverted to version 0")
        assert worker["state"] == "failed"
        assert nomad.reverts == [("web", 0)]  # Noman put web back; Nomad reverted worker
        for job in ("web", "worker"):
            assert nomad.job(job)["Meta"]["NOMAN_IMAGE_TAG"] == OLD  # type: ignore[index]
        assert stack.key() == OLD
        assert "Job worker" in stack.reports()["web:1:failed"]["description"]


# -- 3. canaries analysed and promoted by Noman --------------------------------------------


def test_an_analysis_that_holds_promotes_once(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    prometheus: FakePrometheus,
) -> None:
    add_jobs(nomad, ("web",), canary=True)
    nomad.script_deployments("successful", after=0.2)
    prometheus.answer(FILLED, 0.002)
    canary = 'bake = "600ms"\ninterval = "200ms"'
    checks = prometheus_check(prometheus.url)
    with Stack(consul, nomad, secret, receiver, canary=canary, checks=checks) as stack:
        stack.deploy()
        analysing = stack.stage("analysis")
        started = analysing["analysis"]["started_at"]
        done = stack.finish()
        assert done["state"] == "successful"
        assert len(nomad.promotions) == 1
        assert done["promoted_by"] == "noman"
        analysis = done["analysis"]
        assert analysis["started_at"] == started and analysis["rounds"] >= 3
        assert analysis["passed_at"] - started >= 0.6
        assert analysis["last"] == [
            {
                "check": "error ratio",
                "ok": True,
                "value": 0.002,
                "threshold": "≤ 0.01",
                "at": analysis["last"][0]["at"],
            }
        ]
        assert set(prometheus.queries) == {FILLED}
        reports = stack.reports()
        assert reports["web:1:canary_healthy"]["description"] == (
            "canary healthy: 1/1 canaries of web"
        )
        assert reports["web:1:analysis_passed"]["description"] == (
            "analysis passed: error ratio 0.002 ≤ 0.01"
        )
        assert reports["web:1:promoted"]["description"] == "promoted after the analysis: web"


def failed_analysis(stack: Stack) -> dict[str, Any]:
    """Drive a rollout whose analysis fails; check what every analysis failure does."""
    stack.consul.put(stack.consul.key("IMAGE_TAG"), OLD)
    stack.deploy()
    done = stack.finish()
    assert (done["state"], done["reason"]) == ("failed", "analysis_failed")
    assert stack.nomad.promotions == []
    assert len(stack.nomad.failures) == 1  # the deployment failed: Nomad auto-reverts
    assert stack.nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == OLD  # type: ignore[index]
    assert stack.key() == OLD
    assert stack.reports()["web:1:failed"]["description"] == done["description"]
    return done


def test_an_analysis_failing_on_prometheus_fails_the_deployment(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    prometheus: FakePrometheus,
) -> None:
    add_jobs(nomad, ("web",), canary=True)
    nomad.script_deployments("stall")
    prometheus.answer(FILLED, 0.2)
    checks = prometheus_check(prometheus.url)
    with Stack(
        consul, nomad, secret, receiver, canary='bake = "5s"\ninterval = "200ms"', checks=checks
    ) as stack:
        done = failed_analysis(stack)
        assert done["description"] == (
            f"Analysis failed: error ratio 0.2 not ≤ 0.01. Running {OLD}."
        )
        [measured] = done["analysis"]["last"]
        assert (measured["value"], measured["threshold"], measured["ok"]) == (0.2, "≤ 0.01", False)


def test_an_analysis_failing_on_http_fails_the_deployment(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    canary_app: CanaryApp,
) -> None:
    add_jobs(nomad, ("web",), canary=True)
    nomad.set_ports("web", {"http": ("127.0.0.1", canary_app.port)})
    nomad.script_deployments("stall")
    canary_app.set_status(503)
    checks = '[[services.web.canary.checks]]\nkind = "http"\npath = "/healthz"\nport = "http"\n'
    with Stack(
        consul, nomad, secret, receiver, canary='bake = "5s"\ninterval = "200ms"', checks=checks
    ) as stack:
        done = failed_analysis(stack)
        address = f"127.0.0.1:{canary_app.port}"
        assert done["description"] == (
            f"Analysis failed: GET /healthz 503 not 2xx ({address}). Running {OLD}."
        )
        assert canary_app.paths == ["/healthz"]


@pytest.mark.parametrize("on_no_data", ["fail", "pass"])
def test_no_data(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    receiver: Receiver,
    prometheus: FakePrometheus,
    on_no_data: str,
) -> None:
    add_jobs(nomad, ("web",), canary=True)
    checks = prometheus_check(prometheus.url, f'on_no_data = "{on_no_data}"\n')
    with Stack(
        consul, nomad, secret, receiver, canary='bake = "400ms"\ninterval = "200ms"', checks=checks
    ) as stack:
        if on_no_data == "fail":
            nomad.script_deployments("stall")
            done = failed_analysis(stack)
            assert done["description"] == f"Analysis failed: error ratio: no data. Running {OLD}."
            return
        stack.deploy()
        done = stack.finish()
        assert done["state"] == "successful" and len(nomad.promotions) == 1
        assert stack.reports()["web:1:analysis_passed"]["description"] == (
            "analysis passed: error ratio: no data"
        )


def test_canaries_without_a_canary_table_get_the_default_bake(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver
) -> None:
    """A plain service whose job places canaries: Noman takes them over, never leaves them."""
    add_jobs(nomad, ("web",), canary=True)
    nomad.script_deployments("stall")
    with Stack(consul, nomad, secret, receiver, jobs=("web",)) as stack:
        # One job and no table: not staged, so the hook registers inline as before.
        assert not stack.settings.services[0].staged
        assert stack.deploy()["deployment"]["version"] == 1
        rollout = stack.drive(lambda r: (r.get("analysis") or {}).get("rounds"))
        assert rollout["stage"] == "analysis"
        assert rollout["analysis"]["next_at"] > rollout["analysis"]["started_at"]
        assert rollout["jobs"][0]["canaries"] == 1
        assert nomad.promotions == []  # the default bake is a minute
