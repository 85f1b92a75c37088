"""A kill -9 of the leader in the middle of a stage: another instance resumes it.

Two real Noman instances (gunicorn with the shipped configuration, each in a
process group of its own) share the fake Consul and the fake Nomad of the test.
The first takes the webhook and leads; it is killed with SIGKILL in the middle
of the release phase, or of the bake. Its Consul session is then expired, as
Consul does when a dead holder stops renewing it (after ``session_ttl``); the
second instance takes the lock and carries the rollout on from the record: the
dispatched job is followed, never dispatched again, and the bake keeps the time
it had already spent.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, gunicorn_command
from tests.fakes.canary import CanaryApp
from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad
from tests.test_staged import NEW, add_jobs

ROOT = Path(__file__).resolve().parent.parent
BAKE = 6.0
APP = "noman:create_app()"


class Instance:
    """One Noman under gunicorn, killable with SIGKILL (master and worker alike)."""

    def __init__(self, tmp: Path, config: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shm = tmp / f"shm-{name}"
        shm.mkdir()
        env = {
            **os.environ,
            "NOMAN_CONFIG": str(config),
            "NOMAN_BIND": f"127.0.0.1:{self.port}",
            "NOMAN_WORKERS": "1",
            "NOMAN_WORKER_TMP_DIR": str(shm),
            "PYTHONPATH": str(ROOT),
        }
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                gunicorn_command(APP),
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the worker
            )
        wait_for(self._healthy, 20, f"instance {name} to serve")
        self.started = time.time()

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL to the master and its worker: no shutdown hook runs, no lock is given back."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Pair:
    """The fakes, the config, and the instances started so far."""

    def __init__(self, tmp: Path, consul: FakeConsul, nomad: FakeNomad, app: CanaryApp) -> None:
        self.tmp, self.consul, self.nomad = tmp, consul, nomad
        self.secret = "Zq3" + "x" * 40
        digest = hashlib.sha256(self.secret.encode()).hexdigest()
        self.config = tmp / "noman.toml"
        self.config.write_text(
            f'[consul]\naddress = "{consul.url}"\ntimeout = 2\nsession_ttl = 10\nlock_delay = 0\n'
            f'[nomad]\naddress = "{nomad.url}"\ntimeout = 2\n'
            "[rollout]\nretry_backoff = 0.1\nretry_max = 0.5\n"
            "[services.web]\n"
            'repository = "stut/stut.dev"\nkey = "configs/web/IMAGE_TAG"\n'
            f'secret_sha256 = "{digest}"\nstrategy = "rolling"\n'
            '[services.web.nomad]\njob = "web"\n'
            '[services.web.release_phase]\njob = "migrate"\n'
            f'[services.web.canary]\nbake = "{BAKE:g}s"\ninterval = "500ms"\n'
            '[[services.web.canary.checks]]\nkind = "http"\npath = "/healthz"\nport = "http"\n'
        )
        nomad.set_ports("web", {"http": ("127.0.0.1", app.port)})
        self.instances: list[Instance] = []

    def start(self) -> Instance:
        instance = Instance(self.tmp, self.config, f"noman{len(self.instances) + 1}")
        self.instances.append(instance)
        return instance

    def rollout(self, instance: Instance) -> dict[str, Any]:
        answer = requests.get(f"{instance.url}/hooks/{self.secret}/status", timeout=5)
        assert answer.status_code == 200, answer.text
        rollout: dict[str, Any] = answer.json()["rollout"] or {}
        return rollout

    def kill_leader(self, leader: Instance) -> None:
        """kill -9, then the session lapses as it would after session_ttl."""
        [session] = [s["ID"] for s in self.consul.sessions()]
        leader.kill()
        assert self.consul.expire_session(session)

    def logs(self) -> str:
        return "\n".join(i.log.read_text(errors="replace") for i in self.instances)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with FakeConsul() as consul, FakeNomad() as nomad, CanaryApp() as app:
        add_jobs(nomad, ("web",), canary=True)
        built = Pair(tmp_path, consul, nomad, app)
        try:
            yield built
        finally:
            for instance in built.instances:
                instance.stop()


def deploy(pair: Pair, instance: Instance) -> None:
    answer = requests.post(f"{instance.url}/hooks/{pair.secret}", json={"tag": NEW}, timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.json()["rollout"] == {"state": "pending", "reason": "staged"}


def test_a_leader_killed_in_the_release_phase(pair: Pair) -> None:
    pair.nomad.script_dispatches("stall")
    first = pair.start()
    deploy(pair, first)
    running = wait_for(
        lambda: (r := pair.rollout(first)).get("release", {}).get("child") and r, 15, "dispatch"
    )
    child = running["release"]["child"]
    pair.kill_leader(first)
    second = pair.start()
    time.sleep(1.0)  # the new leader follows the child job meanwhile
    assert pair.rollout(second)["stage"] == "release_phase"
    pair.nomad.finish_dispatch(child, "complete")
    done = wait_for(
        lambda: (r := pair.rollout(second))["state"] in ("successful", "failed") and r,
        30,
        "the rollout to end",
    )
    assert done["state"] == "successful", (done, pair.logs())
    assert len(pair.nomad.dispatches) == 1  # no second dispatch
    assert [c["ID"] for c in pair.nomad.children("migrate")] == [child]
    assert done["release"]["started_at"] == running["release"]["started_at"]
    assert pair.nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]


def test_a_leader_killed_during_the_bake(pair: Pair) -> None:
    first = pair.start()
    deploy(pair, first)
    baking = wait_for(
        lambda: (r := pair.rollout(first)).get("analysis", {}).get("rounds", 0) >= 5 and r,
        30,
        "two seconds of the bake",
    )
    started = baking["analysis"]["started_at"]
    pair.kill_leader(first)
    killed_at = time.time()
    second = pair.start()
    assert second.started - started < BAKE - 2, "too slow a start to tell a resumed bake"
    done = wait_for(
        lambda: (r := pair.rollout(second))["state"] in ("successful", "failed") and r,
        30,
        "the rollout to end",
    )
    assert done["state"] == "successful", (done, pair.logs())
    analysis = done["analysis"]
    assert analysis["started_at"] == started  # the bake's start is the record's
    # Promoted once the bake ran out, counted from the canaries' health, not from the
    # new leader's start: a restarted bake would end BAKE seconds after it.
    assert started + BAKE <= analysis["passed_at"] < killed_at + BAKE - 0.5
    assert analysis["rounds"] > baking["analysis"]["rounds"]
    assert len(pair.nomad.promotions) == 1
    assert len(pair.nomad.dispatches) == 1
