"""Failed authentications are limited per client address, across workers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import requests

from noman import create_app, ratelimit
from noman.config import Settings
from noman.ratelimit import FailureLimiter
from noman.wiring import EXTENSION, components
from tests.conftest import SAMPLE_TAG, ConsulHandle, post_hook
from tests.fakes.consul import FakeConsul
from tests.test_gunicorn_logs import Gunicorn, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_counts_are_shared_between_limiters_on_one_file(tmp_path: Path) -> None:
    clock = Clock()
    worker_a = FailureLimiter(2, tmp_path / "f.sqlite", clock)
    worker_b = FailureLimiter(2, tmp_path / "f.sqlite", clock)
    worker_a.record_failure("10.0.0.1")
    assert worker_b.retry_after("10.0.0.1") is None
    worker_b.record_failure("10.0.0.1")
    # 1_000_000 s is 40 s into its minute: 20 s left.
    assert worker_a.retry_after("10.0.0.1") == 20
    assert worker_a.retry_after("10.0.0.2") is None
    clock.now += 20
    assert worker_b.retry_after("10.0.0.1") is None


def limited_app(settings: Settings, tmp_path: Path, limit: int = 3, hops: int = 0) -> Any:
    app = create_app(dataclasses.replace(settings, auth_failures_per_minute=limit, proxy_hops=hops))
    # A fixed clock: the whole test falls in one window, whatever the wall-clock minute.
    limiter = FailureLimiter(limit, tmp_path / "limits.sqlite", Clock())
    app.extensions[EXTENSION] = dataclasses.replace(components(app), limiter=limiter)
    return app


def test_over_the_limit_even_the_right_secret_waits(
    settings: Settings, consul: ConsulHandle, secret: str, tmp_path: Path
) -> None:
    client = limited_app(settings, tmp_path).test_client()
    wrong = [client.post("/hooks/nope", json={"tag": SAMPLE_TAG}).status_code for _ in range(3)]
    assert wrong == [404, 404, 404]
    answer = post_hook(client, secret, SAMPLE_TAG)
    assert answer.status_code == 429
    assert answer.json["error"] == "too_many_failures"
    assert answer.headers["Retry-After"] == "20"  # 1_000_000 s is 40 s into its minute
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)
    # A good sender elsewhere is unaffected.
    other = client.post(
        f"/hooks/{secret}", json={"tag": SAMPLE_TAG}, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    assert other.status_code == 200


def test_behind_a_proxy_the_forwarded_address_counts(
    settings: Settings, secret: str, tmp_path: Path
) -> None:
    client = limited_app(settings, tmp_path, limit=2, hops=1).test_client()
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    for _ in range(2):
        client.post("/hooks/nope", json={"tag": SAMPLE_TAG}, headers=attacker)
    assert client.post("/hooks/nope", json={"tag": SAMPLE_TAG}, headers=attacker).status_code == 429
    dockerhub = {"X-Forwarded-For": "198.51.100.20"}
    assert (
        client.post(f"/hooks/{secret}", json={"tag": SAMPLE_TAG}, headers=dockerhub).status_code
        == 200
    )


def test_runtime_dir_is_private_and_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "_private_dir", None)
    path = ratelimit.default_path()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.parent.name.startswith("noman-") and len(path.parent.name) > len("noman-")
    path.parent.rmdir()
    monkeypatch.setenv("NOMAN_RUNTIME_DIR", "/run/noman-x")
    assert ratelimit.default_path() == Path("/run/noman-x/auth-failures.sqlite")


def test_the_limit_holds_across_gunicorn_workers(tmp_path: Path, secret: str) -> None:
    with FakeConsul() as fake:
        config = write_config(tmp_path, fake.url, secret)
        config.write_text("[server]\nauth_failures_per_minute = 3\n" + config.read_text())
        server = Gunicorn(tmp_path, config, workers=2, extra_env={"TMPDIR": str(tmp_path)})
        try:
            # A new connection each time, so both workers take some.
            codes = [
                requests.post(f"{server.url}/hooks/wrong-{i}", json={}).status_code
                for i in range(6)
            ]
            good = requests.post(f"{server.url}/hooks/{secret}", json={"tag": SAMPLE_TAG})
        finally:
            server.stop()
    assert codes == [404, 404, 404, 429, 429, 429]
    assert good.status_code == 429
    # Nothing deployed: neither the tag key nor the record (the reconciler's own lock
    # session is the only thing written).
    assert fake.value("web/IMAGE_TAG") is None
    assert fake.value("noman/web") is None
