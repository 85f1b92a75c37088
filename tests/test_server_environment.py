"""The server's numeric NOMAN_* variables: one parser, one line naming a bad value."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from noman.errors import ConfigError
from noman.server.environment import positive
from noman.server.worker import DEFAULT_READ_TIMEOUT, read_timeout
from tests.conftest import gunicorn_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("environ", "default", "expected"),
    [
        ({}, 2, 2),
        ({"X": "3"}, 2, 3),
        ({"X": " 4 "}, 2, 4),
        ({}, 10.0, 10.0),
        ({"X": "2.5"}, 10.0, 2.5),
        ({"X": "7"}, 10.0, 7.0),
    ],
)
def test_a_positive_value_or_the_default_when_unset(
    environ: dict[str, str], default: float, expected: float
) -> None:
    value = positive("X", default, environ)
    assert value == expected
    assert type(value) is type(default)


@pytest.mark.parametrize(
    ("text", "default", "wanted"),
    [
        ("two", 2, "a whole number above 0"),
        ("2.5", 2, "a whole number above 0"),
        ("0", 2, "a whole number above 0"),
        ("-1", 2, "a whole number above 0"),
        ("", 2, "a whole number above 0"),
        ("ten", 10.0, "a number of seconds above 0"),
        ("0", 10.0, "a number of seconds above 0"),
        ("nan", 10.0, "a number of seconds above 0"),
        ("inf", 10.0, "a number of seconds above 0"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(
    text: str, default: float, wanted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        positive("NOMAN_X", default, {"NOMAN_X": text})
    assert str(caught.value) == f"NOMAN_X is {text!r}; it must be {wanted}"


def test_a_long_bad_value_is_cut() -> None:
    with pytest.raises(ConfigError, match=r"^NOMAN_X is 'xxxxxxxxxx+'; it must") as caught:
        positive("NOMAN_X", 2, {"NOMAN_X": "x" * 500})
    assert len(str(caught.value)) < 100


def test_the_read_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_timeout() == DEFAULT_READ_TIMEOUT
    monkeypatch.setenv("NOMAN_READ_TIMEOUT", "3.5")
    assert read_timeout() == 3.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOMAN_WORKERS", "two"),
        ("NOMAN_WORKER_CONNECTIONS", "0"),
        ("NOMAN_READ_TIMEOUT", "soon"),
    ],
)
def test_gunicorn_with_a_bad_variable_stops_with_one_line(
    tmp_path: Path, name: str, value: str
) -> None:
    done = subprocess.run(
        gunicorn_command(),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"noman: configuration error: {name} is {value!r}; it must be "
        + ("a number of seconds" if name == "NOMAN_READ_TIMEOUT" else "a whole number")
        + " above 0"
    ]
