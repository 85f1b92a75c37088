"""Prometheus metrics: hook outcomes, durations, finished deploys, failed reports, polls.

Labels are service names from the config and stable error codes, never a
secret or anything a caller sent. Under gunicorn the workers write to
``PROMETHEUS_MULTIPROC_DIR`` (set up by ``noman.server.config``) and
``/metrics`` adds them up, whichever worker answers; with
``server.metrics_bind`` the gunicorn master serves the same text on a second,
internal listener instead (``serve``).

``noman_hook_requests_total``'s ``outcome`` is one of ``OUTCOMES`` or an
error code of ``noman.errors`` (the README lists them all); so is
``noman_polls_total``'s, with ``POLL_OUTCOMES``. The poll gauges are kept by the
leader's process only: in multiprocess mode the newest value of a live process counts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from noman import __version__

# The outcomes of a hook request that are not errors.
OUTCOMES = ("deployed", "pending", "unchanged", "ignored", "ping", "awaiting_approval", "held")

HOOK_REQUESTS = Counter(
    "noman_hook_requests_total",
    "Hook requests by service and outcome (see OUTCOMES, or an error code).",
    ["service", "outcome"],
)


@functools.lru_cache(maxsize=4096)
def hook_requests(service: str, outcome: str) -> Counter:
    """HOOK_REQUESTS' child for these labels, looked up once (labels() takes a lock)."""
    return HOOK_REQUESTS.labels(service, outcome)


HOOK_DURATION = Histogram(
    "noman_hook_duration_seconds",
    "Time to answer a hook request whose secret matched a service.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEPLOYS = Counter(
    "noman_deploys_finished_total",
    "Deploys whose outcome was reported, by service and result (success, failure).",
    ["service", "result"],
)
DEPLOY_OUTCOMES = Counter(
    "noman_deploy_outcomes_total",
    "Deploy outcomes as they are recorded, by service and outcome (history's words).",
    ["service", "outcome"],
)
LEAD_TIME = Histogram(
    "noman_lead_time_seconds",
    "Lead time for changes of successful deploys: from the tag's time (or the push) to live.",
    ["service"],
    buckets=(60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400, 180 * 86400),
)
REPORT_FAILURES = Counter(
    "noman_report_failures_total",
    "Outcome reports (callbacks, notifications) that failed after every retry.",
    ["kind"],
)

# The outcomes of a registry poll that are not errors.
POLL_OUTCOMES = ("deployed", "unchanged")

POLLS = Counter(
    "noman_polls_total",
    "Registry polls by service and outcome (see POLL_OUTCOMES, or an error code).",
    ["service", "outcome"],
)
POLL_LAST_SUCCESS = Gauge(
    "noman_poll_last_success_timestamp_seconds",
    "When the service's registry was last polled successfully (Unix time).",
    ["service"],
    multiprocess_mode="livemax",
)
REGISTRY_RATELIMIT_REMAINING = Gauge(
    "noman_registry_ratelimit_remaining",
    "Requests left in the registry's rate-limit window, as its last ratelimit-remaining said.",
    ["registry"],
    multiprocess_mode="livemostrecent",
)


class BuildInfo(Collector):
    """``noman_build_info{version} 1``: a constant, so kept out of the per-worker files."""

    def collect(self) -> Iterator[Metric]:
        """The one sample."""
        info = GaugeMetricFamily(
            "noman_build_info", "Noman's version, as a label; always 1.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


def registry() -> CollectorRegistry:
    """A registry of every worker's metrics (under gunicorn) plus the build info."""
    combined = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    combined.register(BuildInfo())
    return combined


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's metrics, and its content type."""
    text = generate_latest(registry())
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        text = generate_latest(REGISTRY) + text
    return text, CONTENT_TYPE_LATEST


def serve(address: str) -> None:
    """Serve the metrics on ``address`` (host:port) from a daemon thread of this process."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry=registry())  # noqa: S104
