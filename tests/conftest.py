"""Shared fixtures: a Consul (fake, or real when CONSUL_HTTP_ADDR is set), settings, app.

Integration tests talk to Consul only over HTTP through ``ConsulHandle``, so
they run unchanged against a real Consul; tests that need fault injection
ask for ``consul.require_fake()`` and are skipped against a real one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask

from noman import create_app
from noman.cli import GUNICORN_CONFIG
from noman.config import Settings, parse_settings
from noman.reconcile import Reconciler
from noman.state import Desired, HistoryEntry, Keys, Report, RolloutState, decode, first_rollout
from noman.wiring import components
from tests.fakes._server import FakeClock
from tests.fakes.canary import CanaryApp
from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad, sample_service_job
from tests.fakes.prometheus import FakePrometheus
from tests.fakes.receiver import Receiver

# Read before the autouse fixture below clears the environment for each test.
REAL_CONSUL_ADDR = os.environ.get("CONSUL_HTTP_ADDR")
REAL_CONSUL_TOKEN = os.environ.get("CONSUL_HTTP_TOKEN")
SAMPLE_TAG = "release-20230103082900"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's NOMAN_*, CONSUL_* or NOMAD_* variables."""
    for name in list(os.environ):
        if name.startswith(("NOMAN_", "CONSUL_", "NOMAD_")):
            monkeypatch.delenv(name)


THREAD_GRACE_SECONDS = 5


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail the test that leaves a thread running (threads from before it are allowed).

    Threads that are just finishing (a report being sent, a fake server's
    handler closing) get a few seconds to end.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE_SECONDS
    leftover = [t for t in threading.enumerate() if t not in before]
    for thread in leftover:
        thread.join(max(0.0, deadline - time.monotonic()))
    # A fake server's per-connection handler may still wait on an idle keep-alive
    # connection of a client the test dropped; it dies with that connection.
    running = [t.name for t in leftover if t.is_alive() and "process_request_thread" not in t.name]
    if running:
        pytest.fail(f"the test left threads running: {running}", pytrace=False)


def gunicorn_command(app: str = "noman:create_app()") -> list[str]:
    """``python -m gunicorn`` with Noman's shipped configuration, as ``noman serve`` runs it."""
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, app]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class StoredState:
    """What Noman keeps for one service, as a test reads it back from Consul."""

    tag: str | None
    frozen: bool
    deliveries: dict[str, float]
    rollout: RolloutState | None
    history: list[HistoryEntry]
    reports: tuple[Report, ...]


