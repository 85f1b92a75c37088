"""Prometheus metrics: hook outcomes, durations, finished deploys, failed reports.

Labels are service names from the config and stable error codes, never a
secret or anything a caller sent. Under gunicorn the workers write to
``PROMETHEUS_MULTIPROC_DIR`` (set up by ``noman.gunicorn_conf``) and
``/metrics`` adds them up, whichever worker answers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HOOK_REQUESTS = Counter(
    "noman_hook_requests_total",
    "Hook requests by service and outcome (deployed, unchanged or an error code).",
    ["service", "outcome"],
)
HOOK_DURATION = Histogram(
    "noman_hook_duration_seconds",
    "Time to answer a hook request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEPLOYS = Counter(
    "noman_deploys_finished_total",
    "Deploys whose outcome was reported, by service and result (success, failure).",
    ["service", "result"],
)
REPORT_FAILURES = Counter(
    "noman_report_failures_total",
    "Outcome reports (callbacks, notifications) that failed after every retry.",
    ["kind"],
)


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's metrics, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
