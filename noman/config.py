"""Noman's configuration: a TOML file plus environment, validated once at start.

Each TOML table is declared once below as a frozen ``msgspec.Struct``: every key is
a field whose annotation gives its type and constraints (``Meta(ge=..., pattern=...)``,
``Literal``), whose default is the key's default, and whose ``description`` is its
help text. A field without a description is not a key: the loader fills it in (the
client certificate and TLS server name the environment gives). ``SCHEMA`` lists the
declared keys, and tests hold the README's settings table (names and defaults) to it.

Loading is explicit code: ``msgspec.convert`` checks each table against its
declaration, ``_Parser.read`` turns a failure into a message naming the file, line,
table and key, and the checks that span keys or reach outside the file (secrets in
the environment, a regular expression's compilation, a key under Noman's own
folder) follow in the same order the file is read. Connection settings follow
Consul's and Nomad's own CLIs: the environment variables they use
(``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, ...) override the file, so one config file
works across environments.

Why msgspec and not pydantic v2: msgspec is already a dependency (the records in
Consul); importing it and declaring sixteen tables took ~31 ms against ~117 ms for
pydantic 2.14 (best of six runs), and what both libraries say on a mistake is reworded
here anyway, from the declaration, so that every message keeps Noman's shape.
"""

# No `from __future__ import annotations`: msgspec would compile every declared annotation
# from its text when a table is first read (~50 ms on each start).

import base64
import hashlib
import json
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgspec
from msgspec import Meta

from noman.durations import STAGE, parse_duration
from noman.errors import ConfigError, UnknownService
from noman.imageref import InvalidReference, is_registry_host, parse_reference
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
from noman.windows import Window, parse_cron, parse_timezone

DEFAULT_CONFIG_PATH = "noman.toml"
# 22 url-safe characters carry 132 bits; anything shorter is guessable.
MIN_SECRET_CHARS = 22
MIN_SESSION_KEY_CHARS = 32
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DOCKERHUB_CALLBACK_HOSTS = ("registry.hub.docker.com", "hub.docker.com")

# Consul's own rules plus what newer versions refuse (see specs/consul-kv.md): segments of
# [A-Za-z0-9._-] joined by single '/', none of them '.' or '..'.
_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+"
_KEY_PATTERN = rf"\A{_SEGMENT}(?:/{_SEGMENT})*\Z"
_KEY_RE = re.compile(_KEY_PATTERN)
_NAME_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z"
_NAME_RE = re.compile(_NAME_PATTERN)
_ENV_NAME_PATTERN = r"\A[A-Za-z_][A-Za-z0-9_]*\Z"
_ENV_NAME_RE = re.compile(_ENV_NAME_PATTERN)
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# RFC 9110's token: the characters an HTTP field name may use.
_HEADER_NAME_PATTERN = r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z"
_BIND_PATTERN = r"\A(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}\Z"
_URL_PATTERN = r"\Ahttps?://[^/\s]+(/\S*)?\Z"
_URL_PROBLEM = "must be an http:// or https:// URL"
_Url = Annotated[str, Meta(pattern=_URL_PATTERN)]
MIN_POLL_INTERVAL = 1.0

_S = "services.<name>"
_O = "operators"
_W = "windows"
#: A service's own sub-tables, read apart from its keys.
_SUBTABLES = frozenset({"nomad", "release_phase", "canary"})


def _key(help: str, problem: str | None = None, **constraints: Any) -> Meta:
    """A key's help text and constraints; ``problem`` words any failed constraint."""
    return Meta(description=help, extra={"problem": problem} if problem else None, **constraints)


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One TOML table: its fields with a description are its keys."""


# -- the declaration: one field per key ----------------------------------------------------


class ServerTable(_Table, frozen=True, kw_only=True):
    """[server]: the HTTP side (Settings keeps these flat: ``settings.max_body_bytes``)."""

    max_body_bytes: Annotated[int, _key("Largest accepted request body, in bytes.", ge=1024)] = (
        65536
    )
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        _key("debug, info, warning or error.", "must be debug, info, warning or error"),
    ] = "info"
    auth_failures_per_minute: Annotated[int, _key("Failed secrets per address; 0: off.", ge=0)] = 0
    proxy_hops: Annotated[int, _key("Proxies whose X-Forwarded-For to trust.", ge=0)] = 0
    metrics_bind: Annotated[
        Annotated[str, Meta(pattern=_BIND_PATTERN)] | None,
        _key(
            "host:port of an internal /metrics listener.", "must be host:port, e.g. 127.0.0.1:9100"
        ),
    ] = None
    tls_cert: Annotated[str | None, _key("PEM certificate chain: serve HTTPS (TLS 1.2+).")] = None
    tls_key: Annotated[str | None, _key("PEM private key of tls_cert.")] = None


class StoreTable(_Table, frozen=True, kw_only=True):
    """[store]: where the records live (``settings.store_backend``, ``store_path``)."""

    backend: Annotated[
        Literal["consul", "file"], _key('"consul", or "file" for a local JSON file.')
    ] = "consul"
    path: Annotated[str, _key("The JSON file of the file backend.")] = ".noman/store.json"


class ConsulSettings(_Table, frozen=True, kw_only=True):
    """How to reach Consul: [consul], with the Consul CLI's environment applied."""

    address: Annotated[str, _key("Consul's HTTP address.")] = "http://127.0.0.1:8500"
    datacenter: Annotated[str | None, _key("Datacenter for every KV call.")] = None
    timeout: Annotated[float, _key("Seconds allowed for each Consul call.", gt=0)] = 5
    token: Annotated[str | None, _key("ACL token; prefer CONSUL_HTTP_TOKEN.")] = None
    verify: Annotated[bool | str, _key("Verify TLS: true, false or a CA bundle path.")] = True
    cas_retries: Annotated[int, _key("Check-and-set attempts before 503.", ge=1)] = 8
    state_prefix: Annotated[str, _key("Where Noman keeps its records and lock.")] = "noman/"
    session_ttl: Annotated[float, _key("Seconds the reconciler's leader lock lives.", ge=10)] = 15
    lock_delay: Annotated[float, _key("Seconds a lost leader lock stays blocked.", ge=0)] = 1
    # CONSUL_CLIENT_CERT/KEY and CONSUL_TLS_SERVER_NAME, as the Consul CLI reads them.
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None

    def __repr__(self) -> str:
        return _repr_without(self, "token")


