"""Noman beside its peers: the same fake Consul, the same load generator, one run.

Three systems relay "deploy tag T of service S" into a Consul key:

  noman    `noman serve` as shipped (its gunicorn configuration, a temporary noman.toml)
  relay    bench/minimal_relay.py, the least a correct relay does (constant-time secret
           lookup, repository and tag check, read, check-and-set write), under the SAME
           gunicorn configuration as Noman (whatever noman/server/config.py says today)
  webhook  adnanh/webhook (Debian package `webhook`) running `curl -X PUT` into Consul with
           the tag taken from the payload (`pass-arguments-to-command`), the way people
           wire it today; its trigger rule checks the token, the repository and the tag

All three run at once; wrk (Debian package `wrk`, with a generated Lua script) drives them
in turn, phase by phase, each phase in rounds with the systems interleaved so that load from
other jobs on a shared machine lands on all three alike:

  deploy    1 and 8 connections. Every request is a real write: connection i always deploys
            service i (wrk runs one thread per connection) and its tags go up by one at every
            request, so forward-only never refuses one and check-and-set never races. The
            final Consul values are checked against the number of requests each connection
            sent.
  rejected  8 connections cycling wrong secret / malformed JSON / tag outside the pattern.
  probe     8 connections of deploys from a Python client that also times the requests the
            server never answers (wrk drops those), without and then with 200 raw sockets
            trickling request headers (one byte a second, replaced whenever the server cuts
            them).
  mixed     5,000 requests (deploys and the three rejections), then VmRSS of every worker
            (the children of the gunicorn master; webhook is one process).

It prints a table and the goal ratios with PASS/FAIL, and draws docs/bench-compare.png.
Ratios, not absolute figures, are the point: the systems run side by side on one machine.

    .venv/bin/pip install -e '.[bench]'          # matplotlib, for the chart
    apt-get install wrk webhook                    # done for you when root
    .venv/bin/python bench/compare.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CHART = ROOT / "docs" / "bench-compare.png"
SYSTEMS = ("noman", "relay", "webhook")
REPOSITORY = "bench/app"
SERVICES = 8
#: Tags are release-<14 digits>; each phase starts a hundred million higher than the last so
#: that every phase's tags are newer than everything written before.
TAG_BASE = 20230000000000
PHASE_STEP = 100_000_000
WRK_TIMEOUT_S = 10
PROBE_GRACE_S = 2.0
MB = 1024 * 1024

# Goals of issue 8 (name, threshold, "min" = at least / "max" = at most).
GOAL_VS_RELAY = 0.9
GOAL_VS_WEBHOOK = 2.0
GOAL_P99_VS_WEBHOOK = 0.5
GOAL_REJECTED_VS_DEPLOY = 5.0
GOAL_SLOW_P99 = 2.0
GOAL_RSS_MB = 60.0
# Goals of issue 14 (one writer per key): beside the relay, deploy tails and rejections.
GOAL_P99_VS_RELAY = 1.5
GOAL_REJECTED_VS_RELAY = 0.9


# ---------------------------------------------------------------- pure helpers (tested)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``samples`` (``fraction`` in 0..1); NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first sample
    return ordered[min(len(ordered), int(rank)) - 1]


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; inf when only the denominator is 0, NaN when both are."""
    if denominator == 0:
        return float("nan") if numerator == 0 else float("inf")
    return numerator / denominator


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run reports (from the Lua ``done`` hook); latencies in seconds."""

    requests: int
    duration: float
    status_errors: int = 0
    timeouts: int = 0
    socket_errors: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    sent: tuple[int, ...] = ()

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return ratio(self.requests, self.duration) if self.duration else 0.0

    @property
    def ok_rate(self) -> float:
        """2xx/3xx answers per second."""
        return ratio(self.requests - self.status_errors, self.duration) if self.duration else 0.0

    @property
    def tail(self) -> float:
        """p99 that counts requests that never got an answer (timeouts) as the slowest ones.

        wrk leaves timed-out requests out of its latency histogram, so a server that stalls
        half its requests would otherwise show a fine p99: past 1 % timeouts, p99 is at
        least the timeout; with no answer at all it is infinite.
        """
        total = self.requests + self.timeouts
        if total == 0 or self.requests == 0:
            return float("inf")
        if self.timeouts / total > 0.01:
            return max(self.p99, float(WRK_TIMEOUT_S))
        return self.p99


def parse_wrk(output: str) -> WrkRun:
    """The ``BENCH {json}`` line that the generated Lua script prints at the end of a run."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            data = json.loads(line[len("BENCH ") :])
            return WrkRun(
                requests=int(data["requests"]),
                duration=data["duration_us"] / 1e6,
                status_errors=int(data["status"]),
                timeouts=int(data["timeout"]),
                socket_errors=int(data["connect"]) + int(data["read"]) + int(data["write"]),
                p50=data["p50_us"] / 1e6,
                p99=data["p99_us"] / 1e6,
                sent=tuple(int(n) for n in data["sent"]),
            )
    raise ValueError(f"no BENCH line in wrk's output:\n{output}")


