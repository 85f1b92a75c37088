"""What a deploy costs as services and history grow, what idle costs, and the leader's CPU.

Everything is counted by the fake Consul itself (requests answered, request and
answer body bytes), so the counts do not depend on how busy this machine is;
only the latencies and CPU shares do, and those are judged as ratios measured
in the same run. Noman runs in-process (the Flask app through its test client,
the reconciler's real threads), against tests/fakes/consul.py on 127.0.0.1.

  per deploy   10, 100 and 1,000 services (one history entry each), then 10
               services with 1, 50 and 500 history entries on the deployed
               one: the requests and bytes of one deploy (the hook) plus what
               the leader moves for it (its wake on the outbox, the delivery
               of the report, the delete), and the hook's median latency.
  idle         two instances x two workers (four reconcilers, one leads) and
               200 rolling services (jobs on the fake Nomad), nothing happening:
               requests/s and bytes/s, plus the leader's full pass over every
               rolling service (every rollout.resync) amortised.
  leader CPU   one worker serving hooks as fast as one client sends them while
               its reconciler leads: CPU of the leader's threads (leadership,
               reconciler, the courier's sweeper, poller) over the worker's total
               (hooks, their own report delivery and the leader), per thread from
               /proc/self/task (Linux).

Goals (issue 14): bytes per deploy with 200 services <= 1.5x with 10; with
100+ history entries <= 1.3x with one; idle <= 2 requests/s and <= 4 KB/s in
all; the leader's CPU <= 5 % of the worker's.

    .venv/bin/python bench/scale.py [--quick] [--chart docs/scale.png]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noman import create_app  # noqa: E402
from noman.config import Settings, parse_settings  # noqa: E402
from noman.wiring import components  # noqa: E402
from tests.fakes.consul import FakeConsul  # noqa: E402
from tests.fakes.nomad import FakeNomad, sample_service_job  # noqa: E402

SECRET = "s" * 43
FINAL = "release-20991231000000"


def tag_of(i: int) -> str:
    """Tags that grow with ``i`` (up to a few thousand)."""
    day, hour = divmod(i, 24)
    month, day = divmod(day, 28)
    return f"release-20{24 + month // 12:02d}{1 + month % 12:02d}{1 + day:02d}{hour:02d}0000"


def settings_for(
    url: str, services: int, prefix: str, history: int = 50, nomad: str | None = None
) -> Settings:
    lines = [
        f'[consul]\naddress = "{url}"\ntimeout = 2\nstate_prefix = "{prefix}/noman/"\n'
        f"[rollout]\nhistory_size = {history}\n"
        '[notify]\ndry_run = true\non = ["success"]\n'
        '[[notify.targets]]\nurl = "https://hooks.example/deploys"\n'
    ]
    if nomad:
        lines.append(f'[nomad]\naddress = "{nomad}"\ntimeout = 2\n')
    for i in range(services):
        digest = hashlib.sha256(f"{SECRET}{i}".encode()).hexdigest()
        lines.append(
            f'[services.web{i}]\nrepository = "acme/web{i}"\n'
            f'key = "{prefix}/configs/web{i}/IMAGE_TAG"\nsecret_sha256 = "{digest}"\n'
        )
        if nomad:
            lines.append(f'strategy = "rolling"\n[services.web{i}.nomad]\njob = "web{i}"\n')
    return parse_settings("\n".join(lines), source="bench.toml", environ={})


def quiet_logs() -> None:
    import logging

    logging.getLogger("noman").setLevel(logging.ERROR)


@dataclass
class DeployCost:
    label: str
    requests: float
    body_bytes: float
    hook_ms: float


def wait_outbox_empty(fake: FakeConsul, prefix: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.keys(f"{prefix}/noman/outbox/") and time.monotonic() < deadline:
        time.sleep(0.002)


def deploy_cost(
    fake: FakeConsul, services: int, history: int, deploys: int, label: str
) -> DeployCost:
    prefix = f"bench-{services}-{history}-{time.monotonic_ns()}"
    settings = settings_for(fake.url, services, prefix, history=max(history, 50))
    setup = create_app(settings)
    client = setup.test_client()
    for i in range(1, services):
        assert client.post(f"/hooks/{SECRET}{i}", json={"tag": tag_of(0)}).status_code == 200
    for i in range(history):
        assert client.post(f"/hooks/{SECRET}0", json={"tag": tag_of(i)}).status_code == 200
    leader = components(create_app(settings)).reconciler
    leader.start()
    components(setup).reconciler.run_once()  # not leading: a no-op, but it tries
    wait_outbox_empty(fake, prefix)
    time.sleep(0.2)
    hooks = create_app(settings).test_client()  # a worker that took no hook yet
    total_requests = total_bytes = 0
    latencies = []
    for n in range(deploys):
        before = fake.answered, fake.body_bytes
        started = time.perf_counter()
        answer = hooks.post(f"/hooks/{SECRET}0", json={"tag": tag_of(history + 10 + n)})
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        wait_outbox_empty(fake, prefix)
        time.sleep(0.05)  # the leader's blocking read answered and re-armed
        total_requests += fake.answered - before[0]
        total_bytes += fake.body_bytes - before[1]
    leader.stop(2)
    return DeployCost(
        label,
        total_requests / deploys,
        total_bytes / deploys,
        statistics.median(latencies) * 1000,
    )


@dataclass
class Idle:
    seconds: float
    requests_per_s: float
    bytes_per_s: float
    resync_requests: int
    resync_bytes: int
    resync_every: float


def idle_cost(fake: FakeConsul, services: int, seconds: float) -> Idle:
    prefix = f"bench-idle-{time.monotonic_ns()}"
    with FakeNomad() as nomad:
        for i in range(services):
            job = sample_service_job(f"web{i}", image=f"acme/web{i}:{tag_of(0)}")
            job["Meta"]["NOMAN_IMAGE_TAG"] = tag_of(0)
            nomad.add_job(job)
        nomad.script_deployments("successful")
        settings = settings_for(fake.url, services, prefix, nomad=nomad.url)
        reconcilers = [components(create_app(settings)).reconciler for _ in range(4)]
        for reconciler in reconcilers:
            reconciler.start()
        client = create_app(settings).test_client()
        for i in range(services):
            answer = client.post(f"/hooks/{SECRET}{i}", json={"tag": tag_of(1)})
            assert answer.status_code == 200, answer.get_data(as_text=True)
        deadline = time.monotonic() + 120

        def pending() -> list[str]:
            return [k for k in fake.keys(f"{prefix}/noman/pending/") if not k.endswith(".watch")]

        while pending() and time.monotonic() < deadline:
            time.sleep(0.1)  # every rollout followed to its end
        assert not pending(), "rollouts did not finish"
        wait_outbox_empty(fake, prefix)
        time.sleep(2)
        before = fake.answered, fake.body_bytes
        time.sleep(seconds)
        requests, body = fake.answered - before[0], fake.body_bytes - before[1]
        leader = next(r for r in reconcilers if r.leader)
        # The full pass over every rolling service, as the leader runs it every
        # rollout.resync seconds (run here, in this thread, while its own thread idles).
        leader._next_resync = 0.0
        before = fake.answered, fake.body_bytes
        leader.run_once()
        resync = fake.answered - before[0], fake.body_bytes - before[1]
        for reconciler in reconcilers:
            reconciler.stop(1)
    return Idle(
        seconds,
        requests / seconds,
        body / seconds,
        resync[0],
        resync[1],
        settings.rollout.resync,
    )


#: The threads that work because this process leads (the courier's sweeper included); a
#: worker's own report delivery runs in noman-report-<destination> threads.
LEADER_THREADS = frozenset(
    {"noman-leadership", "noman-reconciler", "noman-courier", "noman-poller"}
)


def thread_cpu(native_id: int) -> float:
    """CPU seconds (user + system) a thread of this process used so far (Linux)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def leader_cpu(fake: FakeConsul, seconds: float) -> tuple[float, float, int]:
    """(leader threads' CPU s, the worker's CPU s, hooks served) while hooks run flat out."""
    prefix = f"bench-cpu-{time.monotonic_ns()}"
    settings = settings_for(fake.url, 10, prefix)
    app = create_app(settings)
    reconciler = components(app).reconciler
    reconciler.start()
    client = app.test_client()
    for i in range(10):
        client.post(f"/hooks/{SECRET}{i}", json={"tag": tag_of(0)})
    time.sleep(1)
    ours = {t.native_id: t.name for t in threading.enumerate() if t.name in LEADER_THREADS}
    main = threading.main_thread().native_id or 0
    start_main = thread_cpu(main)
    start_ours = {tid: thread_cpu(tid) for tid in ours}
    served = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.post(f"/hooks/{SECRET}{served % 10}", json={"tag": tag_of(served + 1)})
        assert answer.status_code == 200
        served += 1
    wait_outbox_empty(fake, prefix)
    # The hook's own report delivery (noman-report-* threads) is the worker's work, not
    # the leader's: it counts in the total only.
    reports = sum(
        thread_cpu(t.native_id or 0)
        for t in threading.enumerate()
        if t.name.startswith("noman-report-")
    )
    leader = sum(thread_cpu(tid) - start_ours.get(tid, 0.0) for tid in ours if tid)
    worker = thread_cpu(main) - start_main + leader + reports
    reconciler.stop(2)
    return leader, worker, served


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def draw(path: str, services: list[DeployCost], history: list[DeployCost]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, rows, title in (
        (axes[0], services, "services (1 history entry)"),
        (axes[1], history, "history entries (10 services)"),
    ):
        labels = [r.label for r in rows]
        ax.bar(labels, [r.body_bytes / 1024 for r in rows], color="#4c78a8")
        ax.set_title(f"Consul KB per deploy vs {title}")
        ax.set_ylabel("KB (request + answer bodies)")
        for i, r in enumerate(rows):
            ax.annotate(
                f"{r.requests:.1f} req\n{r.hook_ms:.1f} ms",
                (i, r.body_bytes / 1024),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(r.body_bytes for r in rows) / 1024 * 1.5)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer deploys, shorter windows")
    parser.add_argument("--chart", help="write the per-deploy chart (PNG) here")
    args = parser.parse_args()
    quiet_logs()
    deploys = 5 if args.quick else 20
    with FakeConsul() as fake:
        by_services = [
            deploy_cost(fake, n, 1, deploys, f"{n:,}")
            for n in ((10, 100, 200) if args.quick else (10, 100, 200, 1000))
        ]
        by_history = [
            deploy_cost(fake, 10, h, deploys, f"{h}")
            for h in ((1, 50, 100) if args.quick else (1, 50, 100, 500))
        ]
        idle = idle_cost(fake, 200, 10 if args.quick else 40)
        cpu = leader_cpu(fake, 3 if args.quick else 10)

    print("One deploy (the hook and its report's delivery), counted by the fake Consul:")
    print(f"  {'':<22}{'requests':>10}{'KB':>10}{'hook ms':>10}")
    for row in by_services:
        print(
            f"  {row.label + ' services':<22}{row.requests:>10.1f}"
            f"{row.body_bytes / 1024:>10.2f}{row.hook_ms:>10.2f}"
        )
    for row in by_history:
        print(
            f"  {row.label + ' history entries':<22}{row.requests:>10.1f}"
            f"{row.body_bytes / 1024:>10.2f}{row.hook_ms:>10.2f}"
        )
    amortised_rps = idle.resync_requests / idle.resync_every
    amortised_bps = idle.resync_bytes / idle.resync_every
    print(
        f"Idle, 2 instances x 2 workers, 200 rolling services, {idle.seconds:g} s: "
        f"{idle.requests_per_s:.2f} requests/s, {idle.bytes_per_s:.0f} B/s; "
        f"full pass every {idle.resync_every:g} s: {idle.resync_requests} requests, "
        f"{idle.resync_bytes / 1024:.1f} KB (+{amortised_rps:.2f} req/s, "
        f"+{amortised_bps:.0f} B/s)"
    )
    leader_s, worker_s, served = cpu
    share = leader_s / worker_s if worker_s else 0.0
    print(
        f"Leader CPU while one worker served {served} hooks: {leader_s:.3f} s of "
        f"{worker_s:.3f} s ({share:.1%})"
    )
    ten = next(r for r in by_services if r.label == "10")
    two_hundred = next(r for r in by_services if r.label == "200")
    one = by_history[0]
    hundred = next(r for r in by_history if r.label == "100")
    goals = [
        (
            f"bytes/deploy 200 services vs 10: {two_hundred.body_bytes / ten.body_bytes:.2f}x "
            "(<= 1.5x)",
            two_hundred.body_bytes <= 1.5 * ten.body_bytes,
        ),
        (
            f"bytes/deploy 100 history vs 1: {hundred.body_bytes / one.body_bytes:.2f}x (<= 1.3x)",
            hundred.body_bytes <= 1.3 * one.body_bytes,
        ),
        (
            f"idle requests/s {idle.requests_per_s + amortised_rps:.2f} (<= 2)",
            idle.requests_per_s + amortised_rps <= 2,
        ),
        (
            f"idle bytes/s {idle.bytes_per_s + amortised_bps:.0f} (<= 4096)",
            idle.bytes_per_s + amortised_bps <= 4096,
        ),
        (f"leader CPU share {share:.1%} (<= 5 %)", share <= 0.05),
    ]
    for text, ok in goals:
        print(f"goal: {verdict(ok)} {text}")
    if args.chart:
        draw(args.chart, by_services, by_history)
        print(f"chart: {args.chart}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
