"""The README documents what the code does: every setting, variable, error code, command."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from noman import errors
from noman.config import ENVIRONMENT, SCHEMA

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("key", SCHEMA, ids=[f"{k.table}.{k.name}" for k in SCHEMA])
def test_every_config_key_is_documented(key: object) -> None:
    name = f"`{key.table}.{key.name}`"  # type: ignore[attr-defined]
    assert name in README, f"README.md lacks a row for {name}"


@pytest.mark.parametrize("variable", [name for name, _ in ENVIRONMENT])
def test_every_environment_variable_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README


CODES = sorted(
    cls.code
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.NomanError) and cls is not errors.UpstreamError
)


@pytest.mark.parametrize("code", CODES)
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in README


def test_the_two_readme_commands_exist_and_ci_runs_the_test_one() -> None:
    assert "./scripts/dev" in README
    assert "./scripts/test" in README
    for script in ("scripts/dev", "scripts/test"):
        path = ROOT / script
        assert path.exists() and path.stat().st_mode & 0o111
    ci = (ROOT / ".ci/run").read_text()
    assert "./scripts/test" in ci


def test_every_cli_command_is_documented() -> None:
    for command in (
        "noman serve --dev",
        "noman serve",
        "noman check",
        "noman secret new",
        "noman deploy",
        "noman status",
        "noman healthcheck",
    ):
        assert f"`{command}" in README, command