@dataclass(frozen=True)
class Probe:
    """Latencies (seconds) of deploys sent by :func:`probe`; censored ones never got an answer.

    A request still unanswered when the probe ends counts with the time it has waited so
    far, so a stalled server shows as a long latency instead of vanishing from the figures.
    """

    latencies: tuple[float, ...]
    censored: int = 0
    failures: int = 0

    @property
    def p99(self) -> float:
        """The 99th percentile (a lower bound when :attr:`censored` is not 0)."""
        return percentile(self.latencies, 0.99)

    def cell(self) -> str:
        """p99 in ms for the table, with '≥' when stalled requests make it a lower bound."""
        text = format_value(self.p99, "ms")
        return f"≥ {text}" if self.censored else text


@dataclass(frozen=True)
class Target:
    """How one service is called: the request path for its secret and for a wrong one."""

    path: str
    wrong_path: str


def tag(number: int) -> str:
    """The tag with this 14-digit release number (Noman's default tag_pattern)."""
    return f"release-{number:014d}"


def lua_script(mode: str, targets: Sequence[Target], base: int) -> str:
    """A wrk script: ``deploy`` (new increasing tag per request), ``reject`` or ``mixed``.

    Thread i (one connection each) calls ``targets[i % len(targets)]``, so its tags go up by
    one per request and never race another connection's. ``mixed`` is one deploy for three
    rejections. The ``done`` hook prints one ``BENCH {json}`` line.
    """
    if mode not in ("deploy", "reject", "mixed"):
        raise ValueError(f"unknown mode {mode!r}")
    rows = ",\n".join(
        f"  {{path={json.dumps(t.path)}, wrong={json.dumps(t.wrong_path)}}}" for t in targets
    )
    return f"""-- generated by bench/compare.py ({mode})
local targets = {{
{rows}
}}
local headers = {{["Content-Type"] = "application/json"}}
local mode = "{mode}"
local base = {base}
local threads = {{}}
sent = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("slot", #threads)
end

local function deploy(t)
  local body = string.format('{{"tag":"release-%014d","repository":"{REPOSITORY}"}}', base + sent)
  return wrk.format("POST", t.path, headers, body)
end

local rejections = {{
  function(t) return wrk.format("POST", t.wrong, headers,
    string.format('{{"tag":"release-%014d","repository":"{REPOSITORY}"}}', base + sent)) end,
  function(t) return wrk.format("POST", t.path, headers, '{{"tag": "release-') end,
  function(t) return wrk.format("POST", t.path, headers,
    '{{"tag":"../release-1","repository":"{REPOSITORY}"}}') end,
}}

function request()
  sent = sent + 1
  local t = targets[((slot - 1) % #targets) + 1]
  if mode == "deploy" then return deploy(t) end
  if mode == "reject" then return rejections[(sent % 3) + 1](t) end
  if sent % 4 == 0 then return deploy(t) end
  return rejections[(sent % 4)](t)
end

function done(summary, latency, requests)
  local counts = {{}}
  for _, thread in ipairs(threads) do table.insert(counts, tostring(thread:get("sent"))) end
  local e = summary.errors
  io.write(string.format('BENCH {{"requests":%d,"duration_us":%d,"status":%d,"timeout":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"p50_us":%d,"p99_us":%d,"sent":[%s]}}\\n',
    summary.requests, summary.duration, e.status, e.timeout, e.connect, e.read, e.write,
    latency:percentile(50), latency:percentile(99), table.concat(counts, ",")))
end
"""


@dataclass(frozen=True)
class Service:
    """One benchmark service: its name, secret and the Consul key each system writes."""

    name: str
    secret: str

    @property
    def digest(self) -> str:
        """sha256 hex of the secret, as noman.toml and the relay want it."""
        return hashlib.sha256(self.secret.encode()).hexdigest()

    def key(self, system: str) -> str:
        """The Consul key this service's tag lives in when ``system`` writes it."""
        return f"bench/{system}/{self.name}/IMAGE_TAG"


def make_services(count: int = SERVICES) -> list[Service]:
    """``count`` services with fresh random secrets."""
    return [Service(f"svc{i}", secrets.token_urlsafe(32)) for i in range(count)]


def noman_toml(consul_url: str, services: Sequence[Service]) -> str:
    """noman.toml for the services (default tag_pattern, repository bench/app)."""
    parts = [f'[consul]\naddress = "{consul_url}"\n']
    for service in services:
        parts.append(
            f"[services.{service.name}]\n"
            f'repository = "{REPOSITORY}"\n'
            f'key = "{service.key("noman")}"\n'
            f'secret_sha256 = "{service.digest}"\n'
        )
    return "\n".join(parts)


