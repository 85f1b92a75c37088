"""The production gunicorn configuration, for real: no secret in any log, chunked limits."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from noman.cli import GUNICORN_CONFIG
from tests.conftest import SAMPLE_TAG, free_port
from tests.fakes.consul import FakeConsul
from tests.support.crashing_app import CRASH_TAG

ROOT = Path(__file__).resolve().parent.parent


class Gunicorn:
    """gunicorn with noman.server.config, logs captured to files."""

    def __init__(
        self,
        tmp: Path,
        config: Path,
        app: str = "noman:create_app()",
        shipped: bool = True,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        scheme: str = "http",
        verify: str | bool = True,
        conf: str = GUNICORN_CONFIG,
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.stdout = tmp / "access.log"
        self.stderr = tmp / "error.log"
        env = {
            **os.environ,
            "NOMAN_CONFIG": str(config),
            "NOMAN_BIND": f"127.0.0.1:{self.port}",
            "NOMAN_WORKERS": str(workers),
            "NOMAN_GUNICORN_LOG_LEVEL": "debug",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn"]
                + (["-c", conf] if shipped else ["--bind", env["NOMAN_BIND"]])
                + [app],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start: {self.stderr.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def write_config(tmp: Path, consul_url: str, secret: str, key: str = "web/IMAGE_TAG") -> Path:
    config = tmp / "noman.toml"
    config.write_text(
        f'[consul]\naddress = "{consul_url}"\ntimeout = 1\n\n'
        "[services.web]\n"
        'repository = "stut/stut.dev"\n'
        f'key = "{key}"\n'
        f'secret_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
    )
    return config


@pytest.fixture
def served(tmp_path: Path, secret: str) -> Iterator[tuple[Gunicorn, FakeConsul]]:
    with FakeConsul() as fake:
        server = Gunicorn(
            tmp_path,
            write_config(tmp_path, fake.url, secret),
            "tests.support.crashing_app:create_app()",
        )
        try:
            yield server, fake
        finally:
            if server.process.poll() is None:
                server.stop()


def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes (for requests no HTTP client would send) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_no_secret_in_any_log(served: tuple[Gunicorn, FakeConsul], secret: str) -> None:
    server, fake = served
    url = f"{server.url}/hooks/{secret}"
    bearer = {"Authorization": f"Bearer {secret}"}
    outcomes = [
        requests.post(url, json={"tag": SAMPLE_TAG}).status_code,
        requests.post(f"{server.url}/hooks", json={"tag": SAMPLE_TAG}, headers=bearer).status_code,
        requests.post(url, data=b"{nope", headers={"Content-Type": "application/json"}).status_code,
        requests.post(url, data="tag=x").status_code,
        requests.post(url, json={"tag": "x" * 100_000}).status_code,
        requests.post(
            url,
            data=iter([b'{"tag": "', b"x" * 100_000, b'"}']),
            headers={"Content-Type": "application/json"},
        ).status_code,
        requests.post(url, json={"tag": CRASH_TAG}).status_code,
        requests.post(f"{server.url}/hooks", json={"tag": CRASH_TAG}, headers=bearer).status_code,
        requests.get(url).status_code,
        requests.get(f"{url}/deployment").status_code,
        requests.post(f"{server.url}/%68ooks/{secret}", json={"tag": SAMPLE_TAG}).status_code,
        requests.post(f"{url}?token={secret}", json={"tag": SAMPLE_TAG}).status_code,
    ]
    assert outcomes == [200, 200, 400, 415, 413, 413, 500, 500, 405, 200, 200, 200]
    # What only a broken or hostile client sends: gunicorn itself answers these.
    raw(server.port, f"POST /hooks/{secret} HTTP/1.1 junk\r\n\r\n".encode())
    raw(server.port, f"POST /hooks/{secret}?{'a' * 5000} HTTP/1.1\r\n\r\n".encode())
    raw(server.port, f"POST /hooks/{secret} HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".encode())
    raw(
        server.port,
        f"POST /hooks/{secret} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        'Content-Type: application/json\r\n\r\n{"tag"'.encode(),
    )
    raw(server.port, f"GARBAGE\x00/hooks/{secret}\r\n\r\n".encode())
    assert server.stop() == 0
    logs = server.logs()
    assert secret not in logs
    # The logs did record the requests, so the absence above means something:
    # the access log names the route's template, never the path sent, and a
    # hook request is one line: its hook line, carrying the access fields.
    hook_lines = [json.loads(line) for line in logs.splitlines() if '"noman.hooks"' in line]
    posted = [line for line in hook_lines if line.get("method") == "POST"]
    assert len(posted) >= 9
    assert {line["route"] for line in posted} == {"/hooks/<secret>", "/hooks"}
    assert all(isinstance(line["bytes"], int) and line["remote"] for line in posted)
    assert '"POST /hooks/<secret> HTTP/1.1"' not in logs
    assert '"GET /hooks/<secret>/deployment HTTP/1.1"' in logs
    assert '"outcome":"deployed"' in logs
    assert "unexpected error" in logs
    assert fake.value("web/IMAGE_TAG") == SAMPLE_TAG.encode()


def test_chunked_body_within_the_cap_deploys(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    body = iter([b'{"tag": ', b'"' + SAMPLE_TAG.encode() + b'"}'])
    answer = requests.post(
        f"{server.url}/hooks/{secret}", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert fake.value("web/IMAGE_TAG") == SAMPLE_TAG.encode()


def test_oversized_chunked_body_is_413_and_writes_nothing(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    body: Any = iter([b'{"tag": "release-20250101000000", "repository": "', b"x" * 70_000, b'"}'])
    answer = requests.post(
        f"{server.url}/hooks/{secret}", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    # Nothing deployed: neither the tag key nor the record (the reconciler's own lock
    # session is the only thing written).
    assert fake.value("web/IMAGE_TAG") is None
    assert fake.value("noman/web") is None


def test_sigterm_during_a_slow_consul_call_exits_cleanly(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    fake.hang(3)
    started = time.monotonic()
    import threading

    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG}).status_code
        )
    )
    before = len(fake.requests)
    thread.start()
    deadline = time.monotonic() + 10
    while len(fake.requests) == before:
        assert time.monotonic() < deadline, "the hook never reached Consul"
        time.sleep(0.01)  # polling the condition above
    assert server.stop() == 0
    thread.join(10)
    assert time.monotonic() - started < 20  # well inside graceful_timeout
    assert answers == [503]
    # Nothing deployed: neither the tag key nor the record (the reconciler's own lock
    # session is the only thing written).
    assert fake.value("web/IMAGE_TAG") is None
    assert fake.value("noman/web") is None


def test_plain_gunicorn_without_the_shipped_config_leaks_nothing(
    tmp_path: Path, secret: str
) -> None:
    """`gunicorn 'noman:create_app()'` alone: the app filters gunicorn's handlers itself."""
    with FakeConsul() as fake:
        server = Gunicorn(tmp_path, write_config(tmp_path, fake.url, secret), shipped=False)
        try:
            answer = requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG})
            assert answer.status_code == 200
            raw(server.port, f"POST /hooks/{secret} HTTP/1.1 junk\r\n\r\n".encode())
            raw(server.port, f"POST /hooks/{secret} HTTP/1.1\r\nBad Header: y\r\n\r\n".encode())
        finally:
            assert server.stop() == 0
    logs = server.logs()
    assert secret not in logs
    assert '"outcome":"deployed"' in logs


