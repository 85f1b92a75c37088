"""Noman's configuration: a TOML file plus environment, validated once at start.

Every key Noman reads is declared in ``SCHEMA`` with its type, default and
help text; the settings dataclasses take their defaults from it (``_default``),
the README documents each one, and tests keep all three in step.
Every mistake raises ``ConfigError`` naming the file, line, table and key.
Connection settings follow Consul's and Nomad's own CLIs: the environment
variables they use (``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, ...) override the
file, so one config file works across environments.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from noman.durations import STAGE, parse_duration
from noman.errors import ConfigError, UnknownService
from noman.model import (
    DEFAULT_TAG_PATTERN,
    CanaryCheck,
    CanaryPlan,
    NomadTarget,
    ReleasePhase,
    Service,
)
from noman.operators import NO_CONTROLS, Controls, Operator
from noman.ordering import order_kind
from noman.registries.auth import default_docker_config, read_docker_config
from noman.registries.reference import InvalidReference, is_registry_host, parse_reference
from noman.windows import Window, parse_cron, parse_timezone

DEFAULT_CONFIG_PATH = "noman.toml"
# 22 url-safe characters carry 132 bits; anything shorter is guessable.
MIN_SECRET_CHARS = 22
MIN_SESSION_KEY_CHARS = 32
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DOCKERHUB_CALLBACK_HOSTS = ("registry.hub.docker.com", "hub.docker.com")

# Consul's own rules plus what newer versions refuse (see specs/consul-kv.md).
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# RFC 9110's token: the characters an HTTP field name may use.
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_BIND_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$")
MIN_POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, what it holds, what it means."""

    table: str
    name: str
    types: tuple[type, ...]
    default: Any
    help: str


def _k(table: str, name: str, types: tuple[type, ...], default: Any, help: str) -> Key:
    return Key(table, name, types, default, help)


_S = "services.<name>"
_N = "services.<name>.nomad"
_RP = "services.<name>.release_phase"
_C = "services.<name>.canary"
_CC = "services.<name>.canary.checks"
_T = "notify.targets"
_O = "operators"
_W = "windows"
_SPAN = (str, int, float)
#: A service's own sub-tables, read apart from its keys.
_SUBTABLES = frozenset({"nomad", "release_phase", "canary"})
SCHEMA: tuple[Key, ...] = (
    _k("server", "max_body_bytes", (int,), 65536, "Largest accepted request body, in bytes."),
    _k("server", "log_level", (str,), "info", "debug, info, warning or error."),
    _k("server", "auth_failures_per_minute", (int,), 0, "Failed secrets per address; 0: off."),
    _k("server", "proxy_hops", (int,), 0, "Proxies whose X-Forwarded-For to trust."),
    _k("server", "metrics_bind", (str,), None, "host:port of an internal /metrics listener."),
    _k("server", "tls_cert", (str,), None, "PEM certificate chain: serve HTTPS (TLS 1.2+)."),
    _k("server", "tls_key", (str,), None, "PEM private key of tls_cert."),
    _k("store", "backend", (str,), "consul", '"consul", or "file" for a local JSON file.'),
    _k("store", "path", (str,), ".noman/store.json", "The JSON file of the file backend."),
    _k("consul", "address", (str,), "http://127.0.0.1:8500", "Consul's HTTP address."),
    _k("consul", "datacenter", (str,), None, "Datacenter for every KV call."),
    _k("consul", "timeout", (int, float), 5, "Seconds allowed for each Consul call."),
    _k("consul", "token", (str,), None, "ACL token; prefer CONSUL_HTTP_TOKEN."),
    _k("consul", "verify", (bool, str), True, "Verify TLS: true, false or a CA bundle path."),
    _k("consul", "cas_retries", (int,), 8, "Check-and-set attempts before 503."),
    _k("consul", "state_prefix", (str,), "noman/", "Where Noman keeps its records and lock."),
    _k("consul", "session_ttl", (int, float), 15, "Seconds the reconciler's leader lock lives."),
    _k("consul", "lock_delay", (int, float), 1, "Seconds a lost leader lock stays blocked."),
    _k("nomad", "address", (str,), "http://127.0.0.1:4646", "Nomad's HTTP address."),
    _k("nomad", "token", (str,), None, "ACL token; prefer NOMAD_TOKEN."),
    _k("nomad", "namespace", (str,), None, "Default namespace of rolling jobs."),
    _k("nomad", "region", (str,), None, "Default region of rolling jobs."),
    _k("nomad", "verify", (bool, str), True, "Verify TLS: true, false or a CA bundle path."),
    _k("nomad", "timeout", (int, float), 5, "Seconds allowed for each Nomad call."),
    _k("nomad", "register_retries", (int,), 5, "Job registrations tried on index conflicts."),
    _k("nomad", "watch_timeout", (int, float), 900, "Seconds a rollout may take: timed_out."),
    _k("nomad", "poll_interval", (int, float), 2, "Poll interval if blocking reads are ignored."),
    _k("rollout", "answer_within", (int, float), 5, "Seconds the hook waits for Nomad."),
    _k("rollout", "history_size", (int,), 50, "Deploys kept in each service's history."),
    _k("rollout", "retry_backoff", (int, float), 1, "Seconds before the first retry; doubles."),
    _k("rollout", "retry_max", (int, float), 60, "Longest wait between two retries."),
    _k("rollout", "refused_retry", (int, float), 300, "Wait after Nomad refused Noman's token."),
    _k("rollout", "resync", (int, float), 300, "Seconds between the leader's full passes."),
    _k("notify", "on", (list,), ["failure"], 'Reports: "success", "failure", "stage".'),
    _k("notify", "retries", (int,), 3, "Attempts per notification."),
    _k("notify", "backoff", (int, float), 1, "Seconds before the first retry; doubles."),
    _k("notify", "timeout", (int, float), 5, "Seconds allowed for each notification."),
    _k("notify", "dry_run", (bool,), False, "Log reports instead of sending them."),
    _k(_T, "kind", (str,), "webhook", '"webhook" (generic JSON) or "slack".'),
    _k(_T, "url", (str,), None, "Where to POST (required)."),
    _k(_T, "secret_env", (str,), None, "Env var with the HMAC-SHA256 key (webhook)."),
    _k(_T, "on", (list,), None, "Overrides notify.on for this target."),
    _k(_S, "repository", (str,), None, "The only repository accepted (required)."),
    _k(_S, "key", (str,), None, "The Consul key that receives the tag (required)."),
    _k(_S, "secret_sha256", (str, list), None, "sha256 hex of the URL secret (or a list)."),
    _k(_S, "secret_env", (str,), None, "Env var holding the URL secret itself."),
    _k(_S, "github_secret_env", (str,), None, "Env var with the GitHub webhook secret(s)."),
    _k(_S, "standard_secret_env", (str,), None, "Env var with the whsec_ key(s)."),
    _k(_S, "gitea_secret_env", (str,), None, "Env var with the Gitea/Forgejo secret(s)."),
    _k(_S, "artifactory_secret_env", (str,), None, "Env var with the Artifactory token(s)."),
    _k(_S, "auth_header", (str,), "Authorization", "Header an unsigned sender must carry."),
    _k(_S, "auth_header_sha256", (str, list), None, "sha256 hex of its whole value (or a list)."),
    _k(_S, "auth_header_env", (str,), None, "Env var holding its whole value."),
    _k(_S, "tag_pattern", (str,), DEFAULT_TAG_PATTERN, "Accepted tags; group 1 orders them."),
    _k(_S, "strategy", (str,), "restart", '"restart" (Consul only) or "rolling".'),
    _k(_S, "poll", (str, bool), None, 'Poll the registry: a duration ("5m") or true.'),
    _k(_N, "job", (str,), None, "Nomad job ID (required for rolling)."),
    _k(_N, "namespace", (str,), None, "Namespace of the job (default: [nomad])."),
    _k(_N, "region", (str,), None, "Region of the job (default: [nomad])."),
    _k(_N, "update", (str,), "meta", '"meta" (job Meta) or "image" (task images).'),
    _k(_N, "meta_key", (str,), "NOMAN_IMAGE_TAG", "The job Meta key set by update = meta."),
    _k(_N, "tasks", (list,), [], "Tasks whose image to rewrite (update = image)."),
    _k("poll", "interval", (str,), "5m", "Poll interval of services that say poll = true."),
    _k("poll", "docker_config", (str,), None, "Docker config.json with registry credentials."),
    _k("poll", "max_parallel", (int,), 2, "Polls in flight at once per registry host."),
    _k("poll", "insecure_registries", (list,), [], "host[:port]s polled over plain HTTP."),
    _k("poll", "timeout", (int, float), 10, "Seconds for each registry request."),
    _k(_N, "jobs", (list,), [], "Several job IDs, rolled in this order (instead of job)."),
    _k(_RP, "job", (str,), None, "Parameterized batch job dispatched first (required)."),
    _k(_RP, "timeout", _SPAN, "15m", "How long it may run before the rollout fails."),
    _k(_C, "bake", _SPAN, "60s", "How long healthy canaries are analysed."),
    _k(_C, "interval", _SPAN, "10s", "Time between two rounds of checks."),
    _k(_C, "promote", (str,), "auto", '"auto" after the analysis, or "manual".'),
    _k(_CC, "kind", (str,), None, '"prometheus" or "http" (required).'),
    _k(_CC, "name", (str,), None, "Shown in status and reports (default: query or path)."),
    _k(_CC, "url", (str,), None, "prometheus: Prometheus's base URL (required)."),
    _k(_CC, "query", (str,), None, "prometheus: PromQL; {service} {tag} {job} {deployment}."),
    _k(_CC, "max", (int, float), None, "prometheus: highest value that passes."),
    _k(_CC, "min", (int, float), None, "prometheus: lowest value that passes."),
    _k(_CC, "on_no_data", (str,), "fail", 'prometheus: "fail" or "pass" on an empty result.'),
    _k(_CC, "path", (str,), "/", "http: the path GET asks each canary for."),
    _k(_CC, "port", (str,), None, "http: the allocation's port label (default: its first)."),
    _k(_CC, "expect", (int, list), None, "http: accepted status(es) (default: any 2xx)."),
    _k(_CC, "timeout", _SPAN, "5s", "Time allowed for one query or GET."),
    _k("ui", "token_sha256", (str, list), None, "sha256 hex of the admin token (or a list)."),
    _k("ui", "token_env", (str,), None, "Env var holding the admin token itself."),
    _k("ui", "session_key_env", (str,), None, "Env var with the cookie signing key."),
    _k("ui", "session_hours", (int, float), 12, "Hours a login lasts."),
    _k("ui", "public_url", (str,), None, "The page's public address, for links in reports."),
    # Named operators, approvals and deploy windows (noman.operators, noman.windows).
    _k(_O, "name", (str,), None, "The operator's name, recorded with each action (required)."),
    _k(_O, "token_sha256", (str, list), None, "sha256 hex of the operator's token (or a list)."),
    _k(_O, "token_env", (str,), None, "Env var holding the operator's token itself."),
    _k(_S, "approvals", (int,), 0, "Distinct operators who must approve a deploy; 0: none."),
    _k(_S, "approval_ttl", (str,), "24h", "How long a proposal waits for its approvals."),
    _k(_S, "approve_rollbacks", (bool,), False, "Rollbacks wait for approvals too."),
    _k(_S, "windows", (list,), [], "[[services.<name>.windows]]: this service's windows."),
    _k(_W, "kind", (str,), None, '"allow" or "deny" (required).'),
    _k(_W, "schedule", (str,), None, "When each window opens: cron, five fields (required)."),
    _k(_W, "duration", (str,), None, 'How long each stays open: "8h", "90m" (required).'),
    _k(_W, "timezone", (str,), "UTC", "IANA time zone the schedule is read in."),
)