def relay_config(consul_url: str, services: Sequence[Service]) -> dict[str, Any]:
    """The minimal relay's JSON configuration for the services."""
    return {
        "consul": consul_url,
        "services": [
            {"secret_sha256": s.digest, "repository": REPOSITORY, "key": s.key("relay")}
            for s in services
        ],
    }


def webhook_hooks(consul_url: str, services: Sequence[Service], curl: str) -> list[dict[str, Any]]:
    """adnanh/webhook hooks: per service, ``curl -X PUT --data-binary <payload.tag> <key URL>``.

    The trigger rule is what a careful user writes: the token (URL parameter), the
    repository and the tag's shape (without the last, a tag such as ``@/etc/passwd`` would
    make curl upload a file). ``include-command-output-in-response`` makes webhook answer
    after curl finished, i.e. after Consul has the value, as Noman and the relay do;
    webhook's default answers at once and leaves the write running in the background.
    """
    hooks = []
    for service in services:
        param = {"source": "payload", "name": "tag"}
        hooks.append(
            {
                "id": service.name,
                "execute-command": curl,
                "include-command-output-in-response": True,
                "include-command-output-in-response-on-error": True,
                "http-methods": ["POST"],
                "pass-arguments-to-command": [
                    {"source": "string", "name": "-fsS"},
                    {"source": "string", "name": "-X"},
                    {"source": "string", "name": "PUT"},
                    {"source": "string", "name": "--data-binary"},
                    param,
                    {"source": "string", "name": f"{consul_url}/v1/kv/{service.key('webhook')}"},
                ],
                "trigger-rule": {
                    "and": [
                        {
                            "match": {
                                "type": "value",
                                "value": service.secret,
                                "parameter": {"source": "url", "name": "token"},
                            }
                        },
                        {
                            "match": {
                                "type": "value",
                                "value": REPOSITORY,
                                "parameter": {"source": "payload", "name": "repository"},
                            }
                        },
                        {
                            "match": {
                                "type": "regex",
                                "regex": r"^release-[0-9]{14}$",
                                "parameter": param,
                            }
                        },
                    ]
                },
                "trigger-rule-mismatch-http-response-code": 401,
            }
        )
    return hooks


def targets_for(system: str, services: Sequence[Service]) -> list[Target]:
    """The request paths of each service on ``system``."""
    wrong = secrets.token_urlsafe(32)
    if system == "webhook":
        return [
            Target(f"/hooks/{s.name}?token={s.secret}", f"/hooks/{s.name}?token={wrong}")
            for s in services
        ]
    return [Target(f"/hooks/{s.secret}", f"/hooks/{wrong}") for s in services]


@dataclass(frozen=True)
class Goal:
    """One goal of issue 8 and the measured value."""

    name: str
    value: float
    threshold: float
    at_least: bool

    @property
    def passed(self) -> bool:
        """Whether the measured value meets the threshold (NaN never does)."""
        if self.value != self.value:  # NaN
            return False
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold


@dataclass
class SystemResult:
    """Everything measured for one system."""

    deploy1: WrkRun
    deploy8: WrkRun
    rejected8: WrkRun
    quiet: Probe
    slow: Probe
    mixed: dict[int, int]
    rss_mb: list[float]
    slow_cuts: int = 0
    writes_ok: bool = True
    serving: str = ""
    notes: list[str] = field(default_factory=list)


def summary(result: SystemResult) -> dict[str, Any]:
    """One system's figures as plain JSON (rates per second, latencies in seconds)."""

    def run(r: WrkRun) -> dict[str, Any]:
        return asdict(r) | {"rate": r.rate, "ok_rate": r.ok_rate, "tail": r.tail}

    def probed(p: Probe) -> dict[str, Any]:
        return {
            "requests": len(p.latencies),
            "p99": p.p99,
            "stalled": p.censored,
            "failures": p.failures,
        }

    return {
        "serving": result.serving,
        "deploy1": run(result.deploy1),
        "deploy8": run(result.deploy8),
        "rejected8": run(result.rejected8),
        "probe": probed(result.quiet),
        "probe_slow_clients": probed(result.slow) | {"cut": result.slow_cuts},
        "mixed_statuses": result.mixed,
        "rss_mb": result.rss_mb,
        "writes_ok": result.writes_ok,
        "notes": result.notes,
    }


