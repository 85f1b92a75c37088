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


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (code blocks skipped)."""
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return found


DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_link_between_the_readme_and_docs_resolves(page: Path) -> None:
    text = page.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} names no file"
        if anchor:
            assert anchor in anchors(target.read_text()), f"{page.name}: {link} names no heading"


def test_the_figures_and_the_state_layout_live_in_docs_linked_from_the_readme() -> None:
    assert {p.name for p in DOCS} >= {"benchmarks.md", "state.md"}
    for page in DOCS:
        assert f"](docs/{page.name}" in README, f"README.md does not link to docs/{page.name}"
    # Before "Calling the hook", the README is what a user does: no benchmark tables.
    start = README.split("## Calling the hook", 1)[0]
    assert "| system | deploy/s" not in start and "## Figures" not in start
    assert "| system | deploy/s" in (ROOT / "docs" / "benchmarks.md").read_text()


def test_the_readme_builds_the_image_keeping_its_healthcheck_as_the_smoke_test_does() -> None:
    section = README.split("### The container image", 1)[1].split("\n### ", 1)[0]
    # podman and buildah default to OCI, which drops the HEALTHCHECK.
    assert "podman build --format docker " in section
    assert "buildah bud --format docker " in section
    assert "docker build " in section
    assert "buildah bud --format docker " in (ROOT / "scripts" / "container-smoke").read_text()
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()


def test_the_readme_says_how_to_run_noman_outside_dev_mode() -> None:
    import sys

    section = README.split("### Running `noman` outside dev mode", 1)[1].split("\n## ", 1)[0]
    for command in (".venv/bin/noman serve", ".venv/bin/noman check", ".venv/bin/noman secret"):
        assert command in section, command
    # It comes right after the two commands, before anything that needs it.
    assert README.index("### Running `noman` outside dev mode") < README.index("## Configuration")
    # The path is where the scripts install the console script: this suite runs from it.
    assert 'noman = "noman.cli:main"' in (ROOT / "pyproject.toml").read_text()
    venv = Path(sys.executable).parent
    if venv.parent.name == ".venv":
        assert (venv / "noman").exists()


def test_the_contents_list_every_section_in_the_order_a_user_needs_them() -> None:
    fenced = False
    headings = []
    for line in README.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## ") and line != "## Contents":
            headings.append(line[3:])
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\d+\. \[(.+?)\]\(#", contents, re.MULTILINE) == headings
    # Try it, configure it, reach Consul, run it, then point the senders at it.
    assert headings[:5] == [
        "Two commands",
        "Configuration",
        "Pointing it at a real Consul",
        "Running in production",
        "Calling the hook",
    ]
    assert headings[-1] == "Development"
