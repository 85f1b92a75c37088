"""The declaration of noman.toml: every table and key, once, with its type and help.

Each TOML table is declared once below as a frozen ``msgspec.Struct``: every key is
a field whose annotation gives its type and constraints (``Meta(ge=..., pattern=...)``,
``Literal``), whose default is the key's default, and whose ``description`` is its
help text. A field without a description is not a key: the loader fills it in (the
client certificate and TLS server name the environment gives). ``SCHEMA`` lists the
declared keys, and tests hold the README's settings table (names and defaults) to it;
``ENVIRONMENT`` lists the environment variables the README documents.

Why msgspec and not pydantic v2: msgspec is already a dependency (the records in
Consul); importing it and declaring sixteen tables took ~31 ms against ~117 ms for
pydantic 2.14 (best of six runs), and what both libraries say on a mistake is reworded
here anyway, from the declaration, so that every message keeps Noman's shape.
"""

# No `from __future__ import annotations`: msgspec would compile every declared annotation
# from its text when a table is first read (~50 ms on each start).

import types
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta

from noman.model import DEFAULT_TAG_PATTERN

# Consul's own rules plus what newer versions refuse (see specs/consul-kv.md): segments of
# [A-Za-z0-9._-] joined by single '/', none of them '.' or '..'.
_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+"
_KEY_PATTERN = rf"\A{_SEGMENT}(?:/{_SEGMENT})*\Z"
_NAME_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z"
_ENV_NAME_PATTERN = r"\A[A-Za-z_][A-Za-z0-9_]*\Z"
# RFC 9110's token: the characters an HTTP field name may use.
_HEADER_NAME_PATTERN = r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z"
_BIND_PATTERN = r"\A(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}\Z"
_URL_PATTERN = r"\Ahttps?://[^/\s]+(/\S*)?\Z"
_URL_PROBLEM = "must be an http:// or https:// URL"
_Url = Annotated[str, Meta(pattern=_URL_PATTERN)]

#: The name TABLES and the README give each service's table.
_SERVICE_TABLE = "services.<name>"


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

    address: Annotated[str, _key("Consul's HTTP address, without credentials.")] = (
        "http://127.0.0.1:8500"
    )
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

    address: Annotated[str, _key("Nomad's HTTP address, without credentials.")] = (
        "http://127.0.0.1:4646"
    )
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
    _SERVICE_TABLE: ServiceTable,
    f"{_SERVICE_TABLE}.nomad": NomadTargetTable,
    f"{_SERVICE_TABLE}.release_phase": ReleasePhaseTable,
    f"{_SERVICE_TABLE}.canary": CanaryTable,
    f"{_SERVICE_TABLE}.canary.checks": CanaryCheckTable,
    "poll": PollTable,
    "ui": UITable,
    "operators": OperatorTable,
    "windows": WindowTable,
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
