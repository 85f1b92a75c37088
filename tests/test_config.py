"""Configuration: a good file loads; every mistake names file, line, table and key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest

from noman.config import (
    SCHEMA,
    TABLES,
    ConfigError,
    Key,
    Settings,
    config_path,
    hash_secret,
    load_settings,
    parse_settings,
)
from noman.durations import STAGE, parse_duration
from noman.model import DEFAULT_TAG_PATTERN

HASH = hashlib.sha256(b"a-very-long-random-secret-value-1").hexdigest()
HASH2 = hashlib.sha256(b"a-very-long-random-secret-value-2").hexdigest()
GOOD = f"""
[consul]
address = "http://10.0.0.5:8500"
datacenter = "dc1"
timeout = 3

[services.stut-dev]
repository = "stut/stut.dev"
key = "configs/stut.dev/IMAGE_TAG"
secret_sha256 = "{HASH}"
"""


def test_good_config_loads() -> None:
    settings = parse_settings(GOOD, environ={})
    service = settings.service("stut-dev")
    assert service.repository == "stut/stut.dev"
    assert service.key == "configs/stut.dev/IMAGE_TAG"
    assert service.secret_hashes == (bytes.fromhex(HASH),)
    assert service.tag_pattern.pattern == DEFAULT_TAG_PATTERN
    assert service.strategy == "restart"
    assert settings.consul.address == "http://10.0.0.5:8500"
    assert settings.consul.datacenter == "dc1"
    assert settings.consul.timeout == 3.0
    assert settings.store_backend == "consul"


def test_secret_hash_is_not_in_repr() -> None:
    settings = parse_settings(GOOD, environ={})
    assert HASH not in repr(settings)
    assert "secret" not in repr(settings.services[0]).lower()


def test_environment_overrides_consul_settings_like_the_consul_cli() -> None:
    env = {
        "CONSUL_HTTP_ADDR": "consul.service:8501",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_TOKEN": "tok",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    consul = parse_settings(GOOD, environ=env).consul
    assert consul.address == "https://consul.service:8501"
    assert consul.token == "tok"
    assert consul.verify is False
    assert parse_settings(GOOD, environ={"CONSUL_CACERT": "/ca.pem"}).consul.verify == "/ca.pem"


def test_nomad_environment_and_tls_verification_default_on() -> None:
    env = {
        "NOMAD_ADDR": "https://nomad:4646",
        "NOMAD_TOKEN": "t",
        "NOMAD_NAMESPACE": "web",
        "NOMAD_REGION": "eu",
        "NOMAD_CACERT": "/nomad-ca.pem",
    }
    nomad = parse_settings(GOOD, environ=env).nomad
    assert (nomad.address, nomad.token, nomad.namespace, nomad.region, nomad.verify) == (
        "https://nomad:4646",
        "t",
        "web",
        "eu",
        "/nomad-ca.pem",
    )
    assert parse_settings(GOOD, environ={}).nomad.verify is True
    assert parse_settings(GOOD, environ={"NOMAD_SKIP_VERIFY": "true"}).nomad.verify is False


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (GOOD.replace("http://10.0.0.5", "http://admin:hunter2pw@10.0.0.5"), {}, "consul.token"),
        (GOOD, {"CONSUL_HTTP_ADDR": "https://admin:hunter2pw@consul:8501"}, "consul.token"),
        (GOOD, {"NOMAD_ADDR": "https://admin:hunter2pw@nomad:4646"}, "NOMAD_TOKEN"),
    ],
)
def test_an_address_with_credentials_is_refused_without_quoting_them(
    text: str, environ: dict[str, str], expected: str
) -> None:
    # Addresses are shown in errors, logs and on the status page.
    with pytest.raises(ConfigError, match="must not carry credentials") as error:
        parse_settings(text, environ=environ)
    assert expected in str(error.value)
    assert "hunter2pw" not in str(error.value)


def test_secret_env_reads_the_secret_from_the_environment() -> None:
    text = GOOD.replace(f'secret_sha256 = "{HASH}"', 'secret_env = "STUT_SECRET"')
    secret = "x" * 40
    settings = parse_settings(text, environ={"STUT_SECRET": secret})
    assert settings.services[0].secret_hashes == (hash_secret(secret),)


def test_two_hashes_for_rotation() -> None:
    text = GOOD.replace(f'secret_sha256 = "{HASH}"', f'secret_sha256 = ["{HASH}", "{HASH2}"]')
    assert len(parse_settings(text, environ={}).services[0].secret_hashes) == 2


def test_config_path_precedence(tmp_path: Path) -> None:
    assert config_path("a.toml", {"NOMAN_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"NOMAN_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {}) == Path("noman.toml")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_settings(tmp_path / "nope.toml")


STAGED = 'strategy = "rolling"\n[services.stut-dev.nomad]\njob = "web"\n'


def service_with(line: str, drop: str | None = None) -> str:
    text = (
        GOOD if drop is None else "\n".join(x for x in GOOD.splitlines() if not x.startswith(drop))
    )
    return text + "\n" + line + "\n"


MISTAKES = [
    (
        "unknown key",
        service_with('colour = "blue"'),
        r"line 12: \[services.stut-dev\] colour: unknown key",
    ),
    ("bad regex", service_with('tag_pattern = "^release-("'), r"tag_pattern: not a valid regular"),
    ("malformed hash", GOOD.replace(HASH, "abc123"), r"line 10: .*secret_sha256: must be 64 hex"),
    (
        "hash of empty secret",
        GOOD.replace(HASH, hashlib.sha256(b"").hexdigest()),
        "hash of an empty secret",
    ),
    ("missing secret", service_with("", drop="secret_sha256"), "set exactly one of"),
    ("both secrets", service_with('secret_env = "X"'), "set exactly one of"),
    (
        "unset secret env",
        service_with('secret_env = "NOPE"', drop="secret_sha256"),
        "environment NOPE is not set",
    ),
    ("short secret env", service_with('secret_env = "SHORT"', drop="secret_sha256"), "too short"),
    ("empty hash list", GOOD.replace(f'"{HASH}"', "[]"), "must not be empty"),
    (
        "duplicate secret",
        GOOD + f'\n[services.other]\nrepository = "a/b"\nkey = "k"\n'
        f'secret_sha256 = "{HASH.upper()}"\n',
        r"\[services.other\] secret_sha256: same secret",
    ),
    (
        "duplicate key",
        GOOD + f'\n[services.other]\nrepository = "a/b"\n'
        f'key = "configs/stut.dev/IMAGE_TAG"\nsecret_sha256 = "{HASH2}"\n',
        "same key as service",
    ),
    (
        "leading slash key",
        GOOD.replace('key = "configs', 'key = "/configs'),
        "key: must be a Consul",
    ),
    (
        "double slash key",
        GOOD.replace("stut.dev/IMAGE", "stut.dev//IMAGE"),
        "key: must be a Consul",
    ),
    ("dotdot key", GOOD.replace("stut.dev/IMAGE", "../IMAGE"), "key: must be a Consul"),
    ("space key", GOOD.replace("IMAGE_TAG", "IMAGE TAG"), "key: must be a Consul"),
    ("trailing slash key", GOOD.replace("IMAGE_TAG", "IMAGE_TAG/"), "key: must be a Consul"),
    ("missing repository", service_with("", drop="repository"), "repository: is required"),
    (
        "wrong type",
        GOOD.replace("timeout = 3", 'timeout = "3"'),
        r"line 5: \[consul\] timeout: expected",
    ),
    ("boolean number", GOOD.replace("timeout = 3", "timeout = true"), "got a boolean"),
    ("zero timeout", GOOD.replace("timeout = 3", "timeout = 0"), "greater than 0"),
    ("unknown table", GOOD + "\n[extra]\n", r"unknown table \[extra\]"),
    ("no services", "[consul]\n", "no services configured"),
    ("bad strategy", service_with('strategy = "yolo"'), "strategy: must be"),
    ("rolling without nomad", service_with('strategy = "rolling"'), "rolling needs a"),
    (
        "nomad without rolling",
        service_with('[services.stut-dev.nomad]\njob = "web"'),
        'needs strategy = "rolling"',
    ),
    (
        "image without tasks",
        service_with(
            'strategy = "rolling"\n[services.stut-dev.nomad]\njob = "w"\nupdate = "image"'
        ),
        "needs the task names",
    ),
    (
        "bad update",
        service_with('strategy = "rolling"\n[services.stut-dev.nomad]\njob = "w"\nupdate = "env"'),
        'update: must be "meta" or "image"',
    ),
    (
        "nomad missing job",
        service_with('strategy = "rolling"\n[services.stut-dev.nomad]\nnamespace = "x"'),
        "job: is required",
    ),
    ("bad address", GOOD.replace("http://10.0.0.5:8500", "ftp://x"), "address: must be an http"),
    ("bad service name", GOOD.replace("services.stut-dev", 'services."stut dev"'), "service names"),
    ("invalid toml", GOOD + "\n[services.x\n", "not valid TOML"),
    (
        "notify target without url",
        GOOD + '\n[[notify.targets]]\nkind = "slack"\n',
        "url: is required",
    ),
    ("notify unknown outcome", GOOD + '\n[notify]\non = ["maybe"]\n', "may only contain"),
    ("negative backoff", GOOD + "\n[notify]\nbackoff = -1\n", "backoff: must not be negative"),
    ("tiny body cap", GOOD + "\n[server]\nmax_body_bytes = 10\n", "at least 1024"),
    ("notify unknown outcome in a target", GOOD + '\n[notify]\non = ["stages"]\n', '"stage"'),
    (
        "job and jobs",
        service_with('strategy = "rolling"\n[services.stut-dev.nomad]\njob = "a"\njobs = ["b"]'),
        "set job or jobs, not both",
    ),
    (
        "repeated jobs",
        service_with('strategy = "rolling"\n[services.stut-dev.nomad]\njobs = ["a", "a"]'),
        "distinct job IDs",
    ),
    (
        "release phase of a restart service",
        service_with('[services.stut-dev.release_phase]\njob = "migrate"'),
        r'\[services.stut-dev.release_phase\]: needs strategy = "rolling"',
    ),
    (
        "release phase without a job",
        service_with(STAGED + '[services.stut-dev.release_phase]\ntimeout = "5m"'),
        r"release_phase\] job: is required",
    ),
    (
        "bad duration",
        service_with(STAGED + '[services.stut-dev.release_phase]\njob = "m"\ntimeout = "5 min"'),
        r'timeout: must be a duration like "30s"',
    ),
    (
        "zero bake",
        service_with(STAGED + '[services.stut-dev.canary]\nbake = "0s"'),
        r"canary\] bake: must be greater than 0",
    ),
    (
        "bad promote",
        service_with(STAGED + '[services.stut-dev.canary]\npromote = "later"'),
        'promote: must be "auto" or "manual"',
    ),
    (
        "check of no kind",
        service_with(STAGED + '[[services.stut-dev.canary.checks]]\nkind = "datadog"'),
        r'line 16: \[services.stut-dev.canary.checks\] kind: must be "prometheus" or "http"',
    ),
    (
        "prometheus check without a threshold",
        service_with(
            STAGED + '[[services.stut-dev.canary.checks]]\nkind = "prometheus"\n'
            'url = "http://prom:9090"\nquery = "up"'
        ),
        "max: set max, min or both",
    ),
    (
        "prometheus check without a url",
        service_with(STAGED + '[[services.stut-dev.canary.checks]]\nkind = "prometheus"\nmax = 1'),
        "url: is required",
    ),
    (
        "http check with a query",
        service_with(STAGED + '[[services.stut-dev.canary.checks]]\nkind = "http"\nquery = "up"'),
        'query: is only for kind = "prometheus"',
    ),
    (
        "http check expecting a word",
        service_with(STAGED + '[[services.stut-dev.canary.checks]]\nkind = "http"\nexpect = [2]'),
        "expect: must be an HTTP status",
    ),
    (
        "second check named by its own line",
        service_with(
            STAGED + '[[services.stut-dev.canary.checks]]\nkind = "http"\n'
            '[[services.stut-dev.canary.checks]]\nkind = "http"\npath = "healthz"'
        ),
        r"line 19: \[services.stut-dev.canary.checks\] path: must start with",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_every_mistake_stops_start_up_with_a_precise_message(
    case: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_settings(text, source="noman.toml", environ={"SHORT": "abc"})
    assert str(error.value).startswith("noman.toml")


def test_unknown_service_lookup_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="configured: stut-dev"):
        parse_settings(GOOD, environ={}).service("nope")


def test_rolling_service_inherits_nomad_namespace() -> None:
    text = (
        GOOD
        + '\n[nomad]\nnamespace = "prod"\n'
        + (
            '\n[services.roll]\nrepository = "a/b"\nkey = "k/IMAGE_TAG"\n'
            f'secret_sha256 = "{HASH2}"\nstrategy = "rolling"\n'
            '[services.roll.nomad]\njob = "b"\nupdate = "image"\ntasks = ["b"]\n'
        )
    )
    service = parse_settings(text, environ={}).service("roll")
    assert service.nomad is not None
    assert (service.nomad.job, service.nomad.namespace, service.nomad.update) == (
        "b",
        "prod",
        "image",
    )
    assert service.nomad.tasks == ("b",)


def test_config_from_the_environment_alone(tmp_path: Path) -> None:
    from noman.config import load

    settings = load(None, {"NOMAN_CONFIG_TOML": GOOD})
    assert settings.source == "$NOMAN_CONFIG_TOML"
    assert settings.service("stut-dev").key == "configs/stut.dev/IMAGE_TAG"
    with pytest.raises(ConfigError, match=r"^\$NOMAN_CONFIG_TOML, line 5: \[consul\] timeout"):
        load(None, {"NOMAN_CONFIG_TOML": GOOD.replace("timeout = 3", "timeout = -1")})
    # --config wins over the inline TOML, which wins over NOMAN_CONFIG (the
    # image sets NOMAN_CONFIG by default).
    path = tmp_path / "noman.toml"
    path.write_text(GOOD.replace("dc1", "dc2"))
    both = {"NOMAN_CONFIG": str(path), "NOMAN_CONFIG_TOML": GOOD}
    assert load(path, both).consul.datacenter == "dc2"
    assert load(None, both).consul.datacenter == "dc1"
    assert load(None, {"NOMAN_CONFIG": str(path)}).consul.datacenter == "dc2"


# Keys that only the parser reads (no settings field keeps them as written).
PARSE_ONLY = {
    ("notify", "on"),  # becomes each target's `on`
    ("ui", "token_sha256"),
    ("ui", "token_env"),
    ("ui", "session_key_env"),
    # Array tables: each [[operators]] / [[windows]] becomes a value of its own, with no
    # settings object holding defaults (tests/test_operators.py checks Controls').
    *((k.table, k.name) for k in SCHEMA if k.table in ("operators", "windows")),
}
TOP_LEVEL = {"server": "", "store": "store_"}
# Keys written as durations ("5m") and kept in seconds.
DURATIONS = {("poll", "interval")}


@pytest.mark.parametrize(
    "key",
    [k for k in SCHEMA if "." not in k.table and (k.table, k.name) not in PARSE_ONLY],
    ids=lambda k: f"{k.table}.{k.name}",
)
def test_every_settings_default_is_the_schema_default(key: Key) -> None:
    """One source of truth: the settings classes take their defaults from the declaration."""
    defaults = Settings(services=())
    if key.table in TOP_LEVEL:
        value = getattr(defaults, TOP_LEVEL[key.table] + key.name)
    else:
        value = getattr(getattr(defaults, key.table), key.name)
    expected = tuple(key.default) if isinstance(key.default, list) else key.default
    if (key.table, key.name) in DURATIONS:
        expected = parse_duration(expected)
    assert value == expected


def test_a_staged_service_loads_with_every_part() -> None:
    text = GOOD + (
        'strategy = "rolling"\n'
        '[services.stut-dev.nomad]\njobs = ["shop-web", "shop-worker"]\n'
        '[services.stut-dev.release_phase]\njob = "shop-migrate"\ntimeout = "1h30m"\n'
        '[services.stut-dev.canary]\nbake = 120\ninterval = "500ms"\npromote = "manual"\n'
        '[[services.stut-dev.canary.checks]]\nkind = "prometheus"\n'
        'url = "http://prom:9090/"\nquery = \'sum(rate(x{job="{job}"}[1m]))\'\nmax = 0.01\n'
        '[[services.stut-dev.canary.checks]]\nkind = "http"\npath = "/healthz"\n'
        'port = "http"\nexpect = 204\ntimeout = 2\n'
    )
    service = parse_settings(text, environ={}).service("stut-dev")
    assert service.staged
    assert service.nomad is not None
    assert (service.nomad.job, service.nomad.job_ids) == ("shop-web", ("shop-web", "shop-worker"))
    assert service.release_phase is not None
    assert (service.release_phase.job, service.release_phase.timeout) == ("shop-migrate", 5400.0)
    canary = service.canary
    assert canary is not None
    assert (canary.bake, canary.interval, canary.promote) == (120.0, 0.5, "manual")
    prometheus, http = canary.checks
    assert (prometheus.url, prometheus.max, prometheus.min) == ("http://prom:9090", 0.01, None)
    assert prometheus.name == 'sum(rate(x{job="{job}"}[1m]))'
    assert (prometheus.on_no_data, prometheus.timeout) == ("fail", 5.0)
    assert (http.name, http.port, http.expect, http.timeout) == (
        "GET /healthz",
        "http",
        (204,),
        2.0,
    )


def test_a_plain_rolling_service_is_not_staged() -> None:
    service = parse_settings(GOOD + STAGED, environ={}).service("stut-dev")
    assert not service.staged
    assert service.nomad is not None and service.nomad.job_ids == ("web",)


def test_the_canary_plan_defaults_are_the_schema_defaults() -> None:
    from noman.model import CanaryCheck, CanaryPlan, ReleasePhase

    text = (
        GOOD
        + STAGED
        + (
            '[services.stut-dev.release_phase]\njob = "m"\n[services.stut-dev.canary]\n'
            '[[services.stut-dev.canary.checks]]\nkind = "http"\n'
        )
    )
    service = parse_settings(text, environ={}).service("stut-dev")
    assert service.release_phase == ReleasePhase("m")
    assert service.canary == CanaryPlan(checks=(CanaryCheck("http", name="GET /"),))


@pytest.mark.parametrize(
    ("text", "units", "seconds"),
    [
        ("1h30m", None, 5400.0),
        ("2d", None, 172800.0),
        ("0s", None, 0.0),
        ("500ms", STAGE, 0.5),
        ("1m30s", STAGE, 90.0),
    ],
)
def test_one_duration_parser_reads_each_callers_units(
    text: str, units: tuple[str, ...] | None, seconds: float
) -> None:
    assert (parse_duration(text) if units is None else parse_duration(text, units)) == seconds


@pytest.mark.parametrize(("text", "units"), [("2d", STAGE), ("500ms", None), ("1 h", None)])
def test_a_unit_a_caller_does_not_take_is_refused(text: str, units: tuple[str, ...] | None) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text) if units is None else parse_duration(text, units)


def test_a_stage_duration_in_days_names_the_key() -> None:
    text = GOOD + 'strategy = "rolling"\n[services.stut-dev.nomad]\njob = "web"\n'
    text += '[services.stut-dev.canary]\nbake = "1d"\n'
    with pytest.raises(ConfigError, match=r"\[services.stut-dev.canary\] bake: must be a duration"):
        parse_settings(text, environ={})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            service_with('secret_env = "HOOK"', drop="secret_sha256"),
            r"line 10: \[services.stut-dev\] secret_env: environment HOOK is set but empty \(need",
        ),
        (
            service_with('github_secret_env = "HOOK"'),
            r"\[services.stut-dev\] github_secret_env: environment HOOK is set but empty$",
        ),
        (
            GOOD + '[[notify.targets]]\nurl = "https://example.com/"\nsecret_env = "HOOK"\n',
            r"\[notify.targets\] secret_env: environment HOOK is set but empty$",
        ),
    ],
)
def test_a_secret_variable_set_but_empty_is_told_apart_from_an_unset_one(
    text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_settings(text, environ={"HOOK": ""})
    with pytest.raises(ConfigError, match="environment HOOK is not set"):
        parse_settings(text, environ={})


@pytest.mark.parametrize(("table", "name"), [("consul", "cert"), ("nomad", "tls_server_name")])
def test_a_setting_only_the_environment_gives_is_not_a_key(table: str, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[{table}\] {name}: unknown key"):
        parse_settings(GOOD.replace("[consul]", f'[{table}]\n{name} = "x"'), environ={})


def test_every_declared_field_is_a_documented_key_but_what_the_environment_gives() -> None:
    for table, declared in TABLES.items():
        documented = {k.name for k in SCHEMA if k.table == table and k.help}
        fields = {f.name for f in msgspec.structs.fields(declared)}
        from_environment = {"cert", "tls_server_name"} if table in ("consul", "nomad") else set()
        assert fields - documented == from_environment, table
