"""What an operator reads when something is wrong: each message says what and where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from noman import __version__
from noman.cli import main
from noman.config import load, parse_settings
from noman.errors import ConfigError
from tests.conftest import SAMPLE_TAG, post_hook

HASH = "ab" * 32
OTHER = "cd" * 32
SERVICE = f'repository = "a/b"\nkey = "k"\nsecret_sha256 = "{HASH}"\n'


def test_the_stale_tag_hint_names_both_ways_to_force(client: Any, secret: str) -> None:
    assert post_hook(client, secret, "release-20240101000000").status_code == 200
    answer = post_hook(client, secret, SAMPLE_TAG)
    assert answer.json["error"] == "stale_tag"
    assert '"force": true' in answer.json["message"]
    assert "--force" in answer.json["message"]


def test_the_tag_pattern_is_shown_as_written(client: Any, secret: str) -> None:
    answer = post_hook(client, secret, "latest")
    assert answer.json["error"] == "invalid_tag"
    assert r"^release-(\d{14})$" in answer.json["message"]
    assert r"\\d" not in answer.json["message"]


def test_every_unknown_field_is_named(client: Any, secret: str) -> None:
    answer = post_hook(client, secret, body={"tag": SAMPLE_TAG, **{f"f{i}": 1 for i in range(8)}})
    assert answer.json["error"] == "invalid_payload"
    assert all(f"'f{i}'" in answer.json["message"] for i in range(8))


def fails(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as error:
        parse_settings(text, source="noman.toml", environ=environ or {})
    return str(error.value)


def test_every_unknown_config_key_is_named() -> None:
    message = fails(f"[services.web]\n{SERVICE}colour = 1\nsize = 2\n")
    assert message.startswith("noman.toml, line 5: [services.web] colour: unknown key")
    assert "also unknown: size" in message


def test_a_quoted_service_name_keeps_its_quotes_and_line() -> None:
    message = fails(f'\n[services."stut.dev"]\n{SERVICE}strategy = "blue"\n')
    assert message.startswith('noman.toml, line 6: [services."stut.dev"] strategy: must be')
    spaced = fails(f"[ services . 'stut.dev' ]\n{SERVICE}tag_pattern = '^('\n")
    assert spaced.startswith('noman.toml, line 5: [services."stut.dev"] tag_pattern:')


def test_an_error_in_the_second_notify_target_names_its_own_line() -> None:
    text = (
        '[[notify.targets]]\nurl = "https://one.example"\n\n'
        '[[notify.targets]]\nkind = "webhook"\nurl = "ftp://two.example"\n\n'
        f"[services.web]\n{SERVICE}"
    )
    assert fails(text).startswith("noman.toml, line 6: [notify.targets] url: must be")
    unknown = text.replace('kind = "webhook"', "knd = 1")
    assert fails(unknown).startswith("noman.toml, line 5: [notify.targets] knd: unknown key")
    outcomes = text.replace('kind = "webhook"', 'on = ["sometimes"]').replace("ftp:", "https:")
    assert fails(outcomes).startswith("noman.toml, line 5: [notify.targets] on: may only")


def test_a_duplicate_secret_names_the_key_it_came_from() -> None:
    one, two = "x" * 30, "x" * 30
    text = (
        '[services.a]\nrepository = "a/b"\nkey = "k1"\nsecret_env = "ONE"\n\n'
        '[services.b]\nrepository = "a/b"\nkey = "k2"\nsecret_env = "TWO"\n'
    )
    message = fails(text, {"ONE": one, "TWO": two})
    assert message.startswith("noman.toml, line 9: [services.b] secret_env: same secret as")
    hashed = text.replace('secret_env = "ONE"', f'secret_sha256 = "{HASH}"').replace(
        'secret_env = "TWO"', f'secret_sha256 = ["{OTHER}", "{HASH}"]'
    )
    assert "[services.b] secret_sha256: same secret" in fails(hashed)


@pytest.mark.parametrize(
    ("explicit", "environ", "given"),
    [
        (None, {}, ""),
        ("x.toml", {}, " (given by --config)"),
        (None, {"NOMAN_CONFIG": "y.toml"}, " (given by $NOMAN_CONFIG)"),
    ],
)
def test_a_missing_config_file_names_its_absolute_path_and_the_search_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    explicit: str | None,
    environ: dict[str, str],
    given: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load(explicit, environ)
    name = explicit or environ.get("NOMAN_CONFIG") or "noman.toml"
    assert str(error.value).startswith(f"{tmp_path / name}: config file not found{given}; ")
    for place in ("--config", "$NOMAN_CONFIG_TOML", "$NOMAN_CONFIG", "./noman.toml"):
        assert place in str(error.value)


def test_help_is_plain_text_and_names_every_config_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text
    for place in ("--config", "NOMAN_CONFIG_TOML", "NOMAN_CONFIG", "./noman.toml"):
        assert place in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"noman {__version__}\n"


def test_cli_stale_tag_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "noman.toml"
    store = json.dumps(str(tmp_path / "store.json"))
    config.write_text(f'[store]\nbackend = "file"\npath = {store}\n[services.web]\n{SERVICE}')
    assert main(["deploy", "web", "release-20240101000000", "--config", str(config)]) == 0
    assert main(["deploy", "web", SAMPLE_TAG, "--config", str(config)]) == 1
    assert "--force" in capsys.readouterr().err
