"""The reconciler under faults: half deploys converge, failover loses nothing, no loops.

Every scenario is driven step by step (``run_once``, conftest's ``settle``) against the
fake Consul and the fake Nomad, so it is bounded and deterministic; one test runs the
background thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from noman import create_app
from noman.config import Settings
from noman.model import JobState, Service
from noman.wiring import components
from tests.conftest import (
    RUNNING_TAG,
    ConsulHandle,
    make_settings,
    post_hook,
    rolling_extra,
    settle,
)
from tests.fakes._server import FakeClock
from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import FakeNomad
from tests.fakes.receiver import Receiver

OLD = RUNNING_TAG
NEW = "release-20240101000000"
NEWER = "release-20240201000000"


def settings_for(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, notify_url: str | None = None
) -> Settings:
    notify = ""
    if notify_url:
        notify = (
            f'[notify]\non = ["success", "failure"]\nbackoff = 0.01\n'
            f'[[notify.targets]]\nurl = "{notify_url}"\n'
        )
    settings = make_settings(
        consul,
        secret,
        strategy="rolling",
        extra=rolling_extra(nomad, f"refused_retry = 0.3\n{notify}"),
    )
    return settings


def converged(consul: ConsulHandle, nomad: FakeNomad, tag: str) -> None:
    """Quiescence: key = job tag = ``tag``, and the record says so."""
    assert consul.get(consul.key("IMAGE_TAG"))[0] == tag
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == tag  # type: ignore[index]
    rollout = consul.record().rollout
    assert rollout is not None and (rollout.tag, rollout.state) == (tag, "successful")


def test_failed_deployment_reverted_by_nomad_sets_the_key_back(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("failed")
    with Receiver() as receiver:
        app = create_app(settings_for(consul, nomad, secret, f"{receiver.url}/n"))
        assert post_hook(app, secret, NEW).status_code == 200
        reconciler = components(app).reconciler
        assert settle(reconciler, 10)
        # Nomad's auto-revert runs OLD again; Consul says so too, and history tells why.
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == OLD  # type: ignore[index]
        assert consul.get(consul.key("IMAGE_TAG"))[0] == OLD
        record = consul.record()
        assert record.rollout is not None
        assert (record.rollout.tag, record.rollout.state) == (NEW, "failed")
        assert record.history[0].description == f"{NEW} failed, running {OLD}"
        assert (record.history[1].tag, record.history[1].outcome) == (NEW, "failed")
        note = receiver.wait_for(1)[0].json()
        assert (note["status"], note["event_id"]) == ("failure", "web:1:failed")
        # No retry loop: more passes register nothing.
        registrations = len(nomad.registrations)
        assert settle(reconciler, 2)
        assert len(nomad.registrations) == registrations
        # Pushing the failed tag again retries it on purpose.
        nomad.script_deployments("successful")
        assert post_hook(app, secret, NEW, force=True).status_code == 200
        assert settle(reconciler, 10)
        converged(consul, nomad, NEW)


def test_failed_tag_pushed_again_is_retried(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    """Without auto-revert the key keeps the failed tag; the same push retries it."""
    nomad.change_job("web", lambda job: job["TaskGroups"][0]["Update"].update(AutoRevert=False))
    nomad.script_deployments("failed")
    app = create_app(settings_for(consul, nomad, secret))
    reconciler = components(app).reconciler
    assert post_hook(app, secret, NEW).status_code == 200
    assert settle(reconciler, 10)
    assert consul.record().rollout.state == "failed"  # type: ignore[union-attr]
    assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW
    nomad.script_deployments("successful")
    nomad.change_job("web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG=OLD))
    again = post_hook(app, secret, NEW)
    assert (again.status_code, again.json["changed"]) == (200, True)  # the record changed
    assert settle(reconciler, 10)
    converged(consul, nomad, NEW)


def test_a_refusal_is_retried_slowly_and_notified_once(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    with Receiver() as receiver:
        app = create_app(settings_for(consul, nomad, secret, f"{receiver.url}/n"))
        nomad.fail_always(403, "Permission denied")
        answer = post_hook(app, secret, NEW)
        assert answer.json["rollout"] == {"state": "pending", "reason": "nomad_forbidden"}
        reconciler = components(app).reconciler
        settle(reconciler, 1)
        threading.Event().wait(0.35)  # past refused_retry: one more attempt is due
        settle(reconciler, 1)
        rollout = consul.record().rollout
        assert rollout is not None
        assert (rollout.state, rollout.reason) == ("pending", "nomad_forbidden")
        assert rollout.attempts >= 2
        notes = receiver.wait_for(1)
        assert [n.json()["event_id"] for n in notes] == ["web:1:nomad_forbidden"]
        assert len(receiver.received) == 1
        nomad.heal()
        threading.Event().wait(0.35)
        assert settle(reconciler, 10)
        converged(consul, nomad, NEW)


def test_two_close_deploys_while_nomad_fails_converge_on_the_newest(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(settings_for(consul, nomad, secret))
    nomad.fail_always(500, "rpc error: no leader", after=0.6)  # failing slowly
    answers: dict[str, int] = {}
    barrier = threading.Barrier(2)

    def fire(tag: str) -> None:
        barrier.wait()
        answers[tag] = post_hook(app, secret, tag).status_code

    threads = [threading.Thread(target=fire, args=(tag,)) for tag in (NEW, NEWER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers[NEWER] == 202
    assert answers[NEW] in (202, 409)  # pending, or refused as older than NEWER
    assert consul.get(consul.key("IMAGE_TAG"))[0] == NEWER
    nomad.heal()
    assert settle(components(app).reconciler, 10)
    converged(consul, nomad, NEWER)


def test_nomad_applied_the_registration_but_the_answer_was_lost(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(settings_for(consul, nomad, secret))
    rollouts = components(app).nomad
    assert rollouts is not None
    real_read = rollouts.read

    def read_then_slow_down(service: Service) -> JobState:
        state = real_read(service)
        nomad.answer_late(2)  # the register that follows lands, its answer comes too late
        return state

    rollouts.read = read_then_slow_down  # type: ignore[method-assign]
    answer = post_hook(app, secret, NEW)
    rollouts.read = real_read  # type: ignore[method-assign]
    assert answer.json["rollout"] == {"state": "pending", "reason": "nomad_unavailable"}
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
    versions = len(nomad.versions("web"))
    nomad.heal()
    assert settle(components(app).reconciler, 10)
    converged(consul, nomad, NEW)
    assert len(nomad.versions("web")) == versions  # adopted, not registered twice


def test_consul_stored_the_write_but_the_answer_was_lost(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(settings_for(consul, nomad, secret))
    store = components(app).store
    real_transact = store.transact

    def transact_answered_late(writes: Any) -> Any:
        # The transaction lands; its answer comes after consul.timeout (1 s).
        consul.require_fake().answer_late(2)
        return real_transact(writes)

    store.transact = transact_answered_late  # type: ignore[method-assign]
    answer = post_hook(app, secret, NEW)
    store.transact = real_transact  # type: ignore[method-assign]
    assert answer.status_code == 200  # re-read once: the caller hears what happened
    assert answer.json["changed"] is True
    consul.require_fake().heal()
    assert settle(components(app).reconciler, 10)
    converged(consul, nomad, NEW)


def test_nomad_down_then_back_lands_without_a_new_webhook(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(settings_for(consul, nomad, secret))
    nomad.refuse_connections()
    assert post_hook(app, secret, NEW).status_code == 202
    reconciler = components(app).reconciler
    settle(reconciler, 1)
    assert consul.record().rollout.attempts >= 2  # type: ignore[union-attr]
    nomad.resume()
    threading.Event().wait(0.25)  # past retry_max
    assert settle(reconciler, 10)
    converged(consul, nomad, NEW)


@pytest.fixture
def clocked() -> Iterator[tuple[ConsulHandle, FakeClock]]:
    clock = FakeClock()
    with FakeConsul(clock=clock) as fake:
        yield ConsulHandle(fake.url, None, fake), clock


def two_instances(consul: ConsulHandle, nomad: FakeNomad, secret: str, url: str) -> tuple[Any, Any]:
    settings = settings_for(consul, nomad, secret, url)
    return create_app(settings), create_app(settings)


def test_failover_the_other_instance_finishes_and_reports(
    clocked: tuple[ConsulHandle, FakeClock], nomad: FakeNomad, secret: str
) -> None:
    consul, clock = clocked
    nomad.script_deployments("stall")
    with Receiver() as receiver:
        first, second = two_instances(consul, nomad, secret, f"{receiver.url}/n")
        leader, follower = components(first).reconciler, components(second).reconciler
        leader.run_once()
        follower.run_once()
        assert (leader.leader, follower.leader) == (True, False)
        assert post_hook(first, secret, NEW).status_code == 200
        leader.run_once(wait=0.1)
        rollout = consul.record().rollout
        assert rollout is not None and rollout.state == "running"
        # The deployment ends and the leader records it, then dies before reporting.
        nomad.finish_deployment(str(rollout.deployment_id), "successful")
        # Dies first: neither the hand-over of what it just wrote nor the pass's delivery.
        leader.courier.send_now = lambda reports: None  # type: ignore[method-assign]
        leader.courier.deliver_all = lambda: 0  # type: ignore[method-assign]
        leader.run_once(wait=0.1)
        assert consul.record().reports  # recorded, not yet sent
        fake = consul.require_fake()
        session = getattr(leader.lock, "session", None)
        assert session and fake.expire_session(session)
        assert not follower.run_once()  # lock-delay still runs
        clock.advance(2)
        assert settle(follower, 5)
        assert follower.leader
        note = receiver.wait_for(1)[0].json()
        assert (note["status"], note["event_id"]) == ("success", "web:1:successful")
        assert consul.record().reports == ()
        converged(consul, nomad, NEW)


def test_failover_mid_deployment_noman_deploying_itself(
    clocked: tuple[ConsulHandle, FakeClock], nomad: FakeNomad, secret: str
) -> None:
    """The job is Noman's own: its new allocation replaces the instance that took the hook."""
    consul, clock = clocked
    nomad.script_deployments("stall")
    with Receiver() as receiver:
        old_instance, new_instance = two_instances(consul, nomad, secret, f"{receiver.url}/n")
        old = components(old_instance).reconciler
        old.run_once()
        assert post_hook(old_instance, secret, NEW).status_code == 200
        # The old allocation is stopped (kill -9): its session dies with it.
        fake = consul.require_fake()
        assert fake.expire_session(str(getattr(old.lock, "session", "")))
        clock.advance(2)
        new = components(new_instance).reconciler
        new.run_once(wait=0.1)
        assert new.leader
        rollout = consul.record().rollout
        assert rollout is not None and rollout.state == "running"
        nomad.finish_deployment(str(rollout.deployment_id), "successful")
        assert settle(new, 5)
        note = receiver.wait_for(1)[0].json()
        assert note["event_id"] == "web:1:successful"
        converged(consul, nomad, NEW)


