"""The use case: decide whether a release may be deployed, and deploy it safely.

Plain Python with no Flask and no Consul: a ``Store`` keeps tags with
check-and-set, an optional ``Orchestrator`` (Nomad) rolls jobs for the
rolling strategy. Every decision is taken again after a lost race, so two
concurrent deploys of one service always end with the newer tag.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from noman.config import Service
from noman.errors import InvalidTag, NomanError, RepositoryMismatch, StaleTag, WriteConflict
from noman.ordering import OrderKey, is_older, order_key
from noman.release import OCI_TAG, Outcome, Release, Rollout
from noman.stores import Store

log = logging.getLogger(__name__)

# Delivery ids remembered per service, to refuse replays of signed deliveries.
KEEP_DELIVERIES = 500


@dataclass(frozen=True)
class JobState:
    """A job as an orchestrator read it: the tag it runs and what is needed to change it."""

    tag: str | None
    spec: dict[str, Any]
    modify_index: int


class Orchestrator(Protocol):
    """Something that runs a new job version per deploy (Nomad)."""

    def read(self, service: Service) -> JobState:
        """The job of ``service`` as it is now."""
        ...

    def register(self, service: Service, state: JobState, tag: str) -> Rollout | None:
        """Register ``state`` with ``tag``; None if the job changed since it was read."""
        ...


def deliveries_key(service: Service) -> str:
    """The Consul key beside the service's key that remembers recent delivery ids."""
    return f"{service.key}.deliveries"


def check_release(service: Service, release: Release) -> None:
    """Refuse a release this service must never run (bad tag, other repository)."""
    if release.repository is not None and release.repository.lower() != service.repository.lower():
        raise RepositoryMismatch(
            f"Repository {_quote(release.repository)} is not the one this service deploys."
        )
    if not OCI_TAG.fullmatch(release.tag):
        raise InvalidTag(f"{_quote(release.tag)} is not a valid image tag.")
    if not service.tag_pattern.fullmatch(release.tag):
        raise InvalidTag(
            f"Tag {_quote(release.tag)} does not match this service's pattern "
            f"{service.tag_pattern.pattern}."
        )


def release_order(service: Service, tag: str | None) -> OrderKey | None:
    """Where ``tag`` sits among the service's releases (see ``noman.ordering``)."""
    return order_key(service.tag_pattern, tag)


def needs_write(service: Service, current: str | None, release: Release) -> bool:
    """True to write ``release``, False when it is already deployed; StaleTag when older."""
    if current == release.tag:
        return False
    if release.force:
        return True
    # An unordered current value (set by hand, or a first deploy) never blocks a valid release.
    if is_older(service.tag_pattern, release.tag, current):
        raise StaleTag(
            f"Tag {release.tag} is older than the deployed {current}; "
            'to roll back on purpose, send "force": true (HTTP) or use --force (noman deploy).'
        )
    return True


class Deployer:
    """Deploys releases to services: policy, check-and-set, and the rolling step."""

    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator | None = None,
        cas_retries: int = 8,
        register_retries: int = 5,
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.cas_retries = cas_retries
        self.register_retries = register_retries

    def deploy(self, service: Service, release: Release) -> Outcome:
        """Deploy ``release`` to ``service``; returns only once the store confirmed it."""
        check_release(service, release)
        if release.delivery_id and release.delivery_id in self._deliveries(service)[0]:
            return Outcome(
                service=service.name,
                key=service.key,
                tag=release.tag,
                previous=self.store.read(service.key).value,
                changed=False,
                duplicate_delivery=True,
            )
        outcome = self._write(service, release)
        if release.delivery_id:
            self._remember(service, release.delivery_id)
        return outcome

    def _write(self, service: Service, release: Release) -> Outcome:
        for _ in range(self.cas_retries):
            entry = self.store.read(service.key)
            if not needs_write(service, entry.value, release):
                return self._finish(service, release, entry.value, changed=False)
            if self.store.write(service.key, release.tag, entry.modify_index):
                return self._finish(service, release, entry.value, changed=True)
            log.info(
                "service %s: key changed while deploying %s; deciding again",
                service.name,
                release.tag,
            )
        raise WriteConflict()

    def _deliveries(self, service: Service) -> tuple[dict[str, float], int]:
        """Recent delivery ids of signed senders (id -> time) and the key's index."""
        entry = self.store.read(deliveries_key(service))
        try:
            seen = json.loads(entry.value or "{}")
        except ValueError:
            seen = {}
        if not isinstance(seen, dict):
            seen = {}
        # Only well-formed entries count; anything else is dropped on the next write.
        valid = {k: v for k, v in seen.items() if isinstance(v, int | float)}
        return valid, entry.modify_index

    def _remember(self, service: Service, delivery_id: str) -> None:
        """Record a handled delivery; a failure here never fails the deploy that landed."""
        try:
            for _ in range(self.cas_retries):
                seen, index = self._deliveries(service)
                seen[delivery_id] = time.time()
                newest = sorted(seen.items(), key=lambda item: item[1])[-KEEP_DELIVERIES:]
                if self.store.write(deliveries_key(service), json.dumps(dict(newest)), index):
                    return
        except NomanError as exc:
            log.warning(
                "service %s: delivery %s not recorded: %s", service.name, delivery_id, exc.code
            )
            return
        log.warning(
            "service %s: delivery %s not recorded (key kept changing)", service.name, delivery_id
        )

    def _finish(
        self, service: Service, release: Release, previous: str | None, changed: bool
    ) -> Outcome:
        rollout = None
        if service.strategy == "rolling":
            try:
                rollout = self._roll(service, release)
            except NomanError:
                if changed:
                    self._restore(service, release.tag, previous)
                raise
        return Outcome(
            service=service.name,
            key=service.key,
            tag=release.tag,
            previous=previous,
            changed=changed or rollout is not None,
            rollout=rollout,
        )

    def _roll(self, service: Service, release: Release) -> Rollout | None:
        """Register the job version that runs ``release``; None if it already does."""
        if self.orchestrator is None:
            raise NomanError(f"service {service.name} is rolling but Nomad is not configured")
        for _ in range(self.register_retries):
            state = self.orchestrator.read(service)
            if not needs_write(service, state.tag, release):
                return None
            rollout = self.orchestrator.register(service, state, release.tag)
            if rollout is not None:
                return rollout
            log.info(
                "service %s: job changed while deploying %s; reading it again",
                service.name,
                release.tag,
            )
        raise WriteConflict("The Nomad job kept changing; nothing was deployed. Retry later.")

    def _restore(self, service: Service, tag: str, previous: str | None) -> None:
        """Put the key back as it was, unless a newer deploy has moved it on since."""
        try:
            entry = self.store.read(service.key)
            if entry.value != tag:
                return
            if previous is None:
                restored = self.store.delete(service.key, entry.modify_index)
            else:
                restored = self.store.write(service.key, previous, entry.modify_index)
        except NomanError as exc:
            restored = False
            log.error("service %s: could not restore %s: %s", service.name, service.key, exc)
        if restored:
            log.warning("service %s: restored %s to %s", service.name, service.key, previous)
        else:
            log.error(
                "service %s: %s still holds %s although the rollout failed; "
                "a retry of the same tag completes it",
                service.name,
                service.key,
                tag,
            )


def _quote(text: str, limit: int = 140) -> str:
    """Echo untrusted text safely: cut, and repr so control characters stay visible."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
