"""The state layout: one writer per key, costs that do not grow, truth after faults.

Counts come from the fake Consul's own tallies (requests answered, body bytes),
so they are deterministic; the timing goals live in bench/scale.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from noman import create_app
from noman.cli import main
from noman.config import Settings, parse_settings
from noman.release import Release
from noman.state import Keys
from noman.wiring import components
from tests.conftest import (
    ConsulHandle,
    make_settings,
    offline,
    post_hook,
    rolling_extra,
    settings_toml,
    settle,
)
from tests.fakes.nomad import FakeNomad
from tests.fakes.receiver import Receiver

T1 = "release-20240101000000"
T2 = "release-20240201000000"
T3 = "release-20240301000000"
NEW = "release-20240101000000"
NEWER = "release-20240201000000"


def tag_of(i: int) -> str:
    return f"release-2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}{i % 24:02d}0000"


def many_services(consul: ConsulHandle, count: int, extra: str = "") -> tuple[Settings, str]:
    """``count`` restart services web0.. with one shared secret per service name."""
    lines = [
        f'[consul]\naddress = "{consul.url}"\ntimeout = 1\nstate_prefix = "{consul.state_prefix}"\n'
    ]
    secret = "s" * 43
    for i in range(count):
        digest = hashlib.sha256(f"{secret}{i}".encode()).hexdigest()
        lines.append(
            f'[services.web{i}]\nrepository = "stut/stut.dev"\n'
            f'key = "{consul.key(f"web{i}/IMAGE_TAG")}"\nsecret_sha256 = "{digest}"\n'
        )
    text = "\n".join(lines) + extra
    return offline(parse_settings(text, source="test.toml", environ={})), secret


def reporting_rolling(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, receiver: Receiver, rollout: str = ""
) -> Settings:
    """Service "web" rolling on ``nomad``, reporting successes and failures to ``receiver``."""
    return make_settings(
        consul,
        secret,
        strategy="rolling",
        extra=rolling_extra(
            nomad,
            f'{rollout}[notify]\non = ["success", "failure"]\nbackoff = 0.01\n'
            f'[[notify.targets]]\nurl = "{receiver.url}/n"\n',
        ),
    )


def measured(consul: ConsulHandle, action: Any) -> tuple[int, int]:
    """Requests answered and body bytes moved while ``action`` runs."""
    fake = consul.require_fake()
    before = fake.answered, fake.body_bytes
    action()
    return fake.answered - before[0], fake.body_bytes - before[1]


def deploy_cost(consul: ConsulHandle, services: int, history: int) -> tuple[int, int]:
    """What one deploy of web0 moves (the hook's worker delivers its report), after
    ``history``; the leader moves nothing for a restart deploy."""
    consul = ConsulHandle(consul.url, consul.token, consul.fake)  # a prefix of its own
    receiver_url = "http://127.0.0.1:9/unused"
    settings, secret = many_services(
        consul,
        services,
        f'[rollout]\nhistory_size = 500\n[notify]\ndry_run = true\non = ["success"]\n'
        f'[[notify.targets]]\nurl = "{receiver_url}"\n',
    )
    app = create_app(settings)
    parts = components(app)
    client = app.test_client()
    for i in range(1, services):  # every other service has state too
        assert client.post(f"/hooks/{secret}{i}", json={"tag": T1}).status_code == 200
    for i in range(history):
        assert client.post(f"/hooks/{secret}0", json={"tag": tag_of(i)}).status_code == 200
    assert parts.courier.wait(5)
    fresh = components(create_app(settings))  # a worker that has not written this service yet

    def one() -> None:
        release = Release(tag="release-20991231000000", sender="test")
        assert fresh.deployer.deploy(fresh.settings.service("web0"), release).changed
        assert fresh.courier.wait(5)  # its report delivered and deleted by this worker

    return measured(consul, one)


def test_a_deploy_costs_the_same_with_more_services_and_more_history(
    consul: ConsulHandle,
) -> None:
    consul.require_fake()
    small = deploy_cost(consul, 10, 1)
    many = deploy_cost(consul, 200, 1)
    long = deploy_cost(consul, 10, 100)
    # One read txn, one write txn, the delete of the delivered report; nothing by the leader.
    assert small[0] == 3, small
    assert many[0] == small[0]
    assert long[0] == small[0]
    assert many[1] <= small[1] * 1.5, (small, many)
    assert long[1] <= small[1] * 1.3, (small, long)


def test_a_repeat_deploy_from_the_same_instance_is_one_round_trip(
    consul: ConsulHandle, client: Any, secret: str
) -> None:
    assert post_hook(client, secret, T1).status_code == 200
    requests, _ = measured(
        consul,
        lambda: post_hook(client, secret, T2),
    )
    assert requests == 1
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T2


def test_history_is_pruned_by_the_hook_that_appends(consul: ConsulHandle, secret: str) -> None:
    settings = make_settings(consul, secret, extra="[rollout]\nhistory_size = 3\n")
    client = create_app(settings).test_client()
    for i in range(8):
        assert post_hook(client, secret, tag_of(i)).status_code == 200
    keys = sorted(consul.tree(Keys(consul.state_prefix).history_folder("web")))
    assert [k.rsplit("/", 1)[1] for k in keys] == ["0000000006", "0000000007", "0000000008"]


def test_two_deploys_of_one_tag_have_their_own_event_ids(consul: ConsulHandle, secret: str) -> None:
    with Receiver() as receiver:
        settings = make_settings(
            consul,
            secret,
            extra=f'[notify]\non = ["success"]\n[[notify.targets]]\nurl = "{receiver.url}/n"\n',
        )
        app = create_app(settings)
        client = app.test_client()
        assert post_hook(client, secret, T1).status_code == 200
        assert post_hook(client, secret, T2).status_code == 200
        assert client.post(f"/hooks/{secret}/rollback", json={"tag": T1}).status_code == 200
        reconciler = components(app).reconciler
        assert settle(reconciler, 5)
        notes = [n.json() for n in receiver.wait_for(3)]
        reconciler.stop()
    ids = [(n["tag"], n["event_id"]) for n in notes]
    assert ids == [(T1, "web:1:successful"), (T2, "web:2:successful"), (T1, "web:3:successful")]


def test_damaged_state_of_a_frozen_service_is_an_error_never_a_deploy(
    consul: ConsulHandle, secret: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(consul, secret)
    client = create_app(settings).test_client()
    assert post_hook(client, secret, T1).status_code == 200
    assert client.post(f"/hooks/{secret}/freeze").status_code == 200
    desired = Keys(consul.state_prefix).desired("web")
    consul.put(desired, consul.get(desired)[0][:-7])  # cut short: no longer JSON
    for path, body in (("", {"tag": T2}), ("/rollback", None), ("/unfreeze", None)):
        answer = client.post(f"/hooks/{secret}{path}", json=body)
        assert answer.status_code == 503, path
        assert answer.json["error"] == "state_unreadable"
        assert desired in answer.json["message"]
    assert consul.get(consul.key("IMAGE_TAG"))[0] == T1
    status = client.get(f"/hooks/{secret}/status")
    assert (status.status_code, status.json["error"]) == (503, "state_unreadable")
    config = tmp_path / "noman.toml"
    config.write_text(settings_toml(consul, secret))
    assert main(["--config", str(config), "status", "web"]) == 1
    line = json.loads(capsys.readouterr().out)
    assert line["error"] == "state_unreadable"
    assert main(["--config", str(config), "check"]) == 1
    assert f"web: FAILED: state_unreadable: Noman's state at {desired}" in capsys.readouterr().out


def test_a_record_of_the_previous_release_is_read_then_converted_on_the_first_write(
    consul: ConsulHandle, secret: str
) -> None:
    legacy = f"{consul.state_prefix}web"
    consul.put(consul.key("IMAGE_TAG"), T2)
    consul.put(
        legacy,
        json.dumps(
            {
                "tag": T2,
                "frozen": True,
                "rollout": None,
                "deliveries": {"github:d-1": time.time()},
                "history": [
                    {
                        "tag": T2,
                        "previous": T1,
                        "time": "2024-02-01T00:00:00Z",
                        "sender": "dockerhub",
                        "request_id": None,
                        "kind": "deploy",
                        "outcome": "successful",
                        "description": "",
                    },
                    {
                        "tag": T1,
                        "previous": None,
                        "time": "2024-01-01T00:00:00Z",
                        "sender": "plain",
                        "request_id": "r-1",
                        "kind": "deploy",
                        "outcome": "successful",
                        "description": "",
                    },
                ],
                "reports": [],
                "write_id": "abc",
            }
        ),
    )
    client = create_app(make_settings(consul, secret)).test_client()
    # Read as it is: frozen holds, history shows.
    assert post_hook(client, secret, T3).status_code == 423
    status = client.get(f"/hooks/{secret}/status").json
    assert status["frozen"] is True
    assert [h["tag"] for h in status["history"]] == [T2, T1]
    assert consul.get(legacy)[0] is not None  # nothing written yet
    # The first write converts it, in the same transaction.
    assert client.post(f"/hooks/{secret}/unfreeze").json["frozen"] is False
    assert consul.get(legacy) == (None, 0)
    assert post_hook(client, secret, T3).status_code == 200
    state = consul.record()
    assert (state.tag, state.frozen, list(state.deliveries)) == (T3, False, ["github:d-1"])
    assert [(h.seq, h.tag) for h in state.history] == [(3, T3), (2, T2), (1, T1)]
    assert client.post(f"/hooks/{secret}/rollback").json["tag"] == T2


def test_a_consul_error_after_the_commit_is_a_202_and_no_failure_report(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = consul.require_fake()
    nomad.script_deployments("successful")
    with Receiver() as receiver:
        settings = reporting_rolling(consul, nomad, secret, receiver, "answer_within = 0.5\n")
        app = create_app(settings)
        parts = components(app)
        real = parts.store.transact

        def commit_then_fail(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            monkeypatch.setattr(parts.store, "transact", real)
            fake.fail_next(3, 500, "rpc error")  # every Consul call after the commit
            return result

        monkeypatch.setattr(parts.store, "transact", commit_then_fail)
        answer = post_hook(app, secret, NEW)
        assert answer.status_code == 202, answer.json
        assert answer.json["rollout"]["state"] == "pending"
        fake.heal()
        assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW
        time.sleep(0.6)  # the hand-over time passes; the leader takes the rollout over
        assert settle(parts.reconciler, 10)
        assert receiver.wait_for(1)
        time.sleep(0.2)  # a failure report, were there one, would have come too
        parts.reconciler.stop()
    assert [(n.json()["status"], n.json()["event_id"]) for n in receiver.received] == [
        ("success", "web:1:successful")
    ]
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]


def test_a_superseded_rollout_is_reported_with_its_own_callback(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    with Receiver() as receiver:
        settings = reporting_rolling(consul, nomad, secret, receiver)
        settings = dataclasses.replace(
            settings, callback_hosts=("127.0.0.1",), callback_allow_http=True
        )
        app = create_app(settings)
        client = app.test_client()
        push = {
            "callback_url": f"{receiver.url}/callback/first",
            "push_data": {"tag": NEW, "pushed_at": 1704067200, "pusher": "stut"},
            "repository": {"repo_name": "stut/stut.dev", "name": "stut.dev", "namespace": "stut"},
        }
        assert post_hook(client, secret, body=push).status_code == 200
        reconciler = components(app).reconciler
        reconciler.run_once(wait=0.1)
        assert post_hook(client, secret, NEWER).status_code == 200
        reconciler.run_once(wait=0.1)
        received = receiver.wait_for(2)
        reconciler.stop()
    by_path = {r.path: r.json() for r in received}
    assert by_path["/callback/first"]["state"] == "failure"
    note = by_path["/n"]
    assert (note["event_id"], note["state"], note["tag"]) == ("web:1:cancelled", "cancelled", NEW)
    assert note["description"] == f"superseded by {NEWER} before it finished"
    history = consul.record().history
    assert [(h.tag, h.outcome) for h in history] == [(NEWER, "pending"), (NEW, "cancelled")]


def test_one_registration_per_deploy_through_two_instances(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("successful")
    settings = make_settings(consul, secret, strategy="rolling", extra=rolling_extra(nomad))
    apps = [create_app(settings), create_app(settings)]
    for app in apps:
        components(app).reconciler.start()
    try:
        for i in range(15):
            tag = (
                f"release-2024{i + 1:02d}01000000"
                if i < 12
                else f"release-2025{i - 11:02d}01000000"
            )
            answer = post_hook(apps[i % 2], secret, tag)
            assert answer.status_code == 200, answer.json
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rollout = consul.record().rollout
                if rollout is not None and rollout.tag == tag and rollout.state == "successful":
                    break
                time.sleep(0.02)
            else:
                pytest.fail(f"{tag} never finished")
    finally:
        for app in apps:
            components(app).reconciler.stop()
    assert len(nomad.registrations) == 15


def test_a_late_write_answer_landed_is_a_success(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    """The write answers after consul.timeout while another instance leads and reports:
    the re-read finds the history entry the write created (nobody else writes it)."""
    fake = consul.require_fake()
    nomad.script_deployments("successful")
    with Receiver() as receiver:
        settings = reporting_rolling(consul, nomad, secret, receiver)
        hooked, leading = create_app(settings), create_app(settings)
        components(leading).reconciler.start()
        try:
            client = hooked.test_client()
            assert post_hook(client, secret, NEW).status_code == 200
            assert receiver.wait_for(1)  # NEW's rollout ended: nothing to supersede
            fake.answer_late(1.5, count=1)  # the next request is the write (indexes known)
            answer = post_hook(client, secret, NEWER)
            assert answer.status_code in (200, 202), answer.json
            assert consul.get(consul.key("IMAGE_TAG"))[0] == NEWER
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                events = {n.json()["event_id"] for n in receiver.received}
                if "web:2:successful" in events:
                    break
                time.sleep(0.05)
            assert "web:2:successful" in {n.json()["event_id"] for n in receiver.received}
            assert not [n for n in receiver.received if n.json()["status"] == "failure"]
        finally:
            components(leading).reconciler.stop()
            components(hooked).reconciler.stop()


@pytest.fixture
def hanging_target() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hang"
    stop.set()
    thread.join(1)
    for conn in accepted:
        conn.close()
    server.close()


def test_a_hanging_notify_target_never_holds_up_another_rollout(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, hanging_target: str
) -> None:
    nomad.script_deployments("stall")
    with Receiver() as receiver:
        api_secret = "a" * 43
        extra = rolling_extra(
            nomad,
            f'[notify]\non = ["success", "failure"]\ntimeout = 5\nretries = 2\nbackoff = 0.01\n'
            f'[[notify.targets]]\nurl = "{hanging_target}"\n'
            f'[[notify.targets]]\nurl = "{receiver.url}/n"\n'
            f'[services.api]\nrepository = "stut/api"\nkey = "{consul.key("api/IMAGE_TAG")}"\n'
            f'secret_sha256 = "{hashlib.sha256(api_secret.encode()).hexdigest()}"\n',
        )
        app = create_app(make_settings(consul, secret, strategy="rolling", extra=extra))
        reconciler = components(app).reconciler
        reconciler.start()
        try:
            client = app.test_client()
            # api's report goes to both targets: the hanging one holds its own worker.
            assert client.post(f"/hooks/{api_secret}", json={"tag": T1}).status_code == 200
            assert receiver.wait_for(1, timeout=5)
            assert post_hook(client, secret, NEW).status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rollout = consul.record().rollout
                if rollout is not None and rollout.deployment_id and rollout.state == "running":
                    break
                time.sleep(0.02)
            assert rollout is not None and rollout.deployment_id
            nomad.finish_deployment(rollout.deployment_id, "successful")
            finished = time.monotonic()
            while time.monotonic() - finished < 5:
                rollout = consul.record().rollout
                if rollout is not None and rollout.state == "successful":
                    break
                time.sleep(0.01)
            recorded = time.monotonic() - finished
            assert rollout is not None and rollout.state == "successful"
            assert recorded <= 0.5, recorded
            web = receiver.wait_for(2, timeout=5)
            assert [n.json()["event_id"] for n in web][-1] == "web:1:successful"
        finally:
            reconciler.stop(1)


def test_a_slow_receiver_costs_the_leader_nothing(consul: ConsulHandle, secret: str) -> None:
    with Receiver(delay=3.0) as slow:
        settings = make_settings(
            consul,
            secret,
            extra=(
                f'[notify]\non = ["success"]\ntimeout = 5\n'
                f'[[notify.targets]]\nurl = "{slow.url}/n"\n'
            ),
        )
        settings = dataclasses.replace(
            settings, consul=msgspec.structs.replace(settings.consul, session_ttl=10)
        )
        one, two = create_app(settings), create_app(settings)
        first, second = components(one).reconciler, components(two).reconciler
        first.start()
        deadline = time.monotonic() + 5
        while not first.leader and time.monotonic() < deadline:
            time.sleep(0.02)
        second.start()
        try:
            session = getattr(first.lock, "session", None)
            client = one.test_client()
            for i in range(4):
                assert post_hook(client, secret, tag_of(i)).status_code == 200
            deadline = time.monotonic() + 20
            while len(slow.received) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            assert first.leader and not second.leader
            assert getattr(first.lock, "session", None) == session
            assert sorted(n.json()["event_id"] for n in slow.received) == [
                f"web:{i}:successful" for i in range(1, 5)
            ]
        finally:
            first.stop(1)
            second.stop(1)
