"""A fake HashiCorp Nomad HTTP API server for tests (standard library only).

It speaks enough of Nomad 1.x's ``/v1`` API for a deployer to be tested end to end over real
HTTP, either with plain ``requests`` or through python-nomad:

* jobs keyed by ``(namespace, id)`` with server-managed fields, versions and the
  ``JobModifyIndex`` check-and-set of ``EnforceIndex`` registrations (same error text as Nomad);
* deployments created for every new version of a service job, whose outcome is scripted per
  fake (:meth:`FakeNomad.script_deployments`) and happens at its due time on the fake's clock
  (the wall clock, or a :class:`FakeClock` the test moves with :meth:`FakeNomad.advance`), or
  at once with :meth:`FakeNomad.finish_deployment`; a success makes the version ``Stable``, a
  failure with ``AutoRevert`` registers the latest stable version again as a new (unstable)
  version with its own deployment, as Nomad's deployment watcher does;
* blocking queries (``?index=N&wait=5s``) on ``/v1/job/<id>``, its ``versions``,
  ``deployment`` and ``deployments``, ``/v1/deployment/<id>`` and ``/v1/jobs``: every answer
  carries the resource's ``X-Nomad-Index`` (the job's or deployment's ``ModifyIndex``, the
  deployments table's index for a job's deployments) and waits until it passes N; waiting
  queries wake when an outcome comes due, without a timer thread (no jitter, unlike Nomad);
* canary deployments: a register that replaces a version of a job whose (job or group)
  ``update`` has ``Canary > 0`` places that many canary allocations, with
  ``DesiredCanaries``, ``PlacedCanaries`` and "Deployment is running but requires manual
  promotion" (or "... pending automatic promotion" when every canary group auto-promotes);
  the canaries turn healthy (``HealthyAllocs``) or unhealthy as scripted
  (:meth:`FakeNomad.script_canaries`); ``/v1/deployment/promote/<id>`` (refused with Nomad's
  multierror text while canaries are unhealthy) starts the scripted outcome's timer, and
  ``/v1/deployment/fail/<id>`` fails it ("Deployment marked as failed") with the same
  automatic revert as a failed deployment;
* allocations with addresses and ports (``AllocatedResources.Shared.Ports`` and
  ``.Networks``, ``NetworkStatus``), listed by ``/v1/job/<id>/allocations`` and
  ``/v1/deployment/allocations/<id>`` and read by ``/v1/allocation/<id>``; each port label of
  the group's network gets a host port, or the address a test gives with
  :meth:`FakeNomad.set_ports` (a stand-in server of its own);
* parameterized batch jobs and ``/v1/job/<id>/dispatch``: a child job
  ``<id>/dispatch-<unix>-<8 hex>`` with the dispatch ``Meta`` merged in, checked against
  ``MetaRequired``/``MetaOptional`` like Nomad; an ``IdempotencyToken`` (the
  ``?idempotency_token=`` parameter or the body field) that names a child not yet garbage
  collected returns that child instead of a new one; the child's allocations run, then
  complete or fail with Nomad's task events (exit code, "Not Restarting") as scripted
  (:meth:`FakeNomad.script_dispatches`), and the child job turns ``dead``;
* ``/v1/job/<id>/revert`` with ``EnforcePriorVersion``, with Nomad's texts;
* ``/v1/status/leader`` and ``/v1/regions`` (``["global"]``), readable without a token;
* ACL tokens (``X-Nomad-Token`` or ``Authorization: Bearer``) and fault injection (failed
  answers, at once or slowly; answers held back after the register was applied; hung
  requests; refused connections).

Run it by hand with ``python -m tests.fakes.nomad [--port N] [--acl-token T]``.
"""

from __future__ import annotations

import argparse
import copy
import hmac
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes._server import (
    FakeClock,
    FakeHTTPServer,
    FakeServer,
    Hang,
    QuietHandler,
    parse_duration,
    run_main,
)

__all__ = [
    "DEPLOYMENT_OUTCOMES",
    "DISPATCH_OUTCOMES",
    "SERVER_FIELDS",
    "FakeClock",
    "FakeNomad",
    "main",
    "sample_canary_job",
    "sample_parameterized_job",
    "sample_service_job",
]

JSON = dict[str, Any]

#: Job fields that Nomad manages itself.  The fake ignores them in a register body and sets them
#: on the stored job, so tests can compare "everything else" between two jobs.
SERVER_FIELDS: frozenset[str] = frozenset(
    {
        "ID",
        "Name",
        "Namespace",
        "Version",
        "JobModifyIndex",
        "ModifyIndex",
        "CreateIndex",
        "SubmitTime",
        "Status",
        "Stable",
        "Stop",
    }
)

#: Outcomes accepted by :meth:`FakeNomad.script_deployments`.
DEPLOYMENT_OUTCOMES: tuple[str, ...] = ("successful", "failed", "cancelled", "stall", "deadline")
#: Outcomes accepted by :meth:`FakeNomad.script_dispatches`.
DISPATCH_OUTCOMES: tuple[str, ...] = ("complete", "failed", "stall")
#: Nomad's DispatchLaunchSuffix: a child job is ``<parent>/dispatch-<unix time>-<8 hex>``.
DISPATCH_SUFFIX = "/dispatch-"
FAKE_NODE_ID = "f7a4b1c2-0000-4000-8000-000000000001"
#: Where allocations listen unless a test gives an address (FakeNomad.set_ports).
HOST_IP = "127.0.0.1"
FIRST_HOST_PORT = 21000

DEFAULT_NAMESPACE = "default"
LEADER_ADDRESS = "127.0.0.1:4647"
SECOND_NS = 1_000_000_000
#: Nomad's default ``update.progress_deadline`` (10 minutes).
DEFAULT_PROGRESS_DEADLINE_NS = 600 * SECOND_NS
ENFORCE_INDEX_PREFIX = "Enforcing job modify index"
#: Blocking queries: Nomad's default ``wait`` and its cap (seconds).
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0

# What finish_deployment accepts: every scripted outcome that ends a deployment.
_FINAL_OUTCOMES = ("successful", "failed", "deadline", "cancelled")
# Deployment states in which Nomad still considers a deployment active (and so cancels it when a
# newer job version arrives).
_ACTIVE_DEPLOYMENT_STATES = frozenset(
    {"running", "paused", "pending", "blocked", "unblocking", "initializing"}
)
# Sub-resources of /v1/job/<id>/...; anything else after /v1/job/ is a job ID, as in Nomad's
# own router (job IDs may contain slashes).
_JOB_SUBRESOURCES = (
    "dispatch",
    "summary",
    "versions",
    "deployment",
    "deployments",
    "allocations",
    "evaluations",
    "revert",
)


def sample_service_job(
    job_id: str = "web",
    image: str = "stut/stut.dev:release-20230101000000",
    count: int = 2,
) -> JSON:
    """Return a realistic Nomad API-format service job (durations are integer nanoseconds).

    The group, task, ``Meta.owner`` and the Consul key read by the template are named after
    ``job_id`` (all ``"web"`` by default).  Only ``ID`` and ``Name`` of the server-managed fields
    are set, as in a job file converted with ``nomad job run -output``.
    """
    update = {
        "Stagger": 30 * SECOND_NS,
        "MaxParallel": 1,
        "HealthCheck": "checks",
        "MinHealthyTime": 10 * SECOND_NS,
        "HealthyDeadline": 300 * SECOND_NS,
        "ProgressDeadline": DEFAULT_PROGRESS_DEADLINE_NS,
        "AutoRevert": True,
        "AutoPromote": False,
        "Canary": 0,
    }
    return {
        "ID": job_id,
        "Name": job_id,
        "Region": "global",
        "Type": "service",
        "Priority": 50,
        "Datacenters": ["dc1"],
        "Meta": {"owner": job_id},
        "Update": copy.deepcopy(update),
        "TaskGroups": [
            {
                "Name": job_id,
                "Count": count,
                "Update": copy.deepcopy(update),
                "Networks": [
                    {"Mode": "bridge", "DynamicPorts": [{"Label": "http", "Value": 0, "To": 8080}]}
                ],
                "Services": [
                    {
                        "Name": job_id,
                        "PortLabel": "http",
                        "Checks": [
                            {
                                "Name": f"{job_id}-http",
                                "Type": "http",
                                "Path": "/healthz",
                                "Interval": 10 * SECOND_NS,
                                "Timeout": 2 * SECOND_NS,
                            }
                        ],
                    }
                ],
                "Tasks": [
                    {
                        "Name": job_id,
                        "Driver": "docker",
                        "Config": {"image": image, "ports": ["http"]},
                        "Env": {"PORT": "8080", "LOG_LEVEL": "info"},
                        "Meta": None,
                        "Templates": [
                            {
                                "EmbeddedTmpl": (
                                    f'IMAGE_TAG={{{{ key "configs/{job_id}/IMAGE_TAG" }}}}\n'
                                ),
                                "DestPath": "local/env",
                                "Envvars": True,
                                "ChangeMode": "noop",
                            }
                        ],
                        "Resources": {"CPU": 100, "MemoryMB": 128},
                    }
                ],
            }
        ],
    }


