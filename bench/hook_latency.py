"""How much a hook costs on top of the Consul calls it must make.

Runs the production gunicorn configuration against the fake Consul on
127.0.0.1 and measures, in one run on one machine:

  baseline  a bare read + check-and-set write to Consul (what any relay needs)
  hook      POST /hooks/<secret> with a new tag (auth, parse, policy, read, CAS write)

and prints the medians, p95s and their ratio. Goal: a hook costs at most 4x
its bare Consul round trips (median), i.e. Noman's own work is small beside
the store's. Ratios, not absolute times, because these machines are shared.

    .venv/bin/python bench/hook_latency.py [--requests 400]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, gunicorn_command  # noqa: E402
from tests.fakes.consul import FakeConsul  # noqa: E402

GOAL_RATIO = 4.0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def bare_consul(session: requests.Session, url: str, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        answer = session.get(f"{url}/v1/kv/bench/base")
        index = int(answer.headers["X-Consul-Index"]) if answer.status_code == 200 else 0
        session.put(f"{url}/v1/kv/bench/base?cas={index}", data=f"release-{i:014d}")
        times.append(time.perf_counter() - started)
    return times


def hooks(session: requests.Session, url: str, count: int, first: int = 0) -> list[float]:
    times = []
    for i in range(first, first + count):
        started = time.perf_counter()
        answer = session.post(url, json={"tag": f"release-{20230000000000 + i:014d}"})
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    secret = secrets.token_urlsafe(32)
    with FakeConsul() as consul, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "noman.toml"
        config.write_text(
            f'[consul]\naddress = "{consul.url}"\n\n[services.bench]\n'
            'repository = "bench/app"\nkey = "bench/IMAGE_TAG"\n'
            f'secret_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
        )
        port = free_port()
        env = {**os.environ, "NOMAN_CONFIG": str(config), "NOMAN_BIND": f"127.0.0.1:{port}"}
        server = subprocess.Popen(
            gunicorn_command(),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            session = requests.Session()
            started = time.perf_counter()
            while True:
                try:
                    session.get(f"http://127.0.0.1:{port}/readyz", timeout=1).raise_for_status()
                    break
                except requests.RequestException:
                    if time.perf_counter() - started > 30:
                        raise
                    time.sleep(0.02)
            ready = time.perf_counter() - started
            hooks(session, f"http://127.0.0.1:{port}/hooks/{secret}", 20)  # warm up
            base = bare_consul(session, consul.url, args.requests)
            hook = hooks(session, f"http://127.0.0.1:{port}/hooks/{secret}", args.requests, 100)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    ratio = statistics.median(hook) / statistics.median(base)
    print(f"requests each      {args.requests}")
    print(f"gunicorn ready in  {ready * 1000:.0f} ms")
    for name, samples in (("bare consul r+cas", base), ("hook", hook)):
        print(
            f"{name:18} median {statistics.median(samples) * 1000:6.2f} ms   "
            f"p95 {percentile(samples, 0.95) * 1000:6.2f} ms"
        )
    verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
    print(f"ratio hook/bare    {ratio:.2f}x (goal <= {GOAL_RATIO:g}x: {verdict})")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
