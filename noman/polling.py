"""The leader's registry poller: a safety net for webhooks that never arrive.

Only the process that holds the leader lock polls (one poll per service per
interval for the whole cluster). It runs in a thread of its own, so a registry
that hangs or refuses never slows a hook, a rollout or another registry's
polls. What it finds goes through the same deploy path as a webhook
(``Deployer.deploy``, sender ``poll``): forward-only, freeze and the strategy
apply, and a tag already deployed by a webhook is a no-op. Each service's
``PollState`` is kept at ``<prefix>poll/<service>`` (written by the leader
alone, all of one round's in one transaction per 64), so ``status`` on any
instance shows it and a new leader resumes the schedule.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from noman.config import Settings
from noman.deploy import Deployer
from noman.errors import NomanError
from noman.model import Service
from noman.registries.client import RegistryClient
from noman.registries.poller import Poller, PollState
from noman.release import Outcome, Release
from noman.stores import Store, Write

log = logging.getLogger(__name__)

#: The longest the loop sleeps before it looks at leadership and the schedule again.
MAX_SLEEP = 5.0


class PollLoop:
    """Runs the poller while this process leads; persists what it saw."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        leading: Callable[[], bool],
        client: RegistryClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deployer = deployer
        self.keys = deployer.keys
        self.leading = leading
        self.clock = clock
        self.client = client or RegistryClient.from_settings(settings.poll, clock=clock)
        self._pending_saves: dict[str, PollState] = {}
        self.poller = Poller(
            settings.services,
            settings.poll,
            self.client,
            deploy=self._deploy,
            desired=self._desired,
            save=self._save,
            clock=clock,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded = False

    @property
    def enabled(self) -> bool:
        """True when any service polls."""
        return bool(self.poller.services)

    def start(self) -> None:
        """Poll in a daemon thread (nothing to do when no service polls)."""
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="noman-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (a poll in hand finishes within the client's timeouts)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def run_once(self) -> None:
        """Poll what is due now, if this process leads (tests drive this directly)."""
        if not self.enabled or not self.leading():
            self._loaded = False  # a later leadership resumes from the store again
            return
        if not self._loaded:
            self._load()
        self.poller.poll_due()
        self._flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except NomanError as exc:
                log.warning("poller: %s", exc.code)
            except Exception:
                log.exception("poller: unexpected error")
            due = self.poller.next_due()
            wait = MAX_SLEEP if due is None else max(0.05, min(MAX_SLEEP, due - self.clock()))
            self._stop.wait(wait)

    # -- the poller's callbacks ------------------------------------------------------------

    def _deploy(self, service: Service, release: Release) -> Outcome:
        return self.deployer.deploy(service, release)

    def _desired(self, service: Service) -> str | None:
        return self.deployer.view(service, with_rollout=False).key.value

    def _save(self, service: Service, state: PollState) -> None:
        self._pending_saves[service.name] = state

    def _flush(self) -> None:
        saves, self._pending_saves = self._pending_saves, {}
        writes = [
            Write(self.keys.poll(name), json.dumps(state.dump(), separators=(",", ":")), 0, "set")
            for name, state in saves.items()
        ]
        for start in range(0, len(writes), 64):
            try:
                self.store.transact(writes[start : start + 64])
            except NomanError as exc:
                log.warning("poller: states not saved: %s", exc.code)

    def _load(self) -> None:
        """Resume each service's schedule from the store (a new leader)."""
        entries = self.store.list(self.keys.poll_folder).entries
        for service in self.poller.services:
            entry = entries.get(self.keys.poll(service.name))
            if entry is None or not entry.value:
                continue
            try:
                data = json.loads(entry.value)
            except ValueError:
                log.warning("poller: %s: saved state unreadable; polling afresh", service.name)
                continue
            self.poller.load(service, PollState.parse(data, 0.0))
        self._loaded = True