def evaluate(results: dict[str, SystemResult]) -> list[Goal]:
    """The goal ratios of issues 8 and 14 from the measured results."""
    noman, relay, hook = results["noman"], results["relay"], results["webhook"]
    goals = []
    for conns, attr in ((1, "deploy1"), (8, "deploy8")):
        mine, theirs, go = getattr(noman, attr), getattr(relay, attr), getattr(hook, attr)
        goals.append(
            Goal(
                f"deploy/s at {conns} conn: Noman ÷ minimal relay",
                ratio(mine.ok_rate, theirs.ok_rate),
                GOAL_VS_RELAY,
                True,
            )
        )
        goals.append(
            Goal(
                f"deploy/s at {conns} conn: Noman ÷ webhook",
                ratio(mine.ok_rate, go.ok_rate),
                GOAL_VS_WEBHOOK,
                True,
            )
        )
    goals.append(
        Goal(
            "deploy p99 at 8 conn: Noman ÷ webhook",
            ratio(noman.deploy8.tail, hook.deploy8.tail),
            GOAL_P99_VS_WEBHOOK,
            False,
        )
    )
    for conns, attr in ((1, "deploy1"), (8, "deploy8")):
        goals.append(
            Goal(
                f"deploy p99 at {conns} conn: Noman ÷ minimal relay",
                ratio(getattr(noman, attr).tail, getattr(relay, attr).tail),
                GOAL_P99_VS_RELAY,
                False,
            )
        )
    goals.append(
        Goal(
            "rejected/s at 8 conn: Noman ÷ minimal relay",
            ratio(noman.rejected8.rate, relay.rejected8.rate),
            GOAL_REJECTED_VS_RELAY,
            True,
        )
    )
    goals.append(
        Goal(
            "Noman rejected/s ÷ deploy/s (8 conn)",
            ratio(noman.rejected8.rate, noman.deploy8.ok_rate),
            GOAL_REJECTED_VS_DEPLOY,
            True,
        )
    )
    goals.append(
        Goal(
            "Noman p99 with slow clients ÷ without",
            ratio(noman.slow.p99, noman.quiet.p99),
            GOAL_SLOW_P99,
            False,
        )
    )
    goals.append(
        Goal(
            "Noman RSS per worker, MB (max)",
            max(noman.rss_mb, default=float("nan")),
            GOAL_RSS_MB,
            False,
        )
    )
    return goals


def format_value(value: float, unit: str = "") -> str:
    """A table cell: '—' for NaN, '∞' for inf, else 3 significant digits-ish."""
    if value != value:
        return "—"
    if value == float("inf"):
        return "∞"
    if unit == "ms":
        return f"{value * 1000:.1f}"
    return (
        f"{value:.0f}"
        if abs(value) >= 100
        else f"{value:.2f}"
        if abs(value) < 10
        else f"{value:.1f}"
    )


def table(results: dict[str, SystemResult]) -> str:
    """The results as a Markdown table (one row per system)."""
    header = (
        "| system | deploy/s 1 conn | p50 / p99 ms | deploy/s 8 conn | p50 / p99 ms "
        "| rejected/s 8 conn | probe p99 ms without / with slow clients | RSS/worker MB |"
    )
    lines = [header, "|" + " --- |" * 8]
    for name, r in results.items():
        slow = f"{r.quiet.cell()} / {r.slow.cell()}"
        rss = "/".join(f"{mb:.0f}" for mb in r.rss_mb) or "—"
        lines.append(
            f"| {name} | {format_value(r.deploy1.ok_rate)} "
            f"| {format_value(r.deploy1.p50, 'ms')} / {format_value(r.deploy1.tail, 'ms')} "
            f"| {format_value(r.deploy8.ok_rate)} "
            f"| {format_value(r.deploy8.p50, 'ms')} / {format_value(r.deploy8.tail, 'ms')} "
            f"| {format_value(r.rejected8.rate)} | {slow} | {rss} |"
        )
    return "\n".join(lines)


def goal_lines(goals: Sequence[Goal]) -> str:
    """One line per goal: name, value, threshold, PASS/FAIL."""
    out = []
    for goal in goals:
        sign = "≥" if goal.at_least else "≤"
        verdict = "PASS" if goal.passed else "FAIL"
        out.append(
            f"{verdict}  {goal.name}: {format_value(goal.value)} (goal {sign} {goal.threshold:g})"
        )
    return "\n".join(out)


