"""Rolling deploys through Nomad's job API (python-nomad): the only module that knows Nomad.

A deploy registers a new job version in which exactly one thing changed:
``Meta[meta_key]`` (update = "meta") or the tag part of the named tasks'
``Config.image`` (update = "image"). Registration uses ``EnforceIndex`` on
the ``JobModifyIndex`` that was read, so a concurrent change to the job is
never overwritten: the deployer reads again and decides again.
Deployments are followed with Nomad's blocking queries (``?index=&wait=``),
about one request per state change.

The stages (``noman.stages``) use the rest: a release phase is a dispatch of a
parameterized batch job (``dispatch``, followed by ``release``), canaries are
found with their addresses (``canaries``) and promoted or failed (``promote``,
``fail``), and the jobs of a service made of several are put back with
``revert`` (``EnforcePriorVersion``). Nomad's refusals of those (a terminal
deployment, unhealthy canaries, a job changed since) are ``NomadError`` with
Nomad's text; only an outage is ``NomadUnavailable``.

Every failure, from python-nomad or the raw blocking reads, is mapped in one place:
``_mapped`` looks it up in ``_STATUS_ERRORS`` and words it from ``_WORDS`` (only a
register's words say the deploy was not started), with Nomad's address attached once.
An address where something else answers (Consul, a web page, TLS on one side only) is
``NomadWrongAddress``, saying what answers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import nomad
import requests
from nomad.api import exceptions as nomad_errors

from noman import transport
from noman.config import NomadSettings
from noman.errors import (
    NomadError,
    NomadForbidden,
    NomadJobNotFound,
    NomadUnavailable,
    NomadWrongAddress,
    UpstreamError,
)
from noman.model import JobState, NomadTarget, Service
from noman.release import Rollout, split_image

log = logging.getLogger(__name__)
T = TypeVar("T")

INDEX_CONFLICT = "Enforcing job modify index"
#: The Meta key a release phase's job is dispatched with.
DISPATCH_META_KEY = "NOMAN_IMAGE_TAG"
#: Texts of Nomad's refusals (answered as 500, like an outage): the request is wrong or
#: came too late, and repeating it cannot help.
REFUSALS = (
    "can't promote terminal deployment",
    "can't fail terminal deployment",
    "healthy allocations",
    "enforcing version",
    "can't revert to current version",
    "is not a parameterized job",
    "parameterized job not found",
    "is stopped",
    "required meta keys",
    "unpermitted metadata keys",
    "Payload",
    "deployment not found",
    "not found",
)


#: Nomad's failing statuses that are not ``NomadError`` (other 4xx but 408 and 429) or
#: ``NomadUnavailable`` (5xx, 408, 429 and anything else).
_STATUS_ERRORS: dict[int, type[UpstreamError]] = {
    401: NomadForbidden,
    403: NomadForbidden,
    404: NomadJobNotFound,
}
#: The words of each error: (after any other call, after a register, which starts a deploy).
_WORDS: dict[type[UpstreamError], tuple[str, str]] = {
    NomadUnavailable: (
        "Nomad is unavailable. Retry later.",
        "Nomad is unavailable; the deploy was not started. Retry later.",
    ),
    NomadForbidden: (
        "Nomad refused Noman's token.",
        "Nomad refused Noman's token; the deploy was not started.",
    ),
    NomadError: (
        "Nomad rejected the request.",
        "Nomad rejected the new job version; the deploy was not started.",
    ),
    NomadWrongAddress: (
        "The Nomad address {where}.",
        "The Nomad address {where}; the deploy was not started.",
    ),
}
_UNCONFIGURED = (
    "Nomad refused the request and Noman has no token configured (NOMAD_TOKEN or nomad.token)"
)
_CONSUL_HERE = (
    "answers like Consul, not Nomad: point nomad.address (NOMAD_ADDR) at Nomad's HTTP API"
)
_NOT_JSON = "Nomad answered with something that is not JSON."


@dataclass(frozen=True)
class ReleaseRun:
    """Where a dispatched release job stands: running, complete or failed (and why)."""

    status: str
    exit_code: int | None = None
    message: str | None = None
    allocation: str | None = None


@dataclass(frozen=True)
class Canary:
    """One canary allocation and where it listens (None: no port of that label)."""

    allocation: str
    address: str | None
    port: int | None
    healthy: bool | None = None


def for_job(service: Service, job_id: str) -> Service:
    """``service`` as seen by one of its jobs (several jobs share the other settings)."""
    target = _target(service)
    if target.job == job_id and not target.jobs:
        return service
    return dataclasses.replace(service, nomad=dataclasses.replace(target, job=job_id, jobs=()))


def job_tag(job: dict[str, Any], target: NomadTarget) -> str | None:
    """The tag the job runs now, as the configured update mode sees it."""
    if target.update == "meta":
        value = (job.get("Meta") or {}).get(target.meta_key)
        return value if isinstance(value, str) else None
    task = _tasks(job, target)[0]
    return split_image(str((task.get("Config") or {}).get("image", "")))[1]


def with_tag(job: dict[str, Any], target: NomadTarget, tag: str) -> dict[str, Any]:
    """A copy of ``job`` that runs ``tag``; nothing else differs."""
    job = copy.deepcopy(job)
    if target.update == "meta":
        job["Meta"] = {**(job.get("Meta") or {}), target.meta_key: tag}
        return job
    for task in _tasks(job, target):
        name, _ = split_image(str(task["Config"].get("image", "")))
        task["Config"]["image"] = f"{name}:{tag}"
    return job


def _tasks(job: dict[str, Any], target: NomadTarget) -> list[dict[str, Any]]:
    """The configured tasks, in configured order; NomadError if one is missing."""
    found: dict[str, dict[str, Any]] = {}
    for group in job.get("TaskGroups") or []:
        for task in group.get("Tasks") or []:
            found.setdefault(task.get("Name"), task)
    missing = [name for name in target.tasks if name not in found]
    if missing:
        raise NomadError(f"Job {target.job!r} has no task named {missing[0]!r}.")
    tasks = [found[name] for name in target.tasks]
    for task in tasks:
        if not isinstance(task.get("Config"), dict) or not task["Config"].get("image"):
            raise NomadError(f"Task {task.get('Name')!r} has no Config.image to update.")
    return tasks


def summarize(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a Nomad deployment a caller cares about."""
    if not deployment:
        return None
    groups = (deployment.get("TaskGroups") or {}).values()
    return {
        "id": deployment.get("ID"),
        "job": deployment.get("JobID"),
        "version": deployment.get("JobVersion"),
        "status": deployment.get("Status"),
        "description": deployment.get("StatusDescription"),
        "desired": sum(int(g.get("DesiredTotal") or 0) for g in groups),
        "placed": sum(int(g.get("PlacedAllocs") or 0) for g in groups),
        "healthy": sum(int(g.get("HealthyAllocs") or 0) for g in groups),
        "unhealthy": sum(int(g.get("UnhealthyAllocs") or 0) for g in groups),
        **_canaries(list(groups)),
    }


