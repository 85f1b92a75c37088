"""Canary analysis: one round of a service's checks against Prometheus and the canaries.

Two kinds of check (``[[services.<name>.canary.checks]]``):

- ``prometheus``: an instant query (``GET <url>/api/v1/query``) whose every
  series must hold ``min``/``max``; an empty answer (or NaN) is "no data",
  a failure unless ``on_no_data = "pass"``;
- ``http``: a GET of ``path`` to every running canary allocation, at the
  address and port Nomad gives it (``port`` names the port label), answered
  with an expected status (default any 2xx).

A round never raises: Prometheus or a canary failing to answer (refused, an
error envelope, no answer within the check's ``timeout``) is a failed
measurement that says why, because Noman never promotes what it could not
measure. Their failures are mapped in one place (``_asked``, with the wire's
words from ``noman.transport.problem``) and one reader of Prometheus's answer
(``_query_values``). HTTP is plain ``requests`` without environment proxies,
like every other client of Noman's (``noman.transport``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from noman import transport
from noman.model import CanaryCheck, CanaryPlan
from noman.rollouts.nomad import Canary
from noman.stages import Measurement, judge, query_text, threshold_text

log = logging.getLogger(__name__)


class Analyst:
    """Runs a round of checks and returns one measurement per check."""

    def __init__(
        self,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session or transport.configure(requests.Session())
        self.clock = clock

    def round(
        self,
        plan: CanaryPlan,
        service: str,
        tag: str,
        job: str,
        deployment: str,
        canaries: Callable[[str | None], list[Canary]],
    ) -> list[Measurement]:
        """Every check of ``plan`` once; ``canaries(port)`` lists the canaries to GET."""
        found: list[Measurement] = []
        for check in plan.checks:
            if check.kind == "prometheus":
                query = query_text(check, service, tag, job, deployment)
                found.append(self.prometheus(check, query))
            else:
                found.append(self.http(check, canaries(check.port)))
        return found

    def prometheus(self, check: CanaryCheck, query: str) -> Measurement:
        """Ask Prometheus ``query`` and judge every series against the check's bounds."""
        try:
            with _asked("Prometheus", check.timeout):
                answer = self.session.get(
                    f"{check.url}/api/v1/query",
                    params={"query": query, "timeout": f"{check.timeout:g}s"},
                    timeout=check.timeout,
                    allow_redirects=False,
                )
            return judge(check, _query_values(answer), self.clock())
        except _Unmeasured as unmeasured:
            return self._failed(check, str(unmeasured))

    def http(self, check: CanaryCheck, canaries: list[Canary]) -> Measurement:
        """GET the path of every canary; the first one that answers wrong fails the check."""
        threshold = threshold_text(check)
        if not canaries:
            return self._failed(check, "no running canary to check")
        status = 0
        for canary in canaries:
            where = f"{canary.address}:{canary.port}"
            if canary.address is None or canary.port is None:
                label = f"port {check.port!r}" if check.port else "a port"
                return self._failed(check, f"allocation {canary.allocation[:8]} has no {label}")
            try:
                with _asked(where, check.timeout):
                    answer = self.session.get(
                        f"http://{where}{check.path}", timeout=check.timeout, allow_redirects=False
                    )
            except _Unmeasured as unmeasured:
                return self._failed(check, str(unmeasured))
            status = answer.status_code
            good = status in check.expect if check.expect else 200 <= status < 300
            if not good:
                return Measurement(check.name, False, float(status), threshold, where, self.clock())
        detail = f"{len(canaries)} canar{'y' if len(canaries) == 1 else 'ies'}"
        return Measurement(check.name, True, float(status), threshold, detail, self.clock())

    def _failed(self, check: CanaryCheck, why: str) -> Measurement:
        log.warning("analysis: %s: %s", check.name, why)
        return Measurement(check.name, False, None, threshold_text(check), why, self.clock())


class _Unmeasured(Exception):
    """A check that could not measure; its text is the measurement's detail."""


@contextlib.contextmanager
def _asked(who: str, timeout: float) -> Iterator[None]:
    """requests' failures become ``_Unmeasured("<who>: <what went wrong>")``, here only.

    Never chained: a check's URL may carry credentials.
    """
    try:
        yield
    except requests.RequestException as exc:
        raise _Unmeasured(f"{who}: {transport.problem(exc, timeout)}") from None


def _query_values(answer: requests.Response) -> list[float]:
    """The values of an instant query's answer; ``_Unmeasured`` when it holds none."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        kind = body.get("errorType") if isinstance(body, dict) else None
        why = f"{kind}: {error}" if error else f"HTTP {answer.status_code}"
        raise _Unmeasured(f"Prometheus refused the query ({why})"[:300])
    try:
        return _values(body.get("data"))
    except (TypeError, ValueError, KeyError, IndexError):
        raise _Unmeasured("Prometheus answered something that is not a result") from None


def _values(data: Any) -> list[float]:
    """The sample values of an instant query's result (a vector, a scalar or a matrix)."""
    kind = data["resultType"]
    result = data["result"]
    # Values are strings; float() reads Prometheus's "NaN", "+Inf" and "-Inf" too.
    if kind == "scalar":
        return [float(result[1])]
    if kind == "vector":
        return [float(series["value"][1]) for series in result]
    if kind == "matrix":
        return [float(series["values"][-1][1]) for series in result if series["values"]]
    raise ValueError(kind)
