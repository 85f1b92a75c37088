"""Rolling deploys through Nomad's job API (python-nomad): the only module that knows Nomad.

A deploy registers a new job version in which exactly one thing changed:
``Meta[meta_key]`` (update = "meta") or the tag part of the named tasks'
``Config.image`` (update = "image"). Registration uses ``EnforceIndex`` on
the ``JobModifyIndex`` that was read, so a concurrent change to the job is
never overwritten: the deployer reads again and decides again.
Deployments are followed with Nomad's blocking queries (``?index=&wait=``),
about one request per state change.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
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
    UpstreamError,
)
from noman.model import JobState, NomadTarget, Service
from noman.release import Rollout, split_image

log = logging.getLogger(__name__)
T = TypeVar("T")

INDEX_CONFLICT = "Enforcing job modify index"


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
        try:
            return self._follow(target, version, deployment_id, index, wait)
        except UpstreamError as exc:
            raise self._located(exc, "watch") from None

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
        try:
            answer = self._session.get(
                f"{self.settings.address}/v1/{path}",
                params=params,
                headers=headers,
                timeout=timeout,
                verify=self.settings.verify,
                cert=self.settings.cert,
            )
        except requests.RequestException as exc:
            log.warning("nomad watch %s: unavailable: %s", target.job, type(exc).__name__)
            raise NomadUnavailable() from None
        if answer.status_code != 200:
            text = answer.text.strip()[:300]
            missing = f"Nomad has no {path!r}."  # a deployment's id, not only the job, may be gone
            raise self._by_status(answer.status_code, text, target, "watch", missing)
        try:
            data = answer.json()
            new_index = int(answer.headers.get("X-Nomad-Index", "0"))
        except ValueError:
            raise NomadError("Nomad answered with something that is not JSON.") from None
        return data, new_index

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
        return warnings

    def _call(self, target: NomadTarget, action: str, call: Callable[[Any], T]) -> T:
        try:
            return call(self.client(target))
        except nomad_errors.BaseNomadException as exc:
            raise self._located(self._translate(exc, target, action), action) from None
        except requests.RequestException as exc:
            log.warning("nomad %s %s: unavailable: %s", action, target.job, type(exc).__name__)
            raise self._located(NomadUnavailable(), action) from None
        except ValueError:
            error = NomadError("Nomad answered with something that is not JSON.")
            raise self._located(error, action) from None

    def _located(self, error: Exception, action: str) -> Exception:
        """``error`` with Nomad's address; a read's message says nothing of a deploy."""
        if isinstance(error, UpstreamError):
            error.address = self.settings.address
            if not action.startswith("register"):
                # Reads serve check, status and the watch too: no deploy was at stake there.
                error.message = error.message.replace("; the deploy was not started", "")
                error.args = (error.message,)
        return error

    def _translate(
        self, exc: nomad_errors.BaseNomadException, target: NomadTarget, action: str
    ) -> Exception:
        """The NomanError for what python-nomad raised (or the index conflict)."""
        text = _text(exc)
        # Matched on the text: the status of this error differs between versions.
        if INDEX_CONFLICT in text:
            return _IndexConflict()
        if isinstance(exc, nomad_errors.URLNotAuthorizedNomadException):
            status: object = 403
        elif isinstance(exc, nomad_errors.URLNotFoundNomadException):
            status = 404
        else:
            status = getattr(exc.nomad_resp, "status_code", None)
        if isinstance(exc.nomad_resp, requests.Timeout):
            log.warning("nomad %s %s: no answer in %ss", action, target.job, self.settings.timeout)
            return NomadUnavailable()
        return self._by_status(status if isinstance(status, int) else None, text, target, action)

    def _by_status(
        self,
        status: int | None,
        text: str,
        target: NomadTarget,
        action: str,
        missing: str | None = None,
    ) -> Exception:
        """The NomanError for a Nomad answer that is not a success: one mapping for the
        calls through python-nomad and the raw blocking reads alike."""
        if status == 403:
            if not self.settings.token:
                log.error("nomad %s %s: no token configured: %s", action, target.job, text)
                return NomadForbidden(
                    "Nomad refused the request and Noman has no token configured "
                    "(NOMAD_TOKEN or nomad.token); the deploy was not started."
                )
            log.error("nomad %s %s: token refused: %s", action, target.job, text)
            return NomadForbidden()
        if status == 404:
            where = f" in namespace {target.namespace!r}" if target.namespace else ""
            return NomadJobNotFound(missing or f"Nomad job {target.job!r} was not found{where}.")
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            log.error("nomad %s %s: rejected (%s): %s", action, target.job, status, text)
            return NomadError()
        log.warning("nomad %s %s: unavailable (%s): %s", action, target.job, status, text)
        return NomadUnavailable()


class _IndexConflict(Exception):
    """The job changed between our read and our register."""


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