# ---------------------------------------------------------------- processes and load


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(port: int, path: str = "/", seconds: float = 60) -> None:
    """Wait until something on ``port`` answers HTTP (any status)."""
    deadline = time.monotonic() + seconds
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (stdout discarded: access logs; stderr to ``log``), SIGTERM it after."""
    with log.open("wb") as err:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_wrk(port: int, script: str, connections: int, seconds: float, workdir: Path) -> WrkRun:
    """One wrk run with one thread per connection."""
    path = workdir / "load.lua"
    path.write_text(script)
    command = [
        "wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds:g}s",
        f"--timeout={WRK_TIMEOUT_S}s", "-s", str(path), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def mixed_requests(port: int, targets: Sequence[Target], base: int, total: int) -> dict[int, int]:
    """``total`` requests over one connection per target: one deploy for three rejections.

    A plain Python client, not wrk: the count must be exact and wrk only knows durations.
    Returns how many answers had each status.
    """
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    share = -(-total // len(targets))

    def body_of(number: int) -> bytes:
        return json.dumps({"tag": tag(number), "repository": REPOSITORY}).encode()

    def work(target: Target) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WRK_TIMEOUT_S)
        headers = {"Content-Type": "application/json"}
        for sent in range(1, share + 1):
            kind = sent % 4
            path, body = target.path, body_of(base + sent)
            if kind == 1:
                path = target.wrong_path
            elif kind == 2:
                body = b'{"tag": "release-'
            elif kind == 3:
                body = b'{"tag":"../release-1","repository":"bench/app"}'
            try:
                conn.request("POST", path, body, headers)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    run_per_target(work, targets)
    return dict(sorted(statuses.items()))


def run_per_target(work: Callable[[Target], None], targets: Sequence[Target]) -> None:
    """Run ``work`` once per target, each in its own thread, and wait for all."""
    threads = [threading.Thread(target=work, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def probe(port: int, targets: Sequence[Target], base: int, seconds: float) -> Probe:
    """Deploys over one connection per target for ``seconds``, timing every request.

    A plain Python client: unlike wrk it keeps the requests that are still waiting when time
    is up (a server whose threads are held by slow clients shows up as those).
    """
    latencies: list[float] = []
    counts = {"censored": 0, "failures": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    # Requests sent before the deadline get this much longer to be answered; one that has
    # not been answered by then waited at least that long and is counted as stalled.
    give_up = deadline + PROBE_GRACE_S

    def work(target: Target) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while time.monotonic() < deadline:
            sent += 1
            body = json.dumps({"tag": tag(base + sent), "repository": REPOSITORY}).encode()
            started = time.monotonic()
            outcome = "ok"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=max(0.01, give_up - started)
                    )
                    conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(max(0.01, give_up - started))
                conn.request("POST", target.path, body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    outcome = "failures"
            except TimeoutError:
                outcome = "censored"
            except (OSError, http.client.HTTPException):
                outcome = "failures"
            if outcome != "ok" and conn is not None:
                conn.close()
                conn = None
            with lock:
                latencies.append(time.monotonic() - started)
                if outcome != "ok":
                    counts[outcome] += 1
        if conn is not None:
            conn.close()

    run_per_target(work, targets)
    return Probe(tuple(latencies), counts["censored"], counts["failures"])


class SlowClients:
    """``count`` raw sockets trickling request headers, one byte a second each, forever.

    A socket the server closes (or answers) is replaced at once, so the server always faces
    ``count`` of them, as it would from an attacker; :attr:`cuts` counts the replacements.
    """

    HEAD = b"POST /hooks/nope HTTP/1.1\r\nHost: bench\r\nX-Slow: "

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.cuts = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def _open(self) -> tuple[socket.socket, int] | None:
        sock = socket.socket()
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock, 0

    def _run(self) -> None:
        conns: list[tuple[socket.socket, int]] = []
        while not self._stop.is_set():
            while len(conns) < self.count and not self._stop.is_set():
                opened = self._open()
                if opened is None:
                    break
                conns.append(opened)
            if len(conns) >= self.count:
                self.connected.set()
            kept = []
            for sock, sent in conns:
                alive = True
                try:
                    if sock.recv(4096) is not None:  # b"" (closed) or an answer: replace it
                        alive = False
                except BlockingIOError:
                    pass
                except OSError:
                    alive = False
                if alive:
                    byte = self.HEAD[sent : sent + 1] or b"a"
                    try:
                        sock.send(byte)
                    except OSError as exc:
                        alive = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                if alive:
                    kept.append((sock, sent + 1))
                else:
                    sock.close()
                    self.cuts += 1
            conns = kept
            # The trickle rate, not synchronisation: one byte per connection per second.
            self._stop.wait(1.0)
        for sock, _ in conns:
            sock.close()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        if not self.connected.wait(60):
            raise RuntimeError(f"could not keep {self.count} slow connections open")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------- the three systems


@dataclass
class Server:
    """A running system: its port, its main process and its serving model."""

    port: int
    pid: int
    serving: str
    forks_workers: bool

    def workers(self) -> list[int]:
        """The processes that serve requests: gunicorn's workers, or webhook itself."""
        return children(self.pid) if self.forks_workers else [self.pid]


def _gunicorn_model(log: Path) -> str:
    text = log.read_text(errors="replace")
    worker = re.search(r"Using worker: (\S+)", text)
    booted = len(set(re.findall(r"Booting worker with pid: (\d+)", text)))
    return f"gunicorn {worker.group(1) if worker else '?'}, {booted} workers"


