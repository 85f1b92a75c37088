"""Named operators and what services ask of them: configuration, tokens, messages."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import pytest

from noman.config import SCHEMA, parse_settings
from noman.durations import parse_duration
from noman.errors import ConfigError
from noman.operators import NO_CONTROLS, Controls, Operator, find_operator, operator_named

HOOK = "h" * 43
ALICE = "a" * 43
BOB = "b" * 43
ADMIN = "u" * 43


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config(extra: str = "", service: str = "", operators: str | None = None) -> str:
    if operators is None:
        operators = (
            f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n\n'
            f'[[operators]]\nname = "bob"\ntoken_env = "BOB_TOKEN"\n\n'
        )
    return (
        f"{operators}"
        "[services.web]\n"
        'repository = "stut/web"\n'
        'key = "configs/web/IMAGE_TAG"\n'
        f'secret_sha256 = "{sha(HOOK)}"\n'
        f"{service}\n{extra}"
    )


def parse(text: str, **env: str) -> Any:
    return parse_settings(text, source="noman.toml", environ={"BOB_TOKEN": BOB, **env})


def test_operators_service_controls_and_windows_are_read() -> None:
    settings = parse(
        config(
            service=(
                'approvals = 2\napproval_ttl = "2h"\napprove_rollbacks = true\n\n'
                "[[services.web.windows]]\n"
                'kind = "deny"\nschedule = "0 17 * * fri"\nduration = "64h"\n'
                'timezone = "Europe/Berlin"\n'
            ),
            extra='[[windows]]\nkind = "allow"\nschedule = "0 8 * * *"\nduration = "10h"\n',
        )
    )
    assert [o.name for o in settings.operators] == ["alice", "bob"]
    assert settings.operators[1].token_hashes == (hashlib.sha256(BOB.encode()).digest(),)
    controls = settings.controls_for(settings.service("web"))
    assert (controls.approvals, controls.approval_ttl, controls.approve_rollbacks) == (
        2,
        7200.0,
        True,
    )
    # The service's own windows first, then the global ones.
    assert [(w.kind, w.schedule, w.timezone) for w in controls.windows] == [
        ("deny", "0 17 * * fri", "Europe/Berlin"),
        ("allow", "0 8 * * *", "UTC"),
    ]
    assert settings.page_enabled  # operators log into the page without an admin token


def test_a_service_that_asks_nothing_has_no_controls() -> None:
    settings = parse(config(operators=""))
    assert settings.controls_for(settings.service("web")) is NO_CONTROLS
    assert not settings.controls_for(settings.service("web")).active
    assert not settings.page_enabled


def test_the_controls_defaults_are_the_schema_defaults() -> None:
    schema = {(k.table, k.name): k.default for k in SCHEMA}
    assert Controls().approvals == schema[("services.<name>", "approvals")]
    assert Controls().approval_ttl == parse_duration(schema[("services.<name>", "approval_ttl")])
    assert Controls().approve_rollbacks == schema[("services.<name>", "approve_rollbacks")]
    assert schema[("windows", "timezone")] == "UTC"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            config(operators='[[operators]]\nname = "alice"\n'),
            r"noman.toml, line 1: \[operators\] token_sha256: set exactly one of",
        ),
        (
            config(
                operators=(
                    f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n'
                    f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(BOB)}"\n'
                )
            ),
            r"line 5: \[operators\] name: 'alice' is configured twice",
        ),
        (
            config(operators=f'[[operators]]\nname = "a b"\ntoken_sha256 = "{sha(ALICE)}"\n'),
            r"line 2: \[operators\] name: use letters",
        ),
        (
            config(operators=f'[[operators]]\nname = "ci"\ntoken_sha256 = "{sha(HOOK)}"\n'),
            r"line 3: \[operators\] token_sha256: is a service's hook secret",
        ),
        (
            config(
                operators=(
                    f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n'
                    f'[[operators]]\nname = "bob"\ntoken_sha256 = "{sha(ALICE)}"\n'
                )
            ),
            r"line 6: \[operators\] token_sha256: is operator 'alice''s token",
        ),
        (
            config(extra=f'[ui]\ntoken_sha256 = "{sha(BOB)}"\n'),
            r"\[operators\] token_env: is the \[ui\] admin token",
        ),
        (
            config(operators='[[operators]]\nname = "x"\ntoken_env = "NOPE"\n'),
            r"line 3: \[operators\] token_env: environment NOPE is not set .*"
            r"noman secret new --operator x",
        ),
        (
            config(operators='[[operators]]\nname = "x"\ntoken = "plain"\n'),
            r"line 3: \[operators\] token: unknown key",
        ),
        (
            config(service="approvals = 3\n"),
            r"line \d+: \[services.web\] approvals: needs 3 distinct operators; "
            r"\[\[operators\]\] names 2",
        ),
        (config(service="approvals = -1\n"), r"\[services.web\] approvals: must not be negative"),
        (
            config(service='approval_ttl = "soon"\n'),
            r"\[services.web\] approval_ttl: 'soon' is not a duration",
        ),
        (
            config(
                service='[[services.web.windows]]\nkind = "deny"\nschedule = "0 17 * *"\n'
                'duration = "1h"\n'
            ),
            r"\[services.web.windows\] schedule: '0 17 \* \*' has 4 fields",
        ),
        (
            config(
                service=(
                    '[[services.web.windows]]\nkind = "deny"\nschedule = "0 17 * * 5"\n'
                    'duration = "1h"\n'
                    '[[services.web.windows]]\nkind = "allow"\nschedule = "0 9 * * *"\n'
                    'duration = "8h"\ntimezone = "Mars/Base"\n'
                )
            ),
            r"line \d+: \[services.web.windows\] timezone: 'Mars/Base' is not an IANA",
        ),
        (
            config(extra='[[windows]]\nkind = "maybe"\nschedule = "@daily"\nduration = "1h"\n'),
            r"\[windows\] kind: must be \"allow\" or \"deny\"",
        ),
        (
            config(extra='[[windows]]\nkind = "deny"\nschedule = "@daily"\n'),
            r"\[windows\] duration: is required",
        ),
        (
            config(extra='[[windows]]\nkind = "deny"\nschedule = "@daily"\nduration = "1 day"\n'),
            r"\[windows\] duration: '1 day' is not a duration",
        ),
        (config(extra='[windows]\nkind = "deny"\n'), r"\[windows\]: use \[\[windows\]\] tables"),
        (config(extra='[ui]\npublic_url = "noman.example"\n'), r"\[ui\] public_url: must be"),
    ],
)
def test_mistakes_name_file_line_table_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_the_line_of_a_window_is_its_own_table() -> None:
    text = config(
        service=(
            '[[services.web.windows]]\nkind = "deny"\nschedule = "0 17 * * 5"\nduration = "1h"\n'
            '[[services.web.windows]]\nkind = "allow"\nschedule = "0 9 * * *"\n'
            'duration = "8h"\ntimezone = "Mars/Base"\n'
        )
    )
    line = text.splitlines().index('timezone = "Mars/Base"') + 1
    with pytest.raises(ConfigError, match=rf"^noman.toml, line {line}: "):
        parse(text)


def test_the_page_is_on_for_operators_without_an_admin_token_and_a_ui_table_may_say_where() -> None:
    settings = parse(config(extra='[ui]\npublic_url = "https://noman.example/"\n'))
    assert settings.page_enabled and not settings.ui.enabled
    assert settings.ui.public_url == "https://noman.example"
    with pytest.raises(ConfigError, match=r"\[ui\]: set token_sha256 or token_env"):
        parse(config(operators="", extra='[ui]\npublic_url = "https://noman.example"\n'))


def test_tokens_are_found_by_digest_in_constant_time_and_never_shown() -> None:
    operators = (
        Operator("alice", (hashlib.sha256(ALICE.encode()).digest(),)),
        Operator(
            "bob", (hashlib.sha256(BOB.encode()).digest(), hashlib.sha256(b"x" * 43).digest())
        ),
    )
    assert find_operator(operators, ALICE) is operators[0]
    assert find_operator(operators, "x" * 43) is operators[1]  # a rotation: either token
    assert find_operator(operators, HOOK) is None
    assert find_operator(operators, "") is None
    assert operator_named(operators, "bob") is operators[1]
    assert operator_named(operators, "carol") is None
    assert ALICE not in repr(operators) and "token_hashes" not in repr(operators[0])


def test_finding_an_operator_takes_as_long_whoever_matches() -> None:
    """Every digest is compared whatever matched first (no early exit to time)."""
    many = tuple(Operator(f"op{i}", (secrets.token_bytes(32),)) for i in range(200))
    first = (Operator("first", (hashlib.sha256(ALICE.encode()).digest(),)), *many)
    last = (*many, Operator("last", (hashlib.sha256(ALICE.encode()).digest(),)))

    def timed(operators: tuple[Operator, ...]) -> float:
        best = float("inf")
        for _ in range(30):
            started = time.perf_counter()
            find_operator(operators, ALICE)
            best = min(best, time.perf_counter() - started)
        return best

    early, late = timed(first), timed(last)
    assert early > late / 3, (early, late)  # an early exit would be ~200x faster