def _canaries(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The canary part of a deployment, only when it has canaries (Nomad's fields summed)."""
    canary = [g for g in groups if int(g.get("DesiredCanaries") or 0) > 0]
    if not canary:
        return {}
    return {
        "canaries": {
            "desired": sum(int(g["DesiredCanaries"]) for g in canary),
            "placed": sum(len(g.get("PlacedCanaries") or []) for g in canary),
            "promoted": all(bool(g.get("Promoted")) for g in canary),
            # Nomad promotes by itself only when every canary group says so.
            "auto_promote": all(bool(g.get("AutoPromote")) for g in canary),
        }
    }


class NomadRollouts:
    """The Orchestrator for the rolling strategy, plus deployment watching."""

    def __init__(self, settings: NomadSettings, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._sleep = sleep
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._clients_lock = threading.Lock()
        # Shared by python-nomad and the blocking queries (python-nomad has no index/wait).
        self._session = transport.configure(requests.Session(), settings.tls_server_name)

    def client(self, target: NomadTarget) -> Any:
        """The python-nomad client for the target's namespace and region (made once)."""
        where = (target.namespace, target.region)
        with self._clients_lock:
            if where not in self._clients:
                self._clients[where] = nomad.Nomad(
                    address=self.settings.address,
                    token=self.settings.token,
                    timeout=self.settings.timeout,
                    namespace=target.namespace,
                    region=target.region,
                    # python-nomad does not verify TLS by default; Noman always
                    # does unless told otherwise.
                    verify=self.settings.verify,
                    cert=self.settings.cert or (),
                    # No HTTP(S)_PROXY, as for Consul; *_TLS_SERVER_NAME honoured.
                    session=self._session,
                )
            return self._clients[where]

    def read(self, service: Service) -> JobState:
        """The job as it is now, with the tag it runs."""
        target = _target(service)
        job = self._call(target, "read job", lambda c: c.job.get_job(target.job))
        if not isinstance(job, dict) or "JobModifyIndex" not in job:
            raise NomadError(f"Nomad answered something that is not job {target.job!r}.")
        return JobState(job_tag(job, target), job, int(job["JobModifyIndex"]))

    def register(self, service: Service, state: JobState, tag: str) -> Rollout | None:
        """Register the job with ``tag`` if it is unchanged since read; None otherwise."""
        target = _target(service)
        body = {
            "Job": with_tag(state.spec, target, tag),
            "EnforceIndex": True,
            "JobModifyIndex": state.modify_index,
        }
        try:
            answer = self._call(
                target, "register job", lambda c: c.job.register_job(target.job, body)
            )
        except _IndexConflict:
            return None
        return Rollout(
            job=target.job,
            version=int(state.spec.get("Version", 0)) + 1,
            eval_id=str(answer.get("EvalID", "")),
            namespace=target.namespace,
        )

    def follow(
        self, service: Service, version: int, deployment_id: str | None, index: int, wait: float
    ) -> tuple[dict[str, Any] | None, int]:
        """The deployment of job ``version``, waiting up to ``wait`` s for a change past ``index``.

        Until our deployment's ID is known, the job's deployments are read
        (ours is the one of our version; none while a newer version exists
        means ours was superseded); then the deployment itself, by ID.
        """
        target = _target(service)
        with self._mapped(target, "watch"):
            return self._follow(target, version, deployment_id, index, wait)

    def _follow(
        self, target: NomadTarget, version: int, deployment_id: str | None, index: int, wait: float
    ) -> tuple[dict[str, Any] | None, int]:
        started = time.monotonic()
        if deployment_id:
            data, new_index = self._blocking(target, f"deployment/{deployment_id}", index, wait)
            found = summarize(data)
        else:
            data, new_index = self._blocking(target, f"job/{target.job}/deployments", index, wait)
            found = self._ours(target, data if isinstance(data, list) else [], version)
        if index and new_index <= index and time.monotonic() - started < wait / 2:
            # A Nomad (or proxy) that ignores blocking parameters: poll instead of spinning.
            self._sleep(min(self.settings.poll_interval, wait))
        return found, new_index

    def _ours(
        self, target: NomadTarget, deployments: list[Any], version: int
    ) -> dict[str, Any] | None:
        states = [summarize(d) for d in deployments if isinstance(d, dict)]
        for state in states:
            if state is not None and state["version"] == version:
                return state
        newer = [s["version"] for s in states if s is not None and isinstance(s["version"], int)]
        if newer and max(newer) > version:
            # A newer version replaced ours before it had a deployment.
            return {
                "id": None,
                "job": target.job,
                "version": version,
                "status": "cancelled",
                "description": f"Superseded by job version {max(newer)}.",
            }
        return None

    def _blocking(self, target: NomadTarget, path: str, index: int, wait: float) -> tuple[Any, int]:
        params: dict[str, str] = {}
        if target.namespace:
            params["namespace"] = target.namespace
        if target.region:
            params["region"] = target.region
        timeout = self.settings.timeout
        if index and wait > 0:
            params.update(index=str(index), wait=f"{max(wait, 0.001):g}s")
            timeout += wait * 1.1
        headers = {"X-Nomad-Token": self.settings.token} if self.settings.token else {}
        answer = self._session.get(
            f"{self.settings.address}/v1/{path}",
            params=params,
            headers=headers,
            timeout=timeout,
            verify=self.settings.verify,
            cert=self.settings.cert,
        )
        if answer.status_code != 200:
            # A deployment's id, not only the job, may be gone.
            raise _Unusable(answer, missing=f"Nomad has no {path!r}.")
        try:
            data = answer.json()
            new_index = int(answer.headers.get("X-Nomad-Index", "0"))
        except ValueError:
            raise _Unusable(answer, foreign=True) from None
        return data, new_index

    # -- stages: release phase, canaries, reverts ------------------------------------------

    def dispatch(self, service: Service, job_id: str, tag: str, token: str) -> str:
        """Dispatch parameterized job ``job_id`` with the tag; the child job's ID.

        ``token`` makes it idempotent: while Nomad keeps the child, the same token
        returns it instead of running the job again. It goes as ``?idempotency_token=``,
        as Nomad's own client sends it (python-nomad puts it in the body, where Nomad
        does not read it).
        """
        target = _target(for_job(service, job_id))
        body = {"Meta": {DISPATCH_META_KEY: tag}, "IdempotencyToken": token}
        answer = self._call(
            target,
            "dispatch job",
            lambda c: c.job.request(
                job_id, "dispatch", json=body, params={"idempotency_token": token}, method="post"
            ).json(),
            refusals=REFUSALS,
        )
        child = answer.get("DispatchedJobID") if isinstance(answer, dict) else None
        if not isinstance(child, str) or not child:
            raise NomadError(f"Nomad's answer to the dispatch of {job_id!r} names no job.")
        return child

    def running_children(self, service: Service, job_id: str) -> list[tuple[str, str]]:
        """(ID, idempotency token) of each job dispatched from ``job_id`` that is not dead."""
        target = _target(for_job(service, job_id))
        prefix = f"{job_id}/dispatch-"
        stubs = self._call(target, "list jobs", lambda c: c.jobs.get_jobs(prefix=prefix))
        found = []
        for stub in stubs if isinstance(stubs, list) else []:
            if stub.get("ParentID") != job_id or stub.get("Status") == "dead":
                continue
            child = self.read_spec(for_job(service, str(stub["ID"])))
            found.append((str(stub["ID"]), str(child.get("DispatchIdempotencyToken") or "")))
        return found

    def release(
        self, service: Service, child: str, index: int, wait: float
    ) -> tuple[ReleaseRun, int]:
        """Where dispatched job ``child`` stands, blocking up to ``wait`` s for a change."""
        target = _target(for_job(service, child))
        with self._mapped(target, "watch"):
            job, new_index = self._blocking(target, f"job/{child}", index, wait)
            if not isinstance(job, dict):
                raise NomadError(f"Nomad answered something that is not job {child!r}.")
            if job.get("Status") != "dead":
                return ReleaseRun("running"), new_index
            allocs, _ = self._blocking(target, f"job/{child}/allocations", 0, 0)
        return release_outcome(job, allocs if isinstance(allocs, list) else []), new_index

    def deployment(self, service: Service, deployment_id: str) -> dict[str, Any] | None:
        """The deployment now (no blocking), summarized."""
        found, _ = self.follow(service, 0, deployment_id, 0, 0)
        return found

    def canaries(
        self, service: Service, deployment_id: str, port: str | None = None
    ) -> list[Canary]:
        """The deployment's running canary allocations, each with its address and port.

        The address is the host's (``AllocatedResources.Shared.Ports``: what Nomad
        registers in Consul for the port label), else the network's IP.
        """
        target = _target(service)
        stubs = self._call(
            target,
            "read allocations",
            lambda c: c.deployment.get_deployment_allocations(deployment_id),
            refusals=REFUSALS,
        )
        found = []
        for stub in stubs if isinstance(stubs, list) else []:
            status = stub.get("DeploymentStatus") or {}
            if not status.get("Canary") or stub.get("ClientStatus") != "running":
                continue
            alloc_id = str(stub.get("ID"))

            def read(client: Any, alloc_id: str = alloc_id) -> Any:
                return client.allocation.get_allocation(alloc_id)

            alloc = self._call(target, "read allocation", read, refusals=REFUSALS)
            address, number = alloc_address(alloc if isinstance(alloc, dict) else {}, port)
            found.append(Canary(alloc_id, address, number, status.get("Healthy")))
        return found

    def promote(self, service: Service, deployment_id: str) -> None:
        """Promote every canary group of the deployment (Nomad refuses unhealthy canaries)."""
        self._call(
            _target(service),
            "promote deployment",
            lambda c: c.deployment.promote_deployment_all(deployment_id),
            refusals=REFUSALS,
        )

    def fail(self, service: Service, deployment_id: str) -> int | None:
        """Mark the deployment failed; the version Nomad reverted to (auto_revert), if any."""
        answer = self._call(
            _target(service),
            "fail deployment",
            lambda c: c.deployment.fail_deployment(deployment_id),
            refusals=REFUSALS,
        )
        reverted = answer.get("RevertedJobVersion") if isinstance(answer, dict) else None
        return reverted if isinstance(reverted, int) else None

    def revert(self, service: Service, version: int, prior: int) -> None:
        """Register job ``version`` again, only if the job is still at version ``prior``."""
        target = _target(service)
        self._call(
            target,
            "revert job",
            lambda c: c.job.revert_job(target.job, version, enforce_prior_version=prior),
            refusals=REFUSALS,
        )

    def versions(self, service: Service) -> list[dict[str, Any]]:
        """Every version Nomad keeps of the job, newest first."""
        target = _target(service)
        answer = self._call(target, "read job versions", lambda c: c.job.get_versions(target.job))
        versions = answer.get("Versions") if isinstance(answer, dict) else None
        return [v for v in versions or [] if isinstance(v, dict)]

    def tag_of(self, service: Service, job: dict[str, Any]) -> str | None:
        """The tag a job version runs, as the service's update mode sees it."""
        try:
            return job_tag(job, _target(service))
        except NomadError:
            return None

    def check(self, service: Service) -> list[str]:
        """Warnings about the job's setup for rolling deploys (raises if unreadable)."""
        state = self.read(service)
        warnings = []
        for group in state.spec.get("TaskGroups") or []:
            for task in group.get("Tasks") or []:
                for template in task.get("Templates") or []:
                    text = str(template.get("EmbeddedTmpl") or "")
                    if service.key in text and template.get("ChangeMode", "restart") == "restart":
                        warnings.append(
                            f"task {task.get('Name')!r} re-renders {service.key} with "
                            'change_mode = "restart": every allocation restarts at once; '
                            'use change_mode = "noop"'
                        )
        if state.tag is None:
            warnings.append(f"job {service.nomad.job!r} does not run a tag Noman can read yet")  # type: ignore[union-attr]
        return warnings + self._check_stages(service, state)

    def _check_stages(self, service: Service, first: JobState) -> list[str]:
        """Warnings about the other jobs, the release phase's job and the canaries."""
        target = _target(service)
        warnings = []
        canaries = _canary_groups(first.spec)
        for job_id in target.job_ids[1:]:
            other = self.read(for_job(service, job_id))
            canaries += _canary_groups(other.spec)
            if other.tag != first.tag:
                warnings.append(
                    f"jobs disagree: {target.job} runs {first.tag}, {job_id} runs {other.tag}"
                )
        if service.canary is not None and not canaries:
            warnings.append(
                "[canary] is set but no job's update block places canaries (canary = 0)"
            )
        if service.release_phase is not None:
            job_id = service.release_phase.job
            try:
                spec = self.read_spec(for_job(service, job_id))
            except NomadJobNotFound:
                return [*warnings, f"release_phase job {job_id!r} was not found"]
            params = spec.get("ParameterizedJob") or {}
            allowed = (params.get("MetaRequired") or []) + (params.get("MetaOptional") or [])
            if not spec.get("ParameterizedJob"):
                warnings.append(f"release_phase job {job_id!r} is not a parameterized job")
            elif DISPATCH_META_KEY not in allowed:
                warnings.append(
                    f"release_phase job {job_id!r} does not allow meta key {DISPATCH_META_KEY} "
                    "(parameterized { meta_required = [...] }): Nomad refuses the dispatch"
                )
        return warnings

    def read_spec(self, service: Service) -> dict[str, Any]:
        """The job as Nomad returns it (any job: a parameterized one too)."""
        target = _target(service)
        job = self._call(target, "read job", lambda c: c.job.get_job(target.job))
        if not isinstance(job, dict):
            raise NomadError(f"Nomad answered something that is not job {target.job!r}.")
        return job

    def _call(
        self,
        target: NomadTarget,
        action: str,
        call: Callable[[Any], T],
        refusals: tuple[str, ...] = (),
    ) -> T:
        """``call`` with the target's python-nomad client, its failures mapped."""
        with self._mapped(target, action, refusals):
            return call(self.client(target))

    # -- the one mapping of Nomad's failures ---------------------------------------------------

    @contextlib.contextmanager
    def _mapped(
        self, target: NomadTarget, action: str, refusals: tuple[str, ...] = ()
    ) -> Iterator[None]:
        """Every failure of the calls inside becomes a NomanError: the one place that maps them.

        ``action`` is what the caller does (``register job``, ``watch``...): only a
        register puts a deploy at stake, so only its words say the deploy was not started.
        ``refusals`` are Nomad's texts (answered as 500, like an outage) that say the request
        is wrong or came too late. An UpstreamError raised inside gets the address too.
        """
        try:
            yield
        except _IndexConflict:
            raise
        except UpstreamError as error:
            error.address = error.address or self.settings.address
            raise
        except nomad_errors.BaseNomadException as exc:
            text = _text(exc)
            # Matched on the text: the status of this error differs between versions.
            if INDEX_CONFLICT in text:
                raise _IndexConflict() from None
            if any(refusal in text for refusal in refusals):
                log.warning("nomad %s %s: refused: %s", action, target.job, text)
                refused = f"Nomad refused to {action.split(' ')[0]}: {text}"
                raise self._error(NomadError, action, message=refused) from exc
            answer = exc.nomad_resp
            if isinstance(answer, requests.RequestException):
                raise self._transport_error(answer, target, action) from exc
            if isinstance(answer, requests.Response):
                raise self._answer_error(_Unusable(answer), target, action) from exc
            raise self._error(NomadUnavailable, action) from exc
        except _Unusable as unusable:
            raise self._answer_error(unusable, target, action) from None
        except requests.exceptions.JSONDecodeError as exc:
            # python-nomad's .json() of a 200 that is not JSON: not Nomad's way.
            raise self._not_json(target, action, exc.doc) from exc
        except requests.RequestException as exc:
            raise self._transport_error(exc, target, action) from exc
        except ValueError as exc:  # a body python-nomad could not decode
            raise self._error(NomadError, action, message=_NOT_JSON) from exc

    def _transport_error(
        self, exc: requests.RequestException, target: NomadTarget, action: str
    ) -> UpstreamError:
        settings = self.settings
        where = transport.scheme_problem(settings.address, exc, timeout=settings.timeout)
        if where is not None:
            log.error("nomad %s %s: %s %s", action, target.job, self.settings.address, where)
            return self._error(NomadWrongAddress, action, where=where)
        said = transport.problem(exc, settings.timeout)
        log.warning("nomad %s %s: unavailable: %s", action, target.job, said)
        return self._error(NomadUnavailable, action)

    def _answer_error(self, unusable: _Unusable, target: NomadTarget, action: str) -> UpstreamError:
        """The NomanError for a Nomad answer that is not a success: one mapping for the
        calls through python-nomad and the raw blocking reads alike."""
        answer = unusable.answer
        status = answer.status_code
        text = answer.text.strip()[:300]
        where = self._what_answers(answer, unusable.foreign)
        if where is not None:
            log.error("nomad %s %s: %s %s", action, target.job, self.settings.address, where)
            return self._error(NomadWrongAddress, action, where=where)
        if unusable.foreign:
            return self._error(NomadError, action, message=_NOT_JSON)
        kind = _STATUS_ERRORS.get(status)
        if kind is NomadForbidden:
            refused = "no token configured" if not self.settings.token else "token refused"
            log.error("nomad %s %s: %s: %s", action, target.job, refused, text)
            return self._error(NomadForbidden, action)
        if kind is NomadJobNotFound:
            where_ns = f" in namespace {target.namespace!r}" if target.namespace else ""
            missing = unusable.missing or f"Nomad job {target.job!r} was not found{where_ns}."
            return self._error(NomadJobNotFound, action, message=missing)
        if 400 <= status < 500 and status not in (408, 429):
            log.error("nomad %s %s: rejected (%s): %s", action, target.job, status, text)
            return self._error(NomadError, action)
        log.warning("nomad %s %s: unavailable (%s): %s", action, target.job, status, text)
        return self._error(NomadUnavailable, action)

    def _not_json(self, target: NomadTarget, action: str, body: str) -> UpstreamError:
        if self._consul_answers():
            where = _CONSUL_HERE
        else:
            page = body[:100].lstrip().lower().startswith(("<!doctype", "<html"))
            found = "an HTML page" if page else "an answer that is not JSON"
            where = f"does not answer like Nomad: it sent {found}"
        log.error("nomad %s %s: %s %s", action, target.job, self.settings.address, where)
        return self._error(NomadWrongAddress, action, where=where)

    def _what_answers(self, answer: requests.Response, foreign: bool) -> str | None:
        """What answers at the address instead of Nomad, judged from an unusable answer."""
        return transport.what_answers(
            answer,
            foreign,
            address=self.settings.address,
            expected="nomad",
            other_here=_CONSUL_HERE,
            refusals=frozenset({401, 403}),
            other_answers=self._consul_answers,
        )

    def _consul_answers(self) -> bool:
        settings = self.settings
        return transport.identify(
            self._session,
            settings.address,
            "consul",
            settings.timeout,
            verify=settings.verify,
            cert=settings.cert,
        )

    def _error(
        self,
        kind: type[UpstreamError],
        action: str,
        where: str = "",
        message: str | None = None,
    ) -> UpstreamError:
        """``kind`` worded for a register or any other call, with Nomad's address: the one place."""
        deploy = action.startswith("register")
        if message is None and kind is NomadForbidden and not self.settings.token:
            # Not the same fix as a refused token: there is none to fix.
            message = _UNCONFIGURED + ("; the deploy was not started." if deploy else ".")
        if message is None and kind in _WORDS:
            message = _WORDS[kind][deploy].format(where=where)
        error = kind(message)
        error.address = self.settings.address
        return error


def release_outcome(job: dict[str, Any], allocs: list[Any]) -> ReleaseRun:
    """A dead dispatched job: complete when its last allocations completed, else why not."""
    latest = [a for a in allocs if isinstance(a, dict) and not a.get("NextAllocation")]
    done = [
        a for a in latest if a.get("ClientStatus") == "complete" and a.get("DesiredStatus") == "run"
    ]
    if latest and len(done) == len(latest) and not job.get("Stop"):
        return ReleaseRun("complete", exit_code=0, allocation=str(latest[-1].get("ID")))
    if not latest:
        reason = "stopped" if job.get("Stop") else "no allocation was placed"
        return ReleaseRun("failed", message=f"the job ended with {reason}")
    failed = next((a for a in latest if a not in done), latest[-1])
    exit_code, message = None, failed.get("ClientDescription") or failed.get("ClientStatus")
    tasks = failed.get("TaskStates") or {}
    for state in tasks.values():
        events = [e for e in state.get("Events") or [] if isinstance(e, dict)]
        if not events or (not state.get("Failed") and len(tasks) > 1):
            continue  # with several tasks, the one that failed tells why
        terminated = [e for e in events if e.get("Type") == "Terminated"]
        if terminated:
            last = terminated[-1]
            code = str((last.get("Details") or {}).get("exit_code", last.get("ExitCode")))
            exit_code = int(code) if code.lstrip("-").isdigit() else None
        texts = [_event_text(e) for e in (terminated[-1:] + events[-1:])]
        message = "; ".join(dict.fromkeys(t for t in texts if t))
        break
    if job.get("Stop"):
        message = f"stopped ({message})" if message else "stopped"
    return ReleaseRun(
        "failed", exit_code=exit_code, message=message, allocation=str(failed.get("ID"))
    )


def _canary_groups(job: dict[str, Any]) -> list[str]:
    """The groups of a job whose update block (the job's merged in) places canaries."""
    job_update = job.get("Update") or {}
    found = []
    for group in job.get("TaskGroups") or []:
        update = group.get("Update") or {}
        canary = (
            update.get("Canary") if update.get("Canary") is not None else job_update.get("Canary")
        )
        if int(canary or 0) > 0:
            found.append(str(group.get("Name")))
    return found


def _event_text(event: dict[str, Any]) -> str:
    return str(event.get("DisplayMessage") or event.get("Message") or event.get("Type") or "")


def alloc_address(alloc: dict[str, Any], label: str | None) -> tuple[str | None, int | None]:
    """(address, port) of an allocation's port ``label`` (None: its first port)."""
    resources = alloc.get("AllocatedResources") or {}
    shared = resources.get("Shared") or {}
    for port in shared.get("Ports") or []:
        if label is None or port.get("Label") == label:
            host = port.get("HostIP") or _network_ip(shared)
            return host, int(port["Value"]) if port.get("Value") else None
    networks = list(shared.get("Networks") or [])
    for task in (resources.get("Tasks") or {}).values():
        networks += (task or {}).get("Networks") or []  # Nomad before 1.0 kept them per task
    for network in networks:
        for port in (network.get("DynamicPorts") or []) + (network.get("ReservedPorts") or []):
            if label is None or port.get("Label") == label:
                return network.get("IP") or None, int(port["Value"]) if port.get("Value") else None
    return None, None


def _network_ip(shared: dict[str, Any]) -> str | None:
    for network in shared.get("Networks") or []:
        if network.get("IP"):
            return str(network["IP"])
    return None


class _IndexConflict(Exception):
    """The job changed between our read and our register."""


class _Unusable(Exception):
    """An answer that is not a success; ``_mapped`` turns it into a NomanError.

    ``missing`` words a 404; ``foreign`` marks an answer Nomad never gives (a body that is
    not JSON): something else may answer at the address.
    """

    def __init__(self, answer: requests.Response, missing: str = "", foreign: bool = False):
        super().__init__(answer.status_code)
        self.answer = answer
        self.missing = missing
        self.foreign = foreign


def _target(service: Service) -> NomadTarget:
    if service.nomad is None:
        raise NomadError(f"Service {service.name!r} has no Nomad job configured.")
    return service.nomad


def _text(exc: Any) -> str:
    response = getattr(exc, "nomad_resp", None)
    text = getattr(response, "text", None)
    if isinstance(text, str):
        return text.strip()[:300]
    return type(response).__name__ if response is not None else str(exc)[:300]
