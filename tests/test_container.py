"""The image as users run it: scripts/container-smoke builds it and runs it hardened.

Needs root and the container tools (it installs them); elsewhere the script
says why and the test is skipped, except with CI=true, where it must run.
Root inside an unprivileged container is told apart by a probe
(``scripts/container-base --probe``), and the tests below run the script in
such a place (a user namespace, or without CAP_SYS_ADMIN) to hold it to one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.container
def test_container_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "container-smoke")],
        cwd=ROOT,
        env={**os.environ, "NOMAN_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    output = result.stdout + result.stderr
    summary = [line for line in output.splitlines() if line.startswith("container-smoke:")]
    with capsys.disabled():
        print("\n" + "\n".join(summary[-15:]))
    skipped = [line for line in summary if "SKIPPED" in line]
    if result.returncode == 0 and skipped:
        pytest.skip(skipped[-1])
    assert result.returncode == 0, output[-6000:]
    assert any("PASS" in line for line in summary)


def smoke_in(prefix: list[str], ci: bool) -> subprocess.CompletedProcess[str]:
    """scripts/container-smoke run under ``prefix`` (which takes rights away)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [*prefix, str(ROOT / "scripts" / "container-smoke")],
        cwd=ROOT,
        env={**env, "NOMAN_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def unprivileged_root() -> list[str]:
    """A prefix that runs a command as root of a user namespace, where mknod is refused."""
    prefix = ["unshare", "--user", "--map-root-user"]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here to make a user namespace")
    probe = subprocess.run(
        [*prefix, "sh", "-c", 'd=$(mktemp -d); mknod "$d/n" c 1 3; r=$?; rm -rf "$d"; exit $r'],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0 or not probe.stderr.startswith(b"mknod:"):
        pytest.skip("cannot make a user namespace here that refuses mknod")
    return prefix


@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_root_of_an_unprivileged_container_is_one_line(ci: bool) -> None:
    result = smoke_in(unprivileged_root(), ci)
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    why = "cannot build or run images here: root here may not create device nodes"
    if ci:  # CI must run the test: the same reason fails it
        assert result.returncode == 1
        assert lines[0].startswith(f"container-smoke: FAIL: {why}")
        assert lines[0].endswith("(CI=true: the container smoke test must run here, not skip)")
    else:
        assert result.returncode == 0
        assert lines[0].startswith(f"container-smoke: SKIPPED: {why}")
        assert "mknod: Operation not permitted" in lines[0]


def test_root_without_mount_namespaces_is_one_line() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to take CAP_SYS_ADMIN away")
    result = smoke_in(
        ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"], False
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0
    assert lines == [
        "container-smoke: SKIPPED: cannot build or run images here: root here may not create "
        "mount namespaces (unshare --mount refused; an unprivileged container?), which buildah "
        "and podman need"
    ]


def test_the_probe_passes_where_images_can_be_built() -> None:
    """Where root has its rights, the probe lets the smoke test go on (no skip hides a break)."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"], check=False).returncode:
        pytest.skip("needs root with its rights: the probe is expected to refuse here")
    result = subprocess.run(
        [str(ROOT / "scripts" / "container-base"), "--probe"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")
