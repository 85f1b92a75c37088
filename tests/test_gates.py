"""Approvals and deploy windows end to end: hooks, the operator API, the leader's timers.

Every scenario runs against the fake Consul (and, for rolling services, the fake Nomad),
with the deployer's clock injected where time matters (expiry, windows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from noman import create_app
from noman.config import Settings
from noman.state import Keys
from noman.wiring import components
from tests.conftest import (
    RUNNING_TAG,
    ConsulHandle,
    make_settings,
    post_hook,
    rolling_extra,
    settle,
)
from tests.fakes.nomad import FakeNomad
from tests.fakes.receiver import Receiver

T1 = "release-20240101000000"
T2 = "release-20240201000000"
T3 = "release-20240301000000"
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
ADMIN = "admin-" + "u" * 40
SATURDAY = datetime(2024, 1, 6, 10, 0, tzinfo=UTC).timestamp()
MONDAY_9 = datetime(2024, 1, 8, 9, 0, tzinfo=UTC).timestamp()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


OPERATORS = (
    f'[[operators]]\nname = "alice"\ntoken_sha256 = "{sha(ALICE)}"\n'
    f'[[operators]]\nname = "bob"\ntoken_sha256 = "{sha(BOB)}"\n'
    f'[ui]\ntoken_sha256 = "{sha(ADMIN)}"\npublic_url = "https://noman.example"\n'
)
WEEKDAYS = (
    '[[services.web.windows]]\nkind = "allow"\nschedule = "0 9 * * mon-fri"\nduration = "8h"\n'
)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_with(
    consul: ConsulHandle, secret: str, service: str = "", extra: str = "", **fields: Any
) -> Settings:
    return make_settings(consul, secret, extra=f"{service}{OPERATORS}{extra}", **fields)


def app_for(settings: Settings, clock: Callable[[], float] | None = None) -> Any:
    app = create_app(settings)
    if clock is not None:
        components(app).deployer.clock = clock
    return app


def operator(app: Any, action: str, token: str, **body: Any) -> Any:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    if body:
        return client.post(f"/api/services/web/{action}", json=body, headers=headers)
    return client.post(f"/api/services/web/{action}", headers=headers)


def key(consul: ConsulHandle) -> str | None:
    return consul.get(consul.key("IMAGE_TAG"))[0]


def outbox(consul: ConsulHandle) -> list[dict[str, Any]]:
    folder = f"{Keys(consul.state_prefix).outbox_folder}web/"
    return [json.loads(v) for _, v in sorted(consul.tree(folder).items())]


# -- approvals -------------------------------------------------------------------------------


def test_a_gated_deploy_is_recorded_reported_and_its_key_left_alone(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    notify = f'[[notify.targets]]\nkind = "slack"\nurl = "{receiver.url}/slack"\n'
    app = app_for(settings_with(consul, secret, extra=notify, approvals=2))
    answer = post_hook(app, secret, T1)
    assert answer.status_code == 202, answer.json
    rollout = answer.json["rollout"]
    assert (rollout["state"], rollout["tag"]) == ("awaiting_approval", T1)
    assert rollout["approvals"] == {"needed": 2, "by": []}
    assert rollout["expires_at"].endswith("Z")
    assert answer.json["changed"] is False
    assert key(consul) is None  # the tag key is not written
    record = consul.record()
    assert (record.history[0].tag, record.history[0].outcome) == (T1, "awaiting_approval")
    # Slack hears of it although notify.on is failures only: someone has to act.
    text = receiver.wait_for(1)[0].json()["text"]
    assert T1 in text and "awaits 2 more approvals" in text
    assert "https://noman.example/ui/services/web" in text
    status = app.test_client().get(f"/hooks/{secret}/status").json
    assert status["gate"]["state"] == "awaiting_approval"
    assert status["gate"]["tag"] == T1 and status["approvals"] == 2


def test_two_distinct_approvals_are_needed_and_the_same_operator_counts_once(
    consul: ConsulHandle, secret: str
) -> None:
    app = app_for(settings_with(consul, secret, approvals=2))
    assert post_hook(app, secret, T1).status_code == 202
    first = operator(app, "approve", ALICE, tag=T1)
    assert first.status_code == 202, first.json
    assert first.json["rollout"]["approvals"] == {"needed": 2, "by": ["alice"]}
    assert key(consul) is None
    desired_key = Keys(consul.state_prefix).desired("web")
    before = consul.get(desired_key)
    again = operator(app, "approve", ALICE)
    assert again.status_code == 202
    assert again.json["rollout"]["approvals"]["by"] == ["alice"]
    assert consul.get(desired_key) == before  # nothing written
    done = operator(app, "approve", BOB, tag=T1)
    assert done.status_code == 200, done.json
    assert (done.json["tag"], done.json["changed"]) == (T1, True)
    assert key(consul) == T1
    entry = consul.record().history[0]
    assert (entry.tag, entry.outcome, entry.approvers) == (T1, "successful", ("alice", "bob"))
    assert "approved by bob" in entry.description
    assert not consul.tree(Keys(consul.state_prefix).gate("web"))  # the timer is gone
    assert operator(app, "approve", ALICE).json["error"] == "not_current"


def test_a_rejection_ends_it_and_is_reported(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    assert post_hook(app, secret, T1).status_code == 202
    wrong = operator(app, "reject", BOB, tag=T2)
    assert (wrong.status_code, wrong.json["error"]) == (409, "not_current")
    answer = operator(app, "reject", BOB, tag=T1, reason="not on a Friday")
    assert answer.status_code == 200, answer.json
    assert answer.json["rollout"] == {"state": "rejected", "tag": T1, "by": "bob"}
    assert key(consul) is None
    entry = consul.record().history[0]
    assert (entry.outcome, entry.description) == ("rejected", "rejected by bob: not on a Friday")
    assert entry.ended
    assert operator(app, "approve", ALICE).status_code == 409
    assert consul.record().history[0].outcome == "rejected"


def test_a_newer_push_supersedes_what_waits(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    assert post_hook(app, secret, T1).status_code == 202
    assert operator(app, "approve", ALICE, tag=T1).status_code == 200  # T1 lands
    assert post_hook(app, secret, T2).status_code == 202
    assert post_hook(app, secret, T3).status_code == 202
    history = consul.record().history
    assert [(h.tag, h.outcome) for h in history] == [
        (T3, "awaiting_approval"),
        (T2, "superseded"),
        (T1, "successful"),
    ]
    assert "superseded by release-20240301000000" in history[1].description
    stale = operator(app, "approve", ALICE, tag=T2)
    assert stale.status_code == 409 and T3 in stale.json["message"]
    # An older tag than what waits is refused like an older tag than the deployed one.
    older = post_hook(app, secret, T2)
    assert (older.status_code, older.json["error"]) == (409, "stale_tag")
    assert operator(app, "approve", ALICE, tag=T3).status_code == 200
    assert key(consul) == T3


def test_the_same_tag_pushed_again_keeps_its_approvals(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=2))
    assert post_hook(app, secret, T1).status_code == 202
    assert operator(app, "approve", ALICE).status_code == 202
    again = post_hook(app, secret, T1)
    assert again.status_code == 202
    assert again.json["rollout"]["approvals"]["by"] == ["alice"]
    assert len(consul.record().history) == 1


def test_a_proposal_expires_on_the_leaders_clock(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    clock = Clock(SATURDAY)
    notify = f'[[notify.targets]]\nurl = "{receiver.url}/n"\n'
    settings = settings_with(consul, secret, extra=notify, approvals=2, approval_ttl="2h")
    app = app_for(settings, clock)
    parts = components(app)
    assert post_hook(app, secret, T1).status_code == 202
    assert operator(app, "approve", ALICE).status_code == 202
    clock.now += 7199
    parts.reconciler.run_once()
    assert consul.record().history[0].outcome == "awaiting_approval"
    assert 0 < (parts.gates.next_due() or 0) <= 1
    clock.now += 1
    parts.reconciler.run_once()
    entry = consul.record().history[0]
    assert (entry.outcome, entry.description) == ("expired", "expired: 1 of 2 approvals in time")
    assert key(consul) is None
    late = operator(app, "approve", BOB)
    assert (late.status_code, late.json["error"]) == (409, "not_current")
    states = [r.json()["state"] for r in receiver.wait_for(2)]
    assert states == ["awaiting_approval", "expired"]
    assert settle(parts.reconciler, 5)


def test_an_approval_after_its_expiry_but_before_the_leader_is_refused(
    consul: ConsulHandle, secret: str
) -> None:
    clock = Clock(SATURDAY)
    app = app_for(settings_with(consul, secret, approvals=1, approval_ttl="1h"), clock)
    assert post_hook(app, secret, T1).status_code == 202
    clock.now += 3600
    answer = operator(app, "approve", ALICE)
    assert (answer.status_code, answer.json["error"]) == (409, "not_current")
    assert "expired" in answer.json["message"]
    assert key(consul) is None


def test_a_restart_between_proposal_and_approval_loses_nothing(
    consul: ConsulHandle, secret: str
) -> None:
    settings = settings_with(consul, secret, approvals=2)
    first = app_for(settings)
    assert post_hook(first, secret, T1).status_code == 202
    assert operator(first, "approve", ALICE).status_code == 202
    del first  # the process that took the hook and the first approval is gone
    second = app_for(settings)
    assert second.test_client().get(f"/hooks/{secret}/status").json["gate"]["approvals"] == {
        "needed": 2,
        "by": ["alice"],
    }
    assert operator(second, "approve", BOB).status_code == 200
    assert key(consul) == T1


def test_rollbacks_are_not_gated_unless_asked(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    for tag in (T1, T2):
        assert post_hook(app, secret, tag).status_code == 202
        assert operator(app, "approve", ALICE).status_code == 200
    assert post_hook(app, secret, T3).status_code == 202  # waits
    back = app.test_client().post(f"/hooks/{secret}/rollback")
    assert back.status_code == 200 and back.json["tag"] == T1
    assert key(consul) == T1
    assert [h.outcome for h in consul.record().history[:2]] == ["successful", "superseded"]
    gated = app_for(settings_with(consul, secret, approvals=1, approve_rollbacks=True))
    again = gated.test_client().post(f"/hooks/{secret}/rollback", json={"tag": T2})
    assert again.status_code == 202 and again.json["rollout"]["state"] == "awaiting_approval"
    assert key(consul) == T1


def test_a_frozen_service_refuses_approvals(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    assert post_hook(app, secret, T1).status_code == 202
    assert app.test_client().post(f"/hooks/{secret}/freeze").status_code == 200
    answer = operator(app, "approve", ALICE)
    assert (answer.status_code, answer.json["error"]) == (423, "frozen")
    assert key(consul) is None
    assert app.test_client().post(f"/hooks/{secret}/unfreeze").status_code == 200
    assert operator(app, "approve", ALICE).status_code == 200


def test_an_approved_rolling_deploy_rolls_out_as_a_pushed_one_would(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    settings = settings_with(
        consul, secret, service=rolling_extra(nomad), strategy="rolling", approvals=1
    )
    app = app_for(settings)
    assert post_hook(app, secret, T1).status_code == 202
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == RUNNING_TAG  # type: ignore[index]
    answer = operator(app, "approve", ALICE)
    assert answer.status_code == 200, answer.json
    assert answer.json["deployment"]["version"] >= 1  # registered inline, as a hook does
    assert settle(components(app).reconciler, 10)
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == T1  # type: ignore[index]
    record = consul.record()
    assert record.rollout is not None and (record.rollout.tag, record.rollout.state) == (
        T1,
        "successful",
    )
    assert (record.history[0].outcome, record.history[0].approvers) == ("successful", ("alice",))


# -- who may call the operator endpoints ----------------------------------------------------

ROUTES = [
    ("post", "/api/services/web/approve"),
    ("post", "/api/services/web/reject"),
    ("post", "/api/services/web/deploy-now"),
    ("get", "/api/metrics/dora"),
    ("get", "/api/metrics/dora?service=web"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_hook_secret_never_authorises_an_operator_endpoint(
    consul: ConsulHandle, secret: str, method: str, path: str
) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    assert post_hook(app, secret, T1).status_code == 202
    before = consul.tree(consul.state_prefix), key(consul)
    client = app.test_client()
    cases = [
        ({"Authorization": f"Bearer {secret}"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {ADMIN}"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {'x' * 43}"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {ALICE}"}, 401, "unauthorized"),
        ({}, 401, "unauthorized"),
    ]
    for headers, status, code in cases:
        answer = getattr(client, method)(path, headers=headers, json={"tag": T1})
        assert (answer.status_code, answer.json["error"]) == (status, code), headers
        assert secret not in answer.get_data(as_text=True)
    assert (consul.tree(consul.state_prefix), key(consul)) == before  # nothing written


def test_without_operators_the_api_is_not_there(consul: ConsulHandle, secret: str) -> None:
    app = app_for(make_settings(consul, secret))
    answer = app.test_client().post(
        "/api/services/web/approve", headers={"Authorization": f"Bearer {secret}"}
    )
    assert (answer.status_code, answer.json["error"]) == (404, "not_found")


def test_operator_bodies_are_checked(consul: ConsulHandle, secret: str) -> None:
    app = app_for(settings_with(consul, secret, approvals=1))
    assert post_hook(app, secret, T1).status_code == 202
    for body, code in (
        ({"tag": T1, "force": True}, "invalid_payload"),
        ({"tag": 5}, "invalid_payload"),
        ({"reason": "x" * 201}, "invalid_payload"),
    ):
        answer = operator(app, "reject", ALICE, **body)
        assert (answer.status_code, answer.json["error"]) == (400, code)
    unknown = app.test_client().post(
        "/api/services/nope/approve", headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert unknown.status_code == 404
    assert consul.record().history[0].outcome == "awaiting_approval"


# -- deploy windows --------------------------------------------------------------------------


def test_a_held_deploy_is_applied_by_the_leader_when_its_window_opens(
    consul: ConsulHandle, secret: str
) -> None:
    clock = Clock(SATURDAY)
    app = app_for(settings_with(consul, secret, service=WEEKDAYS), clock)
    parts = components(app)
    answer = post_hook(app, secret, T1)
    assert answer.status_code == 202, answer.json
    assert answer.json["rollout"] == {"state": "held", "tag": T1, "until": "2024-01-08T09:00:00Z"}
    assert key(consul) is None
    status = app.test_client().get(f"/hooks/{secret}/status").json
    assert status["windows"]["deploys_allowed"] is False
    assert status["windows"]["next"]["starts"] == "2024-01-08T09:00:00Z"
    parts.reconciler.run_once()
    assert key(consul) is None
    clock.now = MONDAY_9 - 1
    parts.reconciler.run_once()
    assert key(consul) is None
    clock.now = MONDAY_9
    parts.reconciler.run_once()  # no new webhook: the leader's timer
    assert key(consul) == T1
    entry = consul.record().history[0]
    assert (entry.outcome, entry.ended) == ("successful", "2024-01-08T09:00:00Z")
    assert "its deploy window opened" in entry.description
    assert post_hook(app, secret, T2).status_code == 200  # inside the window: at once
    assert key(consul) == T2


def test_deploy_now_overrides_the_window_and_is_recorded(consul: ConsulHandle, secret: str) -> None:
    clock = Clock(SATURDAY)
    app = app_for(settings_with(consul, secret, service=WEEKDAYS), clock)
    assert post_hook(app, secret, T1).status_code == 202
    answer = operator(app, "deploy-now", BOB, tag=T1)
    assert answer.status_code == 200, answer.json
    assert key(consul) == T1
    entry = consul.record().history[0]
    assert (entry.outcome, entry.override) == ("successful", "bob")
    assert "deploy-now by bob" in entry.description
    assert operator(app, "deploy-now", BOB).json["error"] == "not_current"


def test_approved_during_a_freeze_window_it_is_held_then_lands(
    consul: ConsulHandle, secret: str
) -> None:
    clock = Clock(SATURDAY)
    app = app_for(settings_with(consul, secret, service=WEEKDAYS, approvals=1), clock)
    parts = components(app)
    assert post_hook(app, secret, T1).json["rollout"]["state"] == "awaiting_approval"
    held = operator(app, "approve", ALICE)
    assert held.status_code == 202
    assert held.json["rollout"] == {"state": "held", "tag": T1, "until": "2024-01-08T09:00:00Z"}
    assert consul.record().history[0].outcome == "held"
    clock.now = MONDAY_9 + 60
    parts.reconciler.run_once()
    assert key(consul) == T1
    assert consul.record().history[0].approvers == ("alice",)


def test_a_rollback_is_never_held_by_a_window(consul: ConsulHandle, secret: str) -> None:
    clock = Clock(MONDAY_9 + 60)
    app = app_for(settings_with(consul, secret, service=WEEKDAYS), clock)
    for tag in (T1, T2):
        assert post_hook(app, secret, tag).status_code == 200
    clock.now = SATURDAY + 7 * 86400
    assert post_hook(app, secret, T3).status_code == 202  # held
    back = app.test_client().post(f"/hooks/{secret}/rollback")
    assert back.status_code == 200 and key(consul) == T1


def test_a_global_deny_window_holds_every_service(consul: ConsulHandle, secret: str) -> None:
    freeze = '[[windows]]\nkind = "deny"\nschedule = "0 17 * * fri"\nduration = "64h"\n'
    clock = Clock(SATURDAY)
    app = app_for(settings_with(consul, secret, extra=freeze), clock)
    answer = post_hook(app, secret, T1)
    assert answer.json["rollout"] == {"state": "held", "tag": T1, "until": "2024-01-08T09:00:00Z"}


def test_a_dockerhub_push_that_waits_is_called_back_once_it_ends(
    consul: ConsulHandle, secret: str, receiver: Receiver
) -> None:
    settings = dataclasses.replace(
        settings_with(consul, secret, approvals=1),
        callback_hosts=("127.0.0.1",),
        callback_allow_http=True,
    )
    app = app_for(settings)
    parts = components(app)

    def push(tag: str) -> Any:
        payload = {
            "callback_url": f"{receiver.url}/cb/{tag}",
            "push_data": {"tag": tag, "pushed_at": 1672734600, "pusher": "stut"},
            "repository": {"repo_name": "stut/stut.dev", "name": "stut.dev", "namespace": "stut"},
        }
        return post_hook(app, secret, body=payload)

    assert push(T1).status_code == 202
    assert parts.courier.wait(5) and parts.reporter.wait(5)
    assert receiver.received == []  # not "success, already deployed": nothing is yet
    assert operator(app, "approve", ALICE).status_code == 200
    landed = receiver.wait_for(1)[0]
    assert (landed.path, landed.json()["state"]) == (f"/cb/{T1}", "success")
    assert push(T2).status_code == 202
    assert operator(app, "reject", ALICE).status_code == 200
    rejected = receiver.wait_for(2)[1]
    assert (rejected.path, rejected.json()["state"]) == (f"/cb/{T2}", "failure")
    assert "rejected by alice" in rejected.json()["description"]


def test_a_held_rolling_deploy_rolls_out_when_its_window_opens(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    clock = Clock(SATURDAY)
    settings = settings_with(
        consul, secret, service=rolling_extra(nomad) + WEEKDAYS, strategy="rolling"
    )
    app = app_for(settings, clock)
    parts = components(app)
    assert post_hook(app, secret, T1).json["rollout"]["state"] == "held"
    assert settle(parts.reconciler, 5)  # waiting for a window is not work in flight
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == RUNNING_TAG  # type: ignore[index]
    clock.now = MONDAY_9
    assert settle(parts.reconciler, 10)
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == T1  # type: ignore[index]
    record = consul.record()
    assert record.rollout is not None and record.rollout.state == "successful"
    assert record.history[0].outcome == "successful"


def test_a_new_leader_carries_a_held_deploy_and_a_lost_timer_is_set_again(
    consul: ConsulHandle, secret: str
) -> None:
    clock = Clock(SATURDAY)
    settings = settings_with(consul, secret, service=WEEKDAYS)
    first, second = app_for(settings, clock), app_for(settings, clock)
    old_leader = components(first).reconciler
    old_leader.run_once()
    assert old_leader.leader
    assert post_hook(first, secret, T1).json["rollout"]["state"] == "held"
    old_leader.stop()  # the leader goes away while the deploy is held
    new_leader = components(second).reconciler
    consul.http.delete(f"{consul.url}/v1/kv/{Keys(consul.state_prefix).gate('web')}")
    clock.now = MONDAY_9 + 5
    for _ in range(50):  # the lock may still be held for a moment
        new_leader.run_once()
        if new_leader.leader:
            break
        time.sleep(0.1)
    assert new_leader.leader
    new_leader.run_once()  # the full pass set the lost timer, due now: this pass lands it
    assert key(consul) == T1
    assert consul.record().history[0].outcome == "successful"
    new_leader.stop()


def test_deploy_wait_says_what_holds_it(
    consul: ConsulHandle, secret: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from noman.cli import main
    from tests.conftest import settings_toml

    config = tmp_path / "noman.toml"
    config.write_text(settings_toml(consul, secret, OPERATORS, approvals=1), encoding="utf-8")
    assert main(["deploy", "web", T1, "--wait", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["rollout"]["state"] == "awaiting_approval"
    assert "web release-20240101000000: awaiting approval; nothing rolls out until then" in err


def test_a_proposal_and_each_approval_cost_what_a_deploy_costs(
    consul: ConsulHandle, secret: str
) -> None:
    """One read and one write transaction each, as tests/test_state_layout.py counts a
    deploy (and, like a deploy that writes a report, the delete of the delivered report)."""
    fake = consul.require_fake()
    app = app_for(settings_with(consul, secret, approvals=2))
    parts = components(app)
    assert post_hook(app, secret, T1).status_code == 202  # the service's state exists from here
    assert parts.courier.wait(5)

    def requests_for(action: Callable[[], Any]) -> int:
        before = fake.answered
        action()
        assert parts.courier.wait(5)
        return fake.answered - before

    # read txn + write txn + the deletes of its two delivered reports (T2 awaiting_approval,
    # T1 superseded)
    assert requests_for(lambda: post_hook(app, secret, T2)) == 4
    assert requests_for(lambda: operator(app, "approve", ALICE)) == 2  # read + write
    assert requests_for(lambda: operator(app, "approve", ALICE)) == 1  # counted once: a read
    assert requests_for(lambda: operator(app, "approve", BOB)) == 2  # read + the landing write
    assert key(consul) == T2