_DEFAULTS: dict[tuple[str, str], Any] = {(k.table, k.name): k.default for k in SCHEMA}


def _default(table: str, name: str) -> Any:
    """A settings field's default as SCHEMA gives it: every default is written once."""
    value = _DEFAULTS[(table, name)]
    return tuple(value) if isinstance(value, list) else value


# Keys that come from the environment; the README documents these too.
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("NOMAN_CONFIG", "Path of the TOML file (default ./noman.toml); --config wins."),
    ("NOMAN_CONFIG_TOML", "The TOML itself (containers without mounts); wins over NOMAN_CONFIG."),
    ("NOMAN_BIND", "gunicorn's listen address (default 127.0.0.1:8000)."),
    ("NOMAN_WORKERS", "gunicorn worker processes (default 2)."),
    ("NOMAN_WORKER_CONNECTIONS", "Connections per gevent worker (default 1000)."),
    ("NOMAN_READ_TIMEOUT", "Seconds for one request's headers and body (default 10)."),
    ("NOMAN_RUNTIME_DIR", "Private state directory (default: a fresh 0700 one per instance)."),
    ("CONSUL_HTTP_ADDR", "Overrides consul.address (host:port or scheme://host:port)."),
    ("CONSUL_HTTP_TOKEN", "Overrides consul.token."),
    ("CONSUL_HTTP_TOKEN_FILE", "File holding the token (when CONSUL_HTTP_TOKEN is not set)."),
    ("CONSUL_HTTP_SSL", "true: use https for an address without a scheme."),
    ("CONSUL_HTTP_SSL_VERIFY", "false: do not verify Consul's certificate."),
    ("CONSUL_CACERT", "CA bundle for Consul's certificate."),
    ("CONSUL_CLIENT_CERT", "Client certificate for Consul (with CONSUL_CLIENT_KEY)."),
    ("CONSUL_CLIENT_KEY", "Key of CONSUL_CLIENT_CERT."),
    ("CONSUL_TLS_SERVER_NAME", "Name to verify Consul's certificate against (SNI)."),
    ("NOMAD_ADDR", "Overrides nomad.address."),
    ("NOMAD_TOKEN", "Overrides nomad.token."),
    ("NOMAD_NAMESPACE", "Overrides nomad.namespace."),
    ("NOMAD_REGION", "Overrides nomad.region."),
    ("NOMAD_CACERT", "CA bundle for Nomad's certificate."),
    ("NOMAD_SKIP_VERIFY", "true: do not verify Nomad's certificate."),
    ("NOMAD_CLIENT_CERT", "Client certificate for Nomad (with NOMAD_CLIENT_KEY)."),
    ("NOMAD_CLIENT_KEY", "Key of NOMAD_CLIENT_CERT."),
    ("NOMAD_TLS_SERVER_NAME", "Name to verify Nomad's certificate against (SNI)."),
    ("DOCKER_CONFIG", "Folder of the Docker config.json polling reads credentials from."),
    ("NOMAN_WORKER_TMP_DIR", "gunicorn's heartbeat and metrics files (default /dev/shm)."),
    ("NOMAN_GUNICORN_LOG_LEVEL", "Level of gunicorn's own error log (default info)."),
    ("NOMAN_DEV_BANNER", "Set by serve --dev: the banner printed once serving."),
    ("PROMETHEUS_MULTIPROC_DIR", "Workers' metrics files (made by the gunicorn config)."),
)