class NomadSettings(_Table, frozen=True, kw_only=True):
    """How to reach Nomad, and how long to watch its deployments: [nomad] and NOMAD_*."""

    address: Annotated[str, _key("Nomad's HTTP address.")] = "http://127.0.0.1:4646"
    token: Annotated[str | None, _key("ACL token; prefer NOMAD_TOKEN.")] = None
    namespace: Annotated[str | None, _key("Default namespace of rolling jobs.")] = None
    region: Annotated[str | None, _key("Default region of rolling jobs.")] = None
    verify: Annotated[bool | str, _key("Verify TLS: true, false or a CA bundle path.")] = True
    timeout: Annotated[float, _key("Seconds allowed for each Nomad call.", gt=0)] = 5
    register_retries: Annotated[int, _key("Job registrations tried on index conflicts.", ge=1)] = 5
    watch_timeout: Annotated[float, _key("Seconds a rollout may take: timed_out.", gt=0)] = 900
    poll_interval: Annotated[float, _key("Poll interval if blocking reads are ignored.", gt=0)] = 2
    # NOMAD_CLIENT_CERT/KEY and NOMAD_TLS_SERVER_NAME, as the Nomad CLI reads them.
    cert: tuple[str, str] | None = None
    tls_server_name: str | None = None

    def __repr__(self) -> str:
        return _repr_without(self, "token")


class RolloutSettings(_Table, frozen=True, kw_only=True):
    """How the hook and the reconciler carry a rollout to its end: [rollout]."""

    answer_within: Annotated[float, _key("Seconds the hook waits for Nomad.", ge=0)] = 5
    history_size: Annotated[int, _key("Deploys kept in each service's history.", ge=1)] = 50
    retry_backoff: Annotated[float, _key("Seconds before the first retry; doubles.", gt=0)] = 1
    retry_max: Annotated[float, _key("Longest wait between two retries.", gt=0)] = 60
    refused_retry: Annotated[float, _key("Wait after Nomad refused Noman's token.", gt=0)] = 300
    resync: Annotated[float, _key("Seconds between the leader's full passes.", gt=0)] = 300


_OUTCOMES = 'may only contain "success", "failure" and "stage"'
Outcomes = tuple[Literal["success", "failure", "stage"], ...]


class NotifyTable(_Table, frozen=True, kw_only=True):
    """[notify] (its [[notify.targets]] are read apart)."""

    on: Annotated[Outcomes, _key('Reports: "success", "failure", "stage".', _OUTCOMES)] = (
        "failure",
    )
    retries: Annotated[int, _key("Attempts per notification.", ge=1)] = 3
    backoff: Annotated[float, _key("Seconds before the first retry; doubles.", ge=0)] = 1
    timeout: Annotated[float, _key("Seconds allowed for each notification.", gt=0)] = 5
    dry_run: Annotated[bool, _key("Log reports instead of sending them.")] = False


class NotifyTargetTable(_Table, frozen=True, kw_only=True):
    """[[notify.targets]]: one place reports go."""

    kind: Annotated[Literal["webhook", "slack"], _key('"webhook" (generic JSON) or "slack".')] = (
        "webhook"
    )
    url: Annotated[
        str, _key("Where to POST (required).", _URL_PROBLEM, min_length=1, pattern=_URL_PATTERN)
    ]
    secret_env: Annotated[str | None, _key("Env var with the HMAC-SHA256 key (webhook).")] = None
    on: Annotated[Outcomes | None, _key("Overrides notify.on for this target.", _OUTCOMES)] = None


