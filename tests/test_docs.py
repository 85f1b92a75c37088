"""The README documents what the code does: every setting, variable, error code, command."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
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


def readme_defaults() -> dict[str, str]:
    """``{"table.key": default cell}`` from the README's settings tables."""
    rows = re.findall(r"^\| `([a-z_.<>]+)` \| ([^|]*) \|", README, re.MULTILINE)
    return {name: cell.strip() for name, cell in rows}


def toml_text(value: object) -> str:
    """A declared default as the README writes it: TOML, with — for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    return str(value)


@pytest.mark.parametrize("key", SCHEMA, ids=[f"{k.table}.{k.name}" for k in SCHEMA])
def test_every_documented_default_is_the_declared_one(key: object) -> None:
    name = f"{key.table}.{key.name}"  # type: ignore[attr-defined]
    cell = readme_defaults().get(name)
    if cell is None:  # a row that documents two keys at once (`secret_sha256` / ...)
        return
    expected = toml_text(key.default)  # type: ignore[attr-defined]
    assert cell == expected or (expected == "—" and cell == "none"), (name, cell, expected)


def test_the_readme_defaults_are_found() -> None:
    assert readme_defaults()["server.max_body_bytes"] == "65536"


@pytest.mark.parametrize("variable", [name for name, _ in ENVIRONMENT])
def test_every_environment_variable_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README


# Names shaped like a variable that are not one.
NOT_VARIABLES = {"NOMAN_IMAGE_TAG"}  # the default Nomad job Meta key (update = "meta")


def variables_read() -> set[str]:
    """Every NOMAN_/CONSUL_/NOMAD_/PROMETHEUS_ name in the package and the README's scripts."""
    shape = re.compile(r"^(NOMAN|CONSUL|NOMAD|PROMETHEUS)_[A-Z0-9_]+$")
    found: set[str] = set()
    for path in (ROOT / "noman").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and shape.match(node.value):  # type: ignore[attr-defined]
                found.add(node.value)  # type: ignore[attr-defined]
    for script in ("scripts/dev", "scripts/_venv.sh", "scripts/test"):
        text = (ROOT / script).read_text()
        found |= set(re.findall(r"\$\{?((?:NOMAN|CONSUL|NOMAD)_[A-Z0-9_]+)", text))
    return found - NOT_VARIABLES


def test_the_scan_finds_the_variables_it_should() -> None:
    assert {"NOMAN_BIND", "CONSUL_HTTP_TOKEN_FILE", "NOMAD_TLS_SERVER_NAME"} <= variables_read()


@pytest.mark.parametrize("variable", sorted(variables_read()))
def test_every_environment_variable_the_code_reads_is_documented(variable: str) -> None:
    assert f"`{variable}`" in README, f"README.md does not document {variable}"


CODES = sorted(
    cls.code
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.NomanError) and cls is not errors.UpstreamError
)


@pytest.mark.parametrize("code", CODES)
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in README


ERROR_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.NomanError)
    ),
    key=lambda cls: cls.__name__,
)


def readme_error_table() -> dict[str, int]:
    """``{code: status}`` from the rows of the README's error table."""
    section = README.split("### Errors", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.MULTILINE)
    return {code: int(status) for status, code in rows}


def test_the_readme_error_table_is_found() -> None:
    assert readme_error_table().get("not_found") == 404


@pytest.mark.parametrize("cls", [c for c in ERROR_CLASSES if c is not errors.UpstreamError])
def test_every_error_code_has_its_row_in_the_readme_table(cls: type[errors.NomanError]) -> None:
    table = readme_error_table()
    assert cls.code in table, f"README's error table has no row for {cls.code}"
    assert table[cls.code] == cls.status, f"README gives {cls.code} another status"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=[c.__name__ for c in ERROR_CLASSES])
def test_the_errors_module_tree_draws_every_error(cls: type[errors.NomanError]) -> None:
    tree = errors.__doc__ or ""
    line = next((x for x in tree.splitlines() if f" {cls.__name__} " in f"{x} "), None)
    assert line is not None, f"the tree in errors.py's docstring lacks {cls.__name__}"
    if cls is not errors.UpstreamError:  # drawn as a branch, never raised itself
        assert f"{cls.status} {cls.code}" in line, line


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
        "noman rollback",
        "noman freeze",
        "noman unfreeze",
    ):
        assert f"`{command}" in README, command


def test_every_subcommand_of_the_parser_is_in_the_readme() -> None:
    from noman import cli

    parser = cli._parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    section = README.split("## The `noman` command", 1)[1].split("\n## ", 1)[0]
    assert set(commands.choices) >= {"serve", "deploy", "rollback", "freeze"}
    for name in commands.choices:
        assert f"`noman {name}" in section, f"README's noman command list lacks {name}"