@dataclass(frozen=True)
class ConsulSettings:
    """How to reach Consul."""

    address: str = _default("consul", "address")
    datacenter: str | None = _default("consul", "datacenter")
    timeout: float = _default("consul", "timeout")
    token: str | None = field(default=_default("consul", "token"), repr=False)
    verify: bool | str = _default("consul", "verify")
    cas_retries: int = _default("consul", "cas_retries")
    # CONSUL_CLIENT_CERT/KEY and CONSUL_TLS_SERVER_NAME, as the Consul CLI reads them.
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None
    state_prefix: str = _default("consul", "state_prefix")
    session_ttl: float = _default("consul", "session_ttl")
    lock_delay: float = _default("consul", "lock_delay")


@dataclass(frozen=True)
class RolloutSettings:
    """How the hook and the reconciler carry a rollout to its end."""

    answer_within: float = _default("rollout", "answer_within")
    history_size: int = _default("rollout", "history_size")
    retry_backoff: float = _default("rollout", "retry_backoff")
    retry_max: float = _default("rollout", "retry_max")
    refused_retry: float = _default("rollout", "refused_retry")
    resync: float = _default("rollout", "resync")


@dataclass(frozen=True)
class NomadSettings:
    """How to reach Nomad, and how long to watch its deployments."""

    address: str = _default("nomad", "address")
    token: str | None = field(default=_default("nomad", "token"), repr=False)
    namespace: str | None = _default("nomad", "namespace")
    region: str | None = _default("nomad", "region")
    verify: bool | str = _default("nomad", "verify")
    timeout: float = _default("nomad", "timeout")
    register_retries: int = _default("nomad", "register_retries")
    watch_timeout: float = _default("nomad", "watch_timeout")
    poll_interval: float = _default("nomad", "poll_interval")
    # NOMAD_CLIENT_CERT/KEY and NOMAD_TLS_SERVER_NAME, as the Nomad CLI reads them.
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None


@dataclass(frozen=True)
class NotifyTarget:
    """One place outcomes are reported to."""

    kind: Literal["webhook", "slack"]
    url: str = field(repr=False)
    on: frozenset[str]
    hmac_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NotifySettings:
    """Where and how outcomes are reported."""

    targets: tuple[NotifyTarget, ...] = ()
    retries: int = _default("notify", "retries")
    backoff: float = _default("notify", "backoff")
    timeout: float = _default("notify", "timeout")
    # serve --dev: reports are logged, never sent (demo payloads carry real URLs).
    dry_run: bool = _default("notify", "dry_run")


@dataclass(frozen=True)
class PollSettings:
    """Polling registries for new tags: the leader's safety net for lost webhooks.

    ``intervals`` maps the name of each service that polls to its interval in seconds;
    a service not in it is never polled. ``docker_config`` is the ``config.json`` whose
    ``auths`` give registry credentials, as found at start (None: anonymous only).
    """

    interval: float = parse_duration(_default("poll", "interval"))
    docker_config: str | None = _default("poll", "docker_config")
    max_parallel: int = _default("poll", "max_parallel")
    insecure_registries: tuple[str, ...] = _default("poll", "insecure_registries")
    timeout: float = _default("poll", "timeout")
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
    session_hours: float = _default("ui", "session_hours")
    # Where operators reach the page: reports link to it.
    public_url: str | None = _default("ui", "public_url")

    @property
    def enabled(self) -> bool:
        """True when an admin token is configured."""
        return bool(self.token_hashes)


@dataclass(frozen=True)
class Settings:
    """Everything Noman needs, checked."""

    services: tuple[Service, ...]
    source: str = "<defaults>"
    consul: ConsulSettings = ConsulSettings()
    nomad: NomadSettings = NomadSettings()
    notify: NotifySettings = NotifySettings()
    rollout: RolloutSettings = RolloutSettings()
    store_backend: Literal["consul", "file"] = _default("store", "backend")
    store_path: str = _default("store", "path")
    max_body_bytes: int = _default("server", "max_body_bytes")
    log_level: str = _default("server", "log_level")
    auth_failures_per_minute: int = _default("server", "auth_failures_per_minute")
    proxy_hops: int = _default("server", "proxy_hops")
    # A second, internal listener for /metrics; None: /metrics on the main one.
    metrics_bind: str | None = _default("server", "metrics_bind")
    ui: UISettings = UISettings()
    poll: PollSettings = PollSettings()
    # Named operators, and what each service asks of them (services with no controls
    # are left out; ``controls_for`` answers for any service).
    operators: tuple[Operator, ...] = ()
    controls: tuple[tuple[str, Controls], ...] = ()
    tls_cert: str | None = _default("server", "tls_cert")
    tls_key: str | None = _default("server", "tls_key")
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


SEARCH_ORDER = (
    "the config is read from --config FILE, else $NOMAN_CONFIG_TOML (the TOML itself), "
    "else $NOMAN_CONFIG (a path), else ./noman.toml"
)


class _NotFound(ConfigError):
    """The config file does not exist (``load`` adds how it was looked for)."""