class ServiceTable(_Table, frozen=True, kw_only=True):
    """[services.<name>]: one service's keys (its sub-tables are read apart)."""

    repository: Annotated[
        str,
        _key(
            "The only repository accepted (required).",
            "must look like namespace/name",
            min_length=1,
            pattern=r"\A[^\s/]+(/[^\s/]+)*\Z",
        ),
    ]
    key: Annotated[
        str,
        _key(
            "The Consul key that receives the tag (required).",
            "must be a Consul key of [A-Za-z0-9._-] segments joined by single '/', "
            "with no leading or trailing '/' and no '.' or '..' segment",
            min_length=1,
            pattern=_KEY_PATTERN,
        ),
    ]
    secret_sha256: Annotated[
        str | list[Any] | None, _key("sha256 hex of the URL secret (or a list).")
    ] = None
    secret_env: Annotated[str | None, _key("Env var holding the URL secret itself.")] = None
    github_secret_env: Annotated[str | None, _key("Env var with the GitHub webhook secret(s).")] = (
        None
    )
    standard_secret_env: Annotated[str | None, _key("Env var with the whsec_ key(s).")] = None
    gitea_secret_env: Annotated[str | None, _key("Env var with the Gitea/Forgejo secret(s).")] = (
        None
    )
    artifactory_secret_env: Annotated[
        str | None, _key("Env var with the Artifactory token(s).")
    ] = None
    auth_header: Annotated[
        str,
        _key(
            "Header an unsigned sender must carry.",
            "must be an HTTP header name",
            pattern=_HEADER_NAME_PATTERN,
        ),
    ] = "Authorization"
    auth_header_sha256: Annotated[
        str | list[Any] | None, _key("sha256 hex of its whole value (or a list).")
    ] = None
    auth_header_env: Annotated[str | None, _key("Env var holding its whole value.")] = None
    tag_pattern: Annotated[str, _key("Accepted tags; group 1 orders them.")] = DEFAULT_TAG_PATTERN
    strategy: Annotated[
        Literal["restart", "rolling"], _key('"restart" (Consul only) or "rolling".')
    ] = "restart"
    poll: Annotated[str | bool | None, _key('Poll the registry: a duration ("5m") or true.')] = None
    approvals: Annotated[
        int, _key("Distinct operators who must approve a deploy; 0: none.", ge=0)
    ] = 0
    approval_ttl: Annotated[str, _key("How long a proposal waits for its approvals.")] = "24h"
    approve_rollbacks: Annotated[bool, _key("Rollbacks wait for approvals too.")] = False
    windows: Annotated[
        tuple[Any, ...], _key("[[services.<name>.windows]]: this service's windows.")
    ] = ()


class NomadTargetTable(_Table, frozen=True, kw_only=True):
    """[services.<name>.nomad]: the job(s) a rolling service updates."""

    job: Annotated[str | None, _key("Nomad job ID (required for rolling).")] = None
    jobs: Annotated[
        tuple[str, ...],
        _key(
            "Several job IDs, rolled in this order (instead of job).",
            "must be a list of distinct job IDs",
        ),
    ] = ()
    namespace: Annotated[str | None, _key("Namespace of the job (default: [nomad]).")] = None
    region: Annotated[str | None, _key("Region of the job (default: [nomad]).")] = None
    update: Annotated[
        Literal["meta", "image"], _key('"meta" (job Meta) or "image" (task images).')
    ] = "meta"
    meta_key: Annotated[
        str,
        _key(
            "The job Meta key set by update = meta.",
            "must be a valid meta key (letters, digits, _)",
            pattern=_ENV_NAME_PATTERN,
        ),
    ] = "NOMAN_IMAGE_TAG"
    tasks: Annotated[
        tuple[str, ...],
        _key("Tasks whose image to rewrite (update = image).", "must be a list of task names"),
    ] = ()


_SPAN_PROBLEM = 'must be a duration like "30s", "15m" or "1h"'


class ReleasePhaseTable(_Table, frozen=True, kw_only=True):
    """[services.<name>.release_phase]: a batch job dispatched before the rollout."""

    job: Annotated[
        str,
        _key(
            "Parameterized batch job dispatched first (required).",
            "is required (a parameterized batch job)",
            min_length=1,
        ),
    ]
    timeout: Annotated[str | float, _key("How long it may run before the rollout fails.")] = "15m"


class CanaryTable(_Table, frozen=True, kw_only=True):
    """[services.<name>.canary]: how canaries are analysed (its checks are read apart)."""

    bake: Annotated[str | float, _key("How long healthy canaries are analysed.")] = "60s"
    interval: Annotated[str | float, _key("Time between two rounds of checks.")] = "10s"
    promote: Annotated[
        Literal["auto", "manual"], _key('"auto" after the analysis, or "manual".')
    ] = "auto"


class CanaryCheckTable(_Table, frozen=True, kw_only=True):
    """[[services.<name>.canary.checks]]: one check of a canary analysis."""

    kind: Annotated[Literal["prometheus", "http"], _key('"prometheus" or "http" (required).')]
    name: Annotated[str | None, _key("Shown in status and reports (default: query or path).")] = (
        None
    )
    url: Annotated[
        _Url | None, _key("prometheus: Prometheus's base URL (required).", _URL_PROBLEM)
    ] = None
    query: Annotated[
        str | None, _key("prometheus: PromQL; {service} {tag} {job} {deployment}.")
    ] = None
    max: Annotated[float | None, _key("prometheus: highest value that passes.")] = None
    min: Annotated[float | None, _key("prometheus: lowest value that passes.")] = None
    on_no_data: Annotated[
        Literal["fail", "pass"], _key('prometheus: "fail" or "pass" on an empty result.')
    ] = "fail"
    path: Annotated[
        str,
        _key("http: the path GET asks each canary for.", 'must start with "/"', pattern=r"\A/"),
    ] = "/"
    port: Annotated[str | None, _key("http: the allocation's port label (default: its first).")] = (
        None
    )
    expect: Annotated[
        int | list[Any] | None, _key("http: accepted status(es) (default: any 2xx).")
    ] = None
    timeout: Annotated[str | float, _key("Time allowed for one query or GET.")] = "5s"


class PollTable(_Table, frozen=True, kw_only=True):
    """[poll]: polling registries for new tags."""

    interval: Annotated[str, _key("Poll interval of services that say poll = true.")] = "5m"
    docker_config: Annotated[str | None, _key("Docker config.json with registry credentials.")] = (
        None
    )
    max_parallel: Annotated[int, _key("Polls in flight at once per registry host.", ge=1)] = 2
    insecure_registries: Annotated[
        tuple[str, ...],
        _key(
            "host[:port]s polled over plain HTTP.",
            'must be a list of "host" or "host:port" names',
        ),
    ] = ()
    timeout: Annotated[float, _key("Seconds for each registry request.", gt=0)] = 10