def test_the_background_thread_reports_and_stops_cleanly(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("successful", after=0.2)
    with Receiver() as receiver:
        settings = settings_for(consul, nomad, secret, f"{receiver.url}/n")
        app = create_app(settings)
        reconciler = components(app).reconciler
        reconciler.idle_wait = 0.3
        reconciler.start()
        try:
            assert post_hook(app, secret, NEW).status_code == 200
            note = receiver.wait_for(1, timeout=10)[0].json()
            assert note["event_id"] == "web:1:successful"
        finally:
            assert reconciler.stop(5)
        assert not reconciler.running
        assert not [t for t in threading.enumerate() if t.name == "noman-reconciler"]
    converged(consul, nomad, NEW)


def test_a_key_set_by_hand_is_rolled_only_forward(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    """Found by the leader's full pass (every rollout.resync seconds), not by a wake."""
    settings = settings_for(consul, nomad, secret)
    settings = dataclasses.replace(
        settings, rollout=msgspec.structs.replace(settings.rollout, resync=0.05)
    )
    app = create_app(settings)
    reconciler = components(app).reconciler
    consul.put(consul.key("IMAGE_TAG"), "release-20200101000000")  # older than the job
    assert settle(reconciler, 5)
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == OLD  # type: ignore[index]
    consul.put(consul.key("IMAGE_TAG"), NEW)
    time.sleep(0.1)  # until the next full pass is due
    assert settle(reconciler, 10)
    converged(consul, nomad, NEW)
    assert consul.record().history[0].sender == "consul"


def test_the_file_store_single_process_always_leads(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, tmp_path: Any
) -> None:
    from noman.stores.file import FileStore

    settings = dataclasses.replace(
        settings_for(consul, nomad, secret),
        store_backend="file",
        store_path=str(tmp_path / "store.json"),
    )
    one, two = create_app(settings), create_app(settings)
    assert isinstance(components(one).store, FileStore)
    assert components(one).reconciler.run_once() is False
    assert components(one).reconciler.leader
    assert components(two).reconciler.run_once() is False
    assert not components(two).reconciler.leader  # the flock is held by the first
    components(one).reconciler.stop()
    components(two).reconciler.run_once()
    assert components(two).reconciler.leader
    components(two).reconciler.stop()


def test_forcing_the_tag_the_job_already_runs_ends_at_once(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    """The job's stable version already runs the tag: no deployment to wait for."""
    app = create_app(settings_for(consul, nomad, secret))
    consul.put(consul.key("IMAGE_TAG"), NEW)
    answer = post_hook(app, secret, OLD, force=True)
    assert answer.status_code == 200
    assert settle(components(app).reconciler, 5)
    rollout = consul.record().rollout
    assert rollout is not None
    assert (rollout.tag, rollout.state) == (OLD, "successful")
    assert len(nomad.versions("web")) == 1


def test_cli_deploy_wait_follows_the_rollout_to_its_end(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from noman.cli import main
    from tests.conftest import settings_toml

    nomad.script_deployments("successful", after=0.2)
    config = tmp_path / "noman.toml"
    config.write_text(
        settings_toml(
            consul,
            secret,
            strategy="rolling",
            extra=(
                '[services.web.nomad]\njob = "web"\n'
                f'[nomad]\naddress = "{nomad.url}"\ntimeout = 1\npoll_interval = 0.05\n'
            ),
        )
    )
    assert main(["--config", str(config), "deploy", "web", NEW, "--wait"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["rollout"]["tag"], result["rollout"]["state"]) == (NEW, "successful")
    converged(consul, nomad, NEW)


def test_the_hook_answers_the_version_the_reconciler_registered_first(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader may register between the hook's transaction and its fast path."""
    app = create_app(settings_for(consul, nomad, secret))
    parts = components(app)
    real = parts.store.transact

    def transact_then_lead(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        monkeypatch.setattr(parts.store, "transact", real)
        # The hand-over time (rollout.answer_within) has passed for the leader: a slow
        # hook, or clocks apart. It registers the new version first.
        parts.reconciler.clock = lambda: time.time() + 60
        assert parts.reconciler.run_once()
        return result

    monkeypatch.setattr(parts.store, "transact", transact_then_lead)
    answer = post_hook(app, secret, NEW)
    parts.reconciler.stop()
    assert answer.status_code == 200, answer.json
    assert answer.json["deployment"]["version"] == 1
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
    assert len(nomad.versions("web")) == 2  # registered once, by the reconciler