class ConsulHandle:
    """One Consul for one test, reached over plain HTTP; keys live under a unique prefix."""

    def __init__(self, url: str, token: str | None, fake: FakeConsul | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.fake = fake
        self.prefix = f"noman-test/{uuid.uuid4().hex[:12]}"
        self.http = requests.Session()
        if token:
            self.http.headers["X-Consul-Token"] = token

    def key(self, name: str) -> str:
        """A key name private to this test."""
        return f"{self.prefix}/{name}"

    @property
    def state_prefix(self) -> str:
        """Noman's own folder for this test (outside the service keys' folder)."""
        return f"{self.prefix}-noman/"

    def record(self, service: str = "web") -> StoredState:
        """The service's Noman state as stored, read key by key over plain HTTP."""
        keys = Keys(self.state_prefix)
        desired = decode(Desired, "desired", self.get(keys.desired(service))[0]) or Desired()
        rollout = decode(RolloutState, "rollout", self.get(keys.rollout(service))[0])
        attempt = desired.attempt
        if attempt is not None and (rollout is None or rollout.seq < attempt.seq):
            rollout = first_rollout(attempt, attempt.time)  # not taken up yet: pending
        history = [
            decode(HistoryEntry, key, value)
            for key, value in sorted(self.tree(keys.history_folder(service)).items(), reverse=True)
        ]
        reports = tuple(
            decode(Report, key, value)
            for key, value in sorted(self.tree(f"{keys.outbox_folder}{service}/").items())
        )
        return StoredState(
            desired.tag,
            desired.frozen,
            desired.deliveries,
            rollout,
            [h for h in history if h is not None],
            tuple(r for r in reports if r is not None),
        )

    def tree(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its value."""
        import base64

        answer = self.http.get(f"{self.url}/v1/kv/{prefix}", params={"recurse": ""}, timeout=5)
        if answer.status_code == 404:
            return {}
        answer.raise_for_status()
        return {
            e["Key"]: base64.b64decode(e["Value"]).decode() if e["Value"] else ""
            for e in answer.json()
        }

    def folder(self, folder: str) -> list[str]:
        """The keys directly in ``folder`` (what consul-template's ``ls`` lists)."""
        answer = self.http.get(
            f"{self.url}/v1/kv/{folder}/", params={"keys": "", "separator": "/"}, timeout=5
        )
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        keys: list[str] = answer.json()
        return keys

    def get(self, key: str) -> tuple[str | None, int]:
        """The key's value and ModifyIndex as Consul reports them (None, 0 if missing)."""
        answer = self.http.get(f"{self.url}/v1/kv/{key}", timeout=5)
        if answer.status_code == 404:
            return None, 0
        answer.raise_for_status()
        entry = answer.json()[0]
        import base64

        value = base64.b64decode(entry["Value"]).decode() if entry["Value"] else ""
        return value, entry["ModifyIndex"]

    def put(self, key: str, value: str) -> None:
        """Write the key directly, as an operator would."""
        answer = self.http.put(f"{self.url}/v1/kv/{key}", data=value.encode(), timeout=5)
        answer.raise_for_status()
        assert answer.json() is True

    def require_fake(self) -> FakeConsul:
        """The fake server, for fault injection; skips the test against a real Consul."""
        if self.fake is None:
            pytest.skip("needs the fake Consul's fault injection")
        return self.fake

    def cleanup(self) -> None:
        with contextlib.suppress(requests.RequestException):
            self.http.delete(f"{self.url}/v1/kv/{self.prefix}?recurse", timeout=5)


@pytest.fixture
def consul() -> Iterator[ConsulHandle]:
    """A real Consul when CONSUL_HTTP_ADDR is set, else a fresh fake on a free port."""
    if REAL_CONSUL_ADDR:
        url = REAL_CONSUL_ADDR if "://" in REAL_CONSUL_ADDR else f"http://{REAL_CONSUL_ADDR}"
        handle = ConsulHandle(url, REAL_CONSUL_TOKEN, None)
        yield handle
        handle.cleanup()
        return
    with FakeConsul() as fake:
        yield ConsulHandle(fake.url, None, fake)


@pytest.fixture
def secret() -> str:
    """A fresh hook secret."""
    return secrets.token_urlsafe(32)


def settings_toml(consul: ConsulHandle, secret: str, extra: str = "", **service: Any) -> str:
    """A config file text for one service 'web' stored in ``consul``."""
    import hashlib

    fields = {
        "repository": "stut/stut.dev",
        "key": consul.key("IMAGE_TAG"),
        "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
        **service,
    }
    lines = "\n".join(f"{name} = {_toml(value)}" for name, value in fields.items())
    token = f"token = {_toml(consul.token)}\n" if consul.token else ""
    return (
        f'[consul]\naddress = "{consul.url}"\ntimeout = 1\n{token}'
        f'state_prefix = "{consul.state_prefix}"\n\n'
        f"[services.web]\n{lines}\n{extra}"
    )


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and "\\" in value:
        return f"'{value}'"  # literal string: regexes keep their backslashes
    return json.dumps(value)


@pytest.fixture
def settings(consul: ConsulHandle, secret: str) -> Settings:
    """Settings with one restart-strategy service 'web' on the test's Consul."""
    return offline(parse_settings(settings_toml(consul, secret), source="test.toml", environ={}))


def make_settings(
    consul: ConsulHandle,
    secret: str,
    extra: str = "",
    environ: dict[str, str] | None = None,
    **service: Any,
) -> Settings:
    """Offline settings from ``settings_toml`` (same arguments)."""
    text = settings_toml(consul, secret, extra, **service)
    return offline(parse_settings(text, source="test.toml", environ=environ or {}))


class NoConsul:
    """What ``make_settings`` takes for an app whose tags live in a FileStore: no Consul."""

    url = "http://127.0.0.1:9"
    token = None
    state_prefix = "noman/"

    def key(self, name: str) -> str:
        """A key name, as ConsulHandle gives them."""
        return f"fuzz/{name}"


def memory_client(secret: str, **service: Any) -> Any:
    """A test client of an app for one service 'web' whose tags live in memory."""
    from noman.stores.file import FileStore

    settings = make_settings(NoConsul(), secret, **service)  # type: ignore[arg-type]
    return create_app(settings, store=FileStore()).test_client()


def offline(settings: Settings) -> Settings:
    """``settings`` that never call DockerHub (sample payloads carry real callback URLs)."""
    return dataclasses.replace(settings, callback_hosts=())


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    """The Noman app on the test's Consul."""
    app = create_app(settings)
    yield app
    components(app).reporter.wait(5)


@pytest.fixture
def client(app: Any) -> Any:
    """A Flask test client."""
    return app.test_client()


def settle(reconciler: Reconciler, timeout: float = 10.0, wait: float = 0.2) -> bool:
    """Run the reconciler's passes until nothing is in flight; True if it settled in time.

    Nothing in flight: no pending key but the marker and the gates' (a deploy waiting for
    approvals or a window is not work), and no report in the outbox.
    """
    keys = reconciler.keys
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = reconciler.run_once(wait=wait)
        if not reconciler.leader:
            time.sleep(min(wait, 0.1))  # another instance leads, or the lock is in delay
            continue
        if busy:
            continue
        pending = reconciler.store.list(keys.pending_folder).entries
        working = [k for k in pending if k != keys.pending_marker and keys.parse_gate(k) is None]
        if not working and not reconciler.store.list(keys.outbox_folder).entries:
            return True
        time.sleep(min(wait, 0.05))
    return False


def post_hook(
    to: Any,
    secret: str,
    tag: str | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    """POST to ``/hooks/<secret>`` of ``to`` (an app or its test client), as a sender does.

    The body is ``{"tag": tag, **fields}``, or ``body`` itself: bytes and text go as they
    are, anything else as JSON. ``headers`` replace the JSON content type when given.
    """
    client = to.test_client() if isinstance(to, Flask) else to
    if body is None:
        body = {"tag": tag, **fields}
    if isinstance(body, bytes | str):
        data = body
    elif headers is None:
        return client.post(f"/hooks/{secret}", json=body)
    else:
        data = json.dumps(body)
    json_type = {"Content-Type": "application/json"}
    return client.post(
        f"/hooks/{secret}", data=data, headers=json_type if headers is None else headers
    )


#: The tag the ``nomad`` fixture's job "web" runs before a rolling test deploys.
RUNNING_TAG = "release-20230101000000"


@pytest.fixture
def nomad() -> Iterator[FakeNomad]:
    """A fake Nomad whose service job "web" runs ``RUNNING_TAG`` (in Meta and image)."""
    with FakeNomad() as fake:
        job = sample_service_job("web", image=f"stut/stut.dev:{RUNNING_TAG}")
        job["Meta"]["NOMAN_IMAGE_TAG"] = RUNNING_TAG
        fake.add_job(job)
        yield fake


def rolling_extra(nomad: FakeNomad, rollout: str = "") -> str:
    """TOML that makes service "web" roll job "web" on ``nomad``, retrying quickly.

    ``rollout`` adds lines to the ``[rollout]`` table (and may open further tables).
    """
    return (
        '[services.web.nomad]\njob = "web"\n'
        f'[nomad]\naddress = "{nomad.url}"\ntimeout = 1\npoll_interval = 0.05\n'
        f"[rollout]\nretry_backoff = 0.05\nretry_max = 0.2\n{rollout}"
    )


@pytest.fixture
def bare_nomad() -> Iterator[FakeNomad]:
    """A fake Nomad without jobs: the staged tests add the ones they roll."""
    with FakeNomad() as fake:
        yield fake


@pytest.fixture
def clock() -> FakeClock:
    """A manual clock for the fakes: time moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A notify target that records what it receives."""
    with Receiver() as server:
        yield server


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    """A fake Prometheus query API (no query scripted: every answer is "no data")."""
    with FakePrometheus() as fake:
        yield fake


@pytest.fixture
def canary_app() -> Iterator[CanaryApp]:
    """A canary allocation's HTTP server: one status for every path, and /metrics."""
    with CanaryApp() as app:
        yield app
