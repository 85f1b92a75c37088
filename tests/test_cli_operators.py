"""`noman approve|reject|deploy-now --as <operator>` and `noman secret new --operator`."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from noman import create_app
from noman.cli import main
from noman.config import parse_settings
from tests.conftest import ConsulHandle, post_hook, settings_toml

T1 = "release-20240101000000"
T2 = "release-20240201000000"
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def config(consul: ConsulHandle, secret: str, tmp_path: Path) -> Path:
    operators = (
        f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n'
        f'[[operators]]\nname = "bob"\ntoken_sha256 = "{sha(BOB)}"\n'
    )
    path = tmp_path / "noman.toml"
    path.write_text(settings_toml(consul, secret, operators, approvals=2), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_two_operators_approve_from_the_command_line(
    consul: ConsulHandle, secret: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "deploy", "web", T1, "--config", str(config))
    assert code == 0
    assert json.loads(out)["rollout"]["state"] == "awaiting_approval"
    assert consul.get(consul.key("IMAGE_TAG"))[0] is None
    code, out, _ = run(capsys, "approve", "web", "--as", "alice", "--config", str(config))
    assert code == 0 and json.loads(out)["rollout"]["approvals"]["by"] == ["alice"]
    code, out, err = run(
        capsys, "approve", "web", "--as", "alice", "--tag", T2, "--config", str(config)
    )
    assert code == 1 and err.startswith("noman: not_current: ")
    code, out, _ = run(
        capsys, "approve", "web", "--as", "bob", "--tag", T1, "--config", str(config)
    )
    assert code == 0 and json.loads(out)["changed"] is True
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T1
    history = consul.record().history
    assert (history[0].approvers, history[0].outcome) == (("alice", "bob"), "successful")


def test_reject_and_deploy_now_and_an_unknown_operator(
    consul: ConsulHandle, secret: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(parse_settings(config.read_text(), source="t", environ={}))
    assert post_hook(app, secret, T1).status_code == 202
    code, _, err = run(capsys, "approve", "web", "--as", "mallory", "--config", str(config))
    assert code == 2
    assert "no operator named 'mallory' in [[operators]] (configured: alice, bob)" in err
    code, out, _ = run(
        capsys, "reject", "web", "--as", "bob", "--reason", "wrong build", "--config", str(config)
    )
    assert code == 0 and json.loads(out)["rollout"] == {"state": "rejected", "tag": T1, "by": "bob"}
    assert consul.record().history[0].description == "rejected by bob: wrong build"
    code, _, err = run(capsys, "deploy-now", "web", "--as", "bob", "--config", str(config))
    assert code == 1 and "not_current" in err
    with pytest.raises(SystemExit) as usage:  # argparse: the operator's name is required
        main(["approve", "web", "--config", str(config)])
    assert usage.value.code == 2 and "--as" in capsys.readouterr().err


def test_secret_new_for_an_operator(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "secret", "new", "--operator", "alice")
    assert code == 0
    token = re.search(r"^token: (\S+)$", out, re.MULTILINE)
    digest = re.search(r'^token_sha256 = "([0-9a-f]{64})"$', out, re.MULTILINE)
    assert token and digest and sha(token.group(1)) == digest.group(1)
    assert '[[operators]]\nname = "alice"' in out
    code, _, err = run(capsys, "secret", "new", "web", "--operator", "alice")
    assert code == 2 and "one of them" in err
