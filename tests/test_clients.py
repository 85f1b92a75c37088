"""Consul's and Nomad's client conventions: token file, mutual TLS, server name, no proxies."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from noman.config import parse_settings
from noman.errors import ConfigError, ConsulForbidden, ConsulUnavailable, NomadForbidden
from noman.rollouts.nomad import NomadRollouts
from noman.stores.consul import ConsulStore
from tests.conftest import ConsulHandle, make_settings
from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad, sample_service_job

GOOD = """
[services.web]
repository = "stut/stut.dev"
key = "configs/web/IMAGE_TAG"
secret_sha256 = "%s"
strategy = "rolling"
[services.web.nomad]
job = "web"
""" % ("ab" * 32)
SERVER_NAME = "consul.service.internal"
# Nobody listens here: a client that used the proxy would fail.
DEAD_PROXY = "http://127.0.0.1:9"


def use_dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment proxies that would break any call that used them."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, DEAD_PROXY)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for SERVER_NAME only, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    for name, cn in (("server", SERVER_NAME), ("client", "noman")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)  # fmt: skip
    return d


class TLSServer:
    """An HTTPS server on 127.0.0.1 that demands a client certificate and answers JSON."""

    def __init__(self, pki: Path, body: Any) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/v1/kv/"):  # a missing key, as Consul says it
                    self.send_response(404)
                    self.send_header("X-Consul-Index", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Consul-Index", "1")
                self.send_header("X-Nomad-Index", "1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
        context.load_cert_chain(pki / "server.pem", pki / "server.key")
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_server(pki: Path) -> Iterator[TLSServer]:
    server = TLSServer(pki, {"ID": "web", "JobModifyIndex": 3, "leader": True})
    yield server
    server.stop()


def tls_env(pki: Path, prefix: str, url: str, **extra: str) -> dict[str, str]:
    http = "_HTTP" if prefix == "CONSUL" else ""
    return {
        f"{prefix}{http}_ADDR": url,
        f"{prefix}_CACERT": str(pki / "ca.pem"),
        f"{prefix}_CLIENT_CERT": str(pki / "client.pem"),
        f"{prefix}_CLIENT_KEY": str(pki / "client.key"),
        **extra,
    }


def test_consul_mutual_tls_with_a_server_name_and_no_proxy(
    pki: Path, tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_dead_proxy(monkeypatch)
    env = tls_env(pki, "CONSUL", tls_server.url, CONSUL_TLS_SERVER_NAME=SERVER_NAME)
    settings = parse_settings(GOOD, environ=env)
    assert settings.consul.cert == (str(pki / "client.pem"), str(pki / "client.key"))
    assert ConsulStore(settings.consul).read("configs/web/IMAGE_TAG").value is None
    # The certificate names SERVER_NAME, not 127.0.0.1: without the name, no trust.
    del env["CONSUL_TLS_SERVER_NAME"]
    with pytest.raises(ConsulUnavailable):
        ConsulStore(parse_settings(GOOD, environ=env).consul).read("configs/web/IMAGE_TAG")


def test_nomad_mutual_tls_with_a_server_name_and_no_proxy(
    pki: Path, tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_dead_proxy(monkeypatch)
    env = tls_env(pki, "NOMAD", tls_server.url, NOMAD_TLS_SERVER_NAME=SERVER_NAME)
    settings = parse_settings(GOOD, environ=env)
    assert NomadRollouts(settings.nomad).read(settings.services[0]).modify_index == 3
    del env["NOMAD_CLIENT_KEY"], env["NOMAD_CLIENT_CERT"]
    with pytest.raises(Exception) as refused:  # the server demands a client certificate
        NomadRollouts(parse_settings(GOOD, environ=env).nomad).read(settings.services[0])
    assert refused.type.__name__ in ("NomadUnavailable", "NomadError")


def test_nomad_calls_ignore_environment_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    use_dead_proxy(monkeypatch)
    with FakeNomad() as fake:
        fake.add_job(sample_service_job("web"))
        settings = parse_settings(GOOD, environ={"NOMAD_ADDR": fake.url})
        assert NomadRollouts(settings.nomad).read(settings.services[0]).modify_index > 0


def test_consul_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    env = {"CONSUL_HTTP_TOKEN_FILE": str(token)}
    assert parse_settings(GOOD, environ=env).consul.token == "from-the-file"
    # The token itself wins, as with the Consul CLI.
    env["CONSUL_HTTP_TOKEN"] = "from-the-variable"
    assert parse_settings(GOOD, environ=env).consul.token == "from-the-variable"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CONSUL_HTTP_TOKEN_FILE": "/nonexistent/token"}, "CONSUL_HTTP_TOKEN_FILE"),
        ({"CONSUL_CLIENT_CERT": "/etc/hostname"}, "CONSUL_CLIENT_KEY is not"),
        ({"NOMAD_CLIENT_KEY": "/etc/hostname"}, "NOMAD_CLIENT_CERT is not"),
        (
            {"NOMAD_CLIENT_CERT": "/nonexistent.pem", "NOMAD_CLIENT_KEY": "/etc/hostname"},
            "NOMAD_CLIENT_CERT='/nonexistent.pem': not a readable file",
        ),
    ],
)
def test_client_settings_mistakes_are_config_errors(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_settings(GOOD, environ=env)


def test_no_token_and_a_refused_token_are_told_apart(secret: str) -> None:
    with FakeConsul(acl_token="the-right-token") as fake:
        messages = []
        for token in (None, "wrong-token"):
            store = ConsulStore(make_settings(ConsulHandle(fake.url, token, fake), secret).consul)
            with pytest.raises(ConsulForbidden) as refused:
                store.read("configs/web/IMAGE_TAG")
            messages.append(refused.value.message)
    assert "no token configured" in messages[0] and "CONSUL_HTTP_TOKEN" in messages[0]
    assert "refused Noman's token" in messages[1]
    # Reads: no word of a write that was never attempted.
    assert not any("nothing was written" in m for m in messages)


def test_nomad_without_a_token_says_so() -> None:
    with FakeNomad(acl_token="nomad-token") as fake:
        fake.add_job(sample_service_job("web"))
        settings = parse_settings(GOOD, environ={"NOMAD_ADDR": fake.url})
        with pytest.raises(NomadForbidden, match="no token configured"):
            NomadRollouts(settings.nomad).read(settings.services[0])
        env = {"NOMAD_ADDR": fake.url, "NOMAD_TOKEN": "wrong"}
        with pytest.raises(NomadForbidden) as refused:
            NomadRollouts(parse_settings(GOOD, environ=env).nomad).read(settings.services[0])
        assert refused.value.message == "Nomad refused Noman's token."  # a read: no deploy
        assert refused.value.address == fake.url
