"""scripts/_venv.sh: a second start installs nothing, says what it does, one line per step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A stand-in for the venv's python: records each pip call instead of installing.
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../pip-calls"
echo "WARNING: a wall of pip and setuptools warnings"
"""


def install(project: Path, spec: str = ".") -> subprocess.CompletedProcess[str]:
    script = f'. "{ROOT}/scripts/_venv.sh"; ensure_venv; install_noman "{spec}"'
    return subprocess.run(
        ["bash", "-c", script],
        cwd=project,
        env={**os.environ, "NOMAN_VENV": str(project / ".venv")},
        capture_output=True,
        text=True,
        check=True,
    )


def pip_calls(project: Path) -> list[str]:
    calls = project / ".venv" / "pip-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def make_project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "requirements.lock").write_text("flask==3.1.0\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def test_installs_once_then_only_when_pyproject_or_lock_change(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    first = install(project)
    assert len(pip_calls(project)) == 1
    assert "install" in pip_calls(project)[0] and "-e ." in pip_calls(project)[0]
    # One line per step, pip's own output in the log only.
    assert first.stdout == ""
    assert first.stderr.count("\n") == 1 and "installing Noman" in first.stderr
    assert "WARNING" not in first.stderr
    assert "WARNING" in (project / ".venv" / "noman-install.log").read_text()

    again = install(project)
    assert len(pip_calls(project)) == 1
    assert "not reinstalling" in again.stderr and again.stderr.count("\n") == 1

    (project / "requirements.lock").write_text("flask==3.1.1\n")
    install(project)
    assert len(pip_calls(project)) == 2
    (project / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    install(project)
    assert len(pip_calls(project)) == 3


def test_the_test_extras_serve_the_dev_start_too(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    install(project, ".[test]")
    install(project, ".")
    assert len(pip_calls(project)) == 1
    install(project, ".[test]")
    assert len(pip_calls(project)) == 1
