"""Rolling deploys through Nomad (fake Nomad over HTTP), end to end through the hook."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from noman import create_app
from noman.config import Service, Settings
from noman.notify import sign
from noman.release import split_image
from noman.rollouts.nomad import NomadRollouts
from tests.conftest import ConsulHandle, make_settings
from tests.fakes import nomad as fake_nomad
from tests.fakes.nomad import SERVER_FIELDS, FakeNomad, sample_service_job
from tests.fakes.receiver import Receiver

OLD = "release-20230101000000"
NEW = "release-20240101000000"
PAYLOADS = Path(__file__).parent / "payloads"


def spec(job: dict[str, Any]) -> dict[str, Any]:
    """A job without the fields Nomad manages itself."""
    return {k: v for k, v in job.items() if k not in SERVER_FIELDS}


@pytest.fixture
def nomad() -> Iterator[FakeNomad]:
    with FakeNomad() as fake:
        job = sample_service_job("web", image=f"stut/stut.dev:{OLD}")
        job["Meta"]["NOMAN_IMAGE_TAG"] = OLD
        fake.add_job(job)
        yield fake


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


def hook(app: Any, secret: str, body: dict[str, Any]) -> Any:
    return app.test_client().post(f"/hooks/{secret}", json=body)


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
    answer = hook(app, secret, {"tag": NEW})
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
    app.extensions["noman.reporter"].wait(5)


def test_image_update_changes_only_the_image_tag(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    app = create_app(rolling_settings(consul, nomad, secret, update="image"))
    before = nomad.job("web")
    assert before is not None
    assert hook(app, secret, {"tag": NEW}).status_code == 200
    after = nomad.job("web")
    assert after is not None
    expected = json.loads(json.dumps(spec(before)))
    expected["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = f"stut/stut.dev:{NEW}"
    assert spec(after) == expected
    app.extensions["noman.reporter"].wait(5)


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
    rollouts: NomadRollouts = app.extensions["noman.nomad"]
    original_register = rollouts.register
    interfered: list[bool] = []

    def register_after_operator_change(service: Service, state: Any, tag: str) -> Any:
        if not interfered:
            interfered.append(True)
            nomad.change_job("web", lambda job: job["Meta"].update(owner="ops"))
        return original_register(service, state, tag)

    rollouts.register = register_after_operator_change  # type: ignore[method-assign]
    answer = hook(app, secret, {"tag": NEW})
    assert answer.status_code == 200
    job = nomad.job("web")
    assert job is not None
    assert job["Meta"] == {"owner": "ops", "NOMAN_IMAGE_TAG": NEW}
    assert len(nomad.registrations) == 2  # the first lost on EnforceIndex, then re-read
    app.extensions["noman.reporter"].wait(5)


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("forbidden", 502, "nomad_forbidden"),
        ("missing", 502, "nomad_job_not_found"),
        ("error500", 503, "nomad_unavailable"),
        ("hang", 503, "nomad_unavailable"),
        ("refused", 503, "nomad_unavailable"),
        ("bad_request", 502, "nomad_error"),
    ],
)
def test_nomad_failures_leave_consul_and_nomad_as_they_were(
    consul: ConsulHandle, nomad: FakeNomad, secret: str, fault: str, status: int, code: str
) -> None:
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
    answer = hook(app, secret, {"tag": NEW})
    nomad.heal()
    if fault == "refused":
        nomad.resume()
    assert answer.status_code == status
    assert answer.json["error"] == code
    if status == 503:
        assert "Retry-After" in answer.headers
    assert consul.get(key)[0] == OLD
    assert len(nomad.versions("web")) == versions
    # Once Nomad is back, the same call deploys completely.
    if fault != "missing":
        assert hook(app, secret, {"tag": NEW}).status_code == 200
        assert consul.get(key)[0] == NEW
        assert nomad.job("web")["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
    app.extensions["noman.reporter"].wait(5)


def test_newer_tag_in_the_job_makes_the_hook_stale_and_restores_consul(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    key = consul.key("IMAGE_TAG")
    consul.put(key, OLD)
    nomad.change_job(
        "web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG="release-20250101000000")
    )
    app = create_app(rolling_settings(consul, nomad, secret))
    answer = hook(app, secret, {"tag": NEW})
    assert answer.status_code == 409
    assert answer.json["error"] == "stale_tag"
    assert consul.get(key)[0] == OLD


def test_deployment_endpoint(consul: ConsulHandle, nomad: FakeNomad, secret: str) -> None:
    nomad.script_deployments("stall")
    app = create_app(rolling_settings(consul, nomad, secret))
    client = app.test_client()
    assert client.get(f"/hooks/{secret}/deployment").json == {"service": "web", "deployment": None}
    hook(app, secret, {"tag": NEW})
    state = client.get(f"/hooks/{secret}/deployment").json["deployment"]
    assert state["job"] == "web"
    assert state["version"] == 1
    assert state["status"] == "running"
    assert state["desired"] == 2
    assert {"healthy", "unhealthy", "placed", "description", "id"} <= set(state)
    assert client.get("/hooks/wrong/deployment").status_code == 404
    # The report's watch of the stalled deployment gives up after watch_timeout (5 s).
    assert app.extensions["noman.reporter"].wait(10)


def test_deployment_endpoint_for_restart_service_is_409(client: Any, secret: str) -> None:
    answer = client.get(f"/hooks/{secret}/deployment")
    assert answer.status_code == 409
    assert answer.json["error"] == "not_rolling"


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
        answer = app.test_client().post(f"/hooks/{secret}", json=payload)
        assert answer.status_code == 200
        assert consul.get(consul.key("IMAGE_TAG"))[0] == NEW
        after = nomad.job("web")
        assert after["Version"] == before["Version"] + 1  # type: ignore[index]
        assert spec(after)["Meta"] == {**before["Meta"], "NOMAN_IMAGE_TAG": NEW}  # type: ignore[index]
        callback = dockerhub.wait_for(1)[0]
        assert callback.path == "/u/stut/stut.dev/hook/abc/"
        assert callback.json()["state"] == state
        assert len(callback.json()["description"]) <= 255
        note = notifier.wait_for(1)[0]
        assert note.json()["status"] == notified
        assert note.json()["deployment"]["status"] == outcome
        assert note.json()["tag"] == NEW
        assert note.headers["X-Noman-Signature-256"] == sign(b"notify-hmac-key", note.body)
        assert app.extensions["noman.reporter"].wait(5)


def test_watch_deadline_reports_timeout(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    settings = rolling_settings(consul, nomad, secret)
    settings = dataclasses.replace(
        settings, nomad=dataclasses.replace(settings.nomad, watch_timeout=0.3)
    )
    app = create_app(settings)
    answer = hook(app, secret, {"tag": NEW})
    rollouts: NomadRollouts = app.extensions["noman.nomad"]
    from noman.release import Rollout

    result = rollouts.watch(settings.services[0], Rollout(**answer.json["deployment"]))
    assert result["status"] == "timeout"
    assert result["version"] == 1


def test_watch_follows_its_own_deployment_by_id(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("successful", after=0.3)
    app = create_app(rolling_settings(consul, nomad, secret))
    answer = hook(app, secret, {"tag": NEW})
    rollouts: NomadRollouts = app.extensions["noman.nomad"]
    from noman.release import Rollout

    result = rollouts.watch(
        app.extensions["noman.settings"].services[0], Rollout(**answer.json["deployment"])
    )
    assert (result["status"], result["version"]) == ("successful", 1)
    paths = [path for _, path, _, _ in nomad.requests]
    assert f"/v1/deployment/{result['id']}" in paths
    assert not any(path.endswith("/deployments") for path in paths)


def test_watch_reports_a_superseded_rollout_as_cancelled(
    consul: ConsulHandle, nomad: FakeNomad, secret: str
) -> None:
    nomad.script_deployments("stall")
    app = create_app(rolling_settings(consul, nomad, secret))
    answer = hook(app, secret, {"tag": NEW})
    nomad.change_job("web", lambda job: job["Meta"].update(owner="ops"))
    rollouts: NomadRollouts = app.extensions["noman.nomad"]
    from noman.release import Rollout

    result = rollouts.watch(
        app.extensions["noman.settings"].services[0], Rollout(**answer.json["deployment"])
    )
    assert result["status"] == "cancelled"
    assert result["version"] == 1


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
        answer = hook(app, secret, {"tag": NEW})
        assert answer.status_code == 200, answer.json
        assert answer.json["deployment"] == {"job": "web", "version": 5, "eval_id": "e-2"}
        assert register.call_count == 2
        assert app.extensions["noman.reporter"].wait(5)


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        ({"status_code": 405, "text": "Invalid method"}, 502, "nomad_error"),
        ({"status_code": 429, "text": "rate limited"}, 503, "nomad_unavailable"),
        ({"status_code": 502, "text": "<html>bad gateway</html>"}, 503, "nomad_unavailable"),
        ({"status_code": 403, "text": "ACL token not found"}, 502, "nomad_forbidden"),
    ],
)
def test_nomad_register_error_shapes(
    consul: ConsulHandle, secret: str, response: dict[str, Any], status: int, code: str
) -> None:
    import requests_mock

    with requests_mock.Mocker(real_http=True) as mock:
        mock.get(f"{MOCK_NOMAD}/v1/job/web", json=mocked_job())
        mock.post(f"{MOCK_NOMAD}/v1/job/web", **response)
        answer = hook(create_app(mocked_nomad_settings(consul, secret)), secret, {"tag": NEW})
    assert answer.status_code == status
    assert answer.json["error"] == code
    assert consul.get(consul.key("IMAGE_TAG")) == (None, 0)
