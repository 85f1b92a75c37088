"""How fast the reconciler reports a finished deployment, and how fast a new leader takes over.

Runs two Noman app instances (their reconciler threads, as gunicorn workers run them) against
the fake Consul and the fake Nomad on 127.0.0.1 and measures, in one run on one machine:

  report latency   Nomad marks the deployment terminal -> the notifier receives the report
                   (goal <= 0.5 s), and the Nomad requests made from the hook's answer to
                   the report (goal: about one per state change)
  failover         the leader's session dies mid-deployment -> the other instance reports it
                   (goal <= 2 x session TTL + the deployment's own time)

    .venv/bin/python bench/rollout.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noman import create_app  # noqa: E402
from noman.config import parse_settings  # noqa: E402
from noman.wiring import components  # noqa: E402
from tests.fakes.consul import FakeConsul  # noqa: E402
from tests.fakes.nomad import FakeNomad, sample_service_job  # noqa: E402
from tests.fakes.receiver import Receiver  # noqa: E402

OLD = "release-20230101000000"


def config(consul: str, nomad: str, notify: str, secret: str) -> Any:
    text = (
        f'[consul]\naddress = "{consul}"\ntimeout = 2\n'
        f'[nomad]\naddress = "{nomad}"\ntimeout = 2\npoll_interval = 2\n'
        f'[notify]\non = ["success", "failure"]\n[[notify.targets]]\nurl = "{notify}"\n'
        f'[services.web]\nrepository = "stut/stut.dev"\nkey = "configs/web/IMAGE_TAG"\n'
        f'secret_sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
        'strategy = "rolling"\n[services.web.nomad]\njob = "web"\n'
    )
    return parse_settings(text, environ={})


def wait_for_deployment(nomad: FakeNomad, version: int) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for deployment in nomad.deployments("web"):
            if deployment["JobVersion"] == version and deployment["Status"] == "running":
                return str(deployment["ID"])
        time.sleep(0.01)
    raise RuntimeError("no deployment")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    secret = secrets.token_urlsafe(32)
    latencies: list[float] = []
    nomad_requests: list[int] = []
    failovers: list[float] = []
    with FakeConsul() as consul, FakeNomad() as nomad, Receiver() as receiver:
        job = sample_service_job("web", image=f"stut/stut.dev:{OLD}")
        job["Meta"]["NOMAN_IMAGE_TAG"] = OLD
        nomad.add_job(job)
        nomad.script_deployments("stall")
        settings = config(consul.url, nomad.url, f"{receiver.url}/n", secret)
        settings = dataclasses.replace(
            settings, consul=dataclasses.replace(settings.consul, lock_delay=0.5)
        )
        first, second = create_app(settings), create_app(settings)
        apps = [first, second]
        for app in apps:
            components(app).reconciler.start()
        try:
            for round_no in range(args.rounds * 2):
                tag = f"release-2024{round_no + 1:02d}01000000"
                answer = first.test_client().post(f"/hooks/{secret}", json={"tag": tag})
                before = len(nomad.requests)
                version = answer.json["deployment"]["version"]
                deployment = wait_for_deployment(nomad, version)
                seen = len(receiver.received)
                leaders = [a for a in apps if components(a).reconciler.leader]
                time.sleep(0.5)  # the leader is following the deployment by now
                if round_no % 2:
                    # Failover: the leader's session dies (as on kill -9 and TTL expiry).
                    leader = components(leaders[0]).reconciler
                    session = getattr(leader.lock, "session", None)
                    leader.stop(5)
                    started = time.monotonic()
                    if session:
                        consul.expire_session(session)
                    nomad.finish_deployment(deployment, "successful")
                    receiver.wait_for(seen + 1, timeout=60)
                    failovers.append(time.monotonic() - started)
                    leader.start()
                    continue
                started = time.monotonic()
                nomad.finish_deployment(deployment, "successful")
                receiver.wait_for(seen + 1, timeout=30)
                latencies.append(time.monotonic() - started)
                nomad_requests.append(len(nomad.requests) - before)
        finally:
            for app in apps:
                components(app).reconciler.stop(10)
    ttl = settings.consul.session_ttl
    print(f"rounds              {args.rounds}")
    print(
        f"report latency      median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms (goal <= 500 ms)"
    )
    print(
        f"nomad requests      median {statistics.median(nomad_requests):.0f} from the hook's "
        "answer to the report (running for 0.5 s, then successful)"
    )
    print(
        f"failover + report   median {statistics.median(failovers):.2f} s, "
        f"max {max(failovers):.2f} s (goal <= 2 x TTL = {2 * ttl:g} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