def _gunicorn_config() -> str:
    sys.path.insert(0, str(ROOT))
    try:
        from noman.cli import GUNICORN_CONFIG

        return str(GUNICORN_CONFIG)
    except ImportError:
        return "python:noman.server.config"


def _base_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAN_", "CONSUL_"))}
    env["NOMAN_BIND"] = f"127.0.0.1:{port}"
    return env


@contextlib.contextmanager
def start(system: str, services: Sequence[Service], consul_url: str, tmp: Path) -> Iterator[Server]:
    """Start ``system`` on a free port and yield it once it answers HTTP."""
    port = free_port()
    env = _base_env(port)
    log = tmp / f"{system}.log"
    if system == "noman":
        config = tmp / "noman.toml"
        config.write_text(noman_toml(consul_url, services))
        installed = Path(sys.executable).parent / "noman"
        noman = str(installed) if installed.exists() else shutil.which("noman") or "noman"
        command = [noman, "serve", "--config", str(config), "--bind", env["NOMAN_BIND"]]
        ready = "/readyz"
    elif system == "relay":
        config = tmp / "relay.json"
        config.write_text(json.dumps(relay_config(consul_url, services)))
        env["RELAY_CONFIG"] = str(config)
        command = [
            sys.executable, "-m", "gunicorn", "-c", _gunicorn_config(),
            "--pythonpath", str(BENCH), "minimal_relay:create_app()",
        ]  # fmt: skip
        ready = "/"
    elif system == "webhook":
        hooks = tmp / "hooks.json"
        curl = shutil.which("curl") or "/usr/bin/curl"
        hooks.write_text(json.dumps(webhook_hooks(consul_url, services, curl), indent=2))
        command = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
        ready = "/"
    else:
        raise ValueError(system)
    with running(command, env, log) as process:
        try:
            wait_http(port, ready)
        except OSError:
            sys.stderr.write(log.read_text(errors="replace"))
            raise
        if system == "webhook":
            yield Server(port, process.pid, "Go net/http, one process, runs curl per hook", False)
        else:
            yield Server(port, process.pid, _gunicorn_model(log), True)


def consul_value(consul_url: str, key: str) -> str | None:
    """The raw value of ``key`` in the fake Consul (None when missing)."""
    host, port = consul_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/v1/kv/{key}?raw")
        answer = conn.getresponse()
        body = answer.read().decode()
        return body if answer.status == 200 else None
    finally:
        conn.close()


def check_writes(
    run: WrkRun, system: str, services: Sequence[Service], base: int, consul_url: str
) -> list[str]:
    """Problems with a deploy run: non-2xx answers, or a key not holding the last tag sent."""
    problems = []
    if run.status_errors:
        problems.append(f"{run.status_errors} deploys were not 2xx")
    last: dict[int, int] = {}
    for slot, sent in enumerate(run.sent):
        last[slot % len(services)] = max(last.get(slot % len(services), 0), sent)
    for index, sent in last.items():
        value = consul_value(consul_url, services[index].key(system))
        # The last request may have been cut by wrk's deadline before or after it landed.
        if value not in (tag(base + sent), tag(base + sent - 1)):
            problems.append(
                f"{services[index].key(system)} = {value!r}, expected ~{tag(base + sent)}"
            )
    return problems


@dataclass(frozen=True)
class Plan:
    """How long and how hard: seconds per round of each phase, rounds, clients, requests."""

    seconds: float
    rounds: int
    warmup: float
    slow_clients: int
    mixed: int


