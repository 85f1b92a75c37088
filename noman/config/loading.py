"""Reading the configuration: a TOML file plus environment, into ``Settings``.

Loading is explicit code: ``msgspec.convert`` checks each table against its
declaration (``noman.config.tables``), ``_Parser.read`` turns a failure into a message
naming the file, line, table and key, and the checks that span keys or reach outside
the file (secrets in the environment, a regular expression's compilation, a key under
Noman's own folder) follow in the same order the file is read. Connection settings
follow Consul's and Nomad's own CLIs: the environment variables they use
(``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, ...) override the file, so one config file works
across environments.
"""

import base64
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from noman.config.settings import (
    NO_PROOFS,
    HookProofs,
    NotifySettings,
    NotifyTarget,
    PollSettings,
    Settings,
    UISettings,
)
from noman.config.tables import (
    _ENV_NAME_PATTERN,
    _KEY_PATTERN,
    _NAME_PATTERN,
    _URL_PATTERN,
    _URL_PROBLEM,
    CanaryCheckTable,
    CanaryTable,
    ConsulSettings,
    NomadSettings,
    NomadTargetTable,
    NotifyTable,
    NotifyTargetTable,
    OperatorTable,
    PollTable,
    ReleasePhaseTable,
    RolloutSettings,
    ServerTable,
    ServiceTable,
    StoreTable,
    UITable,
    WindowTable,
    _Field,
    _keys,
    _python_types,
    _Table,
)
from noman.durations import STAGE, parse_duration
from noman.errors import ConfigError
from noman.imageref import InvalidReference, is_registry_host, parse_reference
from noman.model import CanaryCheck, CanaryPlan, NomadTarget, ReleasePhase, Service
from noman.operators import NO_CONTROLS, Controls, Operator
from noman.ordering import order_kind
from noman.registries.auth import default_docker_config, read_docker_config
from noman.windows import Window, parse_cron, parse_timezone

DEFAULT_CONFIG_PATH = "noman.toml"
# 22 url-safe characters carry 132 bits; anything shorter is guessable.
MIN_SECRET_CHARS = 22
MIN_SESSION_KEY_CHARS = 32
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIN_POLL_INTERVAL = 1.0

_KEY_RE = re.compile(_KEY_PATTERN)
_NAME_RE = re.compile(_NAME_PATTERN)
_ENV_NAME_RE = re.compile(_ENV_NAME_PATTERN)
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SPAN_PROBLEM = 'must be a duration like "30s", "15m" or "1h"'
#: A service's own sub-tables, read apart from its keys.
_SUBTABLES = frozenset({"nomad", "release_phase", "canary"})

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


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
        if "@" in urlsplit(address).netloc:
            # The address is shown in errors, logs and the status page: credentials in it
            # would be shown with it. (Neither Consul nor Nomad takes them there.)
            token = "consul.token (CONSUL_HTTP_TOKEN)" if table == "consul" else "NOMAD_TOKEN"
            raise self.fail(
                table, "address", f"must not carry credentials (user:password@); use {token}"
            )
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
        table = "operators"
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise self.fail(table, None, "use [[operators]] tables")
        taken = {d: "a service's hook secret" for s in services for d in s.secret_hashes}
        taken.update({d: "the [ui] admin token" for d in ui.token_hashes})
        found: list[Operator] = []
        for n, item in enumerate(raw):
            v = self.read(item, OperatorTable, table, occurrence=n)
            if any(o.name == v.name for o in found):
                raise self.fail(table, "name", f"{v.name!r} is configured twice", n)
            hashes = self.secrets(
                table,
                v.token_sha256,
                v.token_env,
                "token",
                command=f"noman secret new --operator {v.name}",
                occurrence=n,
            )
            for digest in hashes:
                if digest in taken:
                    key = "token_env" if v.token_env else "token_sha256"
                    raise self.fail(table, key, f"is {taken[digest]}; use a token of its own", n)
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
