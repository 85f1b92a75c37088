"""The poller: which services to poll when, and what a tag list means for each of them.

Polling is the safety net for lost webhooks: the leader lists each polling service's
tags every interval, keeps the ones the service's ``tag_pattern`` accepts, orders them
with the service's ordering, and deploys the newest through the same deploy path as a
webhook (sender ``poll``) when it is newer than the desired tag. Forward-only, freeze
and strategy are the deploy path's business; a refusal (``frozen``) is recorded like
a registry error.

Plain Python around three callbacks, so it runs (and is tested) without Consul:
``desired(service)`` reads the desired tag, ``deploy(service, release)`` deploys,
``save(service, state)`` persists the service's ``PollState`` after each poll (so a
new leader resumes with ``load``). The callbacks run in the thread that calls
``poll_due``; only the registry requests run in a small pool, at most
``max_parallel`` per registry host.

Waits are states: each ``PollState`` carries ``next_poll``. After a success the next
poll is one interval after this one started; after a temporary error (registry down,
rate-limited, Consul unavailable) it backs off exponentially with jitter, capped at
the interval; after a permanent one (credentials refused, no such repository,
frozen) it waits the interval. A ``429`` blocks every service of that registry host
until its ``Retry-After`` has passed. Each service's condition (its error code, or
fine) is logged when it changes, not at every poll.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from noman.config import PollSettings
from noman.errors import NomanError, RegistryRateLimited
from noman.imageref import ImageReference
from noman.metrics import POLL_LAST_SUCCESS, POLLS
from noman.model import Service
from noman.ordering import OrderKey, order_key
from noman.registries.client import RegistryClient
from noman.release import Outcome, Release, tag_accepted

__all__ = ["BACKOFF_FIRST", "PollState", "Poller", "newest_accepted"]

log = logging.getLogger(__name__)

#: Seconds before the first retry after a temporary error; doubles, capped at the interval.
BACKOFF_FIRST = 5.0
#: Registry requests in flight at once over all hosts (each host: ``max_parallel``).
MAX_THREADS = 16
#: The sender a poller's deploys carry into history and reports.
SENDER = "poll"


@dataclass(frozen=True)
class PollState:
    """Where one service's polling stands; times are Unix seconds.

    ``error`` is the code of the last poll's failure (a ``registry_*`` code, or a deploy
    refusal such as ``frozen``), None when it went through. ``newest_seen`` is the newest
    accepted tag the registry listed; ``found_by_poll`` says the poller itself deployed it
    (no webhook had). ``failures`` counts failed polls in a row (the backoff's exponent).
    """

    interval: float
    last_polled: float | None = None
    last_success: float | None = None
    newest_seen: str | None = None
    error: str | None = None
    next_poll: float = 0.0
    found_by_poll: bool = False
    failures: int = 0

    def dump(self) -> dict[str, Any]:
        """The state as plain JSON values, for the store."""
        return asdict(self)

    @classmethod
    def parse(cls, data: Any, interval: float) -> PollState:
        """A state from ``dump``'s output, with today's ``interval``; fresh when unreadable."""
        if not isinstance(data, Mapping):
            return cls(interval)
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data.get(item.name)
            if item.name in ("last_polled", "last_success", "next_poll"):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            elif item.name in ("newest_seen", "error"):
                ok = isinstance(value, str)
            elif item.name == "found_by_poll":
                ok = isinstance(value, bool)
            elif item.name == "failures":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = False
            if ok:
                values[item.name] = value
        return cls(interval, **values)

    def public(self) -> dict[str, Any]:
        """What ``status`` shows: times as ISO 8601 in UTC, the error as its code."""
        return {
            "interval": self.interval,
            "last_polled": _iso(self.last_polled),
            "last_success": _iso(self.last_success),
            "newest_seen": self.newest_seen,
            "error": self.error,
            "next_poll": _iso(self.next_poll) if self.next_poll else None,
            "found_by_poll": self.found_by_poll,
        }


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def newest_accepted(service: Service, tags: Iterable[str]) -> str | None:
    """The newest tag ``service`` accepts among ``tags``, by its ordering; None if none is."""
    best: tuple[OrderKey, str] | None = None
    for tag in tags:
        if not tag_accepted(service.tag_pattern, tag):
            continue
        key = order_key(service.tag_pattern, tag)
        # Equal keys (1.2 and 1.2.0): the first listed wins, so the choice is stable.
        if key is not None and (best is None or key > best[0]):
            best = (key, tag)
    return best[1] if best is not None else None


def _newer(service: Service, tag: str, desired: str | None) -> bool:
    """True when ``tag`` should replace ``desired``: none yet, unordered by hand, or older."""
    if desired is None:
        return True
    new, old = order_key(service.tag_pattern, tag), order_key(service.tag_pattern, desired)
    # A value set by hand outside the pattern never blocks a release (as for webhooks).
    return new is not None and (old is None or new > old)


@dataclass(frozen=True)
class _Listed:
    """What one registry request gave: the tags, or the error; and when it started."""

    service: Service
    started: float
    tags: list[str] | None = None
    error: Exception | None = None
    skipped: bool = False


class Poller:
    """Polls the services ``settings.intervals`` names, deploying what it finds.

    Args:
        services: the configured services; those without an interval are left alone.
        settings: ``[poll]`` as configured (intervals, ``max_parallel``).
        client: lists tags; shared by every poll (it caches tokens).
        deploy: deploys a release through the deploy path (may raise ``NomanError``).
        desired: the service's desired tag, None when it has none (may raise).
        save: persists the service's state after each poll (may raise; then logged).
        clock: wall-clock time in Unix seconds.
        rng: a random number in [0, 1), for the backoff's jitter.
    """

    def __init__(
        self,
        services: Iterable[Service],
        settings: PollSettings,
        client: RegistryClient,
        deploy: Callable[[Service, Release], Outcome],
        desired: Callable[[Service], str | None],
        save: Callable[[Service, PollState], None],
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.client = client
        self._deploy = deploy
        self._desired = desired
        self._save = save
        self._clock = clock
        self._rng = rng
        self.services: tuple[Service, ...] = tuple(
            s for s in services if settings.interval_of(s.name) is not None
        )
        self._refs: dict[str, ImageReference] = {
            s.name: client.reference(s.repository) for s in self.services
        }
        self._lock = threading.Lock()
        self._states: dict[str, PollState] = {
            s.name: PollState(self._interval(s)) for s in self.services
        }
        # Registry host -> no request before this time (a 429's Retry-After).
        self._blocked: dict[str, float] = {}
        self._in_flight: set[str] = set()
        # The condition last logged per service: its error code, or None for fine.
        self._logged: dict[str, str | None] = {}

    def _interval(self, service: Service) -> float:
        interval = self.settings.interval_of(service.name)
        return interval if interval is not None else self.settings.interval

    # -- state --------------------------------------------------------------------------------

    def state(self, service: Service | str) -> PollState | None:
        """The service's state; None when it does not poll."""
        name = service if isinstance(service, str) else service.name
        with self._lock:
            return self._states.get(name)

    def states(self) -> dict[str, PollState]:
        """Every polling service's state, by name."""
        with self._lock:
            return dict(self._states)

    def load(self, service: Service, state: PollState) -> None:
        """Resume from a persisted state (a new leader): when to poll next, what was seen.

        The configured interval wins over the persisted one; a next poll further away
        than one interval from the last is brought forward.
        """
        if service.name not in self._states:
            return
        interval = self._interval(service)
        next_poll = state.next_poll
        if state.last_polled is not None:
            next_poll = min(next_poll, state.last_polled + interval)
        with self._lock:
            self._states[service.name] = replace(state, interval=interval, next_poll=next_poll)
            # The condition was logged by the leader that saw it first.
            self._logged[service.name] = state.error

    def reference(self, service: Service) -> ImageReference:
        """Where ``service``'s tags are listed."""
        return self._refs[service.name]

    # -- scheduling ---------------------------------------------------------------------------

    def due(self, now: float) -> list[Service]:
        """The services whose next poll is due at ``now`` (their registry not rate-limited)."""
        with self._lock:
            return [
                s
                for s in self.services
                if self._states[s.name].next_poll <= now
                and self._blocked.get(self._refs[s.name].host, 0.0) <= now
                and s.name not in self._in_flight
            ]

    def next_due(self) -> float | None:
        """When (Unix seconds) the next poll is due, for the caller's sleep; None: no service."""
        with self._lock:
            times = [
                max(self._states[s.name].next_poll, self._blocked.get(self._refs[s.name].host, 0))
                for s in self.services
            ]
        return min(times) if times else None

    def poll_due(self, now: float | None = None) -> None:
        """Poll every service due at ``now`` (default: the clock) and act on what it finds.

        Returns once each has been polled, decided and saved; every registry request is
        bounded by the client's timeouts. Never raises for one service's trouble.
        """
        due = self.due(self._clock() if now is None else now)
        if not due:
            return
        with self._lock:
            self._in_flight.update(s.name for s in due)
        try:
            for listed in self._list_all(due):
                self._settle(listed)
        finally:
            with self._lock:
                self._in_flight.difference_update(s.name for s in due)

    def poll(self, service: Service) -> PollState:
        """Poll ``service`` now, whatever its schedule (an operator's "poll now")."""
        with self._lock:
            self._in_flight.add(service.name)
        try:
            (listed,) = self._list([service])
            self._settle(listed)
        finally:
            with self._lock:
                self._in_flight.discard(service.name)
        state = self.state(service)
        assert state is not None
        return state

    # -- listing (the pool) -------------------------------------------------------------------

    def _list_all(self, due: list[Service]) -> Iterable[_Listed]:
        """Each service's tag list as it arrives, at most ``max_parallel`` per registry host.

        Services of one repository (staging and production of one image, say) share one
        tag list.
        """
        by_ref: dict[ImageReference, list[Service]] = {}
        for service in due:
            by_ref.setdefault(self._refs[service.name], []).append(service)
        by_host: dict[str, deque[list[Service]]] = {}
        for ref, group in by_ref.items():
            by_host.setdefault(ref.host, deque()).append(group)
        lanes = [
            work
            for work in by_host.values()
            for _ in range(min(self.settings.max_parallel, len(work)))
        ]
        results: queue.Queue[list[_Listed]] = queue.Queue()

        def lane(work: deque[list[Service]]) -> None:
            while True:
                try:
                    group = work.popleft()  # deque pops are atomic: lanes share a host's queue
                except IndexError:
                    return
                results.put(self._list(group))

        with ThreadPoolExecutor(min(len(lanes), MAX_THREADS), "noman-poll") as pool:
            for work in lanes:
                pool.submit(lane, work)
            for _ in by_ref:
                yield from results.get()

    def _list(self, services: list[Service]) -> list[_Listed]:
        """The tags of the repository ``services`` share (or why not); never raises."""
        ref = self._refs[services[0].name]
        started = self._clock()
        with self._lock:
            blocked = self._blocked.get(ref.host, 0.0)
        if blocked > started:
            return [_Listed(s, started, skipped=True) for s in services]
        try:
            tags = self.client.list_tags(ref)
        except RegistryRateLimited as exc:
            self._block(ref.host, started, exc)
            return [_Listed(s, started, error=exc) for s in services]
        except Exception as exc:  # reported in the state; one service never stops the others
            return [_Listed(s, started, error=exc) for s in services]
        return [_Listed(s, started, tags=tags) for s in services]

    def _block(self, host: str, now: float, error: RegistryRateLimited) -> None:
        wait = error.retry_after
        if wait is None:
            return  # nothing said: each service backs off on its own
        until = now + wait
        with self._lock:
            was = self._blocked.get(host, 0.0)
            self._blocked[host] = max(was, until)
        if was <= now:
            log.warning(
                "registry %s: rate limited; no request to it for %ss",
                host,
                wait,
                extra={"fields": {"registry": host, "retry_after": wait}},
            )

    # -- deciding -----------------------------------------------------------------------------

    def _settle(self, listed: _Listed) -> None:
        """Decide, deploy, record, log and save one service's poll; never raises.

        Long because the poll's state is built by successive replaces from one result
        (skipped, listed, deployed, failed) and saved once.
        """
        service = listed.service
        with self._lock:
            previous = self._states[service.name]
            host_free = self._blocked.get(self._refs[service.name].host, 0.0)
        if listed.skipped:
            with self._lock:
                self._states[service.name] = replace(
                    previous, next_poll=max(previous.next_poll, host_free)
                )
            return
        interval = previous.interval
        error: Exception | None = listed.error
        state = replace(previous, last_polled=listed.started)
        if error is None:
            assert listed.tags is not None
            newest = newest_accepted(service, listed.tags)
            state = replace(state, last_success=listed.started, newest_seen=newest)
            if newest != previous.newest_seen:
                state = replace(state, found_by_poll=False)
            try:
                outcome = self._decide(service, newest)
            except Exception as exc:  # recorded like a registry error: the poll goes on
                error = exc
            else:
                if outcome is not None and outcome.changed:
                    state = replace(state, found_by_poll=True)
                deployed = outcome is not None and outcome.changed
                POLLS.labels(service.name, "deployed" if deployed else "unchanged").inc()
            POLL_LAST_SUCCESS.labels(service.name).set(listed.started)
        if error is None:
            state = replace(state, error=None, failures=0, next_poll=listed.started + interval)
        else:
            code = error.code if isinstance(error, NomanError) else "internal_error"
            failures = previous.failures + 1
            delay = self._backoff(error, interval, failures)
            state = replace(
                state,
                error=code,
                failures=failures,
                next_poll=max(listed.started + delay, host_free),
            )
            POLLS.labels(service.name, code).inc()
        with self._lock:
            self._states[service.name] = state
        self._log_change(service, state, error)
        self._save_or_warn(service, state)

    def _save_or_warn(self, service: Service, state: PollState) -> None:
        """Save the poll's state; a failure is logged, never raised."""
        try:
            self._save(service, state)
        except Exception as exc:  # the next poll saves again; the state in memory is right
            log.warning(
                "poll %s: saving its state failed: %s",
                service.name,
                exc.code if isinstance(exc, NomanError) else type(exc).__name__,
                extra={"fields": {"service": service.name}},
            )

    def _decide(self, service: Service, newest: str | None) -> Outcome | None:
        """Deploy ``newest`` when it is newer than the desired tag; the Outcome, or None."""
        if newest is None:
            return None
        desired = self._desired(service)
        if not _newer(service, newest, desired):
            return None
        release = Release(tag=newest, sender=SENDER, repository=service.repository)
        outcome = self._deploy(service, release)
        if outcome.changed:
            log.info(
                "poll %s: found %s in the registry (desired was %s): deployed",
                service.name,
                newest,
                desired,
                extra={"fields": {"service": service.name, "tag": newest, "sender": SENDER}},
            )
        return outcome

    def _backoff(self, error: Exception, interval: float, failures: int) -> float:
        """Seconds before the next poll after ``failures`` failed polls in a row."""
        if isinstance(error, NomanError) and not error.temporary:
            return interval
        if isinstance(error, RegistryRateLimited) and error.retry_after is not None:
            return float(error.retry_after)  # the registry said when: no sooner, no later
        ceiling = min(interval, BACKOFF_FIRST * 2.0 ** min(failures - 1, 30))
        # "Equal jitter": at least half the step, so retries never bunch up at zero.
        return ceiling / 2 + self._rng() * ceiling / 2

    def _log_change(self, service: Service, state: PollState, error: Exception | None) -> None:
        with self._lock:
            before = self._logged.get(service.name)
            self._logged[service.name] = state.error
        if state.error == before:
            return
        fields_ = {"service": service.name, "error": state.error}
        if error is None:
            log.info(
                "poll %s: works again (was %s)", service.name, before, extra={"fields": fields_}
            )
        elif isinstance(error, NomanError):
            log.warning(
                "poll %s: %s: %s",
                service.name,
                error.code,
                error.message,
                extra={"fields": fields_},
            )
        else:
            log.error(
                "poll %s: unexpected error",
                service.name,
                exc_info=(type(error), error, error.__traceback__),
                extra={"fields": fields_},
            )