class UITable(_Table, frozen=True, kw_only=True):
    """[ui]: the status page."""

    token_sha256: Annotated[
        str | list[Any] | None, _key("sha256 hex of the admin token (or a list).")
    ] = None
    token_env: Annotated[str | None, _key("Env var holding the admin token itself.")] = None
    session_key_env: Annotated[str | None, _key("Env var with the cookie signing key.")] = None
    session_hours: Annotated[float, _key("Hours a login lasts.", gt=0)] = 12
    public_url: Annotated[
        _Url | None, _key("The page's public address, for links in reports.", _URL_PROBLEM)
    ] = None


class OperatorTable(_Table, frozen=True, kw_only=True):
    """[[operators]]: a named operator (noman.operators)."""

    name: Annotated[
        str,
        _key(
            "The operator's name, recorded with each action (required).",
            "use letters, digits, '.', '_' and '-'",
            min_length=1,
            pattern=_NAME_PATTERN,
        ),
    ]
    token_sha256: Annotated[
        str | list[Any] | None, _key("sha256 hex of the operator's token (or a list).")
    ] = None
    token_env: Annotated[str | None, _key("Env var holding the operator's token itself.")] = None


class WindowTable(_Table, frozen=True, kw_only=True):
    """[[windows]] and [[services.<name>.windows]]: a deploy window (noman.windows)."""

    kind: Annotated[Literal["allow", "deny"], _key('"allow" or "deny" (required).')]
    schedule: Annotated[str, _key("When each window opens: cron, five fields (required).")]
    duration: Annotated[str, _key('How long each stays open: "8h", "90m" (required).')]
    timezone: Annotated[str, _key("IANA time zone the schedule is read in.")] = "UTC"


#: Each declared table under the name the README and messages give it.
TABLES: dict[str, type[_Table]] = {
    "server": ServerTable,
    "store": StoreTable,
    "consul": ConsulSettings,
    "nomad": NomadSettings,
    "rollout": RolloutSettings,
    "notify": NotifyTable,
    "notify.targets": NotifyTargetTable,
    _S: ServiceTable,
    f"{_S}.nomad": NomadTargetTable,
    f"{_S}.release_phase": ReleasePhaseTable,
    f"{_S}.canary": CanaryTable,
    f"{_S}.canary.checks": CanaryCheckTable,
    "poll": PollTable,
    "ui": UITable,
    _O: OperatorTable,
    _W: WindowTable,
}


@dataclass(frozen=True)
class Key:
    """One configuration key as its table declares it (for the docs and their tests)."""

    table: str
    name: str
    types: tuple[type, ...]
    default: Any
    help: str


@dataclass(frozen=True)
class _Field:
    """A declared key: its annotation without ``Annotated`` and its ``Meta``."""

    type: Any
    meta: Meta


@cache
def _keys(table: type[_Table]) -> dict[str, _Field]:
    """The keys of ``table``: its fields that carry help text, in declaration order."""
    found = {}
    for info in msgspec.structs.fields(table):
        if get_origin(info.type) is Annotated:
            inner, *extras = get_args(info.type)
            meta = next((m for m in extras if isinstance(m, Meta)), None)
            if meta is not None and meta.description:
                found[info.name] = _Field(inner, meta)
    return found


def _schema() -> tuple[Key, ...]:
    """Every key of every declared table, with its default and help text."""
    keys = []
    for name, table in TABLES.items():
        defaults = {f.name: f.default for f in msgspec.structs.fields(table)}
        for key, spec in _keys(table).items():
            default = defaults[key]
            default = None if default is msgspec.NODEFAULT else default
            help = spec.meta.description or ""
            keys.append(Key(name, key, _python_types(spec.type), default, help))
    return tuple(keys)


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


def _python_types(annotation: Any) -> tuple[type, ...]:
    """The TOML value types a declared annotation accepts, as Python types, in order."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _python_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        found: list[type] = []
        for arg in get_args(annotation):
            found += [t for t in _python_types(arg) if t not in found]
        return tuple(found)
    if origin is Literal:
        return tuple(dict.fromkeys(type(value) for value in get_args(annotation)))
    if origin in (list, tuple) or annotation in (list, tuple):
        return (list,)
    if annotation is type(None):
        return ()
    if annotation is Any:
        return (object,)
    return (annotation,)


def _repr_without(value: msgspec.Struct, hidden: str) -> str:
    """A struct's repr without the field ``hidden`` (a token)."""
    shown = (
        f"{name}={getattr(value, name)!r}" for name in value.__struct_fields__ if name != hidden
    )
    return f"{type(value).__name__}({', '.join(shown)})"


SCHEMA: tuple[Key, ...] = _schema()


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


_T = TypeVar("_T", bound=_Table)


