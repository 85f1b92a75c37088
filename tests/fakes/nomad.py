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
    "SERVER_FIELDS",
    "FakeClock",
    "FakeNomad",
    "main",
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

    @property
    def due(self) -> float | None:
        """Monotonic time at which the scripted outcome applies; None means never (stall)."""
        return None if self.outcome == "stall" else self.created + self.after


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
        reply = self.server.fake._handle(self.command, self.path, headers, body)
        if reply.hang is not None:
            reply.hang.wait()
            # Returning without writing anything and closing makes the client see a
            # connection closed without a response (or its own read timeout first).
            self.close_connection = True
            return
        if reply.delay is not None:
            reply.delay.wait()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


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

    def _deployments_index(self) -> int:
        """The index of the deployments table: the newest change to any deployment."""
        return max((d.data["ModifyIndex"] for d in self._deployments.values()), default=1)

    def _next_index(self) -> int:
        self._index += 1
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
            self._create_deployment(stored, now)
        return stored

    def _create_deployment(self, job: JSON, now: float) -> None:
        index = self._next_index()
        for older in self._job_deployments(job["Namespace"], job["ID"]):
            if older.data["Status"] in _ACTIVE_DEPLOYMENT_STATES:
                self._set_status(
                    older, "cancelled", "Cancelled due to newer version of job", index, now
                )
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
            groups[group["Name"]] = {
                "AutoRevert": bool(auto_revert),
                "AutoPromote": bool(group_update.get("AutoPromote")),
                "ProgressDeadline": deadline,
                "RequireProgressBy": _rfc3339(self._wall(now) + deadline / SECOND_NS),
                "Promoted": False,
                "PlacedCanaries": None,
                "DesiredCanaries": 0,
                "DesiredTotal": int(group.get("Count", 1)),
                "PlacedAllocs": 0,
                "HealthyAllocs": 0,
                "UnhealthyAllocs": 0,
            }
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
            "StatusDescription": "Deployment is running",
            "EvalPriority": job.get("Priority", 50),
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": wall_ns,
            "ModifyTime": wall_ns,
        }
        self._deployments[data["ID"]] = _Deployment(data, now, self._outcome, self._after)

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
            (
                due
                for d in self._deployments.values()
                if d.data["Status"] == "running" and (due := d.due) is not None
            ),
            default=None,
        )

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
            if not due:
                return changed
            self._finish(min(due, key=lambda d: d.created + d.after))
            changed = True

    def _finish(
        self, deployment: _Deployment, outcome: str | None = None, at: float | None = None
    ) -> None:
        """Apply ``outcome`` (default: the scripted one) at logical time ``at``."""
        if at is None:
            at = deployment.created + deployment.after
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
        else:  # failed
            for group in groups:
                # MaxParallel=1 style: the first replacement came up unhealthy (or, past the
                # progress deadline, never healthy).
                unhealthy = 0 if outcome == "deadline" else 1
                group.update(PlacedAllocs=1, HealthyAllocs=0, UnhealthyAllocs=unhealthy)
            description = (
                "Failed due to progress deadline"
                if outcome == "deadline"
                else "Failed due to unhealthy allocations"
            )
            revert_to: JSON | None = None
            if any(group["AutoRevert"] for group in groups):
                description, revert_to = self._auto_revert_target(data, description)
            self._set_status(deployment, "failed", description, index, at)
            if revert_to is not None:
                self._store_version(data["Namespace"], revert_to, at, deploy=True)

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
        # Nomad lets anyone read /v1/status/*; everything else needs a token with a policy.
        if self.acl_token is None or path.startswith("/v1/status/"):
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
            self._require(method, "GET")
            rest = path[len("/v1/deployment/") :]
            allocations = rest.startswith("allocations/")
            deployment_id = rest.removeprefix("allocations/")

            def one() -> tuple[int, Any]:
                deployment = self._deployments.get(deployment_id)
                if deployment is None or deployment.data["Namespace"] != namespace:
                    return self._deployments_index(), _HTTPError(404, "deployment not found")
                data = [] if allocations else copy.deepcopy(deployment.data)
                return deployment.data["ModifyIndex"], data

            return self._blocking(query, one)
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
        self._require(method, "GET")
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
        return self._json([])  # allocations / evaluations: the fake schedules nothing

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
        if not isinstance(payload, dict):
            raise _HTTPError(400, "Request body must be a JSON object")
        current = self._current(namespace, job_id)
        if current is None:
            raise _HTTPError(500, f'job "{job_id}" not found')
        prior = payload.get("EnforcePriorVersion")
        if prior is not None and current["Version"] != prior:
            raise _HTTPError(
                500, f"current job has version {current['Version']}; enforcing version {prior}"
            )
        version = payload.get("JobVersion")
        if version == current["Version"]:
            raise _HTTPError(500, "can't revert to current version")
        target = next((v for v in self._jobs[(namespace, job_id)] if v["Version"] == version), None)
        if target is None:
            raise _HTTPError(
                500, f'job "{job_id}" in namespace "{namespace}" at version {version} not found'
            )
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
                | {"ParentID": "", "StatusDescription": "", "Periodic": False}
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