def sample_canary_job(
    job_id: str = "web",
    image: str = "stut/stut.dev:release-20230101000000",
    count: int = 2,
    canary: int = 1,
    auto_promote: bool = False,
) -> JSON:
    """:func:`sample_service_job` whose group update places ``canary`` canaries first."""
    job = sample_service_job(job_id, image=image, count=count)
    for update in (job["Update"], job["TaskGroups"][0]["Update"]):
        update.update(Canary=canary, AutoPromote=auto_promote)
    return job


def sample_parameterized_job(
    job_id: str = "migrate",
    image: str = "stut/stut.dev:${NOMAD_META_NOMAN_IMAGE_TAG}",
    meta_required: tuple[str, ...] = ("NOMAN_IMAGE_TAG",),
    meta_optional: tuple[str, ...] = (),
) -> JSON:
    """A parameterized batch job (a release phase: one task, no restarts, no reschedules)."""
    return {
        "ID": job_id,
        "Name": job_id,
        "Region": "global",
        "Type": "batch",
        "Priority": 50,
        "Datacenters": ["dc1"],
        "ParameterizedJob": {
            "Payload": "forbidden",
            "MetaRequired": list(meta_required),
            "MetaOptional": list(meta_optional),
        },
        "Meta": {"owner": job_id},
        "TaskGroups": [
            {
                "Name": job_id,
                "Count": 1,
                "RestartPolicy": {
                    "Attempts": 0,
                    "Interval": 86400 * SECOND_NS,
                    "Delay": 15 * SECOND_NS,
                    "Mode": "fail",
                },
                "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
                "Tasks": [
                    {
                        "Name": job_id,
                        "Driver": "docker",
                        "Config": {"image": image, "command": "/app/migrate"},
                        "Resources": {"CPU": 100, "MemoryMB": 128},
                    }
                ],
            }
        ],
    }


# --------------------------------------------------------------------------------------------
# Internal records


