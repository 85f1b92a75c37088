"""The settings the rest of Noman reads: ``Settings`` and the shapes it holds.

The loader (``noman.config.loading``) builds them once at start from the declared
tables (``noman.config.tables``); their defaults are those tables' defaults. Tests
and benchmarks build them directly.
"""

from dataclasses import dataclass, field
from typing import Literal

from noman.config.tables import (
    ConsulSettings,
    NomadSettings,
    NotifyTable,
    PollTable,
    RolloutSettings,
    ServerTable,
    StoreTable,
    UITable,
)
from noman.durations import parse_duration
from noman.errors import UnknownService
from noman.model import Service
from noman.operators import NO_CONTROLS, Controls, Operator

DOCKERHUB_CALLBACK_HOSTS = ("registry.hub.docker.com", "hub.docker.com")

# The defaults of the tables whose values Settings keeps in shapes of its own.
_SERVER, _STORE, _NOTIFY, _POLL, _UI = (
    ServerTable(),
    StoreTable(),
    NotifyTable(),
    PollTable(),
    UITable(),
)


@dataclass(frozen=True)
class NotifyTarget:
    """One place outcomes are reported to."""

    kind: Literal["webhook", "slack"]
    url: str = field(repr=False)
    on: frozenset[str]
    hmac_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NotifySettings:
    """Where and how outcomes are reported ([notify]; its ``on`` is each target's)."""

    targets: tuple[NotifyTarget, ...] = ()
    retries: int = _NOTIFY.retries
    backoff: float = _NOTIFY.backoff
    timeout: float = _NOTIFY.timeout
    # serve --dev: reports are logged, never sent (demo payloads carry real URLs).
    dry_run: bool = _NOTIFY.dry_run


@dataclass(frozen=True)
class PollSettings:
    """Polling registries for new tags: the leader's safety net for lost webhooks.

    ``intervals`` maps the name of each service that polls to its interval in seconds;
    a service not in it is never polled. ``docker_config`` is the ``config.json`` whose
    ``auths`` give registry credentials, as found at start (None: anonymous only).
    """

    interval: float = parse_duration(_POLL.interval)
    docker_config: str | None = _POLL.docker_config
    max_parallel: int = _POLL.max_parallel
    insecure_registries: tuple[str, ...] = _POLL.insecure_registries
    timeout: float = _POLL.timeout
    intervals: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when any service polls."""
        return bool(self.intervals)

    def interval_of(self, service: str) -> float | None:
        """Seconds between two polls of ``service``; None when it does not poll."""
        return self.intervals.get(service)


@dataclass(frozen=True)
class HookProofs:
    """What proves a delivery to one service besides its URL secret; nothing by default.

    Kept beside ``Service`` rather than on it while ``noman.model`` is being
    reworked; ``Settings.proofs_for`` finds a service's own.
    """

    # An unsigned delivery must carry this header (any case) with one of these
    # sha256 digests of its whole value; no digests: the URL secret alone.
    auth_header: str = "Authorization"
    auth_header_hashes: tuple[bytes, ...] = field(default=(), repr=False)
    # HMAC keys of the Gitea/Forgejo webhook, and Artifactory's secret token(s).
    gitea_keys: tuple[bytes, ...] = field(default=(), repr=False)
    artifactory_keys: tuple[bytes, ...] = field(default=(), repr=False)


NO_PROOFS = HookProofs()


@dataclass(frozen=True)
class UISettings:
    """The operator status page: off unless an admin token is configured."""

    token_hashes: tuple[bytes, ...] = field(default=(), repr=False)
    # None: a random key per start (see noman.ui.session_key).
    session_key: bytes | None = field(default=None, repr=False)
    session_hours: float = _UI.session_hours
    # Where operators reach the page: reports link to it.
    public_url: str | None = _UI.public_url

    @property
    def enabled(self) -> bool:
        """True when an admin token is configured."""
        return bool(self.token_hashes)


@dataclass(frozen=True)
class Settings:
    """Everything Noman needs, checked."""

    services: tuple[Service, ...]
    source: str = "<defaults>"
    consul: ConsulSettings = field(default_factory=ConsulSettings)
    nomad: NomadSettings = field(default_factory=NomadSettings)
    notify: NotifySettings = NotifySettings()
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    store_backend: Literal["consul", "file"] = _STORE.backend
    store_path: str = _STORE.path
    max_body_bytes: int = _SERVER.max_body_bytes
    log_level: str = _SERVER.log_level
    auth_failures_per_minute: int = _SERVER.auth_failures_per_minute
    proxy_hops: int = _SERVER.proxy_hops
    # A second, internal listener for /metrics; None: /metrics on the main one.
    metrics_bind: str | None = _SERVER.metrics_bind
    ui: UISettings = UISettings()
    poll: PollSettings = PollSettings()
    # Named operators, and what each service asks of them (services with no controls
    # are left out; ``controls_for`` answers for any service).
    operators: tuple[Operator, ...] = ()
    controls: tuple[tuple[str, Controls], ...] = ()
    tls_cert: str | None = _SERVER.tls_cert
    tls_key: str | None = _SERVER.tls_key
    # Not settable from TOML on purpose: DockerHub callbacks go to DockerHub
    # only. Tests add their local stand-in here.
    callback_hosts: tuple[str, ...] = DOCKERHUB_CALLBACK_HOSTS
    callback_allow_http: bool = False
    # (service name, its proofs) for the services that configure any.
    proofs: tuple[tuple[str, HookProofs], ...] = ()

    def proofs_for(self, service: Service) -> HookProofs:
        """What proves a delivery to ``service`` besides its URL secret."""
        for name, proofs in self.proofs:
            if name == service.name:
                return proofs
        return NO_PROOFS

    def service(self, name: str) -> Service:
        """The service called ``name``; ConfigError if there is none."""
        for service in self.services:
            if service.name == name:
                return service
        import difflib

        names = [s.name for s in self.services]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(names) or "none"
        raise UnknownService(
            f"{self.source}: no service named {name!r}{hint} (configured: {known})"
        )

    @property
    def uses_nomad(self) -> bool:
        """True when any service deploys through Nomad."""
        return any(s.strategy == "rolling" for s in self.services)

    def controls_for(self, service: Service) -> Controls:
        """The approvals and deploy windows ``service`` asks for (none by default)."""
        for name, controls in self.controls:
            if name == service.name:
                return controls
        return NO_CONTROLS

    @property
    def page_enabled(self) -> bool:
        """True when the status page serves anyone: an admin token or an operator."""
        return self.ui.enabled or bool(self.operators)
