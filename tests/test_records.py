"""Records, history, rollback, freeze and status: over HTTP, in the CLI, and in Consul's KV."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from noman import create_app
from noman.cli import main
from noman.config import parse_settings
from noman.deploy import Deployer
from noman.errors import ConfigError, ConsulUnavailable, Frozen, NothingToRollBack
from noman.model import Service
from noman.release import Release
from noman.stores import OutcomeUnknown, Write
from noman.stores.file import FileStore
from tests.conftest import ConsulHandle, post_hook, settings_toml

T1 = "release-20240101000000"
T2 = "release-20240201000000"
T3 = "release-20240301000000"
SERVICE = Service("web", "stut/stut.dev", "configs/web/IMAGE_TAG", (b"x" * 32,))


def test_history_is_newest_first_and_bounded() -> None:
    deployer = Deployer(FileStore(), history_size=2)
    for tag in (T1, T2, T3):
        deployer.deploy(SERVICE, Release(tag=tag, sender="test"), request_id=f"r-{tag[-8:]}")
    history = deployer.status(SERVICE)["history"]
    assert [h["tag"] for h in history] == [T3, T2]
    assert history[0] == {
        "seq": 3,
        "tag": T3,
        "previous": T2,
        "time": history[0]["time"],
        "sender": "test",
        "request_id": "r-01000000",
        "kind": "deploy",
        "outcome": "successful",
        "description": f"{T3} written to configs/web/IMAGE_TAG",
    }
    assert history[0]["time"].endswith("Z")


def test_rollback_goes_to_the_last_good_tag_and_is_recorded() -> None:
    store = FileStore()
    deployer = Deployer(store)
    with pytest.raises(NothingToRollBack):
        deployer.rollback(SERVICE, None, sender="test")
    deployer.deploy(SERVICE, Release(tag=T1, sender="test"))
    with pytest.raises(NothingToRollBack):
        deployer.rollback(SERVICE, None, sender="test")
    deployer.deploy(SERVICE, Release(tag=T2, sender="test"))
    outcome = deployer.rollback(SERVICE, None, sender="ops")
    assert (outcome.tag, outcome.previous, outcome.changed) == (T1, T2, True)
    assert store.read(SERVICE.key).value == T1
    entry = deployer.status(SERVICE)["history"][0]
    assert (entry["kind"], entry["sender"], entry["tag"]) == ("rollback", "ops", T1)


def test_a_timed_out_write_that_landed_is_reported_as_done() -> None:
    class LateStore(FileStore):
        """Applies the transaction, then loses the answer (once)."""

        late = True

        def transact(self, writes: Sequence[Write]) -> bool:
            landed = super().transact(writes)
            if self.late:
                self.late = False
                raise OutcomeUnknown()
            return landed

    store = LateStore()
    outcome = Deployer(store).deploy(SERVICE, Release(tag=T1, sender="test"))
    assert (outcome.changed, outcome.status) == (True, 200)
    assert store.read(SERVICE.key).value == T1


def test_a_timed_out_write_that_did_not_land_is_a_503() -> None:
    class LostStore(FileStore):
        def transact(self, writes: Sequence[Write]) -> bool:
            raise OutcomeUnknown()

    store = LostStore()
    with pytest.raises(ConsulUnavailable, match="nothing was written"):
        Deployer(store).deploy(SERVICE, Release(tag=T1, sender="test"))
    assert store.read(SERVICE.key).value is None


def test_frozen_refuses_deploys_but_not_rollbacks() -> None:
    deployer = Deployer(FileStore())
    deployer.deploy(SERVICE, Release(tag=T1, sender="test"))
    deployer.deploy(SERVICE, Release(tag=T2, sender="test"))
    assert deployer.set_frozen(SERVICE, True, sender="ops")["frozen"] is True
    with pytest.raises(Frozen):
        deployer.deploy(SERVICE, Release(tag=T3, sender="test"))
    assert deployer.rollback(SERVICE, None, sender="ops").tag == T1
    assert deployer.set_frozen(SERVICE, False, sender="ops")["frozen"] is False
    assert deployer.deploy(SERVICE, Release(tag=T3, sender="test")).changed


def test_http_rollback_freeze_status(consul: ConsulHandle, client: Any, secret: str) -> None:
    base = f"/hooks/{secret}"
    assert client.post(f"{base}/rollback").status_code == 409
    assert client.post(f"{base}/rollback").json["error"] == "nothing_to_roll_back"
    for tag in (T1, T2):
        assert client.post(base, json={"tag": tag}).status_code == 200
    frozen = client.post(f"{base}/freeze")
    assert frozen.status_code == 200
    assert frozen.json["frozen"] is True
    refused = client.post(base, json={"tag": T3})
    assert refused.status_code == 423
    assert refused.json == {
        "error": "frozen",
        "message": "This service is frozen; deploys are refused until it is unfrozen.",
    }
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T2
    # Rollback still works while frozen; an explicit tag too; a bad one is refused.
    back = client.post(f"{base}/rollback", headers={"X-Request-Id": "req-42"})
    assert (back.status_code, back.json["tag"], back.json["previous"]) == (200, T1, T2)
    assert client.post(f"{base}/rollback", json={"tag": "latest"}).status_code == 422
    assert client.post(f"{base}/rollback", json={"tag": 5}).status_code == 400
    assert client.post(f"{base}/rollback", json={"tga": T1}).json["error"] == "invalid_payload"
    to = client.post(f"{base}/rollback", json={"tag": T2})
    assert (to.status_code, to.json["tag"]) == (200, T2)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert client.post("/hooks/unfreeze", headers=bearer).json["frozen"] is False
    deployed = client.post(base, json={"tag": T3}, headers={"X-Request-Id": "ci-7"})
    assert deployed.status_code == 200
    status = client.get(f"{base}/status").json
    assert status["tag"] == T3
    assert [(h["tag"], h["kind"]) for h in status["history"]] == [
        (T3, "deploy"),
        (T2, "rollback"),
        (T1, "rollback"),
        (T2, "deploy"),
        (T1, "deploy"),
    ]
    assert status["history"][0]["request_id"] == "ci-7"
    assert status["history"][2]["request_id"] == "req-42"
    # Every route answers a wrong secret exactly as an unknown one.
    for path in ("rollback", "freeze", "unfreeze"):
        assert client.post(f"/hooks/wrong/{path}").status_code == 404
        assert client.post(f"/hooks/{path}").status_code == 401
    assert client.get("/hooks/wrong/status").json["error"] == "not_found"


def test_the_service_folder_only_ever_holds_the_tag_key(
    consul: ConsulHandle, client: Any, secret: str
) -> None:
    """A job template doing `range ls "<folder>"` must only ever see the tag key change."""
    base = f"/hooks/{secret}"
    bodies = [
        {"tag": T1},
        json.loads((Path(__file__).parent / "payloads/dockerhub-push.json").read_text()),
    ]
    bodies[1]["push_data"]["tag"] = T2
    for body in bodies:
        assert client.post(base, json=body).status_code == 200
    client.post(f"{base}/freeze")
    client.post(f"{base}/rollback")
    client.post(f"{base}/unfreeze")
    client.post(base, json={"tag": T3})
    assert consul.folder(consul.prefix) == [consul.key("IMAGE_TAG")]
    assert consul.record().tag == T3


def test_old_deliveries_keys_are_ignored_and_left_alone(
    consul: ConsulHandle, client: Any, secret: str
) -> None:
    """Migration: `<key>.deliveries` of the previous version is never read or written."""
    old = consul.key("IMAGE_TAG.deliveries")
    consul.put(old, json.dumps({"github:d-1": 1700000000.0}))
    _, index = consul.get(old)
    assert post_hook(client, secret, T1).status_code == 200
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T1
    assert consul.get(old)[1] == index


def test_cli_rollback_freeze_status(
    tmp_path: Path, consul: ConsulHandle, secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "noman.toml"
    config.write_text(settings_toml(consul, secret))
    args = ["--config", str(config)]
    for tag in (T1, T2):
        assert main([*args, "deploy", "web", tag]) == 0
    assert main([*args, "freeze", "web"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["frozen"] is True
    assert main([*args, "deploy", "web", T3]) == 1
    assert "frozen" in capsys.readouterr().err
    assert main([*args, "rollback", "web"]) == 0
    assert json.loads(capsys.readouterr().out)["tag"] == T1
    assert main([*args, "rollback", "web", "--to", T2]) == 0
    assert main([*args, "unfreeze", "web"]) == 0
    capsys.readouterr()
    assert main([*args, "status", "web"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["tag"], status["frozen"]) == (T2, False)
    assert status["history"][0]["sender"] == "cli"
    assert status["history"][0]["kind"] == "rollback"


@pytest.mark.parametrize(
    ("prefix", "key", "problem"),
    [
        ("configs/web/", "configs/web/IMAGE_TAG", "inside the folder"),
        ("configs/web/noman", "configs/web/IMAGE_TAG", "inside the folder"),
        ("configs/", "configs/web/IMAGE_TAG", "under consul.state_prefix"),
        ("/noman", "configs/web/IMAGE_TAG", "Consul folder"),
    ],
)
def test_the_prefix_is_validated(prefix: str, key: str, problem: str) -> None:
    text = (
        f'[consul]\nstate_prefix = "{prefix}"\n[services.web]\nrepository = "a/b"\n'
        f'key = "{key}"\nsecret_sha256 = "{"ab" * 32}"\n'
    )
    with pytest.raises(ConfigError, match=problem):
        parse_settings(text, environ={})


def test_the_prefix_gets_its_slash() -> None:
    text = (
        '[consul]\nstate_prefix = "ops/noman"\n[services.web]\nrepository = "a/b"\n'
        f'key = "IMAGE_TAG"\nsecret_sha256 = "{"ab" * 32}"\n'
    )
    assert parse_settings(text, environ={}).consul.state_prefix == "ops/noman/"


def test_records_survive_a_new_app(consul: ConsulHandle, settings: Any, secret: str) -> None:
    first = create_app(settings).test_client()
    post_hook(first, secret, T1)
    first.post(f"/hooks/{secret}/freeze")
    second = create_app(settings).test_client()
    assert second.get(f"/hooks/{secret}/status").json["frozen"] is True
    assert post_hook(second, secret, T2).status_code == 423
    assert consul.record().frozen is True
