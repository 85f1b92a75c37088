"""The GitHub workflows: pinned actions, one CI run per change, the reusable release."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
TEMPLATE = GITHUB / "workflow-templates" / "noman-release.yml"
USES = re.compile(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return data


def uses_lines(path: Path) -> list[tuple[str, str]]:
    """Every ``uses:`` reference in the file and what follows it on the line."""
    lines = path.read_text().splitlines()
    found = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        match = USES.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_sha_with_its_version(path: Path) -> None:
    for ref, rest in uses_lines(path):
        if ref.startswith("./"):
            continue  # a workflow of this repository, same commit
        name, _, version = ref.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", version), f"{path.name}: {ref} is not pinned by SHA"
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+\s*", rest), f"{path.name}: {name} lacks # vX.Y.Z"


def test_actions_are_on_their_node_24_majors() -> None:
    majors = {"actions/checkout": 6, "actions/setup-python": 6, "docker/login-action": 4}
    majors |= {"docker/setup-buildx-action": 4, "docker/build-push-action": 7}
    seen = set()
    for path in WORKFLOWS:
        for ref, rest in uses_lines(path):
            name = ref.partition("@")[0]
            if name in majors:
                seen.add(name)
                assert int(rest.split("# v")[1].split(".")[0]) >= majors[name], (path.name, ref)
    assert seen == set(majors)


def test_ci_runs_once_per_change_on_every_supported_python() -> None:
    ci = load(GITHUB / "workflows" / "ci.yml")
    assert ci["on"]["push"] == {"branches": ["main"]}
    assert "pull_request" in ci["on"]
    pythons = ci["jobs"]["test"]["strategy"]["matrix"]["python"]
    assert pythons == ["3.11", "3.12", "3.13"]
    base = re.search(r"^ARG BASE=\S*python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base is not None
    assert base.group(1) in pythons


def test_dependabot_watches_actions_and_pip() -> None:
    config = load(GITHUB / "dependabot.yml")
    assert {u["package-ecosystem"] for u in config["updates"]} == {"github-actions", "pip"}


def test_release_is_reusable_and_its_callers_pass_only_its_inputs() -> None:
    release = load(GITHUB / "workflows" / "release.yml")
    call = release["on"]["workflow_call"]
    inputs, secrets = set(call["inputs"]), set(call["secrets"])
    assert {"dockerhub-image", "ghcr-image", "noman-url", "tag"} <= inputs
    assert secrets == {"DOCKERHUB_USERNAME", "DOCKERHUB_TOKEN", "NOMAN_HOOK_SECRET"}
    callers = [GITHUB / "workflows" / "auto-tag.yml", GITHUB / "workflows" / "image.yml"]
    for path in [*callers, TEMPLATE]:
        job = load(path)["jobs"]["release"]
        assert job["uses"].endswith(
            ".github/workflows/release.yml" + ("@v1" if path == TEMPLATE else "")
        )
        assert set(job["with"]) <= inputs, path.name
        assert job["permissions"] == {"contents": "write", "packages": "write"}
