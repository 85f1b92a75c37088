"""Polling 1,000 services on one registry (issue 16): requests per service per interval, CPU.

The fake registry (tests/fakes/registry.py: token auth, pages of 100 tags) runs in a
child process, so the CPU time measured here (``time.process_time`` of this process,
every thread) is the poller's and its client's alone: the leader's cost. Time is
simulated: a shared manual clock drives the poller, the client's token cache and the
fake's token expiry, and the loop jumps to ``Poller.next_due()`` instead of sleeping, so
many intervals take seconds. Each service has its own repository (its own token scope),
all on one registry host, and polls through an in-memory deploy path.

For each scenario it prints, per service and interval: polls, tag-list requests (every
page, plus the 401s that taught the client the registry's challenge) and tokens, and
checks the promise: at most one tag list (all pages) per service per interval, plus one
token per token lifetime.

    .venv/bin/python bench/poll.py [--services 1000] [--tags 150] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import multiprocessing.connection
import re
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noman.config import PollSettings  # noqa: E402
from noman.model import Service  # noqa: E402
from noman.registries.client import RegistryClient  # noqa: E402
from noman.registries.poller import Poller, PollState  # noqa: E402
from noman.release import Outcome, Release  # noqa: E402
from tests.fakes.registry import SharedClock, serve_child  # noqa: E402

START = 1_700_000_000.0
PAGE = 100


@dataclass(frozen=True)
class Result:
    """One scenario's counts and costs."""

    services: int
    intervals: int
    polls: int
    tag_lists: int
    tokens: int
    deploys: int
    cpu: float
    wall: float
    pages: int
    lifetime: float
    interval: float

    def per_service_interval(self, count: int) -> float:
        """``count`` divided by services and intervals."""
        return count / (self.services * self.intervals)

    @property
    def token_budget(self) -> float:
        """Tokens allowed per service per interval: one per lifetime the interval spans."""
        return math.ceil(self.interval / self.lifetime)

    def holds(self) -> bool:
        """The promise: one tag list (all pages) per service per interval, one token per expiry.

        The registry's challenge is met with a 401 once per host (per lane that raced to
        it), so a handful of extra tag-list requests in all are allowed.
        """
        extra_401 = self.tag_lists - self.polls * self.pages
        return (
            self.polls == self.services * self.intervals
            and 0 <= extra_401 <= 4
            and self.per_service_interval(self.tokens) <= self.token_budget
        )


def run(services: int, tags: int, interval: float, lifetime: float, intervals: int) -> Result:
    """Poll ``services`` repositories for ``intervals`` intervals of simulated time."""
    # spawn, not fork: forking a process that runs threads is unsafe (and warned about).
    context = multiprocessing.get_context("spawn")
    value = context.Value("d", START, lock=False)
    parent, child = context.Pipe()
    repositories = [
        (f"team/app{i}", [f"build-{n}" for n in range(1, tags + 1)]) for i in range(services)
    ]
    options = {"token_lifetime": lifetime, "default_page": PAGE}
    process = context.Process(
        target=serve_child, args=(child, value, repositories), kwargs=options, daemon=True
    )
    process.start()
    try:
        host = parent.recv()
        clock = SharedClock(value)
        result = poll(host, clock, parent, services, tags, interval, lifetime, intervals)
        parent.send("stop")
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    return result


def poll(
    host: str,
    clock: SharedClock,
    conn: multiprocessing.connection.Connection,
    services: int,
    tags: int,
    interval: float,
    lifetime: float,
    intervals: int,
) -> Result:
    """The measured part: build the poller, run it over the intervals, count."""
    polled = [
        Service(
            name=f"app{i}",
            repository=f"{host}/team/app{i}",
            key=f"configs/app{i}/IMAGE_TAG",
            secret_hashes=(b"\0" * 32,),
            tag_pattern=re.compile(r"^build-(\d+)$", re.ASCII),
        )
        for i in range(services)
    ]
    desired: dict[str, str] = {}
    deploys = 0
    polls = 0

    def deploy(service: Service, release: Release) -> Outcome:
        nonlocal deploys
        deploys += 1
        previous = desired.get(service.name)
        desired[service.name] = release.tag
        return Outcome(service.name, service.key, release.tag, previous, True)

    def save(service: Service, state: PollState) -> None:
        nonlocal polls
        polls += 1

    settings = PollSettings(interval=interval, intervals={s.name: interval for s in polled})
    client = RegistryClient.from_settings(settings, clock=clock)
    poller = Poller(
        polled, settings, client, deploy, lambda s: desired.get(s.name), save, clock=clock
    )
    end = START + intervals * interval
    cpu, wall = time.process_time(), time.monotonic()
    while True:
        due = poller.next_due()
        assert due is not None
        if due >= end:
            break
        if due > clock():
            clock.advance(due - clock())
        poller.poll_due(clock())
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    client.close()
    conn.send("counts")
    tag_lists, tokens = conn.recv()
    return Result(
        services=services,
        intervals=intervals,
        polls=polls,
        tag_lists=tag_lists,
        tokens=tokens,
        deploys=deploys,
        cpu=cpu,
        wall=wall,
        pages=max(1, math.ceil(tags / PAGE)),
        lifetime=lifetime,
        interval=interval,
    )


def report(title: str, result: Result) -> bool:
    """Print one scenario; True when the promise holds."""
    per = result.per_service_interval
    print(f"== {title}")
    print(
        f"  {result.services} services x {result.intervals} intervals of {result.interval:g} s, "
        f"{result.pages} page(s) of tags each, token lifetime {result.lifetime:g} s"
    )
    print(f"  polls per service per interval        {per(result.polls):.2f}")
    print(
        f"  tag-list requests per service/interval {per(result.tag_lists):.3f}"
        f"  ({result.tag_lists} = {result.polls} polls x {result.pages} pages"
        f" + {result.tag_lists - result.polls * result.pages} challenge 401s)"
    )
    print(
        f"  tokens per service per interval        {per(result.tokens):.3f}"
        f"  (budget {result.token_budget:g}: one per lifetime)"
    )
    print(f"  requests per service per interval      {per(result.tag_lists + result.tokens):.3f}")
    print(
        f"  poller CPU {result.cpu:.2f} s for {result.polls} polls"
        f" ({result.cpu / max(result.polls, 1) * 1000:.2f} ms per poll; wall {result.wall:.1f} s)"
    )
    ok = result.holds()
    print(f"  verdict: {'pass' if ok else 'FAIL'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="services (1000)")
    parser.add_argument("--tags", type=int, default=150, help="tags per repository (150)")
    parser.add_argument("--quick", action="store_true", help="100 services")
    args = parser.parse_args(argv)
    services = 100 if args.quick else args.services
    ok = report(
        "interval 5m = Docker Hub's token lifetime (a token per poll)",
        run(services, args.tags, interval=300, lifetime=300, intervals=2),
    )
    ok &= report(
        "interval 1m, token lifetime 5m (a token serves several polls)",
        run(services, args.tags, interval=60, lifetime=300, intervals=4),
    )
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"(the fake registry's own CPU, both runs: {child.ru_utime + child.ru_stime:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