def config_path(
    explicit: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to read: --config, else NOMAN_CONFIG, else ./noman.toml."""
    env = os.environ if environ is None else environ
    return Path(explicit or env.get("NOMAN_CONFIG") or DEFAULT_CONFIG_PATH)


def load(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from --config, else $NOMAN_CONFIG_TOML, else $NOMAN_CONFIG, else ./noman.toml."""
    env = os.environ if environ is None else environ
    if explicit is None and env.get("NOMAN_CONFIG_TOML"):
        return parse_settings(env["NOMAN_CONFIG_TOML"], source="$NOMAN_CONFIG_TOML", environ=env)
    path = config_path(explicit, env)
    try:
        return load_settings(path, env)
    except _NotFound:
        given = "--config" if explicit else "$NOMAN_CONFIG" if env.get("NOMAN_CONFIG") else None
        raise ConfigError(
            f"{path.resolve()}: config file not found"
            + (f" (given by {given})" if given else "")
            + f"; {SEARCH_ORDER}"
        ) from None


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at ``path`` with the environment applied."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _NotFound(f"{path.resolve()}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    return parse_settings(text, source=str(path), environ=environ)


def parse_settings(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate TOML ``text`` (named ``source`` in messages) into ``Settings``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return _Parser(text, source, os.environ if environ is None else environ).settings(data)


def hash_secret(secret: str) -> bytes:
    """The sha256 digest a URL secret is stored and compared as."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


class _Parser:
    """Turns parsed TOML into Settings, remembering where each mistake is."""

    def __init__(self, text: str, source: str, environ: Mapping[str, str]) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.env = environ
        # Each service's poll value as written, checked once [poll] is known.
        self.poll_values: dict[str, str | bool] = {}

    # -- error reporting ---------------------------------------------------------------

    def _line_of(self, table: str, name: str | None, occurrence: int = 0) -> int | None:
        """Best-effort line number of ``name`` inside ``[table]`` (for messages).

        ``table`` is written as in TOML (``services."stut.dev"``) and matched
        key by key, whatever quotes and spaces the file uses; ``occurrence``
        picks one of several ``[[array]]`` tables.
        """
        wanted = _header_keys(f"[{table}]")
        starts = [i for i, line in enumerate(self.lines) if _header_keys(line) == wanted]
        if wanted is None or len(starts) <= occurrence:
            return None
        start = starts[occurrence]
        if name is None:
            return start + 1
        key = re.compile(r"^\s*" + re.escape(name) + r"\s*=")
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if key.match(self.lines[i]):
                return i + 1
        return start + 1

    def fail(self, table: str, name: str | None, problem: str, occurrence: int = 0) -> ConfigError:
        """A ConfigError naming file, line, table and key."""
        line = self._line_of(table, name, occurrence)
        where = f"{self.source}" + (f", line {line}" if line else "")
        what = f"[{table}]" + (f" {name}" if name else "")
        return ConfigError(f"{where}: {what}: {problem}")

    # -- generic checks ------------------------------------------------------------------

    def table(
        self, data: Mapping[str, Any], table: str, schema_table: str, occurrence: int = 0
    ) -> dict[str, Any]:
        """Type-check ``data`` against the schema; unknown keys and wrong types fail."""
        known = {k.name: k for k in SCHEMA if k.table == schema_table}
        unknown = [name for name in data if name not in known]
        if unknown:
            allowed = ", ".join(sorted(known))
            others = f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""
            raise self.fail(
                table, unknown[0], f"unknown key{others} (allowed: {allowed})", occurrence
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            key = known[name]
            # bool is an int in Python; a number key must not accept true.
            if isinstance(value, bool) and bool not in key.types:
                expected = f"expected {_type_names(key.types)}, got a boolean"
                raise self.fail(table, name, expected, occurrence)
            if not isinstance(value, key.types):
                raise self.fail(table, name, f"expected {_type_names(key.types)}", occurrence)
            values[name] = value
        for key in known.values():
            values.setdefault(key.name, key.default)
        return values

    def positive(self, table: str, name: str, value: float) -> float:
        if value <= 0:
            raise self.fail(table, name, "must be greater than 0")
        return value

    def missing(self, name: str) -> str:
        """Why the environment variable ``name`` gives no secret: unset, or set but empty."""
        if name not in self.env:
            return f"environment {name} is not set"
        return f"environment {name} is set but empty"

    def env_bool(self, name: str) -> bool | None:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return None
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"environment {name}={raw!r}: expected true or false")

    def token_file(self, name: str) -> str | None:
        """The token in the file the environment variable ``name`` points at."""
        path = self.env.get(name)
        if not path:
            return None
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"environment {name}={path!r}: cannot read the token: {exc}"
            ) from None
        if not token:
            raise ConfigError(f"environment {name}={path!r}: the file is empty")
        return token

    def client_cert(self, cert_name: str, key_name: str) -> tuple[str, str] | None:
        """The (certificate, key) pair for mutual TLS, both files readable, or None."""
        cert, key = self.env.get(cert_name) or None, self.env.get(key_name) or None
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            given, missing = (cert_name, key_name) if cert else (key_name, cert_name)
            raise ConfigError(f"environment {given} is set but {missing} is not: set both")
        for name, path in ((cert_name, cert), (key_name, key)):
            if not os.access(path, os.R_OK) or not Path(path).is_file():
                raise ConfigError(f"environment {name}={path!r}: not a readable file")
        return cert, key

    # -- sections --------------------------------------------------------------------------

    def settings(self, data: dict[str, Any]) -> Settings:
        allowed = {
            "server",
            "store",
            "consul",
            "nomad",
            "notify",
            "rollout",
            "services",
            "ui",
            "poll",
        }
        arrays = {"operators", "windows"}
        allowed |= arrays
        unknown = [f"[{_toml_key(name)}]" for name in data if name not in allowed]
        if unknown:
            raise ConfigError(
                f"{self.source}: unknown table {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        for name in allowed - {"services"} - arrays:
            if name in data and not isinstance(data[name], dict):
                raise ConfigError(f"{self.source}: {name} must be a table")
        server = self.table(data.get("server", {}), "server", "server")
        if server["max_body_bytes"] < 1024:
            raise self.fail("server", "max_body_bytes", "must be at least 1024")
        for name in ("auth_failures_per_minute", "proxy_hops"):
            if server[name] < 0:
                raise self.fail("server", name, "must not be negative")
        if server["log_level"] not in ("debug", "info", "warning", "error"):
            raise self.fail("server", "log_level", "must be debug, info, warning or error")
        if server["metrics_bind"] is not None and not _BIND_RE.match(server["metrics_bind"]):
            raise self.fail("server", "metrics_bind", "must be host:port, e.g. 127.0.0.1:9100")
        if (server["tls_cert"] is None) != (server["tls_key"] is None):
            raise self.fail("server", "tls_cert", "tls_cert and tls_key go together")
        store = self.table(data.get("store", {}), "store", "store")
        if store["backend"] not in ("consul", "file"):
            raise self.fail("store", "backend", 'must be "consul" or "file"')
        nomad = self.nomad(data.get("nomad", {}))
        services = self.services(data.get("services"), nomad)
        proofs = tuple(
            (service.name, proof)
            for service in services
            if (proof := self.hook_proofs(service.name, data["services"][service.name]))
            != NO_PROOFS
        )
        consul = self.consul(data.get("consul", {}))
        self.check_prefix(consul.state_prefix, services)
        poll = self.poll(data.get("poll", {}), services)
        ui = self.ui(data.get("ui", {}), services, bool(data.get("operators")))
        operators = self.operators(data.get("operators", []), services, ui)
        everywhere = self.windows("windows", data.get("windows", []))
        controls = tuple(
            (service.name, found)
            for service in services
            if (
                found := self.controls(
                    service, data["services"][service.name], operators, everywhere
                )
            )
            != NO_CONTROLS
        )
        return Settings(
            services=services,
            source=self.source,
            consul=consul,
            rollout=self.rollout(data.get("rollout", {})),
            nomad=nomad,
            notify=self.notify(data.get("notify", {})),
            store_backend=store["backend"],
            store_path=store["path"],
            max_body_bytes=server["max_body_bytes"],
            log_level=server["log_level"],
            auth_failures_per_minute=server["auth_failures_per_minute"],
            proxy_hops=server["proxy_hops"],
            metrics_bind=server["metrics_bind"],
            ui=ui,
            poll=poll,
            operators=operators,
            controls=controls,
            tls_cert=server["tls_cert"],
            tls_key=server["tls_key"],
            proofs=proofs,
        )

    def consul(self, data: Mapping[str, Any]) -> ConsulSettings:
        v = self.table(data, "consul", "consul")
        address = self.env.get("CONSUL_HTTP_ADDR") or v["address"]
        ssl = self.env_bool("CONSUL_HTTP_SSL")
        if "://" not in address:
            address = ("https://" if ssl else "http://") + address
        verify: bool | str = v["verify"]
        if self.env_bool("CONSUL_HTTP_SSL_VERIFY") is False:
            verify = False
        elif self.env.get("CONSUL_CACERT"):
            verify = self.env["CONSUL_CACERT"]
        if v["cas_retries"] < 1:
            raise self.fail("consul", "cas_retries", "must be at least 1")
        _check_url(address, lambda p: self.fail("consul", "address", p))
        return ConsulSettings(
            address=address.rstrip("/"),
            datacenter=v["datacenter"],
            timeout=float(self.positive("consul", "timeout", v["timeout"])),
            token=(
                self.env.get("CONSUL_HTTP_TOKEN")
                or self.token_file("CONSUL_HTTP_TOKEN_FILE")
                or v["token"]
            ),
            verify=verify,
            cas_retries=v["cas_retries"],
            cert=self.client_cert("CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"),
            tls_server_name=self.env.get("CONSUL_TLS_SERVER_NAME") or None,
            state_prefix=self.state_prefix(v["state_prefix"]),
            session_ttl=float(self.at_least("consul", "session_ttl", v["session_ttl"], 10)),
            lock_delay=float(self.at_least("consul", "lock_delay", v["lock_delay"], 0)),
        )

    def state_prefix(self, raw: str) -> str:
        prefix = raw if raw.endswith("/") else raw + "/"
        body = prefix[:-1]
        if not _KEY_RE.match(body) or any(part in (".", "..") for part in body.split("/")):
            raise self.fail(
                "consul", "state_prefix", "must be a Consul folder like \"noman/\" (no leading '/')"
            )
        return prefix

    def check_prefix(self, prefix: str, services: tuple[Service, ...]) -> None:
        """Noman's own keys must never appear in a folder a job template lists."""
        for service in services:
            folder = service.key.rpartition("/")[0]
            if folder and (prefix == folder + "/" or prefix.startswith(folder + "/")):
                raise self.fail(
                    "consul",
                    "state_prefix",
                    f"{prefix!r} is inside the folder of service {service.name!r}'s key "
                    f"{service.key!r}; a template listing that folder would see Noman's records",
                )
            if service.key.startswith(prefix):
                raise self.fail(
                    f"services.{_toml_key(service.name)}",
                    "key",
                    f"{service.key!r} is under consul.state_prefix {prefix!r}, Noman's own folder",
                )

    def at_least(self, table: str, name: str, value: float, minimum: float) -> float:
        if value < minimum:
            raise self.fail(table, name, f"must be at least {minimum:g}")
        return value

    def rollout(self, data: Mapping[str, Any]) -> RolloutSettings:
        v = self.table(data, "rollout", "rollout")
        if v["history_size"] < 1:
            raise self.fail("rollout", "history_size", "must be at least 1")
        return RolloutSettings(
            answer_within=float(self.at_least("rollout", "answer_within", v["answer_within"], 0)),
            history_size=v["history_size"],
            retry_backoff=float(self.positive("rollout", "retry_backoff", v["retry_backoff"])),
            retry_max=float(self.positive("rollout", "retry_max", v["retry_max"])),
            refused_retry=float(self.positive("rollout", "refused_retry", v["refused_retry"])),
            resync=float(self.positive("rollout", "resync", v["resync"])),
        )

    def nomad(self, data: Mapping[str, Any]) -> NomadSettings:
        v = self.table(data, "nomad", "nomad")
        address = self.env.get("NOMAD_ADDR") or v["address"]
        if "://" not in address:
            address = "http://" + address
        _check_url(address, lambda p: self.fail("nomad", "address", p))
        verify: bool | str = v["verify"]
        if self.env_bool("NOMAD_SKIP_VERIFY"):
            verify = False
        elif self.env.get("NOMAD_CACERT"):
            verify = self.env["NOMAD_CACERT"]
        if v["register_retries"] < 1:
            raise self.fail("nomad", "register_retries", "must be at least 1")
        return NomadSettings(
            address=address.rstrip("/"),
            token=self.env.get("NOMAD_TOKEN") or v["token"],
            namespace=self.env.get("NOMAD_NAMESPACE") or v["namespace"],
            region=self.env.get("NOMAD_REGION") or v["region"],
            verify=verify,
            timeout=float(self.positive("nomad", "timeout", v["timeout"])),
            register_retries=v["register_retries"],
            watch_timeout=float(self.positive("nomad", "watch_timeout", v["watch_timeout"])),
            poll_interval=float(self.positive("nomad", "poll_interval", v["poll_interval"])),
            cert=self.client_cert("NOMAD_CLIENT_CERT", "NOMAD_CLIENT_KEY"),
            tls_server_name=self.env.get("NOMAD_TLS_SERVER_NAME") or None,
        )

    def outcomes(
        self, table: str, name: str, value: list[Any], occurrence: int = 0
    ) -> frozenset[str]:
        if not all(item in ("success", "failure", "stage") for item in value):
            raise self.fail(
                table, name, 'may only contain "success", "failure" and "stage"', occurrence
            )
        return frozenset(value)

    def notify(self, data: Mapping[str, Any]) -> NotifySettings:
        data = dict(data)
        raw_targets = data.pop("targets", [])
        v = self.table(data, "notify", "notify")
        default_on = self.outcomes("notify", "on", v["on"])
        if not isinstance(raw_targets, list):
            raise self.fail("notify", "targets", "use [[notify.targets]] tables")
        targets = []
        for n, raw in enumerate(raw_targets):
            if not isinstance(raw, dict):
                raise self.fail("notify", "targets", "use [[notify.targets]] tables")

            # Each [[notify.targets]] table's own line, not the first one's.
            def fail(name: str, problem: str, n: int = n) -> ConfigError:
                return self.fail("notify.targets", name, problem, occurrence=n)

            t = self.table(raw, "notify.targets", "notify.targets", occurrence=n)
            if t["kind"] not in ("webhook", "slack"):
                raise fail("kind", 'must be "webhook" or "slack"')
            if not t["url"]:
                raise fail("url", "is required")
            _check_url(t["url"], lambda p: fail("url", p))
            hmac_key = None
            if t["secret_env"] is not None:
                secret = self.env.get(t["secret_env"], "")
                if not secret:
                    raise fail("secret_env", self.missing(t["secret_env"]))
                hmac_key = secret.encode("utf-8")
            on = default_on
            if t["on"] is not None:
                on = self.outcomes("notify.targets", "on", t["on"], occurrence=n)
            targets.append(NotifyTarget(t["kind"], t["url"], on, hmac_key))
        if v["retries"] < 1:
            raise self.fail("notify", "retries", "must be at least 1")
        if v["backoff"] < 0:
            raise self.fail("notify", "backoff", "must not be negative")
        return NotifySettings(
            targets=tuple(targets),
            retries=v["retries"],
            backoff=float(v["backoff"]),
            timeout=float(self.positive("notify", "timeout", v["timeout"])),
            dry_run=v["dry_run"],
        )

    def services(self, data: Any, nomad: NomadSettings) -> tuple[Service, ...]:
        if not isinstance(data, dict) or not data:
            raise ConfigError(
                f"{self.source}: no services configured; add a [services.<name>] table"
            )
        services = tuple(self.service(name, raw, nomad) for name, raw in data.items())
        seen: dict[bytes, str] = {}
        keys: dict[str, str] = {}
        for service in services:
            table = f"services.{_toml_key(service.name)}"
            for digest in service.secret_hashes:
                if digest in seen:
                    # Name the key the secret came from, as written.
                    raise self.fail(
                        table,
                        "secret_env" if "secret_env" in data[service.name] else "secret_sha256",
                        f"same secret as service {seen[digest]!r}; every service needs its own",
                    )
                seen[digest] = service.name
            if service.key in keys:
                raise self.fail(
                    table,
                    "key",
                    f"same key as service {keys[service.key]!r}",
                )
            keys[service.key] = service.name
        return services

    def service(self, name: str, raw: Any, nomad: NomadSettings) -> Service:
        table = f"services.{_toml_key(name)}"
        if not _NAME_RE.match(name):
            raise self.fail(table, None, "service names use letters, digits, '.', '_' and '-'")
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        raw = dict(raw)
        raw_nomad = raw.pop("nomad", None)
        raw_release = raw.pop("release_phase", None)
        raw_canary = raw.pop("canary", None)
        v = self.table(raw, table, _S)
        for required in ("repository", "key"):
            if not v[required]:
                raise self.fail(table, required, "is required")
        if not re.fullmatch(r"[^\s/]+(/[^\s/]+)*", v["repository"]):
            raise self.fail(table, "repository", "must look like namespace/name")
        key = v["key"]
        if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
            raise self.fail(
                table,
                "key",
                "must be a Consul key of [A-Za-z0-9._-] segments joined by single '/', "
                "with no leading or trailing '/' and no '.' or '..' segment",
            )
        try:
            pattern = re.compile(v["tag_pattern"], re.ASCII)
        except re.error as exc:
            raise self.fail(
                table, "tag_pattern", f"not a valid regular expression: {exc}"
            ) from None
        if v["strategy"] not in ("restart", "rolling"):
            raise self.fail(table, "strategy", 'must be "restart" or "rolling"')
        if v["poll"] is not None:
            self.poll_values[name] = v["poll"]
        target = self.nomad_target(f"{table}.nomad", raw_nomad, nomad)
        if v["strategy"] == "rolling" and target is None:
            raise self.fail(table, "strategy", f"rolling needs a [{table}.nomad] table")
        if v["strategy"] == "restart" and target is not None:
            raise self.fail(table, "strategy", f'[{table}.nomad] needs strategy = "rolling"')
        release_phase = self.release_phase(f"{table}.release_phase", raw_release)
        canary = self.canary(f"{table}.canary", raw_canary)
        for part, given in (("release_phase", release_phase), ("canary", canary)):
            if given is not None and v["strategy"] != "rolling":
                raise self.fail(f"{table}.{part}", None, 'needs strategy = "rolling"')
        return Service(
            name=name,
            repository=v["repository"],
            key=key,
            secret_hashes=self.secrets(table, v),
            tag_pattern=pattern,
            strategy=v["strategy"],
            nomad=target,
            github_keys=tuple(k.encode() for k in self.keys(table, "github_secret_env", v)),
            standard_keys=self.standard_keys(table, v),
            release_phase=release_phase,
            canary=canary,
        )

    def span(self, table: str, name: str, value: Any, occurrence: int = 0) -> float:
        """Seconds from a number of seconds or a duration text ("90s", "15m", "1h30m")."""
        try:
            seconds = (
                value if isinstance(value, int | float) else parse_duration(value.strip(), STAGE)
            )
        except ValueError:
            raise self.fail(
                table, name, 'must be a duration like "30s", "15m" or "1h"', occurrence
            ) from None
        if seconds <= 0:
            raise self.fail(table, name, "must be greater than 0", occurrence)
        return float(seconds)

    def release_phase(self, table: str, raw: Any) -> ReleasePhase | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        v = self.table(raw, table, _RP)
        if not v["job"]:
            raise self.fail(table, "job", "is required (a parameterized batch job)")
        return ReleasePhase(job=v["job"], timeout=self.span(table, "timeout", v["timeout"]))

    def canary(self, table: str, raw: Any) -> CanaryPlan | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        raw = dict(raw)
        raw_checks = raw.pop("checks", [])
        v = self.table(raw, table, _C)
        if v["promote"] not in ("auto", "manual"):
            raise self.fail(table, "promote", 'must be "auto" or "manual"')
        if not isinstance(raw_checks, list) or not all(isinstance(c, dict) for c in raw_checks):
            raise self.fail(table, "checks", f"use [[{table}.checks]] tables")
        checks = tuple(
            self.canary_check(f"{table}.checks", check, n) for n, check in enumerate(raw_checks)
        )
        return CanaryPlan(
            bake=self.span(table, "bake", v["bake"]),
            interval=self.span(table, "interval", v["interval"]),
            promote=v["promote"],
            checks=checks,
        )

    def canary_check(self, table: str, raw: dict[str, Any], n: int) -> CanaryCheck:
        v = self.table(raw, table, _CC, occurrence=n)

        def fail(name: str | None, problem: str) -> ConfigError:
            return self.fail(table, name, problem, occurrence=n)

        kind = v["kind"]
        if kind not in ("prometheus", "http"):
            raise fail("kind", 'must be "prometheus" or "http"')
        only = {
            "prometheus": ("url", "query", "max", "min", "on_no_data"),
            "http": ("path", "port", "expect"),
        }
        for other, names in only.items():
            for name in names:
                if other != kind and name in raw:
                    raise fail(name, f'is only for kind = "{other}"')
        timeout = self.span(table, "timeout", v["timeout"], n)
        if kind == "prometheus":
            for required in ("url", "query"):
                if not v[required]:
                    raise fail(required, "is required")
            _check_url(v["url"], lambda p: fail("url", p))
            if v["max"] is None and v["min"] is None:
                raise fail("max", "set max, min or both")
            if v["on_no_data"] not in ("fail", "pass"):
                raise fail("on_no_data", 'must be "fail" or "pass"')
            return CanaryCheck(
                kind="prometheus",
                name=v["name"] or " ".join(v["query"].split())[:60],
                url=v["url"].rstrip("/"),
                query=v["query"],
                max=None if v["max"] is None else float(v["max"]),
                min=None if v["min"] is None else float(v["min"]),
                on_no_data=v["on_no_data"],
                timeout=timeout,
            )
        if not v["path"].startswith("/"):
            raise fail("path", 'must start with "/"')
        expect = v["expect"]
        statuses = [] if expect is None else [expect] if isinstance(expect, int) else expect
        if not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise fail("expect", "must be an HTTP status or a list of them (100-599)")
        return CanaryCheck(
            kind="http",
            name=v["name"] or f"GET {v['path']}",
            path=v["path"],
            port=v["port"],
            expect=tuple(statuses),
            timeout=timeout,
        )

    def hook_proofs(self, name: str, raw: dict[str, Any]) -> HookProofs:
        """The service's proofs besides its URL secret (``raw`` was checked by ``service``)."""
        table = f"services.{_toml_key(name)}"
        v = self.table({k: value for k, value in raw.items() if k not in _SUBTABLES}, table, _S)
        header = v["auth_header"]
        if not _HEADER_NAME_RE.match(header):
            raise self.fail(table, "auth_header", "must be an HTTP header name")
        hashes: tuple[bytes, ...] = ()
        if v["auth_header_sha256"] is not None or v["auth_header_env"] is not None:
            hashes = self.secrets(table, v, kind="auth_header", noun="header value")
        elif "auth_header" in raw:
            raise self.fail(table, "auth_header", "needs auth_header_sha256 or auth_header_env")
        return HookProofs(
            auth_header=header,
            auth_header_hashes=hashes,
            gitea_keys=tuple(k.encode() for k in self.keys(table, "gitea_secret_env", v)),
            artifactory_keys=tuple(
                k.encode() for k in self.keys(table, "artifactory_secret_env", v)
            ),
        )

    def keys(self, table: str, name: str, v: Mapping[str, Any]) -> tuple[str, ...]:
        """The whitespace-separated keys in the environment variable ``v[name]`` names."""
        variable = v[name]
        if variable is None:
            return ()
        if not _ENV_NAME_RE.match(variable):
            raise self.fail(table, name, "must be an environment variable name")
        keys = tuple(self.env.get(variable, "").split())
        if not keys:
            raise self.fail(table, name, self.missing(variable))
        if any(len(key) < MIN_SECRET_CHARS for key in keys):
            raise self.fail(table, name, f"environment {variable} holds a key that is too short")
        return keys

    def standard_keys(self, table: str, v: Mapping[str, Any]) -> tuple[str, ...]:
        keys = self.keys(table, "standard_secret_env", v)
        for key in keys:
            try:
                raw = key.removeprefix("whsec_")
                decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
            except ValueError:
                decoded = b""
            if len(decoded) < 16:
                raise self.fail(
                    table, "standard_secret_env", "keys must be whsec_ + base64 of >= 16 bytes"
                )
        return keys

    def secrets(
        self,
        table: str,
        v: Mapping[str, Any],
        kind: str = "secret",
        command: str = "noman secret new",
        noun: str | None = None,
        occurrence: int = 0,
    ) -> tuple[bytes, ...]:
        """The accepted digests of ``<kind>_sha256`` or ``<kind>_env``; never empty.

        An empty secret is not "open": it is refused like any other mistake.
        ``noun`` names the value in messages (default: ``kind``); ``occurrence`` picks
        one of several ``[[array]]`` tables for messages.
        """
        sha_key, env_key = f"{kind}_sha256", f"{kind}_env"
        noun = noun or kind
        if (v[sha_key] is None) == (v[env_key] is None):
            raise self.fail(table, sha_key, f"set exactly one of {sha_key}, {env_key}", occurrence)
        if v[env_key] is not None:
            name = v[env_key]
            if not _ENV_NAME_RE.match(name):
                raise self.fail(table, env_key, "must be an environment variable name", occurrence)
            secret = self.env.get(name, "")
            if len(secret) < MIN_SECRET_CHARS:
                problem = (
                    self.missing(name)
                    if not secret
                    else f"environment {name} holds a {noun} that is too short"
                )
                raise self.fail(
                    table,
                    env_key,
                    f"{problem} (need at least {MIN_SECRET_CHARS} "
                    f"random characters; `{command}` makes one)",
                    occurrence,
                )
            return (hash_secret(secret),)
        raw = v[sha_key]
        hashes = [raw] if isinstance(raw, str) else raw
        if not hashes:
            raise self.fail(table, sha_key, "must not be empty", occurrence)
        digests = []
        for item in hashes:
            if not isinstance(item, str) or not _HEX64_RE.match(item):
                raise self.fail(table, sha_key, "must be 64 hex characters (a sha256)", occurrence)
            if item.lower() == EMPTY_SHA256:
                raise self.fail(table, sha_key, f"is the hash of an empty {noun}", occurrence)
            digests.append(bytes.fromhex(item))
        return tuple(digests)

    def ui(
        self, data: Mapping[str, Any], services: tuple[Service, ...], operators: bool = False
    ) -> UISettings:
        """The status page's settings; a token of its own, never a service's secret.

        With ``[[operators]]`` the page is on for them even without an admin token.
        """
        v = self.table(data, "ui", "ui")
        hashes: tuple[bytes, ...] = ()
        if v["token_sha256"] is None and v["token_env"] is None:
            if not operators:
                if data:
                    raise self.fail("ui", None, "set token_sha256 or token_env to enable the page")
                return UISettings()
        else:
            hashes = self.secrets("ui", v, kind="token", command="noman secret new --ui")
        hooks = {digest for service in services for digest in service.secret_hashes}
        if any(digest in hooks for digest in hashes):
            name = "token_env" if v["token_env"] else "token_sha256"
            raise self.fail("ui", name, "is a service's hook secret; use a separate token")
        public_url = v["public_url"]
        if public_url is not None:
            _check_url(public_url, lambda p: self.fail("ui", "public_url", p))
            public_url = public_url.rstrip("/")
        key = None
        if v["session_key_env"] is not None:
            name = v["session_key_env"]
            if not _ENV_NAME_RE.match(name):
                raise self.fail("ui", "session_key_env", "must be an environment variable name")
            value = self.env.get(name, "")
            if len(value) < MIN_SESSION_KEY_CHARS:
                raise self.fail(
                    "ui",
                    "session_key_env",
                    f"environment {name} must hold at least {MIN_SESSION_KEY_CHARS} "
                    "random characters",
                )
            key = value.encode("utf-8")
        hours = float(self.positive("ui", "session_hours", v["session_hours"]))
        return UISettings(
            token_hashes=hashes, session_key=key, session_hours=hours, public_url=public_url
        )

    def operators(
        self, raw: Any, services: tuple[Service, ...], ui: UISettings
    ) -> tuple[Operator, ...]:
        """``[[operators]]``: unique names, and tokens that are nobody else's credential."""
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise self.fail(_O, None, "use [[operators]] tables")
        taken = {d: "a service's hook secret" for s in services for d in s.secret_hashes}
        taken.update({d: "the [ui] admin token" for d in ui.token_hashes})
        found: list[Operator] = []
        for n, item in enumerate(raw):
            v = self.table(item, _O, _O, occurrence=n)
            name = v["name"]
            if not name:
                raise self.fail(_O, "name", "is required", n)
            if not _NAME_RE.match(name):
                raise self.fail(_O, "name", "use letters, digits, '.', '_' and '-'", n)
            if any(o.name == name for o in found):
                raise self.fail(_O, "name", f"{name!r} is configured twice", n)
            hashes = self.secrets(
                _O, v, kind="token", command=f"noman secret new --operator {name}", occurrence=n
            )
            for digest in hashes:
                if digest in taken:
                    key = "token_env" if v["token_env"] else "token_sha256"
                    raise self.fail(_O, key, f"is {taken[digest]}; use a token of its own", n)
                taken[digest] = f"operator {name!r}'s token"
            found.append(Operator(name, hashes))
        return tuple(found)

    def windows(self, table: str, raw: Any) -> tuple[Window, ...]:
        """``[[windows]]`` or ``[[services.<name>.windows]]`` tables (``table`` names them)."""
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise self.fail(table, None, f"use [[{table}]] tables")
        found = []
        for n, item in enumerate(raw):
            v = self.table(item, table, _W, occurrence=n)
            for required in ("kind", "schedule", "duration"):
                if v[required] is None:
                    raise self.fail(table, required, "is required", n)
            if v["kind"] not in ("allow", "deny"):
                raise self.fail(table, "kind", 'must be "allow" or "deny"', n)
            try:
                cron = parse_cron(v["schedule"])
            except ValueError as exc:
                raise self.fail(table, "schedule", str(exc), n) from None
            try:
                duration = parse_duration(v["duration"])
            except ValueError as exc:
                raise self.fail(table, "duration", str(exc), n) from None
            try:
                parse_timezone(v["timezone"])
            except ValueError as exc:
                raise self.fail(table, "timezone", str(exc), n) from None
            found.append(Window(v["kind"], cron, duration, v["timezone"]))
        return tuple(found)

    def controls(
        self,
        service: Service,
        raw: dict[str, Any],
        operators: tuple[Operator, ...],
        everywhere: tuple[Window, ...],
    ) -> Controls:
        """What ``service`` asks before a deploy lands (``raw`` was checked by ``service``)."""
        table = f"services.{_toml_key(service.name)}"
        v = self.table({k: value for k, value in raw.items() if k not in _SUBTABLES}, table, _S)
        approvals = v["approvals"]
        if approvals < 0:
            raise self.fail(table, "approvals", "must not be negative")
        if approvals > len(operators):
            raise self.fail(
                table,
                "approvals",
                f"needs {approvals} distinct operators; [[operators]] names {len(operators)}",
            )
        try:
            ttl = parse_duration(v["approval_ttl"])
        except ValueError as exc:
            raise self.fail(table, "approval_ttl", str(exc)) from None
        own = self.windows(f"{table}.windows", v["windows"])
        return Controls(
            approvals=approvals,
            approval_ttl=ttl,
            approve_rollbacks=v["approve_rollbacks"],
            windows=own + everywhere,
        )

    def duration(self, table: str, name: str, text: str) -> float:
        """Seconds in the duration ``text`` of ``[table] name``: at least one second."""
        try:
            seconds = parse_duration(text)
        except ValueError:
            seconds = 0.0
        if seconds < MIN_POLL_INTERVAL:
            raise self.fail(
                table, name, 'must be a duration like "30s", "5m" or "1h30m" (at least "1s")'
            )
        return seconds

    def poll(self, data: Mapping[str, Any], services: tuple[Service, ...]) -> PollSettings:
        """[poll] and every service's ``poll``: which services poll, how often, with what."""
        v = self.table(data, "poll", "poll")
        interval = self.duration("poll", "interval", v["interval"])
        if v["max_parallel"] < 1:
            raise self.fail("poll", "max_parallel", "must be at least 1")
        insecure = v["insecure_registries"]
        if not all(isinstance(h, str) and is_registry_host(h) for h in insecure):
            raise self.fail(
                "poll", "insecure_registries", 'must be a list of "host" or "host:port" names'
            )
        docker_config = self.docker_config(v["docker_config"])
        intervals: dict[str, float] = {}
        for service in services:
            value = self.poll_values.get(service.name)
            if value is None or value is False:
                continue
            table = f"services.{_toml_key(service.name)}"
            if value is True:
                intervals[service.name] = interval
            else:
                intervals[service.name] = self.duration(table, "poll", value)
            if order_kind(service.tag_pattern) is None:
                raise self.fail(
                    table,
                    "poll",
                    f"service {service.name!r} cannot poll: its tag_pattern "
                    f"{service.tag_pattern.pattern} gives tags no order, so polling cannot "
                    "tell the newest (capture a number or a version in group 1)",
                )
            try:
                parse_reference(service.repository, insecure)
            except InvalidReference as exc:
                raise self.fail(table, "repository", f"cannot be polled: {exc}") from None
        return PollSettings(
            interval=interval,
            docker_config=docker_config,
            max_parallel=v["max_parallel"],
            insecure_registries=tuple(h.lower() for h in insecure),
            timeout=float(self.positive("poll", "timeout", v["timeout"])),
            intervals=intervals,
        )

    def docker_config(self, path: str | None) -> str | None:
        """The Docker config.json to read credentials from, checked readable when named."""
        if path is None:
            found = default_docker_config(self.env)
            return str(found) if found is not None else None
        try:
            read_docker_config(path)
        except ValueError as exc:
            raise self.fail("poll", "docker_config", str(exc)) from None
        return path

    def nomad_target(self, table: str, raw: Any, nomad: NomadSettings) -> NomadTarget | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        v = self.table(raw, table, _N)
        jobs = v["jobs"]
        if v["job"] and jobs:
            raise self.fail(table, "jobs", "set job or jobs, not both")
        if jobs and (
            not all(isinstance(j, str) and j for j in jobs) or len(set(jobs)) != len(jobs)
        ):
            raise self.fail(table, "jobs", "must be a list of distinct job IDs")
        if not v["job"] and not jobs:
            raise self.fail(table, "job", "is required (or jobs, for several)")
        if v["update"] not in ("meta", "image"):
            raise self.fail(table, "update", 'must be "meta" or "image"')
        if not _ENV_NAME_RE.match(v["meta_key"]):
            raise self.fail(table, "meta_key", "must be a valid meta key (letters, digits, _)")
        tasks = v["tasks"]
        if not all(isinstance(t, str) and t for t in tasks):
            raise self.fail(table, "tasks", "must be a list of task names")
        if v["update"] == "image" and not tasks:
            raise self.fail(table, "tasks", 'update = "image" needs the task names to update')
        return NomadTarget(
            job=v["job"] or jobs[0],
            jobs=tuple(jobs),
            namespace=v["namespace"] or nomad.namespace,
            region=v["region"] or nomad.region,
            update=v["update"],
            meta_key=v["meta_key"],
            tasks=tuple(tasks),
        )


def _toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, else quoted (``"stut.dev"``)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


_KEY_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _header_keys(line: str) -> tuple[str, ...] | None:
    """The keys of a ``[table]`` or ``[[array]]`` header line, unquoted; None if not one."""
    match = re.match(r"^\s*\[\[?(.*?)\]\]?\s*(#.*)?$", line)
    if match is None:
        return None
    text, keys, pos = match.group(1), [], 0
    while True:
        part = _KEY_PART.match(text, pos)
        if part is None:
            return None
        bare, basic, literal = part.groups()
        if basic is not None:
            try:
                basic = json.loads(f'"{basic}"')
            except ValueError:
                return None
        keys.append(bare if bare is not None else basic if basic is not None else literal)
        pos = part.end()
        if pos == len(text):
            return tuple(keys)
        if text[pos] != ".":
            return None
        pos += 1


def _check_url(url: str, fail: Any) -> None:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise fail("must be an http:// or https:// URL")


def _type_names(types: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
    }
    return " or ".join(names[t] for t in types)