def _problem(table: type[_Table], data: Mapping[str, Any], error: str) -> tuple[str, str]:
    """The key msgspec's ``error`` is about, and the problem worded from its declaration."""
    missing = re.search(r"missing required field `([^`]+)`", error)
    if missing:
        name = missing.group(1)
        extra = _keys(table)[name].meta.extra or {}
        problem = extra.get("problem", "")
        return name, problem if problem.startswith("is required") else "is required"
    at = re.search(r" - at `\$\.([A-Za-z0-9_]+)", error)
    if at is None:  # not expected: msgspec names the key of every other failure
        return "", error
    name = at.group(1)
    spec, value = _keys(table)[name], data[name]
    accepted = _python_types(spec.type)
    expected = " or ".join(_TYPE_NAMES[t] for t in accepted if t in _TYPE_NAMES)
    # bool is an int in Python; a number key must not accept true.
    if isinstance(value, bool) and bool not in accepted:
        return name, f"expected {expected}, got a boolean"
    # A number key takes an integer too, as msgspec does.
    if not isinstance(value, accepted + ((int,) if float in accepted else ())):
        return name, f"expected {expected}"
    return name, _constraint_problem(spec, value, error)


def _constraint_problem(spec: _Field, value: Any, error: str) -> str:
    """What a value of the right type breaks, worded as its declaration says."""
    meta = spec.meta
    extra = meta.extra or {}
    if meta.min_length is not None and len(value) < meta.min_length:
        return "is required"
    if "problem" in extra:
        return str(extra["problem"])
    choices = [get_args(t) for t in (spec.type, *get_args(spec.type)) if get_origin(t) is Literal]
    if choices:
        quoted = [f'"{choice}"' for choice in choices[0]]
        return "must be " + " or ".join([", ".join(quoted[:-1]), quoted[-1]])
    if meta.ge is not None:
        return "must not be negative" if meta.ge == 0 else f"must be at least {meta.ge:g}"
    if meta.gt is not None:
        return f"must be greater than {meta.gt:g}"
    return error.split(" - at ", 1)[0]


