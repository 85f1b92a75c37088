"""Rolling deploys through Nomad (fake Nomad over HTTP), end to end through the hook."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import requests
import requests_mock

from noman import create_app
from noman.config import NomadSettings, Settings
from noman.errors import UpstreamError
from noman.model import NomadTarget, Service
from noman.notify import sign
from noman.release import split_image
from noman.rollouts.nomad import NomadRollouts
from noman.wiring import components
from tests.conftest import RUNNING_TAG, ConsulHandle, make_settings, post_hook, settle
from tests.fakes import nomad as fake_nomad
from tests.fakes.nomad import SERVER_FIELDS, FakeNomad, sample_service_job
from tests.fakes.receiver import Receiver

OLD = RUNNING_TAG
NEW = "release-20240101000000"
PAYLOADS = Path(__file__).parent / "payloads"


def spec(job: dict[str, Any]) -> dict[str, Any]:
    """A job without the fields Nomad manages itself."""
    return {k: v for k, v in job.items() if k not in SERVER_FIELDS}


def rolling_settings(
    consul: ConsulHandle,
    nomad: FakeNomad,
    secret: str,
    update: str = "meta",
    extra: str = "",
    environ: dict[str, str] | None = None,
) -> Settings:
    tasks = 'tasks = ["web"]\n' if update == "image" else ""
    return make_settings(
        consul,
        secret,
        environ=environ,
        strategy="rolling",
        extra=(
            f'[services.web.nomad]\njob = "web"\nupdate = "{update}"\n{tasks}\n'
            f'[nomad]\naddress = "{nomad.url}"\ntimeout = 1\npoll_interval = 0.05\n'
            f"watch_timeout = 5\n{extra}"
        ),
    )


def test_meta_update_changes_exactly_one_field(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake makes each EvalID with uuid.uuid4(): record the ones it hands out.
    issued: list[uuid.UUID] = []

    def recording_uuid4() -> uuid.UUID:
        issued.append(uuid.uuid4())
        return issued[-1]

    monkeypatch.setattr(fake_nomad, "uuid", SimpleNamespace(uuid4=recording_uuid4))
    app = create_app(rolling_settings(consul, nomad, secret))
    before = nomad.job("web")
    assert before is not None
    answer = post_hook(app, secret, NEW)
    assert answer.status_code == 200, answer.json
    after = nomad.job("web")
    assert after is not None
    # The fake drew two: the new deployment's ID, then the evaluation's.
    deployment = requests.get(f"{nomad.url}/v1/job/web/deployment", timeout=5).json()
    (eval_id,) = {str(u) for u in issued} - {deployment["ID"]}
    assert answer.json["deployment"] == {
        "job": "web",
        "version": before["Version"] + 1,
        "eval_id": eval_id,
    }
    assert after["Version"] == before["Version"] + 1
    expected = spec(before)
    expected["Meta"] = {**before["Meta"], "NOMAN_IMAGE_TAG": NEW}
    assert spec(after) == expected
    assert nomad.registrations[-1]["EnforceIndex"] is True
    assert nomad.registrations[-1]["JobModifyIndex"] == before["JobModifyIndex"]
    assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW


def test_image_update_changes_only_the_image_tag(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(rolling_settings(consul, nomad, secret, update="image"))
    before = nomad.job("web")
    assert before is not None
    assert post_hook(app, secret, NEW).status_code == 200
    after = nomad.job("web")
    assert after is not None
    expected = json.loads(json.dumps(spec(before)))
    expected["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = f"stut/stut.dev:{NEW}"
    assert spec(after) == expected


@pytest.mark.parametrize(
    ("image", "name", "tag"),
    [
        ("stut/stut.dev:release-1", "stut/stut.dev", "release-1"),
        ("registry:5000/stut/app:v1", "registry:5000/stut/app", "v1"),
        ("registry:5000/stut/app", "registry:5000/stut/app", None),
        ("app@sha256:abc", "app", None),
        ("ghcr.io/a/b:v2@sha256:abc", "ghcr.io/a/b", "v2"),
        ("stut/app:${NOMAD_META_NOMAN_IMAGE_TAG}", "stut/app", "${NOMAD_META_NOMAN_IMAGE_TAG}"),
    ],
)
def test_split_image(image: str, name: str, tag: str | None) -> None:
    assert split_image(image) == (name, tag)


def test_concurrent_job_change_is_retried_not_overwritten(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(rolling_settings(consul, nomad, secret))
    rollouts: NomadRollouts = components(app).nomad
    original_register = rollouts.register
    interfered: list[bool] = []

    def register_after_operator_change(service: Service, state: Any, tag: str) -> Any:
        if not interfered:
            interfered.append(True)
            nomad.change_job("web", lambda job: job["Meta"].update(owner="ops"))
        return original_register(service, state, tag)

    rollouts.register = register_after_operator_change  # type: ignore[method-assign]
    answer = post_hook(app, secret, NEW)
    assert answer.status_code == 200
    job = nomad.job("web")
    assert job is not None
    assert job["Meta"] == {"owner": "ops", "NOMAN_IMAGE_TAG": NEW}
    assert len(nomad.registrations) == 2  # the first lost on EnforceIndex, then re-read


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("forbidden", "nomad_forbidden"),
        ("missing", "nomad_job_not_found"),
        ("error500", "nomad_unavailable"),
        ("hang", "nomad_unavailable"),
        ("refused", "nomad_unavailable"),
        ("bad_request", "nomad_error"),
    ],
)
def test_nomad_failures_leave_a_durable_pending_deploy(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, fault: str, code: str
) -> None:
    """202 with the reason; the key holds the new tag (no restore), the job is untouched."""
    key = consul.key("IMAGE_TAG")
    consul.put(key, OLD)
    settings = rolling_settings(consul, nomad, secret)
    if fault == "missing":
        target = dataclasses.replace(settings.services[0].nomad, job="nope")  # type: ignore[type-var]
        service = dataclasses.replace(settings.services[0], nomad=target)
        settings = dataclasses.replace(settings, services=(service,))
    app = create_app(settings)
    versions = len(nomad.versions("web"))
    if fault == "forbidden":
        nomad.fail_always(403, "Permission denied")
    elif fault == "error500":
        nomad.fail_always(500, "rpc error: no leader")
    elif fault == "hang":
        nomad.hang(5)
    elif fault == "refused":
        nomad.refuse_connections()
    elif fault == "bad_request":
        nomad.fail_always(400, "Job must be specified")
    answer = post_hook(app, secret, NEW)
    nomad.heal()
    if fault == "refused":
        nomad.resume()
    assert answer.status_code == 202, answer.json
    assert answer.json["rollout"] == {"state": "pending", "reason": code}
    assert answer.json["tag"] == NEW
    assert consul.get(key)[0] == NEW
    assert len(nomad.versions("web")) == versions
    rollout = consul.record().rollout
    assert rollout is not None
    assert (rollout.state, rollout.reason, rollout.attempts) == ("pending", code, 1)
    # Once Nomad is back, the reconciler lands the same deploy: no new webhook.
    if fault != "missing":
        assert settle(components(app).reconciler, 10)
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
        assert consul.record().rollout.state == "successful"  # type: ignore[union-attr]


def test_a_job_running_a_newer_tag_cancels_the_rollout(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    key = consul.key("IMAGE_TAG")
    consul.put(key, OLD)
    nomad.change_job(
        "web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG="release-20250101000000")
    )
    app = create_app(rolling_settings(consul, nomad, secret))
    answer = post_hook(app, secret, NEW)
    assert answer.status_code == 202
    assert answer.json["rollout"] == {"state": "cancelled", "reason": "stale_tag"}
    assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == "release-20250101000000"  # type: ignore[index]
    status = app.test_client().get(f"/hooks/{secret}/status").json
    assert status["rollout"]["state"] == "cancelled"
    assert status["running"] == "release-20250101000000"


def test_status_follows_the_rollout(consul: ConsulHandle, nomad: FakeNomad, secret: str) -> None:
    nomad.script_deployments("stall")
    app = create_app(rolling_settings(consul, nomad, secret))
    client = app.test_client()
    before = client.get(f"/hooks/{secret}/status").json
    assert before == {
        "service": "web",
        "strategy": "rolling",
        "key": consul.key("IMAGE_TAG"),
        "tag": None,
        "running": OLD,
        "frozen": False,
        "rollout": None,
        "history": [],
    }
    assert post_hook(app, secret, NEW).status_code == 200
    reconciler = components(app).reconciler
    reconciler.run_once(wait=0.2)
    state = client.get(f"/hooks/{secret}/status").json
    assert (state["tag"], state["running"]) == (NEW, NEW)
    rollout = state["rollout"]
    assert (rollout["state"], rollout["version"], rollout["desired"]) == ("running", 1, 2)
    assert rollout["deployment_id"]
    assert set(rollout) == {
        "seq", "state", "tag", "version", "deployment_id", "reason", "description", "attempts",
        "placed", "healthy", "desired", "updated_at",
    }  # fmt: skip
    assert state["history"][0]["outcome"] == "pending"
    # The old path is an alias; Bearer works too; a wrong secret is a 404.
    assert client.get(f"/hooks/{secret}/deployment").json == state
    bearer = client.get("/hooks/status", headers={"Authorization": f"Bearer {secret}"})
    assert bearer.json == state
    assert client.get("/hooks/wrong/status").status_code == 404
    nomad.finish_deployment(rollout["deployment_id"], "successful")
    assert settle(reconciler, 5)
    done = client.get(f"/hooks/{secret}/status").json
    assert done["rollout"]["state"] == "successful"
    assert done["history"][0]["outcome"] == "successful"


def test_status_of_a_restart_service(client: Any, secret: str) -> None:
    answer = client.get(f"/hooks/{secret}/status")
    assert answer.status_code == 200
    assert (answer.json["strategy"], answer.json["running"], answer.json["rollout"]) == (
        "restart",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("outcome", "state", "notified"),
    [
        ("successful", "success", "success"),
        ("failed", "failure", "failure"),
        ("cancelled", "failure", "failure"),
    ],
)
def test_end_to_end_dockerhub_to_callback_and_notification(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, outcome: str, state: str, notified: str
) -> None:
    nomad.script_deployments(outcome, after=0.2)
    with Receiver() as dockerhub, Receiver() as notifier:
        settings = rolling_settings(
            consul,
            nomad,
            secret,
            extra=(
                f'[notify]\non = ["success", "failure"]\nbackoff = 0.01\n'
                f'[[notify.targets]]\nurl = "{notifier.url}/notify"\n'
                'secret_env = "NOTIFY_KEY"\n'
            ),
            environ={"NOTIFY_KEY": "notify-hmac-key"},
        )
        settings = dataclasses.replace(
            settings, callback_hosts=("127.0.0.1",), callback_allow_http=True
        )
        app = create_app(settings)
        payload = json.loads((PAYLOADS / "dockerhub-push.json").read_text())
        payload["push_data"]["tag"] = NEW
        payload["callback_url"] = f"{dockerhub.url}/u/stut/stut.dev/hook/abc/"
        before = nomad.job("web")
        answer = post_hook(app, secret, body=payload)
        assert answer.status_code == 200
        assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW
        after = nomad.job("web")
        assert after["Version"] >= before["Version"] + 1  # type: ignore[index]
        assert settle(components(app).reconciler, 10)
        callback = dockerhub.wait_for(1)[0]
        assert callback.path == "/u/stut/stut.dev/hook/abc/"
        assert callback.json()["state"] == state
        assert len(callback.json()["description"]) <= 255
        note = notifier.wait_for(1)[0]
        assert note.json()["status"] == notified
        assert note.json()["deployment"]["status"] == outcome
        assert note.json()["tag"] == NEW
        assert note.json()["event_id"] == f"web:1:{outcome}"
        assert note.headers["X-Noman-Signature-256"] == sign(b"notify-hmac-key", note.body)


def test_a_stalled_deployment_times_out(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    settings = rolling_settings(consul, nomad, secret)
    settings = dataclasses.replace(
        settings, nomad=msgspec.structs.replace(settings.nomad, watch_timeout=0.3)
    )
    app = create_app(settings)
    assert post_hook(app, secret, NEW).status_code == 200
    assert settle(components(app).reconciler, 5)
    rollout = consul.record().rollout
    assert rollout is not None
    assert (rollout.state, rollout.version) == ("timed_out", 1)
    assert consul.record().history[0].outcome == "timed_out"


def test_follow_blocks_on_its_own_deployment_by_id(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    app = create_app(rolling_settings(consul, nomad, secret))
    assert post_hook(app, secret, NEW).status_code == 200
    rollouts = components(app).nomad
    assert rollouts is not None
    service = components(app).settings.services[0]
    found, index = rollouts.follow(service, 1, None, 0, 0)
    assert found is not None and found["status"] == "running"
    same, _ = rollouts.follow(service, 1, found["id"], index, 0.3)
    assert same is not None and same["status"] == "running"
    finisher = threading.Timer(0.2, nomad.finish_deployment, (found["id"], "successful"))
    finisher.start()
    started = time.monotonic()
    done, _ = rollouts.follow(service, 1, found["id"], index, 5)
    finisher.join()
    assert done is not None and done["status"] == "successful"
    assert time.monotonic() - started < 4  # woken by the change, not by the 5 s wait
    paths = [path for _, path, _, _ in nomad.requests]
    assert f"/v1/deployment/{found['id']}" in paths


def test_follow_reports_a_superseded_rollout_as_cancelled(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    app = create_app(rolling_settings(consul, nomad, secret))
    assert post_hook(app, secret, NEW).status_code == 200
    nomad.change_job("web", lambda job: job["Meta"].update(owner="ops"))
    rollouts = components(app).nomad
    assert rollouts is not None
    found, _ = rollouts.follow(components(app).settings.services[0], 1, None, 0, 0)
    assert found is not None
    assert (found["status"], found["version"]) == ("cancelled", 1)


MOCK_NOMAD = "http://nomad.invalid:4646"


def mocked_nomad_settings(consul: ConsulHandle, secret: str) -> Settings:
    return make_settings(
        consul,
        secret,
        strategy="rolling",
        extra=(
            f'[services.web.nomad]\njob = "web"\n[nomad]\naddress = "{MOCK_NOMAD}"\n'
            "timeout = 1\nregister_retries = 3\n"
        ),
    )


def mocked_job() -> dict[str, Any]:
    job = sample_service_job("web")
    job.update(Version=4, JobModifyIndex=50)
    return job


@pytest.mark.parametrize("status", [400, 409, 500])
def test_index_conflict_is_recognised_by_its_text_whatever_the_status(
    consul: ConsulHandle, secret: str, status: int
) -> None:
    import requests_mock

    conflict = "Enforcing job modify index 50: job exists with conflicting job modify index: 51"
    with requests_mock.Mocker(real_http=True) as mock:
        mock.get(f"{MOCK_NOMAD}/v1/job/web", json=mocked_job())
        register = mock.post(
            f"{MOCK_NOMAD}/v1/job/web",
            [
                {"status_code": status, "text": conflict},
                {"json": {"EvalID": "e-2", "JobModifyIndex": 52}},
            ],
        )
        # The deployment ends at once, so the report's watch ends inside the mock.
        done = {"ID": "d-5", "JobID": "web", "JobVersion": 5, "Status": "successful"}
        mock.get(f"{MOCK_NOMAD}/v1/job/web/deployment", json=done)
        app = create_app(mocked_nomad_settings(consul, secret))
        answer = post_hook(app, secret, NEW)
        assert answer.status_code == 200, answer.json
        assert answer.json["deployment"] == {"job": "web", "version": 5, "eval_id": "e-2"}
        assert register.call_count == 2


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ({"status_code": 405, "text": "Invalid method"}, "nomad_error"),
        ({"status_code": 429, "text": "rate limited"}, "nomad_unavailable"),
        ({"status_code": 502, "text": "<html>bad gateway</html>"}, "nomad_unavailable"),
        ({"status_code": 403, "text": "ACL token not found"}, "nomad_forbidden"),
    ],
)
def test_nomad_register_error_shapes(
    consul: ConsulHandle, secret: str, response: dict[str, Any], code: str
) -> None:
    import requests_mock

    with requests_mock.Mocker(real_http=True) as mock:
        mock.get(f"{MOCK_NOMAD}/v1/job/web", json=mocked_job())
        mock.post(f"{MOCK_NOMAD}/v1/job/web", **response)
        answer = post_hook(create_app(mocked_nomad_settings(consul, secret)), secret, NEW)
    assert answer.status_code == 202
    assert answer.json["rollout"] == {"state": "pending", "reason": code}
    assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW


@pytest.mark.parametrize("token", [None, "some-token"])
@pytest.mark.parametrize(("status", "code"), [(403, "nomad_forbidden"), (500, "nomad_unavailable")])
@pytest.mark.parametrize("call", ["read", "follow"])
def test_python_nomad_calls_and_blocking_reads_map_answers_alike(
    token: str | None, status: int, code: str, call: str
) -> None:
    """One mapping for both paths: the raw blocking reads say 'no token configured' too."""
    url = "http://nomad.invalid:4646"
    rollouts = NomadRollouts(NomadSettings(address=url, token=token, timeout=1))
    service = Service("web", "a/b", "k", (b"",), strategy="rolling", nomad=NomadTarget("web"))
    with requests_mock.Mocker() as mock:
        mock.get(re.compile(r".*/v1/job/web.*"), status_code=status, text="Permission denied")
        with pytest.raises(UpstreamError) as failed:
            if call == "read":
                rollouts.read(service)
            else:
                rollouts.follow(service, 2, None, 5, 0.5)
    assert failed.value.code == code
    assert failed.value.address == url
    no_token = "no token configured" in failed.value.message
    assert no_token is (token is None and status == 403)
    assert "the deploy was not started" not in failed.value.message
