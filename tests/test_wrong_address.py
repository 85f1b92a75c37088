"""An address that answers, but not as the server Noman expects there: the error says what answers.

Every server here listens on a real socket on 127.0.0.1: the fake Nomad where Consul should
be, a stand-in for a real Nomad (whose unknown paths are a bare 404 and whose
``/v1/status/leader`` carries no header of its own), a web page, a TLS port as Go's
net/http guards it (Consul's and Nomad's servers), a TLS port that hangs up on plain HTTP
(OpenSSL's way), and plain HTTP asked for a TLS handshake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from noman import create_app
from noman.cli import main
from noman.config import ConsulSettings, NomadSettings
from noman.errors import (
    ConsulUnavailable,
    ConsulWrongAddress,
    NomadJobNotFound,
    NomadWrongAddress,
)
from noman.model import JobState, NomadTarget, Service
from noman.rollouts.nomad import NomadRollouts
from noman.stores.consul import ConsulStore
from tests.conftest import ConsulHandle, make_settings, settings_toml
from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad, sample_service_job

#: (status, headers, body) for a method and path.
Route = Callable[[str, str], tuple[int, dict[str, str], bytes]]


class Stub:
    """An HTTP server on 127.0.0.1 whose every answer comes from ``route``."""

    def __init__(self, route: Route) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, headers, body = route(self.command, self.path.split("?", 1)[0])
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def like_nomad(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """Nomad's own answers to what Consul's client asks (command/agent/http.go)."""
    json_type = {"Content-Type": "application/json"}
    if path == "/v1/status/leader":  # no X-Nomad-* header on this one
        return 200, json_type, b'"127.0.0.1:4647"'
    if path == "/v1/regions":
        return 200, json_type, b'["global"]'
    return 404, {}, b""  # handleRootFallthrough: a bare 404 for a path it does not serve


def web_page(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    page = b"<!DOCTYPE html><html><body>Welcome</body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page


class RawServer:
    """A TCP server on 127.0.0.1 that treats each connection with ``serve``."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # accept() wakes to see the stop
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.serve = serve
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn, contextlib.suppress(OSError):
                self.serve(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def go_tls_port(conn: socket.socket) -> None:
    """What Go's net/http answers plain HTTP on its TLS port (Consul's and Nomad's servers)."""
    conn.recv(65536)
    conn.sendall(
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    )


@pytest.fixture
def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


def openssl_tls_port(context: ssl.SSLContext) -> Callable[[socket.socket], None]:
    """A TLS port that answers a handshake and drops plain HTTP without a word (OpenSSL)."""

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    return serve


@pytest.fixture
def served() -> Iterator[Callable[[Any], Any]]:
    """Start a server for the test; it is closed at the end."""
    started: list[Any] = []

    def start(server: Any) -> Any:
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def store(address: str) -> ConsulStore:
    return ConsulStore(ConsulSettings(address=address, timeout=2))


# -- Consul's address ----------------------------------------------------------------------


def test_the_fake_nomad_at_consuls_address_is_named(served: Any) -> None:
    with FakeNomad() as nomad:
        consul = store(nomad.url)
        for call in (consul.check_ready, lambda: consul.read("configs/web/IMAGE_TAG")):
            with pytest.raises(ConsulWrongAddress) as wrong:
                call()
            assert wrong.value.message.startswith("The Consul address answers like Nomad")
            assert wrong.value.address == nomad.url
            assert wrong.value.code == "consul_wrong_address" and wrong.value.status == 502


@pytest.mark.parametrize(
    "call",
    ["check_ready", "read", "read_many", "list", "transact"],
)
def test_nomad_at_consuls_address_is_named_whatever_the_call(served: Any, call: str) -> None:
    """Nomad's leader answer looks like Consul's, and its 404s carry no header: it is asked."""
    nomad = served(Stub(like_nomad))
    consul = store(nomad.url)
    with pytest.raises(ConsulWrongAddress) as wrong:
        if call == "check_ready":
            consul.check_ready()
        elif call == "read":
            consul.read("configs/web/IMAGE_TAG")
        elif call == "read_many":
            consul.read_many(["configs/web/IMAGE_TAG"])
        elif call == "list":
            consul.list("noman/")
        else:
            from noman.stores import Write

            consul.transact([Write("configs/web/IMAGE_TAG", "release-1", 0)])
    assert "answers like Nomad, not Consul" in wrong.value.message
    assert "CONSUL_HTTP_ADDR" in wrong.value.message
    # Only a write's words say nothing was written.
    assert ("nothing was written" in wrong.value.message) is (call == "transact")


def test_a_web_page_at_consuls_address_is_named(served: Any) -> None:
    page = served(Stub(web_page))
    with pytest.raises(ConsulWrongAddress, match=r"it sent an HTML page \(HTTP 200\)"):
        store(page.url).read("configs/web/IMAGE_TAG")


def test_http_to_a_go_tls_port_says_use_https(served: Any) -> None:
    port = served(RawServer(go_tls_port))
    with pytest.raises(ConsulWrongAddress) as wrong:
        store(port.url).check_ready()
    assert wrong.value.message == (
        "The Consul address speaks HTTPS; write the address with https://."
    )


def test_http_to_a_tls_port_that_hangs_up_says_use_https(
    served: Any, server_context: ssl.SSLContext
) -> None:
    port = served(RawServer(openssl_tls_port(server_context)))
    with pytest.raises(ConsulWrongAddress, match="speaks HTTPS; write the address with https://"):
        store(port.url).read("configs/web/IMAGE_TAG")


def test_https_to_a_plain_http_port_says_use_http() -> None:
    with FakeConsul() as fake:
        address = fake.url.replace("http://", "https://")
        with pytest.raises(ConsulWrongAddress) as wrong:
            store(address).read("configs/web/IMAGE_TAG")
    assert "speaks plain HTTP, not HTTPS; write the address with http://" in wrong.value.message


def test_a_server_that_merely_hangs_up_is_still_unavailable(served: Any) -> None:
    """Not TLS, not Consul: nothing to name but an outage, as before."""

    def hang_up(conn: socket.socket) -> None:
        conn.recv(65536)

    port = served(RawServer(hang_up))
    with pytest.raises(ConsulUnavailable, match="unreachable"):
        store(port.url).read("configs/web/IMAGE_TAG")


def test_consul_itself_is_not_taken_for_something_else() -> None:
    with FakeConsul() as fake:
        consul = store(fake.url)
        assert consul.check_ready().startswith(f"consul {fake.url} (leader ")
        assert consul.read("configs/web/IMAGE_TAG").value is None
        assert consul.list("noman/").entries == {}


def test_check_and_status_print_one_line_naming_what_answers(
    tmp_path: Path, served: Any, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nomad = served(Stub(like_nomad))
    path = tmp_path / "noman.toml"
    path.write_text(settings_toml(ConsulHandle(nomad.url, None, None), secret))
    assert main(["--config", str(path), "check"]) == 1
    out, err = capsys.readouterr()
    store_line = next(line for line in out.splitlines() if line.startswith("store:"))
    assert store_line == (
        "store: FAILED: consul_wrong_address: The Consul address answers like Nomad, not "
        "Consul: point consul.address (CONSUL_HTTP_ADDR) at Consul's HTTP API. "
        f"(at {nomad.url})"
    )
    assert "Traceback" not in out + err
    assert main(["--config", str(path), "status"]) == 1
    out, err = capsys.readouterr()
    line = json.loads(out)
    assert line["error"] == "consul_wrong_address"
    assert line["message"].startswith("The Consul address answers like Nomad, not Consul")
    assert "Traceback" not in err


def test_a_hook_gets_the_json_error_without_the_address(
    served: Any, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    nomad = served(Stub(like_nomad))
    settings = make_settings(ConsulHandle(nomad.url, None, None), secret)
    app = create_app(settings)
    noman_log = logging.getLogger("noman")  # its own handler; it does not propagate
    noman_log.addHandler(caplog.handler)
    try:
        answer = app.test_client().post(f"/hooks/{secret}", json={"tag": "release-20250101000000"})
    finally:
        noman_log.removeHandler(caplog.handler)
    assert answer.status_code == 502
    assert answer.json["error"] == "consul_wrong_address"
    assert set(answer.json) == {"error", "message"}
    assert nomad.url.split("//", 1)[1] not in answer.get_data(as_text=True)
    assert secret not in answer.get_data(as_text=True)
    # The operator's log names the address and what answers there.
    assert f"{nomad.url} answers like Nomad, not Consul" in caplog.text


# -- Nomad's address -----------------------------------------------------------------------

WEB = Service("web", "a/b", "k", (b"",), strategy="rolling", nomad=NomadTarget("web"))


def rollouts(address: str) -> NomadRollouts:
    return NomadRollouts(NomadSettings(address=address, timeout=2))


@pytest.mark.parametrize("call", ["read", "follow", "register"])
def test_consul_at_nomads_address_is_named(call: str) -> None:
    with FakeConsul() as consul:
        nomad = rollouts(consul.url)
        with pytest.raises(NomadWrongAddress) as wrong:
            if call == "read":
                nomad.read(WEB)
            elif call == "follow":
                nomad.follow(WEB, 2, None, 0, 0)
            else:
                nomad.register(WEB, JobState("release-1", sample_service_job("web"), 7), "r-2")
    assert wrong.value.message.startswith("The Nomad address answers like Consul, not Nomad")
    assert "NOMAD_ADDR" in wrong.value.message
    assert wrong.value.address == consul.url
    assert wrong.value.code == "nomad_wrong_address" and wrong.value.status == 502
    # Only a register puts a deploy at stake.
    assert ("the deploy was not started" in wrong.value.message) is (call == "register")


def test_a_web_page_at_nomads_address_is_named(served: Any) -> None:
    page = served(Stub(web_page))
    with pytest.raises(NomadWrongAddress, match="it sent an HTML page"):
        rollouts(page.url).read(WEB)


def test_http_to_nomads_tls_port_says_use_https(served: Any) -> None:
    port = served(RawServer(go_tls_port))
    with pytest.raises(NomadWrongAddress) as wrong:
        rollouts(port.url).read(WEB)
    assert wrong.value.message == "The Nomad address speaks HTTPS; write the address with https://."


def test_nomad_itself_is_not_taken_for_something_else() -> None:
    with FakeNomad() as fake:
        fake.add_job(sample_service_job("web"))
        assert rollouts(fake.url).read(WEB).modify_index > 0
        with pytest.raises(NomadJobNotFound):
            rollouts(fake.url).read(Service("x", "a/b", "k", (b"",), nomad=NomadTarget("x")))


def test_check_names_consul_at_nomads_address_in_one_line(
    tmp_path: Path, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeConsul() as consul:
        handle = ConsulHandle(consul.url, None, consul)
        extra = f'[services.web.nomad]\njob = "web"\n[nomad]\naddress = "{consul.url}"\n'
        path = tmp_path / "noman.toml"
        path.write_text(settings_toml(handle, secret, strategy="rolling", extra=extra))
        assert main(["--config", str(path), "check"]) == 1
    out, err = capsys.readouterr()
    assert (
        "web: FAILED: nomad_wrong_address: The Nomad address answers like Consul, not Nomad: "
        f"point nomad.address (NOMAD_ADDR) at Nomad's HTTP API. (at {consul.url})"
    ) in out.splitlines()
    assert "Traceback" not in out + err