@dataclass
class _Reply:
    """What the HTTP handler should send (or, with ``hang``, not send)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # When set, the handler waits it out and then drops the connection without answering.
    hang: Hang | None = None
    # When set, the handler waits it out (without the lock) before answering.
    delay: Hang | None = None


@dataclass
class _Deployment:
    """A deployment plus the script that decides how and when it finishes."""

    data: JSON
    created: float  # the fake's clock (FakeNomad.now()) at (logical) creation
    outcome: str
    after: float
    # With canaries, the scripted outcome's timer starts only once they are promoted.
    needs_promotion: bool = False
    promoted_at: float | None = None

    @property
    def due(self) -> float | None:
        """Monotonic time at which the scripted outcome applies; None means never (stall)."""
        if self.outcome == "stall":
            return None
        if self.needs_promotion:
            return None if self.promoted_at is None else self.promoted_at + self.after
        return self.created + self.after


@dataclass
class _Event:
    """Something scripted to happen to allocations at ``due`` (the fake's clock)."""

    due: float
    order: int
    apply: Callable[[float], None]


class _HTTPError(Exception):
    """An error answered as plain text, like Nomad's CodedError / RPC error replies."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _text(status: int, text: str) -> _Reply:
    return _Reply(status=status, body=text.encode())


def _strip_nones(value: Any) -> Any:
    """Drop ``None`` dict values recursively: Nomad decodes JSON null and a missing key alike."""
    if isinstance(value, dict):
        return {k: _strip_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nones(v) for v in value]
    return value


def _spec(job: JSON) -> JSON:
    """The user-controlled part of a job, as compared to decide whether a register changes it."""
    spec = {k: v for k, v in job.items() if k not in SERVER_FIELDS}
    # Name is server-managed only in that it defaults to the ID; a real rename is a change.
    spec["Name"] = job.get("Name") or job.get("ID")
    normalized: JSON = _strip_nones(spec)
    return normalized


def _rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _update_field(job_update: JSON, group_update: JSON, name: str) -> Any:
    """One field of a group's effective update block: its own, else the job's."""
    value = group_update.get(name)
    return job_update.get(name) if value is None else value


def _task_event(kind: str, wall: float, display: str) -> JSON:
    """A TaskEvent as the API shows it (DisplayMessage filled in by the HTTP layer)."""
    return {
        "Type": kind,
        "Time": int(wall * SECOND_NS),
        "DisplayMessage": display,
        "Details": {},
        "Message": "",
        "FailsTask": False,
        "RestartReason": "",
        "ExitCode": 0,
        "Signal": 0,
    }


def _exit_text(code: int, message: str) -> str:
    """TaskTerminated's display message, as Nomad's PopulateEventDisplayMessage words it."""
    parts = [f"Exit Code: {code}"]
    if message:
        parts.append(f"Exit Message: {json.dumps(message)}")
    return ", ".join(parts)


def _alloc_stub(alloc: JSON, resources: bool = False) -> JSON:
    """The AllocListStub of an allocation (its resources only when asked for)."""
    stub = {k: copy.deepcopy(v) for k, v in alloc.items() if k not in ("Job", "NetworkStatus")}
    if not resources:
        stub.pop("AllocatedResources")
    return stub


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(QuietHandler):
    """Translates HTTP requests into :meth:`FakeNomad._handle` calls."""

    server: FakeHTTPServer[FakeNomad]

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.title(): value for name, value in self.headers.items()}
        self.send_reply(self.server.fake._handle(self.command, self.path, headers, body))


# --------------------------------------------------------------------------------------------
# The fake


class FakeNomad(FakeServer):
    """An in-process fake Nomad agent listening on ``127.0.0.1``.

    Use as a context manager (``with FakeNomad() as fake: ...``) or call :meth:`start` and
    :meth:`stop`.  All state lives in memory and is protected by one lock; handler threads and
    test code may use the fake concurrently.  :attr:`requests` records each path decoded.
    """

    SERVER_FIELDS: frozenset[str] = SERVER_FIELDS
    _handler_class = _Handler
    _thread_name = "fake-nomad"
    # A short poll keeps stop()/refuse_connections() fast (shutdown waits for it).
    _poll_interval = 0.01

    def __init__(
        self, acl_token: str | None = None, port: int = 0, *, clock: FakeClock | None = None
    ) -> None:
        """Create a stopped fake; ``acl_token`` enables ACLs, ``port=0`` picks a free port.

        ``clock`` (a :class:`FakeClock`) drives the scripted deployment outcomes instead of
        the wall clock: they then happen only when the test advances it.
        """
        super().__init__(host="127.0.0.1", port=port, clock=clock)
        self.acl_token = acl_token
        # Nomad has one Raft index for everything; start above 0 so that "0" stays special
        # (EnforceIndex with JobModifyIndex 0 means "job must not exist").
        self._index = 10
        self._jobs: dict[tuple[str, str], list[JSON]] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._outcome = "successful"
        self._after = 0.0
        # Wall clock = monotonic + offset; deadlines use the monotonic clock, JSON the wall one.
        self._wall_offset = time.time() - self.now()
        #: Every register body received over HTTP, accepted or not (faults included), in order.
        self.registrations: list[dict[str, Any]] = []
        #: Every dispatch request received over HTTP: (job ID, query, body), faults included.
        self.dispatches: list[tuple[str, dict[str, list[str]], Any]] = []
        #: Deployments promoted and failed over HTTP, with the fake's clock when it happened.
        self.promotions: list[tuple[str, float]] = []
        self.failures: list[tuple[str, float]] = []
        #: Jobs reverted over HTTP: (job ID, version reverted to).
        self.reverts: list[tuple[str, int]] = []
        self._allocs: dict[str, JSON] = {}
        self._events: list[_Event] = []
        self._event_order = 0
        # (seconds until canaries turn healthy, or None for never; healthy or unhealthy)
        self._canaries: tuple[float | None, bool] = (0.0, True)
        # (outcome, seconds, exit code, exit message) of dispatched jobs
        self._dispatch: tuple[str, float, int, str] = ("complete", 0.0, 1, "")
        self._ports: dict[str, dict[str, tuple[str, int]]] = {}
        self._next_port = FIRST_HOST_PORT

    # ---- test-side state access ------------------------------------------------------------

    def script_deployments(self, outcome: str = "successful", after: float = 0.0) -> None:
        """Script how deployments created from now on finish.

        ``outcome`` is one of :data:`DEPLOYMENT_OUTCOMES`; the status flips ``after`` seconds
        after the deployment was created ("stall" never flips).  The script is captured when a
        deployment is created, so changing it does not affect existing deployments.  The default
        is ``("successful", 0.0)``.

        * "successful": all allocations healthy; the job version becomes ``Stable`` (its
          ``ModifyIndex`` moves, its ``JobModifyIndex`` does not).
        * "failed": one unhealthy allocation.  When the deployment has ``AutoRevert`` this mimics
          Nomad's deployment watcher: the latest ``Stable`` version is registered again as a new
          version (``JobModifyIndex`` moves) with its own deployment under the same script, and
          the description gains " - rolling back to job version N".  If there is no stable
          version, or it has the same spec as the current job, nothing is registered and the
          description says so, exactly as Nomad words it.
        * "deadline": like "failed", but no allocation turned healthy before the progress
          deadline: "Failed due to progress deadline" (auto-revert as for "failed").
        * "cancelled": "Cancelled by user".
        * "stall": stays "running" (until a newer version cancels it).
        """
        if outcome not in DEPLOYMENT_OUTCOMES:
            raise ValueError(f"outcome must be one of {DEPLOYMENT_OUTCOMES}, not {outcome!r}")
        if after < 0:
            raise ValueError("after must be >= 0")
        with self._lock:
            self._outcome, self._after = outcome, float(after)

    def script_canaries(self, healthy_after: float | None = 0.0, healthy: bool = True) -> None:
        """Script the canaries of deployments created from now on.

        They turn healthy (or, with ``healthy=False``, unhealthy: the deployment then fails
        like Nomad's watcher fails it, "Failed due to unhealthy allocations", with its
        automatic revert) ``healthy_after`` seconds after they were placed; None: never.
        Healthy canaries wait for a promotion, unless every canary group has
        ``AutoPromote``: the fake then promotes at once, as Nomad's watcher does.
        """
        if healthy_after is not None and healthy_after < 0:
            raise ValueError("healthy_after must be >= 0")
        with self._lock:
            self._canaries = (healthy_after, healthy)

    def script_dispatches(
        self, outcome: str = "complete", after: float = 0.0, exit_code: int = 1, message: str = ""
    ) -> None:
        """Script how the allocations of jobs dispatched from now on end.

        "complete": exit code 0; "failed": ``exit_code`` and ``message`` in the task's
        "Terminated" event, then "Not Restarting" (the sample job allows no restarts);
        "stall": they keep running. The outcome comes ``after`` seconds after the dispatch.
        """
        if outcome not in DISPATCH_OUTCOMES:
            raise ValueError(f"outcome must be one of {DISPATCH_OUTCOMES}, not {outcome!r}")
        if after < 0:
            raise ValueError("after must be >= 0")
        with self._lock:
            self._dispatch = (outcome, float(after), exit_code, message)

    def set_ports(self, job_id: str, ports: dict[str, tuple[str, int]]) -> None:
        """Give allocations of ``job_id`` placed from now on these (host IP, port) by label."""
        with self._lock:
            self._ports[job_id] = dict(ports)

    def children(self, parent_id: str, namespace: str = DEFAULT_NAMESPACE) -> list[JSON]:
        """Deep copies of the jobs dispatched from ``parent_id``, oldest first."""
        with self._lock:
            self._refresh()
            found = [
                versions[-1]
                for (ns, _), versions in self._jobs.items()
                if ns == namespace and versions[-1].get("ParentID") == parent_id
            ]
            return copy.deepcopy(sorted(found, key=lambda j: j["CreateIndex"]))

    def allocations(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> list[JSON]:
        """Deep copies of the job's allocations (full form), oldest first."""
        with self._lock:
            self._refresh()
            return [
                copy.deepcopy(a)
                for a in self._allocs.values()
                if a["JobID"] == job_id and a["Namespace"] == namespace
            ]

    def finish_dispatch(
        self, job_id: str, outcome: str = "complete", exit_code: int = 1, message: str = ""
    ) -> None:
        """End the running allocations of dispatched job ``job_id`` now, and wake waiters."""
        if outcome not in ("complete", "failed"):
            raise ValueError('outcome must be "complete" or "failed"')
        with self._lock:
            self._refresh()
            allocs = [
                a
                for a in self._allocs.values()
                if a["JobID"] == job_id and a["ClientStatus"] in ("pending", "running")
            ]
            if not allocs:
                raise ValueError(f"job {job_id!r} has no running allocation")
            for alloc in allocs:
                self._end_alloc(alloc["ID"], outcome, exit_code, message, self.now())
            self._cond.notify_all()

    def add_job(self, job: JSON, namespace: str = DEFAULT_NAMESPACE) -> JSON:
        """Store ``job`` as version 0 without HTTP, as an already running, stable job.

        No deployment is created (the job is treated as deployed long ago) and the version is
        marked ``Stable`` so that an automatic revert has a target.  Raises ``ValueError`` when
        the job has no ``ID`` or already exists (use :meth:`change_job`).
        """
        job_id = job.get("ID")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job needs a non-empty string ID")
        with self._lock:
            self._refresh()
            if (namespace, job_id) in self._jobs:
                raise ValueError(f"job {job_id!r} already exists in namespace {namespace!r}")
            stored = self._store_version(namespace, job, self.now(), deploy=False)
            stored["Stable"] = True
            return copy.deepcopy(stored)

    def job(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> JSON | None:
        """A deep copy of the job's current version, or None."""
        with self._lock:
            self._refresh()
            current = self._current(namespace, job_id)
            return copy.deepcopy(current) if current is not None else None

    def versions(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> list[JSON]:
        """Deep copies of every version of the job, oldest first (empty when unknown)."""
        with self._lock:
            self._refresh()
            return copy.deepcopy(self._jobs.get((namespace, job_id), []))

    def change_job(
        self,
        job_id: str,
        mutate: Callable[[JSON], object],
        namespace: str = DEFAULT_NAMESPACE,
    ) -> JSON:
        """Simulate a concurrent operator ``nomad job run``: mutate a copy and register it.

        A real change makes a new version (``JobModifyIndex`` moves) and a deployment, exactly as
        an HTTP register would; a mutation that changes nothing makes neither.  ``mutate`` edits
        the dict in place (its return value is ignored).  Returns a copy of the resulting current
        job.  Raises ``KeyError`` when the job does not exist.
        """
        with self._lock:
            self._refresh()
            current = self._current(namespace, job_id)
            if current is None:
                raise KeyError(f"job {job_id!r} not found in namespace {namespace!r}")
            candidate = copy.deepcopy(current)
            mutate(candidate)
            candidate["ID"] = job_id
            stored, _ = self._upsert(namespace, candidate, self.now())
            return copy.deepcopy(stored)

    def deployments(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> list[JSON]:
        """Deep copies of the job's deployments, oldest first."""
        with self._lock:
            self._refresh()
            return [copy.deepcopy(d.data) for d in self._job_deployments(namespace, job_id)]

    def deployment(self, deployment_id: str) -> JSON | None:
        """A deep copy of one deployment, or None."""
        with self._lock:
            self._refresh()
            found = self._deployments.get(deployment_id)
            return copy.deepcopy(found.data) if found is not None else None

    def finish_deployment(self, deployment_id: str, outcome: str | None = None) -> JSON:
        """End a running deployment now, as Nomad's deployment watcher would, and wake waiters.

        ``outcome`` is "successful", "failed", "deadline" or "cancelled"; the default is the outcome
        scripted when the deployment was created ("successful" for a "stall" script). Exactly
        what a scripted outcome does happens: ``Stable`` on success, the automatic revert on
        failure. Returns a copy of the deployment.

        Raises:
            KeyError: unknown deployment.
            ValueError: the deployment is not running any more, or a bad outcome.
        """
        if outcome is not None and outcome not in _FINAL_OUTCOMES:
            raise ValueError(f"outcome must be one of {_FINAL_OUTCOMES}, not {outcome!r}")
        with self._lock:
            self._refresh()
            found = self._deployments.get(deployment_id)
            if found is None:
                raise KeyError(f"deployment {deployment_id!r} not found")
            if found.data["Status"] != "running":
                raise ValueError(f"deployment {deployment_id!r} is {found.data['Status']}")
            if outcome is None:
                outcome = "successful" if found.outcome == "stall" else found.outcome
            self._finish(found, outcome, self.now())
            self._cond.notify_all()
            return copy.deepcopy(found.data)

    def latest_deployment(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> JSON | None:
        """A deep copy of the job's newest deployment (what /v1/job/<id>/deployment shows)."""
        with self._lock:
            self._refresh()
            found = self._job_deployments(namespace, job_id)
            if not found:
                return None
            return copy.deepcopy(max(found, key=lambda d: d.data["CreateIndex"]).data)

    # ---- state machinery (callers hold self._lock) ------------------------------------------

    def _jobs_index(self) -> int:
        """The index of the jobs table: the newest change to any job or version."""
        indexes = [v["ModifyIndex"] for versions in self._jobs.values() for v in versions]
        return max(indexes, default=1)

    def _allocs_index(self) -> int:
        """The index of the allocations table."""
        return max((a["ModifyIndex"] for a in self._allocs.values()), default=1)

    def _deployments_index(self) -> int:
        """The index of the deployments table: the newest change to any deployment."""
        return max((d.data["ModifyIndex"] for d in self._deployments.values()), default=1)

    def _next_index(self) -> int:
        """A new Raft index (lock held): every blocking query wakes to look at it.

        A change made without HTTP (change_job, add_job) must wake a blocking read as
        Nomad does: the reader may have asked just before it, not only after.
        """
        self._index += 1
        self._cond.notify_all()
        return self._index

    def _wall(self, mono: float) -> float:
        return mono + self._wall_offset

    def _current(self, namespace: str, job_id: str) -> JSON | None:
        versions = self._jobs.get((namespace, job_id))
        return versions[-1] if versions else None

    def _job_deployments(self, namespace: str, job_id: str) -> list[_Deployment]:
        return [
            d
            for d in self._deployments.values()
            if d.data["Namespace"] == namespace and d.data["JobID"] == job_id
        ]

    def _upsert(self, namespace: str, job: JSON, now: float) -> tuple[JSON, bool]:
        """Register ``job``; returns (current job, whether a new version was created)."""
        current = self._current(namespace, job["ID"])
        if current is not None and _spec(current) == _spec(job):
            # Nomad's Job.Register skips the state write when the spec did not change: no new
            # version, JobModifyIndex unchanged, no deployment (an eval is still created).
            return current, False
        return self._store_version(namespace, job, now, deploy=True), True

    def _store_version(self, namespace: str, job: JSON, now: float, deploy: bool) -> JSON:
        job_id: str = job["ID"]
        versions = self._jobs.setdefault((namespace, job_id), [])
        previous = versions[-1] if versions else None
        index = self._next_index()
        # Server-managed fields from the body are ignored, like Nomad does.
        spec = {k: copy.deepcopy(v) for k, v in job.items() if k not in SERVER_FIELDS}
        stored: JSON = {
            "ID": job_id,
            "Name": job.get("Name") or job_id,
            "Namespace": namespace,
            **spec,
            "Version": 0 if previous is None else previous["Version"] + 1,
            "JobModifyIndex": index,
            "ModifyIndex": index,
            "CreateIndex": index if previous is None else previous["CreateIndex"],
            "SubmitTime": int(self._wall(now) * SECOND_NS),
            "Status": "running",
            "Stable": False,
            "Stop": False,
        }
        versions.append(stored)
        if deploy and (stored.get("Type") or "service") == "service" and stored.get("TaskGroups"):
            self._create_deployment(stored, now, replaces=previous is not None)
        return stored

    def _create_deployment(self, job: JSON, now: float, replaces: bool = False) -> None:
        index = self._next_index()
        for older in self._job_deployments(job["Namespace"], job["ID"]):
            if older.data["Status"] in _ACTIVE_DEPLOYMENT_STATES:
                self._set_status(
                    older, "cancelled", "Cancelled due to newer version of job", index, now
                )
                self._stop_allocs(older.data["ID"], now)
        job_update = job.get("Update") or {}
        groups: JSON = {}
        for group in job["TaskGroups"]:
            group_update = group.get("Update") or {}
            auto_revert = group_update.get("AutoRevert")
            if auto_revert is None:
                auto_revert = job_update.get("AutoRevert")
            deadline = int(
                group_update.get("ProgressDeadline")
                or job_update.get("ProgressDeadline")
                or DEFAULT_PROGRESS_DEADLINE_NS
            )
            # Nomad merges the job's update block into each group's, field by field; a
            # job's first version gets no canaries (there is nothing to compare them with).
            canary = int(_update_field(job_update, group_update, "Canary") or 0) if replaces else 0
            groups[group["Name"]] = {
                "AutoRevert": bool(auto_revert),
                "AutoPromote": bool(_update_field(job_update, group_update, "AutoPromote")),
                "ProgressDeadline": deadline,
                "RequireProgressBy": _rfc3339(self._wall(now) + deadline / SECOND_NS),
                "Promoted": False,
                "PlacedCanaries": None,
                "DesiredCanaries": canary,
                "DesiredTotal": int(group.get("Count", 1)),
                "PlacedAllocs": 0,
                "HealthyAllocs": 0,
                "UnhealthyAllocs": 0,
            }
        canary_groups = [g for g in groups.values() if g["DesiredCanaries"] > 0]
        description = "Deployment is running"
        if canary_groups:
            # Nomad's scheduler words it so when the deployment is created (reconcile.go).
            auto = all(g["AutoPromote"] for g in canary_groups)
            description = (
                "Deployment is running pending automatic promotion"
                if auto
                else "Deployment is running but requires manual promotion"
            )
        wall_ns = int(self._wall(now) * SECOND_NS)
        data: JSON = {
            "ID": str(uuid.uuid4()),
            "Namespace": job["Namespace"],
            "JobID": job["ID"],
            "JobVersion": job["Version"],
            "JobModifyIndex": job["JobModifyIndex"],
            "JobSpecModifyIndex": job["JobModifyIndex"],
            "JobCreateIndex": job["CreateIndex"],
            "IsMultiregion": False,
            "TaskGroups": groups,
            "Status": "running",
            "StatusDescription": description,
            "EvalPriority": job.get("Priority", 50),
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": wall_ns,
            "ModifyTime": wall_ns,
        }
        deployment = _Deployment(
            data, now, self._outcome, self._after, needs_promotion=bool(canary_groups)
        )
        self._deployments[data["ID"]] = deployment
        for group in job["TaskGroups"]:
            state = groups[group["Name"]]
            if state["DesiredCanaries"] > 0:
                placed = [
                    self._place_alloc(job, group, i, now, deployment=data["ID"], canary=True)
                    for i in range(state["DesiredCanaries"])
                ]
                state.update(PlacedCanaries=placed, PlacedAllocs=len(placed))
        if canary_groups:
            healthy_after, healthy = self._canaries
            if healthy_after is not None:
                self._schedule(
                    now + healthy_after,
                    lambda at, d=deployment, ok=healthy: self._canaries_checked(d, ok, at),
                )

    def _set_status(
        self, deployment: _Deployment, status: str, description: str, index: int, now: float
    ) -> None:
        deployment.data.update(
            Status=status,
            StatusDescription=description,
            ModifyIndex=index,
            ModifyTime=int(self._wall(now) * SECOND_NS),
        )

    def _refresh(self) -> None:
        """Apply every scripted deployment outcome whose time has come (see _apply_due)."""
        if self._apply_due():
            self._cond.notify_all()

    def _next_due(self) -> float | None:
        return min(
            [
                due
                for d in self._deployments.values()
                if d.data["Status"] == "running" and (due := d.due) is not None
            ]
            + [event.due for event in self._events],
            default=None,
        )

    def _schedule(self, due: float, apply: Callable[[float], None]) -> None:
        """Have ``apply(at)`` run once the fake's clock reaches ``due``."""
        self._event_order += 1
        self._events.append(_Event(due, self._event_order, apply))

    def _apply_due(self) -> bool:
        """Apply every scripted deployment outcome whose time has come, in time order.

        Requests and waiting blocking queries call this (a blocking query's wait ends at the
        next due time), so outcomes happen on time without a timer thread; with a FakeClock,
        :meth:`FakeClock.advance` calls it. Processing in due order (and using the due time as
        the logical "now") keeps the result identical to a real-time simulation, including
        deployments created by automatic reverts.
        """
        now = self.now()
        changed = False
        while True:
            due = [
                d
                for d in self._deployments.values()
                if d.data["Status"] == "running" and d.due is not None and d.due <= now
            ]
            events = [e for e in self._events if e.due <= now]
            first = min(due, key=lambda d: d.due or 0.0, default=None)
            event = min(events, key=lambda e: (e.due, e.order), default=None)
            if first is None and event is None:
                return changed
            if event is not None and (first is None or event.due <= (first.due or 0.0)):
                self._events.remove(event)
                event.apply(event.due)
            elif first is not None:
                self._finish(first, at=first.due)
            changed = True

    def _finish(
        self, deployment: _Deployment, outcome: str | None = None, at: float | None = None
    ) -> int | None:
        """Apply ``outcome`` (default: the scripted one) at logical time ``at``.

        Returns the version an automatic revert registered, if one did.
        """
        if at is None:
            at = deployment.due if deployment.due is not None else self.now()
        outcome = outcome or deployment.outcome
        index = self._next_index()
        data = deployment.data
        groups = data["TaskGroups"].values()
        if outcome == "successful":
            for group in groups:
                total = group["DesiredTotal"]
                group.update(PlacedAllocs=total, HealthyAllocs=total, UnhealthyAllocs=0)
            self._set_status(
                deployment, "successful", "Deployment completed successfully", index, at
            )
            # Nomad marks a job version stable once its deployment succeeds; that bumps the
            # job's ModifyIndex but not its JobModifyIndex.
            for version in self._jobs.get((data["Namespace"], data["JobID"]), []):
                if version["Version"] == data["JobVersion"]:
                    version.update(Stable=True, ModifyIndex=index)
        elif outcome == "cancelled":
            self._set_status(deployment, "cancelled", "Cancelled by user", index, at)
        else:  # failed, deadline, or "user" (PUT /v1/deployment/fail/<id>)
            for group in groups:
                if outcome == "user" or (group["DesiredCanaries"] and not group["Promoted"]):
                    continue  # the counts stay what they were (canaries judged already)
                # MaxParallel=1 style: the first replacement came up unhealthy (or, past the
                # progress deadline, never healthy).
                unhealthy = 0 if outcome == "deadline" else 1
                group.update(PlacedAllocs=1, HealthyAllocs=0, UnhealthyAllocs=unhealthy)
            description = {
                "deadline": "Failed due to progress deadline",
                "user": "Deployment marked as failed",
            }.get(outcome, "Failed due to unhealthy allocations")
            revert_to: JSON | None = None
            if any(group["AutoRevert"] for group in groups):
                description, revert_to = self._auto_revert_target(data, description)
            self._set_status(deployment, "failed", description, index, at)
            self._stop_allocs(data["ID"], at)
            if revert_to is not None:
                self._store_version(data["Namespace"], revert_to, at, deploy=True)
                return revert_to["Version"]  # type: ignore[no-any-return]
        return None

    def _auto_revert_target(self, data: JSON, description: str) -> tuple[str, JSON | None]:
        """Nomad's deployment watcher rollback decision: (description, job to register)."""
        versions = self._jobs.get((data["Namespace"], data["JobID"]), [])
        if not versions or versions[-1]["Version"] != data["JobVersion"]:
            return description, None
        stable = next((v for v in reversed(versions) if v["Stable"]), None)
        if stable is None:
            return f"{description} - no stable job version to auto revert to", None
        if _spec(stable) == _spec(versions[-1]):
            return (
                f"{description} - not rolling back to stable job version {stable['Version']} "
                "as current job has same specification",
                None,
            )
        return f"{description} - rolling back to job version {stable['Version']}", stable

    # ---- allocations (callers hold self._lock) ----------------------------------------------

    def _host_port(self, job_id: str, label: str) -> tuple[str, int]:
        given = self._ports.get(job_id, {}).get(label)
        if given is not None:
            return given
        self._next_port += 1
        return HOST_IP, self._next_port

    def _place_alloc(
        self,
        job: JSON,
        group: JSON,
        index: int,
        now: float,
        deployment: str | None = None,
        canary: bool = False,
    ) -> str:
        """Place one allocation of ``group`` (running; a dispatched job's: pending); its ID."""
        alloc_index = self._next_index()
        wall_ns = int(self._wall(now) * SECOND_NS)
        networks, ports = [], []
        for network in group.get("Networks") or []:
            dynamic = []
            for port in (network.get("DynamicPorts") or []) + (network.get("ReservedPorts") or []):
                host, value = self._host_port(job["ID"], port["Label"])
                to = int(port.get("To") or 0)
                dynamic.append(
                    {"Label": port["Label"], "Value": value, "To": to, "HostNetwork": "default"}
                )
                ports.append({"Label": port["Label"], "Value": value, "To": to, "HostIP": host})
            networks.append(
                {
                    "Mode": network.get("Mode") or "host",
                    "IP": ports[0]["HostIP"] if ports else HOST_IP,
                    "DynamicPorts": dynamic,
                    "ReservedPorts": None,
                }
            )
        wall = self._wall(now)
        events = [_task_event("Received", wall, "Task received by client")]
        dispatched = bool(job.get("Dispatched"))
        if not dispatched:
            events.append(_task_event("Started", wall, "Task started by client"))
        alloc: JSON = {
            "ID": str(uuid.uuid4()),
            "EvalID": str(uuid.uuid4()),
            "Name": f"{job['ID']}.{group['Name']}[{index}]",
            "Namespace": job["Namespace"],
            "NodeID": FAKE_NODE_ID,
            "NodeName": "fake-node",
            "JobID": job["ID"],
            "JobType": job.get("Type") or "service",
            "JobVersion": job["Version"],
            "Job": copy.deepcopy(job),
            "TaskGroup": group["Name"],
            "AllocatedResources": {
                "Tasks": {t["Name"]: {"Networks": None} for t in group.get("Tasks") or []},
                "Shared": {"DiskMB": 300, "Networks": networks, "Ports": ports},
            },
            "NetworkStatus": {
                "InterfaceName": "eth0" if networks else "",
                "Address": f"172.26.64.{len(self._allocs) % 250 + 2}" if networks else "",
                "DNS": None,
            },
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "ClientStatus": "pending" if dispatched else "running",
            "ClientDescription": "" if dispatched else "Tasks are running",
            "TaskStates": {
                t["Name"]: {
                    "State": "pending" if dispatched else "running",
                    "Failed": False,
                    "Restarts": 0,
                    "StartedAt": None if dispatched else _rfc3339(self._wall(now)),
                    "FinishedAt": None,
                    "Events": copy.deepcopy(events),
                }
                for t in group.get("Tasks") or []
            },
            "DeploymentID": deployment or "",
            "DeploymentStatus": (
                {"Healthy": None, "Canary": canary, "Timestamp": None, "ModifyIndex": alloc_index}
                if deployment
                else None
            ),
            "FollowupEvalID": "",
            "NextAllocation": "",
            "RescheduleTracker": None,
            "PreemptedAllocations": None,
            "PreemptedByAllocation": "",
            "CreateIndex": alloc_index,
            "ModifyIndex": alloc_index,
            "CreateTime": wall_ns,
            "ModifyTime": wall_ns,
        }
        self._allocs[alloc["ID"]] = alloc
        return str(alloc["ID"])

    def _touch_alloc(self, alloc: JSON, at: float) -> None:
        alloc["ModifyIndex"] = self._next_index()
        alloc["ModifyTime"] = int(self._wall(at) * SECOND_NS)
        if alloc.get("DeploymentStatus"):
            alloc["DeploymentStatus"]["ModifyIndex"] = alloc["ModifyIndex"]

    def _canaries_checked(self, deployment: _Deployment, healthy: bool, at: float) -> None:
        """The canaries' health checks settled: healthy (then maybe auto-promoted) or not."""
        data = deployment.data
        if data["Status"] != "running":
            return
        for group in data["TaskGroups"].values():
            canaries = group.get("PlacedCanaries") or []
            for alloc_id in canaries:
                alloc = self._allocs[alloc_id]
                alloc["DeploymentStatus"].update(
                    Healthy=healthy, Timestamp=_rfc3339(self._wall(at))
                )
                self._touch_alloc(alloc, at)
            key = "HealthyAllocs" if healthy else "UnhealthyAllocs"
            group[key] = len(canaries)
        if not healthy:
            self._finish(deployment, "failed", at)
            return
        data["ModifyIndex"] = self._next_index()
        groups = [g for g in data["TaskGroups"].values() if g["DesiredCanaries"]]
        if all(g["AutoPromote"] for g in groups):
            self._promote(deployment, at)

    def _promote(self, deployment: _Deployment, at: float) -> None:
        data = deployment.data
        for group in data["TaskGroups"].values():
            group["Promoted"] = True
            deadline = group["ProgressDeadline"]
            group["RequireProgressBy"] = _rfc3339(self._wall(at) + deadline / SECOND_NS)
        deployment.promoted_at = at
        self._set_status(deployment, "running", "Deployment is running", self._next_index(), at)

    def _stop_allocs(self, deployment_id: str, at: float) -> None:
        """The canaries of a deployment that failed stop (Nomad replaces them on revert)."""
        for alloc in self._allocs.values():
            if alloc["DeploymentID"] == deployment_id and alloc["ClientStatus"] == "running":
                alloc.update(
                    DesiredStatus="stop",
                    DesiredDescription="alloc not needed due to job update",
                    ClientStatus="complete",
                    ClientDescription="All tasks have completed",
                )
                for state in alloc["TaskStates"].values():
                    state.update(State="dead", FinishedAt=_rfc3339(self._wall(at)))
                self._touch_alloc(alloc, at)

    def _start_alloc(self, alloc_id: str, at: float) -> None:
        alloc = self._allocs[alloc_id]
        if alloc["ClientStatus"] != "pending":
            return
        alloc.update(ClientStatus="running", ClientDescription="Tasks are running")
        for state in alloc["TaskStates"].values():
            state.update(State="running", StartedAt=_rfc3339(self._wall(at)))
            state["Events"].append(_task_event("Started", self._wall(at), "Task started by client"))
        self._touch_alloc(alloc, at)
        self._update_job_status(alloc["Namespace"], alloc["JobID"], at)

    def _end_alloc(
        self, alloc_id: str, outcome: str, exit_code: int, message: str, at: float
    ) -> None:
        """A dispatched job's allocation ends: complete (exit 0) or failed, with its events."""
        alloc = self._allocs[alloc_id]
        if alloc["ClientStatus"] not in ("pending", "running"):
            return
        self._start_alloc(alloc_id, at)
        failed = outcome == "failed"
        code = exit_code if failed else 0
        for state in alloc["TaskStates"].values():
            terminated = _task_event("Terminated", self._wall(at), _exit_text(code, message))
            terminated.update(
                ExitCode=code,
                Message=message,
                Details={"exit_code": str(code), "signal": "0", "oom_killed": "false"},
            )
            state["Events"].append(terminated)
            if failed:
                # The sample release job allows no restarts (restart.attempts = 0, mode fail).
                stop = _task_event("Not Restarting", self._wall(at), "Policy allows no restarts")
                stop.update(FailsTask=True, RestartReason="Policy allows no restarts")
                state["Events"].append(stop)
            state.update(State="dead", Failed=failed, FinishedAt=_rfc3339(self._wall(at)))
        alloc.update(
            ClientStatus="failed" if failed else "complete",
            ClientDescription="Failed tasks" if failed else "All tasks have completed",
        )
        self._touch_alloc(alloc, at)
        self._update_job_status(alloc["Namespace"], alloc["JobID"], at)

    def _update_job_status(self, namespace: str, job_id: str, at: float) -> None:
        """A job's Status follows its allocations: pending, running, then dead."""
        job = self._current(namespace, job_id)
        if job is None:
            return
        statuses = [
            a["ClientStatus"]
            for a in self._allocs.values()
            if a["JobID"] == job_id and a["Namespace"] == namespace
        ]
        if any(s == "running" for s in statuses):
            status = "running"
        elif not statuses or any(s == "pending" for s in statuses):
            status = "pending"
        else:
            status = "dead"
        if job["Status"] != status:
            job.update(Status=status, ModifyIndex=self._next_index())

    def _dispatch_job(
        self, parent_id: str, namespace: str, query: dict[str, list[str]], payload: Any
    ) -> _Reply:
        """Nomad's Job.Dispatch: checks, the idempotency token, then the child job."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise _HTTPError(400, "Request body must be a JSON object")
        if payload.get("JobID") and payload["JobID"] != parent_id:
            raise _HTTPError(400, "Job ID does not match")
        parent = self._current(namespace, parent_id)
        if parent is None:
            raise _HTTPError(500, "parameterized job not found")
        params = parent.get("ParameterizedJob")
        if not params:
            raise _HTTPError(500, f'Specified job "{parent_id}" is not a parameterized job')
        if parent.get("Stop"):
            raise _HTTPError(500, f'Specified job "{parent_id}" is stopped')
        meta = payload.get("Meta") or {}
        if not isinstance(meta, dict):
            raise _HTTPError(400, "Meta must be an object of strings")
        if params.get("Payload") == "required" and not payload.get("Payload"):
            raise _HTTPError(500, "Payload is not provided but required by parameterized job")
        if params.get("Payload") == "forbidden" and payload.get("Payload"):
            raise _HTTPError(500, "Payload provided but forbidden by parameterized job")
        allowed = set(params.get("MetaRequired") or []) | set(params.get("MetaOptional") or [])
        unpermitted = sorted(k for k in meta if k not in allowed)
        if unpermitted:
            raise _HTTPError(
                500,
                f"Dispatch request included unpermitted metadata keys: [{' '.join(unpermitted)}]",
            )
        missing = sorted(k for k in params.get("MetaRequired") or [] if k not in meta)
        if missing:
            raise _HTTPError(
                500, f"Dispatch did not provide required meta keys: [{' '.join(missing)}]"
            )
        # parseWriteRequest: the query parameter (what Nomad's Go client sends) overrides the
        # body's field. Go matches JSON keys case-insensitively, but "idempotency_token" (what
        # python-nomad 2.1's dispatch_job sends in the body) is another name: ignored.
        token = (query.get("idempotency_token") or [""])[0] or payload.get("IdempotencyToken") or ""
        if token:
            for (ns, _), versions in self._jobs.items():
                child = versions[-1]
                same_parent = ns == namespace and child.get("ParentID") == parent_id
                if same_parent and child.get("DispatchIdempotencyToken") == token:
                    return self._json(
                        {
                            "DispatchedJobID": child["ID"],
                            "EvalID": "",
                            "EvalCreateIndex": 0,
                            "JobCreateIndex": child["CreateIndex"],
                            "Index": child["ModifyIndex"],
                        },
                        index=child["ModifyIndex"],
                    )
        now = self.now()
        child_id = f"{parent_id}{DISPATCH_SUFFIX}{int(self._wall(now))}-{uuid.uuid4().hex[:8]}"
        spec = {k: copy.deepcopy(v) for k, v in parent.items() if k not in SERVER_FIELDS}
        spec.update(
            ID=child_id,
            Name=child_id,
            ParentID=parent_id,
            Dispatched=True,
            DispatchIdempotencyToken=token,
            Meta={**(parent.get("Meta") or {}), **meta},
        )
        spec.pop("ParameterizedJob", None)
        child = self._store_version(namespace, spec, now, deploy=False)
        child.update(ParameterizedJob=None, Status="pending", Stable=False)
        outcome, after, exit_code, message = self._dispatch
        for group in child.get("TaskGroups") or []:
            for i in range(int(group.get("Count", 1))):
                alloc_id = self._place_alloc(child, group, i, now)
                self._schedule(now, lambda at, a=alloc_id: self._start_alloc(a, at))
                if outcome != "stall":
                    self._schedule(
                        now + after,
                        lambda at, a=alloc_id: self._end_alloc(a, outcome, exit_code, message, at),
                    )
        eval_id = str(uuid.uuid4())
        return self._json(
            {
                "DispatchedJobID": child_id,
                "EvalID": eval_id,
                "EvalCreateIndex": child["CreateIndex"],
                "JobCreateIndex": child["CreateIndex"],
                "Index": child["CreateIndex"],
            },
            index=child["CreateIndex"],
        )

    def _deployment_update(self, action: str, deployment_id: str, payload: Any) -> _Reply:
        """PUT /v1/deployment/promote|fail/<id>: Nomad's checks and texts, then the change."""
        if action == "promote":
            # The HTTP layer decodes the body first (fail takes the ID from the path only).
            if not isinstance(payload, dict) or not payload.get("DeploymentID"):
                raise _HTTPError(400, "DeploymentID must be specified")
            if payload["DeploymentID"] != deployment_id:
                raise _HTTPError(400, "Deployment ID does not match")
        found = self._deployments.get(deployment_id)
        if found is None:
            raise _HTTPError(500, "deployment not found")
        if found.data["Status"] not in _ACTIVE_DEPLOYMENT_STATES:
            raise _HTTPError(500, f"can't {action} terminal deployment")
        now = self.now()
        reverted: int | None = None
        if action == "promote":
            groups = payload.get("Groups") or []
            problems = []
            for name, group in sorted(found.data["TaskGroups"].items()):
                if not payload.get("All") and name not in groups:
                    continue
                need = group["DesiredCanaries"]
                healthy = sum(
                    1
                    for alloc_id in group.get("PlacedCanaries") or []
                    if self._allocs[alloc_id]["DeploymentStatus"].get("Healthy") is True
                    and self._allocs[alloc_id]["ClientStatus"] == "running"
                )
                if need and healthy < need:
                    problems.append(f'Task group "{name}" has {healthy}/{need} healthy allocations')
            if problems:
                # hashicorp/go-multierror's format, as Nomad returns it.
                listed = "".join(f"\t* {p}\n" for p in problems)
                count = (
                    "1 error occurred" if len(problems) == 1 else f"{len(problems)} errors occurred"
                )
                raise _HTTPError(500, f"{count}:\n{listed}\n")
            self._promote(found, now)
            self.promotions.append((deployment_id, now))
        else:
            reverted = self._finish(found, "user", now)
            self.failures.append((deployment_id, now))
        self._cond.notify_all()
        index = found.data["ModifyIndex"]
        return self._json(
            {
                "EvalID": str(uuid.uuid4()),
                "EvalCreateIndex": index,
                "DeploymentModifyIndex": index,
                "RevertedJobVersion": reverted,
                "Index": index,
            },
            index=index,
        )

    # ---- HTTP request handling ---------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Process one HTTP request (called from handler threads)."""
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append((method, path, query, headers))
            payload: Any = None
            decode_error: str | None = None
            if body:
                try:
                    payload = json.loads(body)
                except ValueError as exc:
                    decode_error = f"Failed to decode request body: {exc}"
            if method in ("POST", "PUT") and path.startswith("/v1/job/"):
                job_id, sub = _split_job_path(path)
                if sub == "dispatch":
                    recorded = payload if decode_error is None else body.decode("utf-8", "replace")
                    self.dispatches.append((job_id, copy.deepcopy(query), copy.deepcopy(recorded)))
            if method in ("POST", "PUT") and self._is_register_path(path):
                if decode_error is not None or not isinstance(payload, dict):
                    self.registrations.append({"_raw": body.decode("utf-8", "replace")})
                else:
                    self.registrations.append(copy.deepcopy(payload))
            # Faults come first: they model the network or an unhealthy server, which fail
            # before authentication or any state change.
            fault = self._next_fault()
            if isinstance(fault, Hang):
                return _Reply(hang=fault)
            if fault is not None:
                failed = _text(fault.status, fault.body)
                failed.delay = fault.delay
                return failed
            late = self._next_late()
            try:
                self._check_acl(path, headers)
                if decode_error is not None:
                    raise _HTTPError(400, decode_error)
                self._refresh()
                reply = self._route(method, path, query, payload)
            except _HTTPError as exc:
                reply = _text(exc.status, exc.text)
            except Exception as exc:  # a bug in the fake: surface it instead of hanging
                reply = _text(500, f"fake nomad internal error: {exc!r}")
            reply.delay = late  # applied already: only the answer is late
            return reply

    @staticmethod
    def _is_register_path(path: str) -> bool:
        if path == "/v1/jobs":
            return True
        return path.startswith("/v1/job/") and _split_job_path(path)[1] == ""

    def _check_acl(self, path: str, headers: dict[str, str]) -> None:
        # Nomad lets anyone read /v1/status/* and /v1/regions; the rest needs a token's policy.
        if self.acl_token is None or path.startswith("/v1/status/") or path == "/v1/regions":
            return
        token = headers.get("X-Nomad-Token", "")
        if not token:
            scheme, _, value = headers.get("Authorization", "").partition(" ")
            if scheme == "Bearer":
                token = value.strip()
        if not token:
            # No token means the anonymous token, which has no policy here.
            raise _HTTPError(403, "Permission denied")
        if not hmac.compare_digest(token.encode(), self.acl_token.encode()):
            raise _HTTPError(403, "ACL token not found")

    def _json(self, data: Any, status: int = 200, index: int | None = None) -> _Reply:
        return _Reply(
            status=status,
            body=json.dumps(data).encode(),
            content_type="application/json",
            headers={
                "X-Nomad-Index": str(self._index if index is None else index),
                "X-Nomad-Knownleader": "true",
                "X-Nomad-Lastcontact": "0",
            },
        )

    def _route(self, method: str, path: str, query: dict[str, list[str]], payload: Any) -> _Reply:
        namespace = (query.get("namespace") or [""])[0] or DEFAULT_NAMESPACE
        if path == "/v1/status/leader":
            self._require(method, "GET")
            return self._json(LEADER_ADDRESS)
        if path == "/v1/status/peers":
            self._require(method, "GET")
            return self._json([LEADER_ADDRESS])
        if path == "/v1/regions":  # no ACL, as in Nomad
            self._require(method, "GET")
            return self._json(["global"])
        if path == "/v1/agent/self":
            self._require(method, "GET")
            return self._json(self._agent_self())
        if path == "/v1/jobs":
            if method == "GET":
                return self._blocking(
                    query, lambda: (self._jobs_index(), self._job_stubs(namespace, query))
                )
            self._require(method, "POST", "PUT")
            return self._register(None, query, payload)
        if path.startswith("/v1/job/"):
            job_id, sub = _split_job_path(path)
            return self._job_request(method, job_id, sub, namespace, query, payload)
        if path == "/v1/deployments":
            self._require(method, "GET")
            prefix = (query.get("prefix") or [""])[0]

            def listed() -> tuple[int, Any]:
                found = [
                    copy.deepcopy(d.data)
                    for d in self._deployments.values()
                    if namespace in ("*", d.data["Namespace"]) and d.data["ID"].startswith(prefix)
                ]
                found.sort(key=lambda d: d["CreateIndex"], reverse=True)
                return self._deployments_index(), found

            return self._blocking(query, listed)
        if path.startswith("/v1/deployment/"):
            rest = path[len("/v1/deployment/") :]
            for action in ("promote", "fail"):
                if rest.startswith(f"{action}/"):
                    self._require(method, "POST", "PUT")
                    return self._deployment_update(action, rest[len(action) + 1 :], payload)
            self._require(method, "GET")
            allocations = rest.startswith("allocations/")
            deployment_id = rest.removeprefix("allocations/")

            def one() -> tuple[int, Any]:
                deployment = self._deployments.get(deployment_id)
                if deployment is None or deployment.data["Namespace"] != namespace:
                    return self._deployments_index(), _HTTPError(404, "deployment not found")
                if allocations:
                    found = [
                        _alloc_stub(a)
                        for a in self._allocs.values()
                        if a["DeploymentID"] == deployment_id
                    ]
                    return self._allocs_index(), found
                return deployment.data["ModifyIndex"], copy.deepcopy(deployment.data)

            return self._blocking(query, one)
        if path.startswith("/v1/allocation/"):
            self._require(method, "GET")
            alloc_id = path[len("/v1/allocation/") :]

            def alloc() -> tuple[int, Any]:
                found = self._allocs.get(alloc_id)
                if found is None or found["Namespace"] != namespace:
                    return self._allocs_index(), _HTTPError(404, "alloc not found")
                return found["ModifyIndex"], copy.deepcopy(found)

            return self._blocking(query, alloc)
        raise _HTTPError(404, "404 page not found")

    @staticmethod
    def _require(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _HTTPError(405, "Invalid method")

    def _job_request(
        self,
        method: str,
        job_id: str,
        sub: str,
        namespace: str,
        query: dict[str, list[str]],
        payload: Any,
    ) -> _Reply:
        if sub == "":
            if method in ("POST", "PUT"):
                return self._register(job_id, query, payload)
            self._require(method, "GET")

            def job() -> tuple[int, Any]:
                current = self._current(namespace, job_id)
                if current is None:
                    return self._jobs_index(), _HTTPError(404, "job not found")
                return current["ModifyIndex"], copy.deepcopy(current)

            return self._blocking(query, job)
        if sub == "revert":
            self._require(method, "POST", "PUT")
            return self._revert(job_id, namespace, payload)
        if sub == "dispatch":
            self._require(method, "POST", "PUT")
            return self._dispatch_job(job_id, namespace, query, payload)
        self._require(method, "GET")
        if sub == "allocations":

            def allocations() -> tuple[int, Any]:
                resources = (query.get("resources") or [""])[0] == "true"
                found = [
                    _alloc_stub(a, resources)
                    for a in self._allocs.values()
                    if a["JobID"] == job_id and a["Namespace"] == namespace
                ]
                return self._allocs_index(), found

            return self._blocking(query, allocations)
        if sub == "summary":

            def summary() -> tuple[int, Any]:
                current = self._current(namespace, job_id)
                if current is None:
                    return self._jobs_index(), _HTTPError(404, "job not found")
                counts: dict[str, JSON] = {}
                for group in current.get("TaskGroups") or []:
                    counts[group["Name"]] = dict.fromkeys(
                        ("Queued", "Complete", "Failed", "Running", "Starting", "Lost", "Unknown"),
                        0,
                    )
                key = {"pending": "Starting", "running": "Running", "complete": "Complete"}
                for a in self._allocs.values():
                    if a["JobID"] == job_id and a["Namespace"] == namespace:
                        group_counts = counts.setdefault(a["TaskGroup"], {})
                        name = key.get(a["ClientStatus"], "Failed")
                        group_counts[name] = group_counts.get(name, 0) + 1
                return self._allocs_index(), {
                    "JobID": job_id,
                    "Namespace": namespace,
                    "Summary": counts,
                    "Children": {"Pending": 0, "Running": 0, "Dead": 0},
                    "CreateIndex": current["CreateIndex"],
                    "ModifyIndex": current["ModifyIndex"],
                }

            return self._blocking(query, summary)
        if sub == "versions":

            def versions() -> tuple[int, Any]:
                found = self._jobs.get((namespace, job_id))
                if not found:
                    return self._jobs_index(), _HTTPError(404, "job versions not found")
                # Any version's change (a new one, or an older one turning Stable) moves it.
                index = max(v["ModifyIndex"] for v in found)
                newest_first = copy.deepcopy(list(reversed(found)))
                return index, {
                    "Versions": newest_first,
                    "Diffs": None,
                    "Index": index,
                    "KnownLeader": True,
                    "LastContact": 0,
                }

            return self._blocking(query, versions)

        def deployments() -> tuple[int, Any]:
            found = sorted(
                (copy.deepcopy(d.data) for d in self._job_deployments(namespace, job_id)),
                key=lambda d: d["CreateIndex"],
                reverse=True,
            )
            # Nomad answers with the deployments table's index: any deployment's change
            # wakes the query, so watchers compare content, not only the index.
            index = self._deployments_index()
            if sub == "deployment":
                return index, found[0] if found else None
            return index, found

        if sub in ("deployment", "deployments"):
            return self._blocking(query, deployments)
        return self._json([])  # evaluations: the fake keeps none

    def _blocking(
        self, query: dict[str, list[str]], answer: Callable[[], tuple[int, Any]]
    ) -> _Reply:
        """Nomad's blocking query: ``?index=N&wait=D`` answers once the index passes N.

        ``answer`` returns (index, JSON data or an _HTTPError to raise); it runs under the
        lock, again after every change. Without ``index`` (or with 0) it answers at once.
        Nomad adds up to wait/16 of jitter to the wait; the fake does not.
        """
        wait_text = (query.get("wait") or [""])[0]
        index_text = (query.get("index") or [""])[0]
        wait = DEFAULT_WAIT
        if wait_text:
            try:
                wait = parse_duration(wait_text)
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
        wait = MAX_WAIT if wait > MAX_WAIT else DEFAULT_WAIT if wait <= 0 else wait
        if index_text and not index_text.isdigit():
            raise _HTTPError(400, "Invalid index")
        min_index = int(index_text or 0)
        deadline = time.monotonic() + wait
        server = self._server
        while True:
            index, data = answer()
            remaining = deadline - time.monotonic()
            if not min_index or index > min_index or remaining <= 0 or self._server is not server:
                break
            self._wait(remaining)
        if isinstance(data, _HTTPError):
            raise data
        return self._json(data, index=index)

    def _register(self, path_id: str | None, query: dict[str, list[str]], payload: Any) -> _Reply:
        if not isinstance(payload, dict) or not isinstance(payload.get("Job"), dict):
            raise _HTTPError(400, "Job must be specified")
        job: JSON = payload["Job"]
        job_id = job.get("ID")
        if not isinstance(job_id, str) or not job_id:
            raise _HTTPError(400, "Job ID hasn't been provided")
        if path_id is not None and job_id != path_id:
            raise _HTTPError(400, "Job ID does not match name")
        # Nomad's namespaceForJob: ?namespace= wins, then the request body's Namespace, then
        # the job's own Namespace, then "default".
        namespace = (
            (query.get("namespace") or [""])[0]
            or payload.get("Namespace")
            or job.get("Namespace")
            or DEFAULT_NAMESPACE
        )
        current = self._current(namespace, job_id)
        if payload.get("EnforceIndex"):
            wanted = int(payload.get("JobModifyIndex") or 0)
            # Same checks and texts as Nomad's Job.Register; an RPC error becomes HTTP 500.
            if current is not None:
                if wanted == 0:
                    raise _HTTPError(500, f"{ENFORCE_INDEX_PREFIX} 0: job already exists")
                if wanted != current["JobModifyIndex"]:
                    raise _HTTPError(
                        500,
                        f"{ENFORCE_INDEX_PREFIX} {wanted}: job exists with conflicting job "
                        f"modify index: {current['JobModifyIndex']}",
                    )
            elif wanted != 0:
                raise _HTTPError(500, f"{ENFORCE_INDEX_PREFIX} {wanted}: job does not exist")
        return self._register_reply(namespace, job)

    def _register_reply(self, namespace: str, job: JSON) -> _Reply:
        stored, changed = self._upsert(namespace, job, self.now())
        # A changed job and its evaluation share one Raft entry; an unchanged one still gets
        # an evaluation, at a new index.
        eval_index = stored["JobModifyIndex"] if changed else self._next_index()
        return self._json(
            {
                "EvalID": str(uuid.uuid4()),
                "EvalCreateIndex": eval_index,
                "JobModifyIndex": stored["JobModifyIndex"],
                "Warnings": "",
                "Index": eval_index,
                "LastContact": 0,
                "KnownLeader": False,
            }
        )

    def _revert(self, job_id: str, namespace: str, payload: Any) -> _Reply:
        # The HTTP layer's checks (jobRevert), then Job.Revert's, with their texts.
        if not isinstance(payload, dict):
            raise _HTTPError(400, "Request body must be a JSON object")
        if not payload.get("JobID"):
            raise _HTTPError(400, "JobID must be specified")
        if payload["JobID"] != job_id:
            raise _HTTPError(400, "Job ID does not match")
        current = self._current(namespace, job_id)
        if current is None:
            raise _HTTPError(500, f'job "{job_id}" not found')
        prior = payload.get("EnforcePriorVersion")
        if prior is not None and current["Version"] != prior:
            raise _HTTPError(
                500, f"Current job has version {current['Version']}; enforcing version {prior}"
            )
        version = payload.get("JobVersion")
        if version == current["Version"]:
            raise _HTTPError(500, "can't revert to current version")
        target = next((v for v in self._jobs[(namespace, job_id)] if v["Version"] == version), None)
        if target is None:
            raise _HTTPError(
                500, f'job "{job_id}" in namespace "{namespace}" at version {version} not found'
            )
        self.reverts.append((job_id, int(version)))
        return self._register_reply(namespace, target)

    def _job_stubs(self, namespace: str, query: dict[str, list[str]]) -> list[JSON]:
        prefix = (query.get("prefix") or [""])[0]
        stubs = []
        for (job_namespace, job_id), versions in sorted(self._jobs.items()):
            if namespace not in ("*", job_namespace) or not job_id.startswith(prefix):
                continue
            job = versions[-1]
            stubs.append(
                {
                    key: job.get(key)
                    for key in (
                        "ID",
                        "Name",
                        "Namespace",
                        "Datacenters",
                        "Type",
                        "Priority",
                        "Status",
                        "Stop",
                        "Version",
                        "CreateIndex",
                        "ModifyIndex",
                        "JobModifyIndex",
                        "SubmitTime",
                        "Meta",
                    )
                }
                | {
                    "ParentID": job.get("ParentID") or "",
                    "StatusDescription": "",
                    "Periodic": False,
                }
            )
        return stubs

    @staticmethod
    def _agent_self() -> JSON:
        return {
            "config": {
                "Region": "global",
                "Datacenter": "dc1",
                "NodeName": "fake-nomad",
                "Version": {"Version": "1.7.7", "VersionPrerelease": "", "Revision": "fake"},
                "ACL": {"Enabled": False},
            },
            "member": {
                "Name": "fake-nomad.global",
                "Addr": "127.0.0.1",
                "Port": 4648,
                "Status": "alive",
                "Tags": {"region": "global", "dc": "dc1", "role": "nomad", "build": "1.7.7"},
            },
            "stats": {"nomad": {"leader": "true", "server": "true", "known_regions": "1"}},
        }


def _split_job_path(path: str) -> tuple[str, str]:
    """Split ``/v1/job/<id>[/<sub>]`` into (id, sub); sub is "" for the job itself."""
    rest = path[len("/v1/job/") :]
    for sub in _JOB_SUBRESOURCES:
        suffix = "/" + sub
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)], sub
    return rest, ""


def main(argv: list[str] | None = None) -> int:
    """Serve a fake Nomad until SIGTERM/SIGINT, printing its URL on one line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.nomad", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: pick a free one)")
    parser.add_argument("--acl-token", default=None, help="require this X-Nomad-Token")
    args = parser.parse_args(argv)
    return run_main(FakeNomad(acl_token=args.acl_token, port=args.port))


if __name__ == "__main__":
    sys.exit(main())
