"""The raw edge against the real server: slow clients, gunicorn's own errors, bodies, TLS."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import SAMPLE_TAG
from tests.fakes.consul import FakeConsul
from tests.test_gunicorn_logs import Gunicorn, raw, write_config

READ_TIMEOUT = 6


@pytest.fixture
def served(tmp_path: Path, secret: str) -> Iterator[tuple[Gunicorn, FakeConsul]]:
    """The production configuration (2 workers) on a fake Consul, short read deadline."""
    with FakeConsul() as fake:
        server = Gunicorn(
            tmp_path,
            write_config(tmp_path, fake.url, secret),
            workers=2,
            extra_env={"NOMAN_READ_TIMEOUT": str(READ_TIMEOUT)},
        )
        try:
            yield server, fake
        finally:
            if server.process.poll() is None:
                server.stop()


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length (TLS may deliver it in pieces)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
        split_answer(data)[1].get("content-length", "0")
    ):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing ``sock`` (None: still open after ``seconds``)."""
    received = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            try:
                chunk = sock.recv(65536)
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk
    return None


def test_fifty_slow_clients_do_not_delay_a_webhook(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    slow_headers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    slow_bodies = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    started = time.monotonic()
    for sock in slow_headers:
        sock.sendall(b"POST /hooks/nope HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    for sock in slow_bodies:
        sock.sendall(
            f"POST /hooks/{secret} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 500\r\n\r\n{"tag": "'.encode()
        )
    stop = threading.Event()

    def trickle() -> None:
        # One byte per connection every 0.2 s: each stays "active" throughout.
        while not stop.wait(0.2):
            for sock in slow_headers + slow_bodies:
                with contextlib.suppress(OSError):  # cut by the server: expected
                    sock.send(b"a")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        latencies = []
        for i in range(5):
            before = time.monotonic()
            answer = requests.post(
                f"{server.url}/hooks/{secret}",
                json={"tag": f"release-2023010308290{i}"},
                timeout=10,
            )
            latencies.append(time.monotonic() - before)
            assert answer.status_code == 200, answer.text
        # On 2 shared, busy cores: generous, yet gthread made these wait 30 s.
        assert max(latencies) < 2.0, latencies
        assert time.monotonic() - started < READ_TIMEOUT  # all while the slow ones were live
        # The read deadline cuts every slow connection; a slow body gets a JSON 408.
        for sock in slow_headers:
            assert closed_within(sock, READ_TIMEOUT + 5) is not None
        for sock in slow_bodies:
            sent = closed_within(sock, READ_TIMEOUT + 5)
            assert sent is not None
            status, headers, body = split_answer(sent)
            assert status == 408
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["error"] == "request_timeout"
    finally:
        stop.set()
        trickler.join()
        for sock in slow_headers + slow_bodies:
            sock.close()
    assert fake.value("web/IMAGE_TAG") == b"release-20230103082904"


def pre_flask(secret: str) -> list[tuple[str, bytes, int]]:
    """Requests that gunicorn refuses itself, before the app sees them."""
    hook = f"/hooks/{secret}"
    return [
        ("two spaces", f"POST  {hook}  HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400),
        ("junk version", f"POST {hook} HTTP/1.1 junk\r\n\r\n".encode(), 400),
        ("bad method", f"P\x00ST {hook} HTTP/1.1\r\n\r\n".encode(), 400),
        ("no version", f"POST {hook}\r\n\r\n".encode(), 400),
        ("bad header", f"POST {hook} HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".encode(), 400),
        ("uri too long", f"POST {hook}?{'a' * 5000}{secret} HTTP/1.1\r\n\r\n".encode(), 414),
        (
            "headers too large",
            f"POST {hook} HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 100_000}\r\n\r\n".encode(),
            431,
        ),
        (
            "too many headers",
            (f"POST {hook} HTTP/1.1\r\n" + "X-A: 1\r\n" * 150 + "\r\n").encode(),
            431,
        ),
        (
            "duplicate content-length",
            f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            "Content-Length: 3\r\n\r\n{}".encode(),
            400,
        ),
        (
            "content-length and chunked",
            f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".encode(),
            400,
        ),
        (
            "unknown transfer coding",
            f"POST {hook} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n".encode(),
            501,
        ),
    ]


def test_gunicorns_own_errors_are_json_and_echo_nothing(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    for name, request, expected in pre_flask(secret):
        answer = raw(server.port, request)
        status, headers, body = split_answer(answer)
        assert status == expected, name
        assert headers["content-type"] == "application/json", name
        assert set(json.loads(body)) == {"error", "message"}, name
        assert secret.encode() not in answer, name
        assert b"hooks" not in answer and b"junk" not in answer, name
    assert server.stop() == 0
    assert secret not in server.logs()
    # The reconciler takes its leader lock; the service's key and record stay unwritten.
    assert fake.value("web/IMAGE_TAG") is None and fake.value("noman/web") is None


def chunked(secret: str, body: bytes) -> bytes:
    return (
        f"POST /hooks/{secret} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + body


def with_length(secret: str, body: bytes, length: int) -> bytes:
    return (
        f"POST /hooks/{secret} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode() + body


BODY = json.dumps({"tag": SAMPLE_TAG}).encode()
TAG = SAMPLE_TAG.encode()
DOCKERHUB_1E400 = (
    b'{"push_data": {"tag": "%s", "pushed_at": 1e400},'
    b' "repository": {"repo_name": "stut/stut.dev"}}' % TAG
)


def exact(secret: str, body: bytes) -> bytes:
    return with_length(secret, body, len(body))


MALFORMED: list[tuple[str, Callable[[str], bytes], str]] = [
    ("bad chunk size", lambda s: chunked(s, b"zz\r\n{}\r\n0\r\n\r\n"), "bad_request"),
    ("no terminator", lambda s: chunked(s, b"%x\r\n" % len(BODY) + BODY), "bad_request"),
    ("cut mid-chunk", lambda s: chunked(s, b"100\r\n" + BODY), "bad_request"),
    ("chunk overruns", lambda s: chunked(s, b"2\r\n" + BODY + b"\r\n0\r\n\r\n"), "bad_request"),
    ("short body", lambda s: with_length(s, BODY, len(BODY) + 10), "bad_request"),
    ("pushed_at 1e400", lambda s: exact(s, DOCKERHUB_1E400), "invalid_payload"),
    ("-1e400", lambda s: exact(s, b'{"tag": "%s", "x": -1e400}' % TAG), "invalid_payload"),
    ("1e309", lambda s: exact(s, b'{"tag": "%s", "x": [{"y": 1e309}]}' % TAG), "invalid_payload"),
]


def test_malformed_bodies_are_400_and_write_nothing(
    served: tuple[Gunicorn, FakeConsul], secret: str
) -> None:
    server, fake = served
    for name, build, code in MALFORMED:
        request = build(secret)
        status, headers, body = split_answer(raw(server.port, request))
        assert (status, json.loads(body)["error"]) == (400, code), name
        assert headers["content-type"] == "application/json", name
    # A body refused unread is not waited for: the answer comes at once and the
    # connection closes (instead of gunicorn draining 1 GB until the read deadline).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(with_length(secret, b"{", 10**9))
        answer = closed_within(sock, READ_TIMEOUT / 2)
    assert answer is not None and answer.count(b"HTTP/1.1 ") == 1, answer
    assert split_answer(answer)[0] == 413
    # The reconciler takes its leader lock; the service's key and record stay unwritten.
    assert fake.value("web/IMAGE_TAG") is None and fake.value("noman/web") is None


# -- TLS -------------------------------------------------------------------------------------


def tls_config(tmp_path: Path, consul_url: str, secret: str) -> Path:
    config = write_config(tmp_path, consul_url, secret)
    config.write_text(
        f'[server]\ntls_cert = "{tmp_path / "cert.pem"}"\ntls_key = "{tmp_path / "key.pem"}"\n'
        + config.read_text()
    )
    return config


def issue(tmp_path: Path, name: str) -> Path:
    """A fresh CA with a certificate for 127.0.0.1 written as the server's files; the CA's path."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca_path = tmp_path / f"{name}.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ca_path


def verifies_with(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLError:
        return False


def test_tls_serves_verified_https_and_reloads_on_sighup(tmp_path: Path, secret: str) -> None:
    first_ca = issue(tmp_path, "first-ca")
    with FakeConsul() as fake:
        server = Gunicorn(
            tmp_path,
            tls_config(tmp_path, fake.url, secret),
            scheme="https",
            verify=str(first_ca),
            extra_env={"NOMAN_READ_TIMEOUT": "30"},
        )
        try:
            answer = requests.post(
                f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG}, verify=str(first_ca)
            )
            assert answer.status_code == 200, answer.text
            # Old protocol versions are refused.
            old = ssl.create_default_context(cafile=str(first_ca))
            with warnings.catch_warnings():  # deprecated on purpose: a client stuck on TLS 1.1
                warnings.simplefilter("ignore", DeprecationWarning)
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with (
                pytest.raises(ssl.SSLError),
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
                old.wrap_socket(sock, server_hostname="127.0.0.1"),
            ):
                pass
            # Plain HTTP to the TLS port: refused, quietly (no traceback, nothing echoed).
            assert secret.encode() not in raw(server.port, exact(secret, BODY))
            # A request in flight when the certificate is renewed.
            context = ssl.create_default_context(cafile=str(first_ca))
            inflight = context.wrap_socket(
                socket.create_connection(("127.0.0.1", server.port), timeout=20),
                server_hostname="127.0.0.1",
            )
            body = json.dumps({"tag": "release-20230103082901"}).encode()
            inflight.sendall(with_length(secret, body[:10], len(body)))
            second_ca = issue(tmp_path, "second-ca")
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            # Poll until only the new workers accept (the old one still serves `inflight`).
            while verifies_with(server.port, first_ca) or not verifies_with(server.port, second_ca):
                assert time.monotonic() < deadline, "the new certificate was never served"
                time.sleep(0.1)
            # `noman healthcheck` (the container's HEALTHCHECK) speaks HTTPS when TLS is on.
            check = subprocess.run(
                [sys.executable, "-m", "noman.cli", "healthcheck"],
                env={
                    **os.environ,
                    "NOMAN_CONFIG": str(tmp_path / "noman.toml"),
                    "NOMAN_BIND": f"127.0.0.1:{server.port}",
                },
                capture_output=True,
                timeout=30,
            )
            assert check.returncode == 0, check.stderr
            inflight.sendall(body[10:])
            status, _, answer_body = split_answer(read_answer(inflight))
            inflight.close()
            assert status == 200, answer_body
            assert json.loads(answer_body)["tag"] == "release-20230103082901"
        finally:
            assert server.stop() == 0
    assert secret not in server.logs()
    assert "Traceback" not in server.logs()


def test_background_threads_run_cooperatively_under_the_gevent_worker(
    tmp_path: Path, secret: str
) -> None:
    """A reconciler-like thread blocked in a 30 s Consul query delays no request and sees writes."""
    seen = tmp_path / "seen.txt"
    with FakeConsul() as fake:
        server = Gunicorn(
            tmp_path,
            write_config(tmp_path, fake.url, secret),
            "tests.support.background_app:create_app()",
            extra_env={"NOMAN_TEST_SEEN": str(seen)},
        )
        try:
            deadline = time.monotonic() + 10
            while not seen.exists():  # the first (non-blocking) query answered: 404
                assert time.monotonic() < deadline, server.logs()
                time.sleep(0.02)
            started = time.monotonic()
            answer = requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG})
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 1.0  # the blocked thread held nothing
            while " 200" not in seen.read_text():  # the blocking query woke on the write
                assert time.monotonic() < deadline + 5, seen.read_text()
                time.sleep(0.02)
        finally:
            assert server.stop() == 0


def test_a_rolling_deploy_through_python_nomad_under_the_gevent_worker(
    tmp_path: Path, secret: str
) -> None:
    """python-nomad (requests) registers the job and the report thread watches it, under gevent."""
    from tests.fakes.nomad import FakeNomad, sample_service_job
    from tests.fakes.receiver import Receiver

    with FakeConsul() as consul, FakeNomad() as nomad, Receiver() as receiver:
        nomad.script_deployments("successful", after=0.3)
        job = sample_service_job("web", image="stut/stut.dev:release-20200101000000")
        job["Meta"]["NOMAN_IMAGE_TAG"] = "release-20200101000000"
        nomad.add_job(job)
        config = write_config(tmp_path, consul.url, secret)
        config.write_text(
            config.read_text()
            + 'strategy = "rolling"\n\n[services.web.nomad]\njob = "web"\nupdate = "meta"\n\n'
            f'[nomad]\naddress = "{nomad.url}"\ntimeout = 1\npoll_interval = 0.05\n'
            "watch_timeout = 10\n\n"
            f'[notify]\non = ["success", "failure"]\n\n[[notify.targets]]\n'
            f'url = "{receiver.url}/n"\n'
        )
        server = Gunicorn(tmp_path, config)
        try:
            answer = requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG})
            assert answer.status_code == 200, answer.text
            assert answer.json()["deployment"]["job"] == "web"
            note = receiver.wait_for(1)[0].json()
        finally:
            assert server.stop() == 0
    assert note["status"] == "success"
    assert consul.value("web/IMAGE_TAG") == SAMPLE_TAG.encode()