def test_metrics_add_up_across_workers_and_carry_no_secret(tmp_path: Path, secret: str) -> None:
    with FakeConsul() as fake:
        server = Gunicorn(tmp_path, write_config(tmp_path, fake.url, secret), workers=2)
        try:
            session = requests.Session()
            for i in range(6):
                # New connections, so both workers answer some of them.
                requests.post(
                    f"{server.url}/hooks/{secret}", json={"tag": f"release-2024010100000{i}"}
                )
            requests.post(f"{server.url}/hooks/wrong-secret", json={"tag": SAMPLE_TAG})
            text = session.get(f"{server.url}/metrics").text
        finally:
            server.stop()
    assert secret not in text
    assert 'noman_hook_requests_total{outcome="deployed",service="web"} 6.0' in text
    assert 'noman_hook_requests_total{outcome="not_found",service=""} 1.0' in text
    # Timed: the six hooks whose secret matched; the wrong secret is only counted.
    assert "noman_hook_duration_seconds_count 6.0" in text


def test_one_worker_leads_and_reports_once_then_hands_over_at_shutdown(
    tmp_path: Path, secret: str
) -> None:
    """Under gunicorn each worker runs a reconciler; exactly one leads and sends the report."""
    from tests.fakes.receiver import Receiver

    with FakeConsul() as fake, Receiver() as receiver:
        config = write_config(tmp_path, fake.url, secret)
        config.write_text(
            config.read_text()
            + f'\n[notify]\non = ["success"]\n[[notify.targets]]\nurl = "{receiver.url}/n"\n'
        )
        server = Gunicorn(tmp_path, config, workers=2)
        try:
            answer = requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG})
            assert answer.status_code == 200
            note = receiver.wait_for(1, timeout=15)[0].json()
            assert note["event_id"] == "web:1:successful"
            leader = fake.entry("noman/.leader")
            assert leader is not None and leader.get("Session")
        finally:
            assert server.stop() == 0
        assert len(receiver.received) == 1  # every worker has exited: no late second report
        # The workers gave the lock up on their way out: no live session holds it.
        after = fake.entry("noman/.leader")
        assert after is None or not after.get("Session")
        assert fake.value("noman/service/web/desired") is not None
        assert fake.keys("noman/outbox/") == []  # delivered and deleted
