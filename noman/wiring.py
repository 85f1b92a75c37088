"""One wiring function for the web app and the CLI: settings -> the objects that do the work.

``build`` makes the store, the Nomad client, the deployer, the reporter, the
courier, the reconciler and the registry poller once (and, for the web app,
the failed-secret limiter); ``components(app)`` gives a view the app's set.
Views and commands reach them through typed attributes, never string keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from noman.config import Settings
from noman.courier import Courier
from noman.deploy import Deployer
from noman.gates import Gates
from noman.notify import Reporter
from noman.polling import PollLoop
from noman.ratelimit import FailureLimiter
from noman.reconcile import Reconciler
from noman.rollouts.nomad import NomadRollouts
from noman.state import Keys
from noman.stores import Store

EXTENSION = "noman"


@dataclass(frozen=True)
class Components:
    """Everything a front end (HTTP, CLI, UI) needs, built from one Settings."""

    settings: Settings
    store: Store
    nomad: NomadRollouts | None
    deployer: Deployer
    reporter: Reporter
    courier: Courier
    reconciler: Reconciler
    polling: PollLoop
    # Approvals and deploy windows (the deployer and the reconciler hold it too).
    gates: Gates
    # Failed secrets and tokens per client address, shared by the hook routes, the
    # operator API and the status page: None for the CLI, or with no limit configured.
    limiter: FailureLimiter | None = None


def build(
    settings: Settings, store: Store | None = None, *, limiter: FailureLimiter | None = None
) -> Components:
    """Build every component from ``settings`` (``store`` replaces the configured one).

    ``limiter`` is the web app's (``build_limiter``): the CLI has no failed secrets to count.
    """
    store = store if store is not None else build_store(settings)
    nomad = build_nomad(settings)
    reporter = Reporter(settings)
    courier = Courier(store, Keys(settings.consul.state_prefix), reporter, settings.notify)
    deployer = Deployer(
        store,
        nomad,
        cas_retries=settings.consul.cas_retries,
        register_retries=settings.nomad.register_retries,
        state_prefix=settings.consul.state_prefix,
        answer_within=settings.rollout.answer_within,
        history_size=settings.rollout.history_size,
        report_successes=any("success" in t.on for t in settings.notify.targets),
        observe=reporter.observe,
        deliver=courier.send_now,
        poll_intervals=dict(settings.poll.intervals),
    )
    gates = Gates(settings, store, deployer, deliver=courier.send_now)
    deployer.gates = gates
    reconciler = Reconciler(settings, store, deployer, nomad, reporter, courier, gates=gates)
    polling = PollLoop(settings, store, deployer, leading=lambda: reconciler.leader)
    reconciler.polling = polling
    return Components(
        settings, store, nomad, deployer, reporter, courier, reconciler, polling, gates, limiter
    )


def build_store(settings: Settings) -> Store:
    """The store the settings ask for."""
    if settings.store_backend == "file":
        from noman.stores.file import FileStore

        return FileStore(settings.store_path)
    from noman.stores.consul import ConsulStore

    return ConsulStore(settings.consul)


def build_limiter(settings: Settings) -> FailureLimiter | None:
    """The failed-authentication limiter, or None when ``auth_failures_per_minute`` is 0."""
    if not settings.auth_failures_per_minute:
        return None
    return FailureLimiter(settings.auth_failures_per_minute)


def build_nomad(settings: Settings) -> NomadRollouts | None:
    """A Nomad client when any service rolls through Nomad, else None."""
    return NomadRollouts(settings.nomad) if settings.uses_nomad else None


def components(app: Flask) -> Components:
    """The components ``create_app`` stored on ``app``."""
    found = app.extensions[EXTENSION]
    if not isinstance(found, Components):
        raise TypeError("app.extensions['noman'] is not Noman's Components")
    return found
