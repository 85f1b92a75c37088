"""Reporting outcomes: DockerHub's callback, webhooks, Slack, logs.

Outcome reports are fed by state transitions: a deploy's transaction (restart
strategy) or the leader (rolling) writes a report into the outbox in the same
transaction as the change it reports, and the leader's courier
(``reconcile.Courier``) sends it to each destination (``destinations``,
``send``) and deletes it. Each report carries an ``event_id``
(service:attempt:state), so a report repeated after a failover can be dropped
by its receiver, while a new deploy of the same tag has new ids. Refused hooks
are reported from the request, in a short-lived thread. Every send is retried
with exponential backoff, bounded in time, and can never fail the deploy itself.
DockerHub callbacks only ever go to DockerHub's own hosts, because the URL
comes from the payload and must not make Noman call anything else.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from noman import dora, metrics
from noman.auth import sign
from noman.config import NotifyTarget, Settings
from noman.errors import NomanError
from noman.model import Service
from noman.release import Outcome, Release
from noman.state import Report

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Noman-Signature-256"
#: Reports of deploys that wait for people (noman.gates): every target hears of them,
#: whatever its ``on`` says, since someone has to act.
WAITING_STATES = frozenset({"awaiting_approval", "held"})
#: Gated deploys that ended without their tag being written: reported, not failures of Noman.
GATE_ENDINGS = frozenset({"rejected", "expired", "superseded"})


@dataclass(frozen=True)
class Notice:
    """One finished deploy, success or failure, as told to the outside."""

    service: str
    tag: str | None
    success: bool
    description: str
    key: str | None = None
    previous: str | None = None
    deployment: dict[str, Any] | None = None
    event_id: str | None = None
    state: str | None = None
    # A stage of a rollout (canary healthy, promoted...), not its outcome.
    stage: bool = False

    @property
    def status(self) -> str:
        """The report's status word: success, failure, or stage for a stage report."""
        if self.stage:
            return "stage"
        if self.success:
            return "success"
        return "waiting" if self.state in WAITING_STATES else "failure"

    def as_dict(self) -> dict[str, Any]:
        """The generic webhook body."""
        return {
            "event": "deploy",
            "event_id": self.event_id,
            "state": self.state,
            "status": self.status,
            "service": self.service,
            "tag": self.tag,
            "key": self.key,
            "previous": self.previous,
            "description": self.description,
            "deployment": self.deployment,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def callback_allowed(url: str, settings: Settings) -> bool:
    """True only for https URLs on DockerHub's hosts (or a test's stand-in)."""
    parts = urlsplit(url)
    schemes = ("https", "http") if settings.callback_allow_http else ("https",)
    return (
        parts.scheme in schemes
        and parts.hostname is not None
        and parts.username is None
        and parts.hostname.lower() in settings.callback_hosts
    )


class Reporter:
    """Sends reports in the background; ``wait()`` lets tests and shutdown catch up."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self._sleep = sleep
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def destinations(self, report: Report) -> list[str]:
        """Where ``report`` goes: DockerHub's callback and each notify target that wants it."""
        found = ["callback"] if report.callback_url and not report.stage else []
        outcome = "stage" if report.stage else "success" if report.success else "failure"
        found += [
            f"target{i}"
            for i, target in enumerate(self.settings.notify.targets)
            if outcome in target.on or report.state in WAITING_STATES
        ]
        return found

    def send(self, destination: str, report: Report) -> bool:
        """Send ``report`` to one destination, retried and bounded; False when dropped."""
        notice = _notice(report)
        if destination == "callback":
            if not report.callback_url:
                return True
            outcome = "success" if report.success else "failure"
            return self._dockerhub_callback(report.callback_url, outcome, notice)
        index = int(destination.removeprefix("target"))
        return self._notify(self.settings.notify.targets[index], notice)

    def observe(self, report: Report) -> Notice:
        """Log and count one report, a stage's or a deploy's end (the courier then sends it)."""
        notice = _notice(report)
        if notice.stage:
            fields = {"service": notice.service, "tag": notice.tag, "stage": notice.state}
            log.info(
                "deploy stage",
                extra={
                    "fields": {**fields, "event_id": notice.event_id, "reason": notice.description}
                },
            )
            return notice
        outcome = "success" if notice.success else "failure"
        service = next((s for s in self.settings.services if s.name == report.service), None)
        state, lead_time = dora.observe(service, report)
        metrics.DEPLOY_OUTCOMES.labels(notice.service, state).inc()
        if lead_time is not None:
            metrics.LEAD_TIME.labels(notice.service).observe(lead_time)
        waiting = report.state in WAITING_STATES
        if waiting:
            outcome = "waiting"
        else:
            metrics.DEPLOYS.labels(notice.service, outcome).inc()
        calm = notice.success or waiting or report.state in GATE_ENDINGS
        log.log(
            logging.INFO if calm else logging.ERROR,
            "deploy waiting" if waiting else "deploy finished",
            extra={
                "fields": {
                    "service": notice.service,
                    "tag": notice.tag,
                    "outcome": outcome,
                    "state": notice.state,
                    "event_id": notice.event_id,
                    "deployment": notice.deployment,
                    "reason": notice.description,
                }
            },
        )
        return notice

    def unchanged(self, service: Service, release: Release, outcome: Outcome) -> None:
        """A push of the tag already deployed: only DockerHub's callback wants to know."""
        if release.callback_url:
            report = Notice(
                service.name,
                outcome.tag,
                True,
                f"{outcome.tag} was already deployed",
                key=outcome.key,
            )
            self._spawn(self._send_all, report, release, False, "success")

    def failed(self, service: Service, release: Release | None, error: NomanError) -> None:
        """Report a refused or failed hook call."""
        # Refusals (bad tag, stale tag) are the caller's business; the operator
        # hears about failures that need them (Consul, Nomad, tokens, bugs).
        notify = error.status >= 500
        if not notify and not (release and release.callback_url):
            return
        report = Notice(
            service.name, release.tag if release else None, False, error.message, key=service.key
        )
        self._spawn(self._send_all, report, release, notify, "error")

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait for every report started so far; True if all finished in time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    # -- background work -----------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("reporting failed")

        thread = threading.Thread(target=run, name="noman-report", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _send_all(self, report: Notice, release: Release | None, notify: bool, state: str) -> None:
        if release is not None and release.callback_url:
            self._dockerhub_callback(release.callback_url, state, report)
        if not notify:
            return
        wanted = "success" if report.success else "failure"
        for target in self.settings.notify.targets:
            if wanted in target.on:
                self._notify(target, report)

    def _dockerhub_callback(self, url: str, state: str, report: Notice) -> bool:
        if not callback_allowed(url, self.settings):
            log.warning(
                "callback_url skipped: not a DockerHub https URL",
                extra={"fields": {"service": report.service}},
            )
            return True
        body = {
            "state": state,
            "description": report.description[:255],
            "context": f"noman {report.service}"[:100],
        }
        return self._post("callback", url, json.dumps(body).encode(), {}, report.service)

    def _notify(self, target: NotifyTarget, report: Notice) -> bool:
        if target.kind == "slack":
            icon = ":white_check_mark:" if report.success else ":x:"
            if report.stage:
                icon = ":arrow_forward:"
            elif report.state in WAITING_STATES:
                icon = ":hourglass_flowing_sand:"
            elif report.state in GATE_ENDINGS:
                icon = ":no_entry_sign:"
            payload: dict[str, Any] = {
                "text": f"{icon} {report.service} {report.tag or ''}: {report.description}"
            }
        else:
            payload = report.as_dict()
        body = json.dumps(payload).encode()
        headers = {SIGNATURE_HEADER: sign(target.hmac_key, body)} if target.hmac_key else {}
        return self._post(target.kind, target.url, body, headers, report.service)

    def _post(
        self, what: str, url: str, body: bytes, headers: dict[str, str], service: str
    ) -> bool:
        """POST with bounded retries and exponential backoff; never raises."""
        config = self.settings.notify
        if config.dry_run:
            log.info(
                "%s not sent (dry run)",
                what,
                extra={
                    "fields": {
                        "service": service,
                        "host": urlsplit(url).hostname,
                        "report": json.loads(body),
                    }
                },
            )
            return True
        headers = {"Content-Type": "application/json", "User-Agent": "noman", **headers}
        problem = ""
        for attempt in range(config.retries):
            if attempt:
                self._sleep(config.backoff * 2 ** (attempt - 1))
            try:
                answer = self.session.post(
                    url, data=body, headers=headers, timeout=config.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                problem = type(exc).__name__
                continue
            if 200 <= answer.status_code < 300:
                return True
            problem = f"HTTP {answer.status_code}"
            if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
                break
        metrics.REPORT_FAILURES.labels(what).inc()
        log.warning(
            "%s failed: %s",
            what,
            problem,
            extra={"fields": {"service": service, "host": urlsplit(url).hostname}},
        )
        return False


def _notice(report: Report) -> Notice:
    return Notice(
        service=report.service,
        tag=report.tag,
        success=report.success,
        description=report.description,
        key=report.key,
        previous=report.previous,
        deployment=report.deployment,
        event_id=report.event_id,
        state=report.state,
        stage=report.stage,
    )