class _Parser:
    """Turns parsed TOML into Settings, remembering where each mistake is."""

    def __init__(self, text: str, source: str, environ: Mapping[str, str]) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.env = environ
        # Each service's keys as read, for the sections read after [services].
        self.service_tables: dict[str, ServiceTable] = {}

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

    def read(
        self, data: Mapping[str, Any], declared: type[_T], table: str, occurrence: int = 0
    ) -> _T:
        """``data`` checked against its declaration; unknown keys and wrong values fail."""
        known = _keys(declared)
        unknown = [name for name in data if name not in known]
        if unknown:
            allowed = ", ".join(sorted(known))
            others = f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""
            raise self.fail(
                table, unknown[0], f"unknown key{others} (allowed: {allowed})", occurrence
            )
        try:
            return msgspec.convert(data, declared, strict=True)
        except msgspec.ValidationError as exc:
            name, problem = _problem(declared, data, str(exc))
            raise self.fail(table, name or None, problem, occurrence) from None

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

    def address(self, table: str, address: str, scheme: str = "http://") -> str:
        """``address`` with ``scheme`` when it has none, checked, without a trailing '/'."""
        if "://" not in address:
            address = scheme + address
        if not re.match(_URL_PATTERN, address):
            raise self.fail(table, "address", _URL_PROBLEM)
        return address.rstrip("/")

    # -- sections --------------------------------------------------------------------------

    def tables(self, data: dict[str, Any]) -> None:
        """Only known top-level tables, each a table (or an array of tables) as declared."""
        arrays = {"operators", "windows"}
        allowed = {"server", "store", "consul", "nomad", "notify", "rollout", "services"}
        allowed |= {"ui", "poll"} | arrays
        unknown = [f"[{_toml_key(name)}]" for name in data if name not in allowed]
        if unknown:
            raise ConfigError(
                f"{self.source}: unknown table {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        for name in allowed - {"services"} - arrays:
            if name in data and not isinstance(data[name], dict):
                raise ConfigError(f"{self.source}: {name} must be a table")

    def settings(self, data: dict[str, Any]) -> Settings:
        """Every section, in an order where each check finds what it needs already read."""
        self.tables(data)
        server = self.read(data.get("server", {}), ServerTable, "server")
        if (server.tls_cert is None) != (server.tls_key is None):
            raise self.fail("server", "tls_cert", "tls_cert and tls_key go together")
        store = self.read(data.get("store", {}), StoreTable, "store")
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
            if (found := self.controls(service, operators, everywhere)) != NO_CONTROLS
        )
        return Settings(
            services=services,
            source=self.source,
            consul=consul,
            rollout=self.read(data.get("rollout", {}), RolloutSettings, "rollout"),
            nomad=nomad,
            notify=self.notify(data.get("notify", {})),
            store_backend=store.backend,
            store_path=store.path,
            max_body_bytes=server.max_body_bytes,
            log_level=server.log_level,
            auth_failures_per_minute=server.auth_failures_per_minute,
            proxy_hops=server.proxy_hops,
            metrics_bind=server.metrics_bind,
            ui=ui,
            poll=poll,
            operators=operators,
            controls=controls,
            tls_cert=server.tls_cert,
            tls_key=server.tls_key,
            proofs=proofs,
        )

    def consul(self, data: Mapping[str, Any]) -> ConsulSettings:
        """[consul] with CONSUL_HTTP_ADDR, _TOKEN, _SSL, _CACERT and the rest applied."""
        v = self.read(data, ConsulSettings, "consul")
        ssl = self.env_bool("CONSUL_HTTP_SSL")
        address = self.env.get("CONSUL_HTTP_ADDR") or v.address
        verify: bool | str = v.verify
        if self.env_bool("CONSUL_HTTP_SSL_VERIFY") is False:
            verify = False
        elif self.env.get("CONSUL_CACERT"):
            verify = self.env["CONSUL_CACERT"]
        return msgspec.structs.replace(
            v,
            address=self.address("consul", address, "https://" if ssl else "http://"),
            timeout=float(v.timeout),
            token=(
                self.env.get("CONSUL_HTTP_TOKEN")
                or self.token_file("CONSUL_HTTP_TOKEN_FILE")
                or v.token
            ),
            verify=verify,
            cert=self.client_cert("CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"),
            tls_server_name=self.env.get("CONSUL_TLS_SERVER_NAME") or None,
            state_prefix=self.state_prefix(v.state_prefix),
            session_ttl=float(v.session_ttl),
            lock_delay=float(v.lock_delay),
        )

    def state_prefix(self, raw: str) -> str:
        prefix = raw if raw.endswith("/") else raw + "/"
        if not _KEY_RE.match(prefix[:-1]):
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

    def nomad(self, data: Mapping[str, Any]) -> NomadSettings:
        """[nomad] with NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE and the rest applied."""
        v = self.read(data, NomadSettings, "nomad")
        address = self.address("nomad", self.env.get("NOMAD_ADDR") or v.address)
        verify: bool | str = v.verify
        if self.env_bool("NOMAD_SKIP_VERIFY"):
            verify = False
        elif self.env.get("NOMAD_CACERT"):
            verify = self.env["NOMAD_CACERT"]
        return msgspec.structs.replace(
            v,
            address=address,
            token=self.env.get("NOMAD_TOKEN") or v.token,
            namespace=self.env.get("NOMAD_NAMESPACE") or v.namespace,
            region=self.env.get("NOMAD_REGION") or v.region,
            verify=verify,
            timeout=float(v.timeout),
            watch_timeout=float(v.watch_timeout),
            poll_interval=float(v.poll_interval),
            cert=self.client_cert("NOMAD_CLIENT_CERT", "NOMAD_CLIENT_KEY"),
            tls_server_name=self.env.get("NOMAD_TLS_SERVER_NAME") or None,
        )

    def notify(self, data: Mapping[str, Any]) -> NotifySettings:
        """[notify] and its [[notify.targets]], each target's HMAC key read from the env."""
        data = dict(data)
        raw_targets = data.pop("targets", [])
        v = self.read(data, NotifyTable, "notify")
        if not isinstance(raw_targets, list) or not all(isinstance(t, dict) for t in raw_targets):
            raise self.fail("notify", "targets", "use [[notify.targets]] tables")
        targets = []
        for n, raw in enumerate(raw_targets):
            t = self.read(raw, NotifyTargetTable, "notify.targets", occurrence=n)
            hmac_key = None
            if t.secret_env is not None:
                secret = self.env.get(t.secret_env, "")
                if not secret:
                    raise self.fail("notify.targets", "secret_env", self.missing(t.secret_env), n)
                hmac_key = secret.encode("utf-8")
            on = frozenset(v.on if t.on is None else t.on)
            targets.append(NotifyTarget(t.kind, t.url, on, hmac_key))
        return NotifySettings(
            targets=tuple(targets),
            retries=v.retries,
            backoff=float(v.backoff),
            timeout=float(v.timeout),
            dry_run=v.dry_run,
        )

    def services(self, data: Any, nomad: NomadSettings) -> tuple[Service, ...]:
        """Every [services.<name>]; no secret and no key shared by two services."""
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
                raise self.fail(table, "key", f"same key as service {keys[service.key]!r}")
            keys[service.key] = service.name
        return services

    def service(self, name: str, raw: Any, nomad: NomadSettings) -> Service:
        """One [services.<name>] with its nomad, release_phase and canary sub-tables."""
        table = f"services.{_toml_key(name)}"
        if not _NAME_RE.match(name):
            raise self.fail(table, None, "service names use letters, digits, '.', '_' and '-'")
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        own = {k: value for k, value in raw.items() if k not in _SUBTABLES}
        v = self.service_tables[name] = self.read(own, ServiceTable, table)
        try:
            pattern = re.compile(v.tag_pattern, re.ASCII)
        except re.error as exc:
            raise self.fail(
                table, "tag_pattern", f"not a valid regular expression: {exc}"
            ) from None
        target = self.nomad_target(f"{table}.nomad", raw.get("nomad"), nomad)
        if v.strategy == "rolling" and target is None:
            raise self.fail(table, "strategy", f"rolling needs a [{table}.nomad] table")
        if v.strategy == "restart" and target is not None:
            raise self.fail(table, "strategy", f'[{table}.nomad] needs strategy = "rolling"')
        release_phase = self.release_phase(f"{table}.release_phase", raw.get("release_phase"))
        canary = self.canary(f"{table}.canary", raw.get("canary"))
        for part, given in (("release_phase", release_phase), ("canary", canary)):
            if given is not None and v.strategy != "rolling":
                raise self.fail(f"{table}.{part}", None, 'needs strategy = "rolling"')
        return Service(
            name=name,
            repository=v.repository,
            key=v.key,
            secret_hashes=self.secrets(table, v.secret_sha256, v.secret_env, "secret"),
            tag_pattern=pattern,
            strategy=v.strategy,
            nomad=target,
            github_keys=tuple(k.encode() for k in self.keys(table, "github_secret_env", v)),
            standard_keys=self.standard_keys(table, v),
            release_phase=release_phase,
            canary=canary,
        )

    def span(self, table: str, name: str, value: str | float, occurrence: int = 0) -> float:
        """Seconds from a number of seconds or a duration text ("90s", "15m", "1h30m")."""
        try:
            seconds = parse_duration(value.strip(), STAGE) if isinstance(value, str) else value
        except ValueError:
            raise self.fail(table, name, _SPAN_PROBLEM, occurrence) from None
        if seconds <= 0:
            raise self.fail(table, name, "must be greater than 0", occurrence)
        return float(seconds)

    def subtable(self, table: str, raw: Any) -> dict[str, Any] | None:
        """An optional sub-table of a service: None when absent, else a copy of it."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail(table, None, "must be a table")
        return dict(raw)

    def release_phase(self, table: str, raw: Any) -> ReleasePhase | None:
        data = self.subtable(table, raw)
        if data is None:
            return None
        v = self.read(data, ReleasePhaseTable, table)
        return ReleasePhase(job=v.job, timeout=self.span(table, "timeout", v.timeout))

    def canary(self, table: str, raw: Any) -> CanaryPlan | None:
        data = self.subtable(table, raw)
        if data is None:
            return None
        raw_checks = data.pop("checks", [])
        v = self.read(data, CanaryTable, table)
        if not isinstance(raw_checks, list) or not all(isinstance(c, dict) for c in raw_checks):
            raise self.fail(table, "checks", f"use [[{table}.checks]] tables")
        checks = tuple(
            self.canary_check(f"{table}.checks", check, n) for n, check in enumerate(raw_checks)
        )
        return CanaryPlan(
            bake=self.span(table, "bake", v.bake),
            interval=self.span(table, "interval", v.interval),
            promote=v.promote,
            checks=checks,
        )

    def canary_check(self, table: str, raw: dict[str, Any], n: int) -> CanaryCheck:
        """One [[...canary.checks]]: the keys of its kind only, each kind's required ones."""
        v = self.read(raw, CanaryCheckTable, table, occurrence=n)

        def fail(name: str | None, problem: str) -> ConfigError:
            return self.fail(table, name, problem, occurrence=n)

        only = {
            "prometheus": ("url", "query", "max", "min", "on_no_data"),
            "http": ("path", "port", "expect"),
        }
        for other, names in only.items():
            for name in names:
                if other != v.kind and name in raw:
                    raise fail(name, f'is only for kind = "{other}"')
        timeout = self.span(table, "timeout", v.timeout, n)
        if v.kind == "prometheus":
            if not v.url:
                raise fail("url", "is required")
            if not v.query:
                raise fail("query", "is required")
            if v.max is None and v.min is None:
                raise fail("max", "set max, min or both")
            return CanaryCheck(
                kind="prometheus",
                name=v.name or " ".join(v.query.split())[:60],
                url=v.url.rstrip("/"),
                query=v.query,
                max=None if v.max is None else float(v.max),
                min=None if v.min is None else float(v.min),
                on_no_data=v.on_no_data,
                timeout=timeout,
            )
        expect = v.expect
        statuses = [] if expect is None else [expect] if isinstance(expect, int) else expect
        if not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise fail("expect", "must be an HTTP status or a list of them (100-599)")
        return CanaryCheck(
            kind="http",
            name=v.name or f"GET {v.path}",
            path=v.path,
            port=v.port,
            expect=tuple(statuses),
            timeout=timeout,
        )

    def hook_proofs(self, name: str, written: Mapping[str, Any]) -> HookProofs:
        """The service's proofs besides its URL secret (its table was read by ``service``)."""
        table, v = f"services.{_toml_key(name)}", self.service_tables[name]
        hashes: tuple[bytes, ...] = ()
        if v.auth_header_sha256 is not None or v.auth_header_env is not None:
            hashes = self.secrets(
                table, v.auth_header_sha256, v.auth_header_env, "auth_header", "header value"
            )
        elif "auth_header" in written:
            raise self.fail(table, "auth_header", "needs auth_header_sha256 or auth_header_env")
        return HookProofs(
            auth_header=v.auth_header,
            auth_header_hashes=hashes,
            gitea_keys=tuple(k.encode() for k in self.keys(table, "gitea_secret_env", v)),
            artifactory_keys=tuple(
                k.encode() for k in self.keys(table, "artifactory_secret_env", v)
            ),
        )

    def keys(self, table: str, name: str, v: ServiceTable) -> tuple[str, ...]:
        """The whitespace-separated keys in the environment variable ``v.<name>`` names."""
        variable = getattr(v, name)
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

    def standard_keys(self, table: str, v: ServiceTable) -> tuple[str, ...]:
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
        hashes: str | list[Any] | None,
        variable: str | None,
        kind: str,
        noun: str | None = None,
        command: str = "noman secret new",
        occurrence: int = 0,
    ) -> tuple[bytes, ...]:
        """The accepted digests of ``<kind>_sha256`` or ``<kind>_env``; never empty.

        An empty secret is not "open": it is refused like any other mistake.
        ``noun`` names the value in messages (default: ``kind``); ``occurrence`` picks
        one of several ``[[array]]`` tables for messages.
        """
        sha_key, env_key = f"{kind}_sha256", f"{kind}_env"
        noun = noun or kind
        if (hashes is None) == (variable is None):
            raise self.fail(table, sha_key, f"set exactly one of {sha_key}, {env_key}", occurrence)
        if variable is not None:
            if not _ENV_NAME_RE.match(variable):
                raise self.fail(table, env_key, "must be an environment variable name", occurrence)
            secret = self.env.get(variable, "")
            if len(secret) < MIN_SECRET_CHARS:
                problem = (
                    self.missing(variable)
                    if not secret
                    else f"environment {variable} holds a {noun} that is too short"
                )
                raise self.fail(
                    table,
                    env_key,
                    f"{problem} (need at least {MIN_SECRET_CHARS} "
                    f"random characters; `{command}` makes one)",
                    occurrence,
                )
            return (hash_secret(secret),)
        items = [hashes] if isinstance(hashes, str) else hashes or []
        if not items:
            raise self.fail(table, sha_key, "must not be empty", occurrence)
        digests = []
        for item in items:
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
        v = self.read(data, UITable, "ui")
        hashes: tuple[bytes, ...] = ()
        if v.token_sha256 is None and v.token_env is None:
            if not operators:
                if data:
                    raise self.fail("ui", None, "set token_sha256 or token_env to enable the page")
                return UISettings()
        else:
            hashes = self.secrets(
                "ui", v.token_sha256, v.token_env, "token", command="noman secret new --ui"
            )
        hooks = {digest for service in services for digest in service.secret_hashes}
        if any(digest in hooks for digest in hashes):
            name = "token_env" if v.token_env else "token_sha256"
            raise self.fail("ui", name, "is a service's hook secret; use a separate token")
        key = None
        if v.session_key_env is not None:
            name = v.session_key_env
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
        return UISettings(
            token_hashes=hashes,
            session_key=key,
            session_hours=float(v.session_hours),
            public_url=None if v.public_url is None else v.public_url.rstrip("/"),
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
            v = self.read(item, OperatorTable, _O, occurrence=n)
            if any(o.name == v.name for o in found):
                raise self.fail(_O, "name", f"{v.name!r} is configured twice", n)
            hashes = self.secrets(
                _O,
                v.token_sha256,
                v.token_env,
                "token",
                command=f"noman secret new --operator {v.name}",
                occurrence=n,
            )
            for digest in hashes:
                if digest in taken:
                    key = "token_env" if v.token_env else "token_sha256"
                    raise self.fail(_O, key, f"is {taken[digest]}; use a token of its own", n)
                taken[digest] = f"operator {v.name!r}'s token"
            found.append(Operator(v.name, hashes))
        return tuple(found)

    def windows(self, table: str, raw: Any) -> tuple[Window, ...]:
        """``[[windows]]`` or ``[[services.<name>.windows]]`` tables (``table`` names them)."""
        if not isinstance(raw, list | tuple) or not all(isinstance(item, dict) for item in raw):
            raise self.fail(table, None, f"use [[{table}]] tables")
        found = []
        for n, item in enumerate(raw):
            v = self.read(item, WindowTable, table, occurrence=n)
            try:
                cron = parse_cron(v.schedule)
            except ValueError as exc:
                raise self.fail(table, "schedule", str(exc), n) from None
            try:
                duration = parse_duration(v.duration)
            except ValueError as exc:
                raise self.fail(table, "duration", str(exc), n) from None
            try:
                parse_timezone(v.timezone)
            except ValueError as exc:
                raise self.fail(table, "timezone", str(exc), n) from None
            found.append(Window(v.kind, cron, duration, v.timezone))
        return tuple(found)

    def controls(
        self, service: Service, operators: tuple[Operator, ...], everywhere: tuple[Window, ...]
    ) -> Controls:
        """What ``service`` asks before a deploy lands (its table was read by ``service``)."""
        table, v = f"services.{_toml_key(service.name)}", self.service_tables[service.name]
        if v.approvals > len(operators):
            raise self.fail(
                table,
                "approvals",
                f"needs {v.approvals} distinct operators; [[operators]] names {len(operators)}",
            )
        try:
            ttl = parse_duration(v.approval_ttl)
        except ValueError as exc:
            raise self.fail(table, "approval_ttl", str(exc)) from None
        own = self.windows(f"{table}.windows", list(v.windows))
        return Controls(
            approvals=v.approvals,
            approval_ttl=ttl,
            approve_rollbacks=v.approve_rollbacks,
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
        v = self.read(data, PollTable, "poll")
        interval = self.duration("poll", "interval", v.interval)
        insecure = v.insecure_registries
        if not all(is_registry_host(h) for h in insecure):
            raise self.fail(
                "poll", "insecure_registries", 'must be a list of "host" or "host:port" names'
            )
        docker_config = self.docker_config(v.docker_config)
        intervals: dict[str, float] = {}
        for service in services:
            value = self.service_tables[service.name].poll
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
            max_parallel=v.max_parallel,
            insecure_registries=tuple(h.lower() for h in insecure),
            timeout=float(v.timeout),
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
        """A rolling service's [services.<name>.nomad]: its job or jobs and how to update."""
        data = self.subtable(table, raw)
        if data is None:
            return None
        v = self.read(data, NomadTargetTable, table)
        jobs = v.jobs
        if v.job and jobs:
            raise self.fail(table, "jobs", "set job or jobs, not both")
        if not all(jobs) or len(set(jobs)) != len(jobs):
            raise self.fail(table, "jobs", "must be a list of distinct job IDs")
        if not v.job and not jobs:
            raise self.fail(table, "job", "is required (or jobs, for several)")
        if not all(v.tasks):
            raise self.fail(table, "tasks", "must be a list of task names")
        if v.update == "image" and not v.tasks:
            raise self.fail(table, "tasks", 'update = "image" needs the task names to update')
        return NomadTarget(
            job=v.job or jobs[0],
            jobs=jobs,
            namespace=v.namespace or nomad.namespace,
            region=v.region or nomad.region,
            update=v.update,
            meta_key=v.meta_key,
            tasks=v.tasks,
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