def combine(runs: Sequence[WrkRun]) -> WrkRun:
    """Rounds of one phase as one run: counts and time added, p50/p99 their median."""
    middle = sorted(range(len(runs)), key=lambda i: runs[i].p99)[len(runs) // 2]
    return WrkRun(
        requests=sum(r.requests for r in runs),
        duration=sum(r.duration for r in runs),
        status_errors=sum(r.status_errors for r in runs),
        timeouts=sum(r.timeouts for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        p50=sorted(r.p50 for r in runs)[len(runs) // 2],
        p99=runs[middle].p99,
        sent=runs[-1].sent,
    )


def merge(probes: Sequence[Probe]) -> Probe:
    """Rounds of probing as one: every latency, every stall."""
    return Probe(
        tuple(latency for p in probes for latency in p.latencies),
        sum(p.censored for p in probes),
        sum(p.failures for p in probes),
    )


class Bench:
    """The three systems running side by side, measured phase by phase in rounds.

    Each phase runs ``rounds`` times, each round one system after the other, so that a
    change in the machine's load (other jobs on a shared machine) lands on all three
    alike instead of on whichever system happened to run last.
    """

    def __init__(
        self, servers: dict[str, Server], services: Sequence[Service], consul_url: str, tmp: Path
    ) -> None:
        self.servers, self.services, self.consul_url, self.tmp = servers, services, consul_url, tmp
        self.targets = {name: targets_for(name, services) for name in servers}
        self.notes: dict[str, list[str]] = {name: [] for name in servers}
        self.phase = 0

    def base(self) -> int:
        """Tags for a new phase: above every tag written so far."""
        self.phase += 1
        return TAG_BASE + self.phase * PHASE_STEP

    def deploy(self, name: str, connections: int, seconds: float) -> WrkRun:
        """wrk deploys, each a new tag, then a check that Consul holds the last ones."""
        base = self.base()
        script = lua_script("deploy", self.targets[name][:connections], base)
        run = run_wrk(self.servers[name].port, script, connections, seconds, self.tmp)
        self.notes[name].extend(check_writes(run, name, self.services, base, self.consul_url))
        return run

    def reject(self, name: str, seconds: float) -> WrkRun:
        """wrk requests that must all be refused."""
        script = lua_script("reject", self.targets[name], TAG_BASE)
        run = run_wrk(self.servers[name].port, script, SERVICES, seconds, self.tmp)
        if run.status_errors != run.requests:
            self.notes[name].append(f"{run.requests - run.status_errors} bad requests got a 2xx")
        return run

    def probe(self, name: str, seconds: float, slow_clients: int = 0) -> tuple[Probe, int]:
        """Probe deploys, with ``slow_clients`` trickling connections open meanwhile."""
        port, targets = self.servers[name].port, self.targets[name]
        if not slow_clients:
            return probe(port, targets, self.base(), seconds), 0
        with SlowClients(port, slow_clients) as slow:
            result = probe(port, targets, self.base(), seconds)
        return result, slow.cuts

    def rounds(self, plan: Plan, what: str, one: Any) -> dict[str, list[Any]]:
        """``one(name)`` for every system, ``plan.rounds`` times, interleaved; prints a line."""
        out: dict[str, list[Any]] = {name: [] for name in self.servers}
        for _ in range(plan.rounds):
            for name in self.servers:
                out[name].append(one(name))
        cells = []
        for name, runs in out.items():
            if isinstance(runs[0], WrkRun):
                run = combine(runs)
                rate = run.rate if what.startswith("rejected") else run.ok_rate
                cells.append(f"{name} {rate:.0f}/s p99 {format_value(run.tail, 'ms')}")
            else:
                merged = merge([r[0] for r in runs])
                cells.append(f"{name} p99 {merged.cell()} ({merged.censored} stalled)")
        print(f"  {what:34} " + ", ".join(cells), flush=True)
        return out


def measure(
    systems: Sequence[str],
    services: Sequence[Service],
    consul_url: str,
    tmp: Path,
    plan: Plan,
) -> dict[str, SystemResult]:
    """Every phase against every system; returns each system's results."""
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(start(name, services, consul_url, tmp)) for name in systems
        }
        for name, server in servers.items():
            print(f"  {name}: {server.serving}", flush=True)
        bench = Bench(servers, services, consul_url, tmp)
        for name in systems:
            bench.deploy(name, SERVICES, plan.warmup)
        deploy1 = bench.rounds(
            plan, "deploy, 1 connection", lambda n: bench.deploy(n, 1, plan.seconds)
        )
        deploy8 = bench.rounds(
            plan,
            f"deploy, {SERVICES} connections",
            lambda n: bench.deploy(n, SERVICES, plan.seconds),
        )
        rejected = bench.rounds(
            plan, f"rejected, {SERVICES} connections", lambda n: bench.reject(n, plan.seconds)
        )
        quiet = bench.rounds(plan, "probe", lambda n: bench.probe(n, plan.seconds))
        slow = bench.rounds(
            plan,
            f"probe, {plan.slow_clients} slow clients",
            lambda n: bench.probe(n, plan.seconds, plan.slow_clients),
        )
        results = {}
        for name in systems:
            base = bench.base()
            mixed = mixed_requests(servers[name].port, bench.targets[name][:4], base, plan.mixed)
            rss = [rss_mb(pid) for pid in servers[name].workers()]
            print(f"  {name} mixed {mixed}, RSS MB {[round(mb, 1) for mb in rss]}", flush=True)
            for note in bench.notes[name]:
                print(f"  {name}: WARNING {note}", flush=True)
            results[name] = SystemResult(
                deploy1=combine(deploy1[name]),
                deploy8=combine(deploy8[name]),
                rejected8=combine(rejected[name]),
                quiet=merge([p for p, _ in quiet[name]]),
                slow=merge([p for p, _ in slow[name]]),
                mixed=mixed,
                rss_mb=rss,
                slow_cuts=sum(cuts for _, cuts in slow[name]),
                writes_ok=not bench.notes[name],
                serving=servers[name].serving,
                notes=bench.notes[name],
            )
    return results


# ---------------------------------------------------------------- report


def chart(results: dict[str, SystemResult], goals: Sequence[Goal], path: Path) -> None:
    """Four panels: deploy rate, p99 with/without slow clients, rejected rate, RSS/worker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    colors = {"noman": "#2b6cb0", "relay": "#718096", "webhook": "#dd6b20"}
    x = range(len(names))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (rate, tail), (rejected, memory) = axes

    def bars(
        ax: Any,
        values: Sequence[float],
        offset: float,
        width: float,
        floor: bool = False,
        **kw: Any,
    ) -> None:
        finite = [v if v == v and v != float("inf") else 0 for v in values]
        drawn = ax.bar([i + offset for i in x], finite, width, **kw)
        for i, (bar, value) in enumerate(zip(drawn, values, strict=True)):
            stalled = floor and results[names[i]].slow.censored
            label = ("≥ " if stalled else "") + format_value(value)
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip

    bars(
        rate,
        [results[n].deploy1.ok_rate for n in names],
        -0.2,
        0.4,
        label="1 connection",
        color="#a0aec0",
    )
    bars(rate, [results[n].deploy8.ok_rate for n in names], 0.2, 0.4, label="8 connections",
         color=[colors[n] for n in names])  # fmt: skip
    rate.set_title("deploy hooks/s (each a real Consul write)")
    rate.legend(fontsize=8)
    ms = 1000
    bars(
        tail,
        [results[n].quiet.p99 * ms for n in names],
        -0.2,
        0.4,
        label="without",
        color="#a0aec0",
    )
    slow_colors = [colors[n] for n in names]
    slow_p99 = [results[n].slow.p99 * ms for n in names]
    bars(tail, slow_p99, 0.2, 0.4, floor=True, label="with slow clients", color=slow_colors)
    tail.set_title("probe p99 ms (8 connections), without / with slow clients")
    tail.set_yscale("log")
    tail.legend(fontsize=8)
    bars(
        rejected,
        [results[n].rejected8.rate for n in names],
        0,
        0.6,
        color=[colors[n] for n in names],
    )
    rejected.set_title("rejected requests/s (wrong secret, bad body), 8 connections")
    bars(memory, [max(results[n].rss_mb, default=float("nan")) for n in names], 0, 0.6,
         color=[colors[n] for n in names])  # fmt: skip
    memory.axhline(GOAL_RSS_MB, color="#c53030", linestyle="--", linewidth=1, label="goal 60 MB")
    memory.set_title("RSS per worker (MB) after the mixed requests")
    memory.legend(fontsize=8)
    for ax in (rate, tail, rejected, memory):
        ax.set_xticks(list(x), names)
    passed = sum(goal.passed for goal in goals)
    fig.suptitle(
        f"Noman beside its peers, one run on one machine: {passed}/{len(goals)} goals pass"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ensure_tools() -> None:
    """wrk and webhook from Debian, installed when missing and we are root."""
    missing = [tool for tool in ("wrk", "webhook", "curl") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"bench/compare.py needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; exit 1 when a goal fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: short phases, few clients"
    )
    parser.add_argument("--seconds", type=float, help="length of one round of a phase (default 4)")
    parser.add_argument("--rounds", type=int, help="rounds of each phase (default 3)")
    parser.add_argument("--slow-clients", type=int, help="slow connections (default 200)")
    parser.add_argument("--mixed", type=int, help="mixed requests before RSS (default 5000)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--chart", type=Path, default=CHART, help=f"PNG path (default {CHART.relative_to(ROOT)})"
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    plan = Plan(
        seconds=args.seconds or (1 if args.quick else 4),
        rounds=args.rounds or (1 if args.quick else 3),
        warmup=1 if args.quick else 2,
        slow_clients=args.slow_clients or (20 if args.quick else 200),
        mixed=args.mixed or (400 if args.quick else 5000),
    )
    ensure_tools()
    services = make_services()
    with tempfile.TemporaryDirectory(prefix="noman-bench-") as name:
        tmp = Path(name)
        consul_port = free_port()
        command = [sys.executable, "-m", "tests.fakes.consul", "--port", str(consul_port)]
        with running(command, _base_env(free_port()), tmp / "consul.log"):
            wait_http(consul_port, "/v1/status/leader")
            consul_url = f"http://127.0.0.1:{consul_port}"
            print(
                f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {plan}", flush=True
            )
            results = measure(SYSTEMS, services, consul_url, tmp, plan)
    goals = evaluate(results)
    print()
    print(table(results))
    print()
    print(goal_lines(goals))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plan": asdict(plan),
                    "results": {n: summary(r) for n, r in results.items()},
                    "goals": [asdict(g) | {"passed": g.passed} for g in goals],
                },
                indent=2,
            )
        )
    if not args.no_chart:
        chart(results, goals, args.chart)
        print(f"\nchart: {args.chart}")
    return 0 if all(goal.passed for goal in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
