"""Tests of the fake Nomad server, over real HTTP with ``requests`` and through python-nomad."""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import nomad
import nomad.api.exceptions as nomad_exc
import pytest
import requests

from tests.fakes.consul import FakeConsul
from tests.fakes.nomad import (
    DISPATCH_SUFFIX,
    SERVER_FIELDS,
    FakeClock,
    FakeNomad,
    _Handler,
    sample_canary_job,
    sample_parameterized_job,
    sample_service_job,
)

OLD_IMAGE = "stut/stut.dev:release-20230101000000"
NEW_IMAGE = "stut/stut.dev:release-20240101000000"
TOKEN = "s3cr3t-0000-1111-2222-333333333333"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # python-nomad reads NOMAD_* and requests honours proxies: neither may redirect our calls.
    for name in (
        "NOMAD_ADDR",
        "NOMAD_TOKEN",
        "NOMAD_NAMESPACE",
        "NOMAD_REGION",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeNomad]:
    with FakeNomad() as server:
        yield server


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[FakeNomad]:
    """A fake whose scripted deployment outcomes happen only when the test moves ``clock``."""
    with FakeNomad(clock=clock) as server:
        yield server


@pytest.fixture
def acl_fake() -> Iterator[FakeNomad]:
    with FakeNomad(acl_token=TOKEN) as server:
        yield server


@pytest.fixture
def client(fake: FakeNomad) -> nomad.Nomad:
    return nomad.Nomad(host="127.0.0.1", port=fake.port, timeout=2)


def register_body(job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    """A register body; with ``index`` it is a check-and-set on JobModifyIndex."""
    body: dict[str, Any] = {"Job": job}
    if index is not None:
        body.update(EnforceIndex=True, JobModifyIndex=index)
    return body


def with_image(job: dict[str, Any], image: str) -> dict[str, Any]:
    job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = image
    return job


def spec_only(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in SERVER_FIELDS}


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (timing-tolerant assertions)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# ---- basics ---------------------------------------------------------------------------------


def test_status_leader_and_agent_self(fake: FakeNomad) -> None:
    resp = requests.get(f"{fake.url}/v1/status/leader", timeout=2)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == "127.0.0.1:4647"
    assert int(resp.headers["X-Nomad-Index"]) > 0
    agent = requests.get(f"{fake.url}/v1/agent/self", timeout=2).json()
    assert agent["config"]["Region"] == "global"
    assert agent["member"]["Status"] == "alive"


def test_url_host_port(fake: FakeNomad) -> None:
    assert fake.host == "127.0.0.1"
    assert fake.port > 0
    assert fake.url == f"http://127.0.0.1:{fake.port}"


def test_keep_alive_and_nodelay(fake: FakeNomad) -> None:
    assert _Handler.protocol_version == "HTTP/1.1"
    assert _Handler.disable_nagle_algorithm is True
    conn = http.client.HTTPConnection(fake.host, fake.port, timeout=2)
    try:
        for _ in range(3):  # three requests over one connection
            conn.request("GET", "/v1/status/leader")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Length") == str(len(b'"127.0.0.1:4647"'))
            assert json.loads(resp.read()) == "127.0.0.1:4647"
            assert not resp.will_close
    finally:
        conn.close()


# ---- reading jobs ---------------------------------------------------------------------------


def test_missing_job_is_404(fake: FakeNomad, client: nomad.Nomad) -> None:
    resp = requests.get(f"{fake.url}/v1/job/nope", timeout=2)
    assert resp.status_code == 404
    assert resp.text == "job not found"
    with pytest.raises(nomad_exc.URLNotFoundNomadException) as info:
        client.job.get_job("nope")
    assert info.value.nomad_resp.text == "job not found"


def test_add_job_sets_server_fields(fake: FakeNomad, client: nomad.Nomad) -> None:
    sent = sample_service_job()
    del sent["Name"]
    sent.update(Version=7, JobModifyIndex=3, Stop=True, Status="dead")  # all ignored
    stored = fake.add_job(sent)
    assert stored["Name"] == "web" and stored["Namespace"] == "default"
    assert stored["Version"] == 0 and stored["Stable"] is True
    assert stored["Status"] == "running" and stored["Stop"] is False
    assert stored["JobModifyIndex"] == stored["ModifyIndex"] == stored["CreateIndex"] > 10
    assert isinstance(stored["SubmitTime"], int) and stored["SubmitTime"] > 1_600_000_000 * 10**9
    assert spec_only(stored) == spec_only(sent)

    resp = requests.get(f"{fake.url}/v1/job/web", timeout=2)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["X-Nomad-Index"]) >= stored["ModifyIndex"]
    assert resp.json() == stored == client.job.get_job("web") == fake.job("web")
    # Copies: mutating what we got back does not touch the fake.
    stored["Meta"]["owner"] = "changed"
    assert fake.job("web")["Meta"]["owner"] == "web"  # type: ignore[index]
    with pytest.raises(ValueError):
        fake.add_job(sample_service_job())
    assert fake.job("nope") is None
    assert fake.versions("nope") == []


# ---- registering ----------------------------------------------------------------------------


def test_register_new_job_over_http(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    resp = requests.post(
        f"{fake.url}/v1/job/web", json=register_body(sample_service_job(), 0), timeout=2
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    answer = resp.json()
    assert set(answer) == {
        "EvalID",
        "EvalCreateIndex",
        "JobModifyIndex",
        "Warnings",
        "Index",
        "LastContact",
        "KnownLeader",
    }
    assert len(answer["EvalID"]) == 36 and answer["Warnings"] == ""
    job = fake.job("web")
    assert job is not None
    assert job["Version"] == 0 and job["Stable"] is False  # not stable until deployed
    assert job["JobModifyIndex"] == answer["JobModifyIndex"] == answer["Index"]
    assert len(fake.deployments("web")) == 1
    assert fake.registrations == [register_body(sample_service_job(), 0)]


def test_register_with_put_and_jobs_endpoint(fake: FakeNomad) -> None:
    resp = requests.put(
        f"{fake.url}/v1/job/web", json=register_body(sample_service_job()), timeout=2
    )
    assert resp.status_code == 200
    resp = requests.post(
        f"{fake.url}/v1/jobs", json=register_body(sample_service_job("api")), timeout=2
    )
    assert resp.status_code == 200
    stubs = requests.get(f"{fake.url}/v1/jobs", timeout=2).json()
    assert [stub["ID"] for stub in stubs] == ["api", "web"]
    assert len(fake.registrations) == 2


def test_enforce_index_success_then_conflict(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    job = client.job.get_job("web")
    index = job["JobModifyIndex"]
    answer = client.job.register_job("web", register_body(with_image(job, NEW_IMAGE), index=index))
    current = client.job.get_job("web")
    assert current["Version"] == 1
    assert current["JobModifyIndex"] == answer["JobModifyIndex"] > index
    assert current["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == NEW_IMAGE

    # Same stale index again: conflict, exactly like Nomad (HTTP 500, BaseNomadException).
    with pytest.raises(nomad_exc.BaseNomadException) as info:
        client.job.register_job("web", register_body(with_image(job, "x:2"), index=index))
    assert type(info.value) is nomad_exc.BaseNomadException
    assert info.value.nomad_resp.status_code == 500
    assert info.value.nomad_resp.text == (
        f"Enforcing job modify index {index}: job exists with conflicting job modify index: "
        f"{answer['JobModifyIndex']}"
    )
    assert "Enforcing job modify index" in info.value.nomad_resp.text
    assert len(fake.versions("web")) == 2
    assert len(fake.registrations) == 2  # rejected bodies are recorded too


def test_concurrent_check_and_set_has_one_winner(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job())
    job = fake.job("web")
    assert job is not None
    statuses: list[int] = []

    def attempt(n: int) -> None:
        body = register_body(with_image(copy.deepcopy(job), f"x:{n}"), job["JobModifyIndex"])
        resp = requests.post(f"{fake.url}/v1/job/web", json=body, timeout=5)
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [500] * 7
    assert len(fake.versions("web")) == 2
    assert len(fake.registrations) == 8


def test_enforce_index_on_missing_and_existing_job(fake: FakeNomad) -> None:
    url = f"{fake.url}/v1/job/web"
    resp = requests.post(url, json=register_body(sample_service_job(), 42), timeout=2)
    assert (resp.status_code, resp.text) == (
        500,
        "Enforcing job modify index 42: job does not exist",
    )
    assert fake.job("web") is None
    fake.add_job(sample_service_job())
    resp = requests.post(url, json=register_body(sample_service_job(), 0), timeout=2)
    assert (resp.status_code, resp.text) == (
        500,
        "Enforcing job modify index 0: job already exists",
    )
    # Without EnforceIndex the index in the body is ignored.
    body = {"Job": with_image(sample_service_job(), NEW_IMAGE), "JobModifyIndex": 1}
    assert requests.post(url, json=body, timeout=2).status_code == 200


def test_register_bad_requests(fake: FakeNomad, client: nomad.Nomad) -> None:
    with pytest.raises(nomad_exc.BadRequestNomadException) as info:
        client.job.register_job("other", register_body(sample_service_job()))
    assert info.value.nomad_resp.text == "Job ID does not match name"
    resp = requests.post(f"{fake.url}/v1/job/web", json={"EnforceIndex": True}, timeout=2)
    assert (resp.status_code, resp.text) == (400, "Job must be specified")
    resp = requests.post(f"{fake.url}/v1/job/web", data=b"{not json", timeout=2)
    assert resp.status_code == 400
    assert fake.job("web") is None and fake.job("other") is None
    assert len(fake.registrations) == 3


def test_server_fields_in_body_are_ignored(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    stored = fake.add_job(sample_service_job())
    job = with_image(sample_service_job(), NEW_IMAGE)
    job.update(
        Version=99,
        JobModifyIndex=1,
        ModifyIndex=1,
        CreateIndex=1,
        SubmitTime=1,
        Status="dead",
        Stable=True,
        Stop=True,
    )
    resp = requests.post(f"{fake.url}/v1/job/web", json=register_body(job), timeout=2)
    assert resp.status_code == 200
    current = fake.job("web")
    assert current is not None
    assert current["Version"] == 1 and current["Stable"] is False
    assert current["Status"] == "running" and current["Stop"] is False
    assert current["CreateIndex"] == stored["CreateIndex"]
    assert current["JobModifyIndex"] == current["ModifyIndex"] > stored["JobModifyIndex"]
    assert current["SubmitTime"] >= stored["SubmitTime"]


def test_identical_register_creates_no_version(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    stored = fake.add_job(sample_service_job())
    url = f"{fake.url}/v1/job/web"
    before = requests.get(url, timeout=2)
    index_before = int(before.headers["X-Nomad-Index"])
    # Send the job exactly as read back (server fields included) and without them.
    for body in (
        register_body(before.json(), stored["JobModifyIndex"]),
        register_body({"ID": "web", **spec_only(before.json())}),
    ):
        resp = requests.post(url, json=body, timeout=2)
        assert resp.status_code == 200
        answer = resp.json()
        assert answer["EvalID"]
        assert answer["JobModifyIndex"] == stored["JobModifyIndex"]
        assert answer["EvalCreateIndex"] > index_before  # the evaluation is still new
        index_before = answer["EvalCreateIndex"]
    assert fake.versions("web") == [stored]
    assert fake.deployments("web") == []
    # A null that Nomad would decode like a missing key is no change either.
    job = spec_only(stored)
    job["ID"] = "web"
    job["TaskGroups"][0]["Tasks"][0].pop("Meta")
    assert requests.post(url, json=register_body(job), timeout=2).status_code == 200
    assert len(fake.versions("web")) == 1


def test_versions_and_job_modify_index_rules(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    for n, image in enumerate(["a:1", "a:2"], start=1):
        job = client.job.get_job("web")
        client.job.register_job("web", register_body(with_image(job, image), job["JobModifyIndex"]))
        assert client.job.get_job("web")["Version"] == n
    answer = client.job.get_versions("web")
    assert answer["Diffs"] is None
    assert [v["Version"] for v in answer["Versions"]] == [2, 1, 0]  # newest first
    versions = fake.versions("web")  # oldest first
    assert [v["Version"] for v in versions] == [0, 1, 2]
    indexes = [v["JobModifyIndex"] for v in versions]
    assert indexes == sorted(set(indexes))
    assert all(v["CreateIndex"] == versions[0]["CreateIndex"] for v in versions)
    resp = requests.get(f"{fake.url}/v1/job/nope/versions", timeout=2)
    assert (resp.status_code, resp.text) == (404, "job versions not found")


def test_change_job_moves_index_and_breaks_stale_cas(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    job = client.job.get_job("web")
    changed = fake.change_job("web", lambda j: j["Meta"].update(owner="ops"))
    assert changed["Version"] == 1 and changed["Meta"] == {"owner": "ops"}
    assert changed["JobModifyIndex"] > job["JobModifyIndex"]
    assert len(fake.deployments("web")) == 1  # an operator "job run" deploys as well
    with pytest.raises(nomad_exc.BaseNomadException) as info:
        client.job.register_job(
            "web", register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"])
        )
    assert "Enforcing job modify index" in info.value.nomad_resp.text
    # A mutation that changes nothing makes no version.
    same = fake.change_job("web", lambda j: None)
    assert same["Version"] == 1 and same["JobModifyIndex"] == changed["JobModifyIndex"]
    with pytest.raises(KeyError):
        fake.change_job("nope", lambda j: None)


def test_revert_endpoint(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    with pytest.raises(nomad_exc.BaseNomadException) as info:
        client.job.revert_job("web", 0, enforce_prior_version=5)
    assert info.value.nomad_resp.text == "Current job has version 1; enforcing version 5"
    answer = client.job.revert_job("web", 0, enforce_prior_version=1)
    current = client.job.get_job("web")
    assert current["Version"] == 2 and current["JobModifyIndex"] == answer["JobModifyIndex"]
    assert current["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == OLD_IMAGE


# ---- namespaces -----------------------------------------------------------------------------


def test_namespaces(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job(), namespace="prod")
    default_client = nomad.Nomad(host="127.0.0.1", port=fake.port, timeout=2)
    prod_client = nomad.Nomad(host="127.0.0.1", port=fake.port, timeout=2, namespace="prod")
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        default_client.job.get_job("web")
    assert default_client.job.get_job("web", namespace="prod")["Namespace"] == "prod"
    job = prod_client.job.get_job("web")
    assert job["Namespace"] == "prod"
    prod_client.job.register_job(
        "web", register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"])
    )
    assert fake.job("web", namespace="prod")["Version"] == 1  # type: ignore[index]
    assert fake.job("web") is None
    assert fake.requests[-1][2] == {"namespace": ["prod"]}

    # Deployments are namespaced too.
    dep = prod_client.job.get_deployment("web")
    assert dep["Namespace"] == "prod"
    assert default_client.job.get_deployment("web") is None
    assert prod_client.deployment.get_deployment(dep["ID"])["ID"] == dep["ID"]
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        default_client.deployment.get_deployment(dep["ID"])

    # Same ID in another namespace is a different job.
    default_client.job.register_job("web", register_body(sample_service_job(), 0))
    assert fake.job("web")["Version"] == 0  # type: ignore[index]
    assert fake.job("web", namespace="prod")["Version"] == 1  # type: ignore[index]


def test_register_namespace_precedence(fake: FakeNomad) -> None:
    job = sample_service_job()
    job["Namespace"] = "team"
    # No ?namespace=: the job's Namespace is used, as Nomad does.
    assert requests.post(f"{fake.url}/v1/job/web", json={"Job": job}, timeout=2).ok
    assert fake.job("web", namespace="team") is not None
    # ?namespace= wins over the body.
    assert requests.post(
        f"{fake.url}/v1/job/web", params={"namespace": "qa"}, json={"Job": job}, timeout=2
    ).ok
    assert fake.job("web", namespace="qa") is not None
    assert fake.job("web") is None


# ---- deployments ----------------------------------------------------------------------------


def deploy_new_image(client: nomad.Nomad, image: str = NEW_IMAGE) -> dict[str, Any]:
    job = client.job.get_job("web")
    result: dict[str, Any] = client.job.register_job(
        "web", register_body(with_image(job, image), job["JobModifyIndex"])
    )
    return result


def test_no_deployment_before_first_version_change(fake: FakeNomad, client: nomad.Nomad) -> None:
    assert client.job.get_deployment("web") is None  # unknown job: null too
    fake.add_job(sample_service_job())
    assert client.job.get_deployment("web") is None
    assert client.job.get_deployments("web") == []
    resp = requests.get(f"{fake.url}/v1/job/web/deployment", timeout=2)
    assert resp.status_code == 200 and resp.text == "null"
    resp = requests.get(f"{fake.url}/v1/deployment/00000000-0000-0000-0000-000000000000")
    assert (resp.status_code, resp.text) == (404, "deployment not found")


def test_deployment_fields(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("stall")
    job = sample_service_job(count=3)
    job["TaskGroups"][0]["Update"]["AutoRevert"] = False  # group overrides the job
    fake.add_job(job)
    deploy_new_image(client)
    current = client.job.get_job("web")
    dep = client.job.get_deployment("web")
    assert dep == client.deployment.get_deployment(dep["ID"])
    assert dep["JobID"] == "web" and dep["Namespace"] == "default"
    assert dep["JobVersion"] == current["Version"] == 1
    assert dep["JobModifyIndex"] == current["JobModifyIndex"]
    assert dep["JobCreateIndex"] == current["CreateIndex"]
    assert dep["Status"] == "running"
    assert dep["StatusDescription"] == "Deployment is running"
    assert dep["CreateIndex"] == dep["ModifyIndex"] > current["JobModifyIndex"]
    group = dep["TaskGroups"]["web"]
    assert group["DesiredTotal"] == 3
    assert group["PlacedAllocs"] == group["HealthyAllocs"] == group["UnhealthyAllocs"] == 0
    assert group["DesiredCanaries"] == 0 and group["PlacedCanaries"] is None
    assert group["Promoted"] is False and group["AutoRevert"] is False
    assert group["ProgressDeadline"] == 600 * 10**9
    require_by = datetime.fromisoformat(group["RequireProgressBy"])
    assert require_by.tzinfo is not None and group["RequireProgressBy"].endswith("Z")


def test_job_level_auto_revert_used_when_group_has_none(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    job = sample_service_job()
    del job["TaskGroups"][0]["Update"]
    fake.add_job(job)
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    assert fake.deployments("web")[0]["TaskGroups"]["web"]["AutoRevert"] is True


def test_batch_job_gets_no_deployment(fake: FakeNomad) -> None:
    job = sample_service_job()
    job["Type"] = "batch"
    fake.add_job(job)
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    assert fake.job("web")["Version"] == 1  # type: ignore[index]
    assert fake.deployments("web") == []


def test_successful_deployment(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("successful")
    fake.add_job(sample_service_job())
    deploy_new_image(client)
    before = fake.versions("web")[1]
    dep = client.job.get_deployment("web")
    assert dep["Status"] == "successful"
    assert dep["StatusDescription"] == "Deployment completed successfully"
    group = dep["TaskGroups"]["web"]
    assert group["HealthyAllocs"] == group["PlacedAllocs"] == group["DesiredTotal"] == 2
    assert group["UnhealthyAllocs"] == 0
    job = client.job.get_job("web")
    # Stability moves ModifyIndex, never JobModifyIndex (the check-and-set value).
    assert job["Stable"] is True and job["Version"] == 1
    assert job["JobModifyIndex"] == before["JobModifyIndex"]
    assert job["ModifyIndex"] >= before["ModifyIndex"]


@pytest.mark.parametrize(
    ("outcome", "status", "description"),
    [
        ("successful", "successful", "Deployment completed successfully"),
        ("cancelled", "cancelled", "Cancelled by user"),
        ("stall", "running", "Deployment is running"),
    ],
)
def test_scripted_outcomes(
    fake: FakeNomad, client: nomad.Nomad, outcome: str, status: str, description: str
) -> None:
    fake.script_deployments(outcome)
    fake.add_job(sample_service_job())
    deploy_new_image(client)
    dep = client.job.get_deployment("web")
    assert (dep["Status"], dep["StatusDescription"]) == (status, description)
    assert len(fake.versions("web")) == 2


def test_failed_deployment_without_auto_revert(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("failed")
    job = sample_service_job()
    job["Update"]["AutoRevert"] = False
    job["TaskGroups"][0]["Update"]["AutoRevert"] = False
    fake.add_job(job)
    deploy_new_image(client)
    dep = client.job.get_deployment("web")
    assert dep["Status"] == "failed"
    assert dep["StatusDescription"] == "Failed due to unhealthy allocations"
    assert dep["TaskGroups"]["web"]["UnhealthyAllocs"] > 0
    assert dep["TaskGroups"]["web"]["HealthyAllocs"] < dep["TaskGroups"]["web"]["DesiredTotal"]
    current = client.job.get_job("web")
    assert current["Version"] == 1 and current["Stable"] is False


def test_failed_deployment_auto_reverts_to_stable(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("failed")
    original = fake.add_job(sample_service_job())
    answer = deploy_new_image(client)
    deployments = client.job.get_deployments("web")  # newest first
    # v1 failed -> Nomad registered v0's spec again as v2, whose deployment failed too, and
    # reverting that would be a no-op, so it stops there.
    assert [d["JobVersion"] for d in deployments] == [2, 1]
    failed_v1 = deployments[1]
    assert failed_v1["Status"] == "failed"
    assert failed_v1["StatusDescription"] == (
        "Failed due to unhealthy allocations - rolling back to job version 0"
    )
    assert deployments[0]["StatusDescription"] == (
        "Failed due to unhealthy allocations - not rolling back to stable job version 0 as "
        "current job has same specification"
    )
    current = client.job.get_job("web")
    assert current["Version"] == 2
    assert current["JobModifyIndex"] > answer["JobModifyIndex"]
    assert spec_only(current) == spec_only(original)
    assert len(fake.versions("web")) == 3


def test_failed_deployment_without_stable_version(fake: FakeNomad) -> None:
    fake.script_deployments("failed")
    resp = requests.post(
        f"{fake.url}/v1/job/web", json=register_body(sample_service_job(), 0), timeout=2
    )
    assert resp.ok
    dep = requests.get(f"{fake.url}/v1/job/web/deployment", timeout=2).json()
    assert dep["StatusDescription"] == (
        "Failed due to unhealthy allocations - no stable job version to auto revert to"
    )
    assert len(fake.versions("web")) == 1


def test_deployment_flips_after_delay(fake: FakeNomad, client: nomad.Nomad) -> None:
    after = 0.4
    fake.script_deployments("successful", after=after)
    fake.add_job(sample_service_job())
    started = time.monotonic()
    deploy_new_image(client)
    dep = client.job.get_deployment("web")
    assert dep["Status"] == "running"
    assert client.job.get_job("web")["Stable"] is False
    done = wait_for(lambda: client.job.get_deployment("web")["Status"] == "successful")
    assert done
    assert time.monotonic() - started >= after
    assert client.job.get_job("web")["Stable"] is True


def test_failed_after_delay_reverts_then(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("failed", after=0.3)
    fake.add_job(sample_service_job())
    answer = deploy_new_image(client)
    assert client.job.get_job("web")["Version"] == 1
    # A check-and-set made with the pre-revert index conflicts once the revert happened.
    wait_for(lambda: client.job.get_job("web")["Version"] == 2)
    job = client.job.get_job("web")
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == OLD_IMAGE
    resp = requests.post(
        f"{fake.url}/v1/job/web",
        json=register_body(with_image(job, "x:3"), answer["JobModifyIndex"]),
        timeout=2,
    )
    assert resp.status_code == 500 and "conflicting job modify index" in resp.text
    # The revert's own deployment is running under the same script.
    assert client.job.get_deployment("web")["JobVersion"] == 2


def test_script_applies_to_new_deployments_only(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, "a:1"))
    fake.script_deployments("successful")
    assert fake.deployments("web")[0]["Status"] == "running"
    with pytest.raises(ValueError):
        fake.script_deployments("exploded")
    with pytest.raises(ValueError):
        fake.script_deployments("failed", after=-1)


def test_newer_deployment_cancels_older(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())
    deploy_new_image(client, "a:1")
    first = client.job.get_deployment("web")
    deploy_new_image(client, "a:2")
    second = client.job.get_deployment("web")
    assert second["ID"] != first["ID"] and second["JobVersion"] == 2
    old = client.deployment.get_deployment(first["ID"])
    assert old["Status"] == "cancelled"
    assert old["StatusDescription"] == "Cancelled due to newer version of job"
    assert old["ModifyIndex"] > first["ModifyIndex"]
    assert second["Status"] == "running"
    listed = client.job.get_deployments("web")
    assert [d["ID"] for d in listed] == [second["ID"], first["ID"]]
    assert [d["ID"] for d in fake.deployments("web")] == [first["ID"], second["ID"]]
    all_deps = requests.get(f"{fake.url}/v1/deployments", timeout=2).json()
    assert [d["ID"] for d in all_deps] == [second["ID"], first["ID"]]


def test_finished_deployment_is_not_cancelled_by_newer(
    clocked: FakeNomad, clock: FakeClock
) -> None:
    clocked.script_deployments("successful", after=10)
    clocked.add_job(sample_service_job())
    client = nomad.Nomad(host="127.0.0.1", port=clocked.port, timeout=2)
    deploy_new_image(client, "a:1")
    clock.advance(10)
    deploy_new_image(client, "a:2")
    statuses = [d["Status"] for d in clocked.deployments("web")]
    assert statuses == ["successful", "running"]


# ---- blocking queries, the clock, versions and auto-revert ----------------------------------


def get(fake: FakeNomad, path: str, **params: Any) -> requests.Response:
    response = requests.get(f"{fake.url}{path}", params=params, timeout=15)
    assert response.status_code == 200, response.text
    return response


def index_of(response: requests.Response) -> int:
    return int(response.headers["X-Nomad-Index"])


class Blocked:
    """A GET running in a thread, typically a blocking query; join() returns its answer."""

    def __init__(self, fake: FakeNomad, path: str, **params: Any) -> None:
        self._answers: list[requests.Response] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: self._answers.append(get(fake, path, **params)), daemon=True
        )
        self._thread.start()

    def join(self, timeout: float = 5.0) -> requests.Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocking query was not woken"
        self.elapsed = time.monotonic() - self.started
        [answer] = self._answers
        return answer


def test_every_blocking_endpoint_carries_its_resource_index(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    job = fake.job("web")
    assert job is not None
    [deployment] = fake.deployments("web")
    assert index_of(get(fake, "/v1/job/web")) == job["ModifyIndex"]
    assert index_of(get(fake, f"/v1/deployment/{deployment['ID']}")) == deployment["ModifyIndex"]
    assert index_of(get(fake, "/v1/job/web/deployment")) == deployment["ModifyIndex"]
    assert index_of(get(fake, "/v1/job/web/deployments")) == deployment["ModifyIndex"]
    versions = get(fake, "/v1/job/web/versions")
    assert index_of(versions) == versions.json()["Index"] == job["ModifyIndex"]
    assert index_of(get(fake, "/v1/jobs")) == job["ModifyIndex"]


def test_a_blocking_query_without_change_answers_the_same_index_after_wait(
    fake: FakeNomad,
) -> None:
    fake.add_job(sample_service_job())
    index = index_of(get(fake, "/v1/job/web"))
    started = time.monotonic()
    answer = get(fake, "/v1/job/web", index=index, wait="300ms")
    assert 0.25 <= time.monotonic() - started < 3
    assert index_of(answer) == index
    assert answer.json()["ID"] == "web"
    # An index already passed answers at once.
    assert index_of(get(fake, "/v1/job/web", index=index - 1, wait="10s")) == index


def test_blocking_query_parameters_are_checked_like_nomad(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job())
    bad_wait = requests.get(f"{fake.url}/v1/job/web?index=1&wait=soon", timeout=2)
    assert (bad_wait.status_code, bad_wait.text) == (400, "Invalid wait time")
    bad_index = requests.get(f"{fake.url}/v1/job/web?index=x", timeout=2)
    assert (bad_index.status_code, bad_index.text) == (400, "Invalid index")


def waiting(fake: FakeNomad, path: str) -> None:
    """Until the fake holds a blocking GET of ``path``: it records the request and then
    keeps its lock until the query waits, so a change made after this finds it waiting."""
    deadline = time.monotonic() + 5
    while not any(r[0] == "GET" and r[1] == path and "index" in r[2] for r in fake.requests):
        assert time.monotonic() < deadline, f"no blocking GET of {path}"
        time.sleep(0.005)


def test_a_register_wakes_a_blocking_job_read(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job())
    index = index_of(get(fake, "/v1/job/web"))
    reader = Blocked(fake, "/v1/job/web", index=index, wait="10s")
    waiting(fake, "/v1/job/web")
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    answer = reader.join()
    assert reader.elapsed < 3
    assert index_of(answer) > index
    assert answer.json()["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == NEW_IMAGE


def test_a_new_job_wakes_a_blocking_job_list(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job("web"))
    index = index_of(get(fake, "/v1/jobs"))
    reader = Blocked(fake, "/v1/jobs", index=index, wait="10s")
    waiting(fake, "/v1/jobs")
    fake.add_job(sample_service_job("api"))
    answer = reader.join()
    assert sorted(stub["ID"] for stub in answer.json()) == ["api", "web"]
    assert index_of(answer) > index


def test_the_clock_decides_when_a_scripted_outcome_happens(
    clocked: FakeNomad, clock: FakeClock
) -> None:
    clocked.script_deployments("successful", after=30)
    clocked.add_job(sample_service_job())
    clocked.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    clock.advance(29.9)
    assert get(clocked, "/v1/job/web/deployment").json()["Status"] == "running"
    assert clocked.job("web")["Stable"] is False  # type: ignore[index]
    clock.advance(0.1)
    deployment = get(clocked, "/v1/job/web/deployment").json()
    assert (deployment["Status"], deployment["StatusDescription"]) == (
        "successful",
        "Deployment completed successfully",
    )
    assert clocked.job("web")["Stable"] is True  # type: ignore[index]


def test_advancing_the_clock_wakes_a_deployment_watcher(
    clocked: FakeNomad, clock: FakeClock
) -> None:
    clocked.script_deployments("successful", after=60)
    clocked.add_job(sample_service_job())
    clocked.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    first = get(clocked, "/v1/job/web/deployment")
    deployment_id = first.json()["ID"]
    watchers = [
        Blocked(clocked, "/v1/job/web/deployment", index=index_of(first), wait="10s"),
        Blocked(clocked, f"/v1/deployment/{deployment_id}", index=index_of(first), wait="10s"),
    ]
    clock.advance(60)
    for watcher in watchers:
        answer = watcher.join()
        assert watcher.elapsed < 3
        assert answer.json()["Status"] == "successful"
        assert index_of(answer) > index_of(first)


def test_on_the_wall_clock_an_outcome_wakes_a_watcher_when_due(fake: FakeNomad) -> None:
    fake.script_deployments("failed", after=0.3)
    job = sample_service_job()
    job["TaskGroups"][0]["Update"]["AutoRevert"] = False
    job["Update"]["AutoRevert"] = False
    fake.add_job(job)
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    first = get(fake, "/v1/job/web/deployment")
    assert first.json()["Status"] == "running"
    # Nobody else talks to the fake: the blocked query itself must wake at the due time.
    watcher = Blocked(fake, f"/v1/deployment/{first.json()['ID']}", index=index_of(first))
    answer = watcher.join()
    assert watcher.elapsed < 3
    assert answer.json()["Status"] == "failed"
    # It failed at its due time, not when somebody happened to look.
    assert answer.json()["ModifyTime"] - answer.json()["CreateTime"] >= 0.299e9  # float ns


def test_finish_deployment_succeeds_a_stalled_deployment_and_wakes_waiters(
    fake: FakeNomad,
) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    versions = get(fake, "/v1/job/web/versions")
    assert [v["Stable"] for v in versions.json()["Versions"]] == [False, True]
    watcher = Blocked(fake, "/v1/job/web/versions", index=index_of(versions), wait="10s")
    deployment_id = fake.deployments("web")[0]["ID"]
    finished = fake.finish_deployment(deployment_id)
    assert finished["Status"] == "successful"
    answer = watcher.join()
    assert [(v["Version"], v["Stable"]) for v in answer.json()["Versions"]] == [
        (1, True),
        (0, True),
    ]
    assert fake.deployment(deployment_id) == finished
    assert fake.latest_deployment("web") == finished
    with pytest.raises(ValueError, match="successful"):
        fake.finish_deployment(deployment_id)
    with pytest.raises(KeyError):
        fake.finish_deployment("no-such-deployment")
    with pytest.raises(ValueError):
        fake.finish_deployment(deployment_id, "exploded")


def test_auto_revert_registers_the_latest_stable_version_as_a_new_unstable_one(
    fake: FakeNomad,
) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())  # version 0, stable
    fake.change_job("web", lambda j: with_image(j, "stut/stut.dev:release-1"))
    fake.finish_deployment(fake.deployments("web")[-1]["ID"], "successful")  # v1 stable
    fake.change_job("web", lambda j: with_image(j, "stut/stut.dev:release-2"))
    failed = fake.finish_deployment(fake.deployments("web")[-1]["ID"], "failed")
    assert failed["StatusDescription"] == (
        "Failed due to unhealthy allocations - rolling back to job version 1"
    )
    body = get(fake, "/v1/job/web/versions").json()
    images = [
        (v["Version"], v["Stable"], v["TaskGroups"][0]["Tasks"][0]["Config"]["image"])
        for v in body["Versions"]
    ]
    assert images == [
        (3, False, "stut/stut.dev:release-1"),  # the revert: v1's spec, not stable yet
        (2, False, "stut/stut.dev:release-2"),
        (1, True, "stut/stut.dev:release-1"),
        (0, True, OLD_IMAGE),
    ]
    # The revert has a deployment of its own; once it succeeds, version 3 is stable.
    revert = fake.latest_deployment("web")
    assert revert is not None
    assert (revert["JobVersion"], revert["Status"]) == (3, "running")
    fake.finish_deployment(revert["ID"])
    assert fake.job("web")["Stable"] is True  # type: ignore[index]


def test_a_progress_deadline_failure_reads_like_nomad_and_reverts(fake: FakeNomad) -> None:
    fake.script_deployments("deadline")
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    failed = fake.deployments("web")[0]
    assert failed["Status"] == "failed"
    assert failed["StatusDescription"] == (
        "Failed due to progress deadline - rolling back to job version 0"
    )
    assert failed["TaskGroups"]["web"]["HealthyAllocs"] == 0
    assert fake.job("web")["Version"] == 2  # type: ignore[index]


def test_the_deployment_list_blocks_until_any_deployment_changes(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    first = get(fake, "/v1/deployments")
    watcher = Blocked(fake, "/v1/deployments", index=index_of(first), wait="10s")
    fake.finish_deployment(first.json()[0]["ID"], "cancelled")
    answer = watcher.join()
    assert [d["Status"] for d in answer.json()] == ["cancelled"]
    assert index_of(answer) > index_of(first)


def test_advance_needs_a_fake_clock(fake: FakeNomad) -> None:
    with pytest.raises(RuntimeError, match="FakeClock"):
        fake.advance(1)


def test_one_clock_drives_consul_sessions_and_nomad_deployments(clock: FakeClock) -> None:
    with FakeConsul(clock=clock) as consul_fake, FakeNomad(clock=clock) as nomad_fake:
        nomad_fake.script_deployments("successful", after=20)
        nomad_fake.add_job(sample_service_job())
        nomad_fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
        created = requests.put(
            f"{consul_fake.url}/v1/session/create", json={"TTL": "15s"}, timeout=2
        )
        session_id = created.json()["ID"]
        clock.advance(15)
        assert consul_fake.session(session_id) is None
        assert nomad_fake.latest_deployment("web")["Status"] == "running"  # type: ignore[index]
        clock.advance(5)
        assert nomad_fake.latest_deployment("web")["Status"] == "successful"  # type: ignore[index]


# ---- ACL ------------------------------------------------------------------------------------


def test_acl(acl_fake: FakeNomad) -> None:
    acl_fake.add_job(sample_service_job())
    url = f"{acl_fake.url}/v1/job/web"
    resp = requests.get(url, timeout=2)
    assert (resp.status_code, resp.text) == (403, "Permission denied")
    resp = requests.get(url, headers={"X-Nomad-Token": "wrong"}, timeout=2)
    assert (resp.status_code, resp.text) == (403, "ACL token not found")
    assert requests.get(url, headers={"X-Nomad-Token": TOKEN}, timeout=2).status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(url, headers=bearer, timeout=2).status_code == 200
    # A token in the query string does not count.
    assert requests.get(url, params={"token": TOKEN}, timeout=2).status_code == 403
    for path in ("/v1/job/web/deployment", "/v1/deployments", "/v1/job/web/versions"):
        assert requests.get(acl_fake.url + path, timeout=2).status_code == 403
    assert requests.get(f"{acl_fake.url}/v1/status/leader", timeout=2).status_code == 200
    # A rejected register changes nothing.
    resp = requests.post(url, json=register_body(with_image(sample_service_job(), "x:9")))
    assert resp.status_code == 403
    assert len(acl_fake.versions("web")) == 1


def test_acl_through_python_nomad(acl_fake: FakeNomad) -> None:
    acl_fake.add_job(sample_service_job())
    anonymous = nomad.Nomad(host="127.0.0.1", port=acl_fake.port, timeout=2)
    with pytest.raises(nomad_exc.URLNotAuthorizedNomadException) as info:
        anonymous.job.get_job("web")
    assert info.value.nomad_resp.text == "Permission denied"
    wrong = nomad.Nomad(host="127.0.0.1", port=acl_fake.port, timeout=2, token="nope")
    with pytest.raises(nomad_exc.URLNotAuthorizedNomadException) as info:
        wrong.job.get_deployment("web")
    assert info.value.nomad_resp.text == "ACL token not found"
    authed = nomad.Nomad(host="127.0.0.1", port=acl_fake.port, timeout=2, token=TOKEN)
    job = authed.job.get_job("web")
    authed.job.register_job("web", register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"]))
    assert authed.job.get_deployment("web")["JobVersion"] == 1
    method, path, query, headers = acl_fake.requests[-1]
    assert (method, path, query) == ("GET", "/v1/job/web/deployment", {})
    assert headers["X-Nomad-Token"] == TOKEN


# ---- faults ---------------------------------------------------------------------------------


def test_a_late_answer_means_the_job_was_registered_unbeknown_to_the_client(
    fake: FakeNomad,
) -> None:
    fake.add_job(sample_service_job())
    job = fake.job("web")
    assert job is not None
    body = register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"])
    fake.answer_late(10)
    with pytest.raises(requests.Timeout):
        requests.post(f"{fake.url}/v1/job/web", json=body, timeout=0.3)
    current = fake.job("web")
    assert current is not None
    assert current["Version"] == 1  # the register was applied
    assert current["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == NEW_IMAGE
    fake.heal()
    retry = requests.post(f"{fake.url}/v1/job/web", json=body, timeout=2)
    assert retry.status_code == 500 and "conflicting job modify index" in retry.text


def test_a_slow_failure_answers_late_and_registers_nothing(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job())
    job = fake.job("web")
    assert job is not None
    body = register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"])
    fake.fail_always(status=500, body="rpc error: leader changed", after=0.3)
    started = time.monotonic()
    answer = requests.post(f"{fake.url}/v1/job/web", json=body, timeout=5)
    assert time.monotonic() - started >= 0.25
    assert (answer.status_code, answer.text) == (500, "rpc error: leader changed")
    assert len(fake.versions("web")) == 1
    fake.heal()
    assert requests.post(f"{fake.url}/v1/job/web", json=body, timeout=2).status_code == 200


def test_fail_next(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    fake.fail_next(count=2, status=503, body="rpc error: No cluster leader")
    job = fake.job("web")
    assert job is not None
    body = register_body(with_image(job, NEW_IMAGE), job["JobModifyIndex"])
    for _ in range(2):
        resp = requests.post(f"{fake.url}/v1/job/web", json=body, timeout=2)
        assert (resp.status_code, resp.text) == (503, "rpc error: No cluster leader")
    assert len(fake.versions("web")) == 1  # nothing applied
    assert len(fake.registrations) == 2  # but both bodies were received
    assert requests.post(f"{fake.url}/v1/job/web", json=body, timeout=2).status_code == 200
    assert len(fake.versions("web")) == 2
    fake.fail_next()
    with pytest.raises(nomad_exc.BaseNomadException) as info:
        client.job.get_job("web")
    assert info.value.nomad_resp.status_code == 500
    assert client.job.get_job("web")["Version"] == 1


def test_fail_always_and_heal(fake: FakeNomad) -> None:
    fake.fail_always(502, "bad gateway")
    for _ in range(3):
        resp = requests.get(f"{fake.url}/v1/status/leader", timeout=2)
        assert (resp.status_code, resp.text) == (502, "bad gateway")
    fake.heal()
    assert requests.get(f"{fake.url}/v1/status/leader", timeout=2).status_code == 200


def test_hang_times_out_and_applies_nothing(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    job = fake.job("web")
    assert job is not None
    fake.hang(10)
    body = register_body(with_image(copy.deepcopy(job), NEW_IMAGE), job["JobModifyIndex"])
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        requests.post(f"{fake.url}/v1/job/web", json=body, timeout=0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(nomad_exc.BaseNomadException):  # python-nomad wraps the timeout
        nomad.Nomad(host="127.0.0.1", port=fake.port, timeout=0.3).job.get_job("web")
    fake.heal()
    assert fake.versions("web") == [job]
    assert len(fake.registrations) == 1
    assert client.job.get_job("web")["Version"] == 0


def test_hang_then_connection_closed_unanswered(fake: FakeNomad) -> None:
    fake.hang(0.1)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{fake.url}/v1/job/web", json=register_body(sample_service_job()), timeout=2)
    assert fake.job("web") is None


def test_refuse_and_resume_keep_port_and_state(fake: FakeNomad, client: nomad.Nomad) -> None:
    fake.add_job(sample_service_job())
    port = fake.port
    session = requests.Session()  # a kept-alive connection must not survive either
    assert session.get(f"{fake.url}/v1/job/web", timeout=2).status_code == 200
    fake.refuse_connections()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{fake.url}/v1/job/web", timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{fake.url}/v1/job/web", timeout=2)
    with pytest.raises(nomad_exc.BaseNomadException):
        client.job.get_job("web")
    fake.resume()
    assert fake.port == port
    assert session.get(f"{fake.url}/v1/job/web", timeout=2).json()["Version"] == 0
    assert client.job.get_job("web")["Version"] == 0
    session.close()


def test_stop_refuses_connections() -> None:
    server = FakeNomad().start()
    url = server.url
    assert requests.get(f"{url}/v1/status/leader", timeout=2).ok
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{url}/v1/status/leader", timeout=2)


def test_requests_are_recorded(fake: FakeNomad) -> None:
    requests.get(
        f"{fake.url}/v1/job/web",
        params={"namespace": "prod", "region": "global"},
        headers={"X-Nomad-Token": "t"},
        timeout=2,
    )
    method, path, query, headers = fake.requests[-1]
    assert (method, path) == ("GET", "/v1/job/web")
    assert query == {"namespace": ["prod"], "region": ["global"]}
    assert headers["X-Nomad-Token"] == "t"


# ---- entry point ----------------------------------------------------------------------------


def test_module_entry_point() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.nomad", "--port", "0", "--acl-token", "tok"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/v1/status/leader", timeout=2).json() == "127.0.0.1:4647"
        assert requests.get(f"{url}/v1/jobs", timeout=2).status_code == 403
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# ---- parameterized jobs and dispatch ---------------------------------------------------------

TAG = "release-20240101000000"


def dispatch(
    fake: FakeNomad, job_id: str = "migrate", token: str | None = None, **body: Any
) -> requests.Response:
    params = {"idempotency_token": token} if token else {}
    return requests.post(
        f"{fake.url}/v1/job/{job_id}/dispatch",
        json={"Meta": {"NOMAN_IMAGE_TAG": TAG}, **body},
        params=params,
        timeout=5,
    )


def test_dispatch_makes_a_child_job_that_runs_and_completes(
    clocked: FakeNomad, clock: FakeClock
) -> None:
    clocked.add_job(sample_parameterized_job())
    clocked.script_dispatches("complete", after=5)
    answer = dispatch(clocked)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"DispatchedJobID", "EvalID", "EvalCreateIndex", "JobCreateIndex", "Index"}
    child_id = body["DispatchedJobID"]
    assert child_id.startswith(f"migrate{DISPATCH_SUFFIX}")
    child = get(clocked, f"/v1/job/{child_id}").json()
    assert (child["ParentID"], child["Dispatched"], child["Type"]) == ("migrate", True, "batch")
    assert child["Meta"] == {"owner": "migrate", "NOMAN_IMAGE_TAG": TAG}
    assert child["Status"] == "running"  # placed and started at once on the fake's clock
    [alloc] = get(clocked, f"/v1/job/{child_id}/allocations").json()
    assert alloc["ClientStatus"] == "running" and "AllocatedResources" not in alloc
    assert clocked.children("migrate")[0]["ID"] == child_id
    [stub] = get(clocked, "/v1/jobs", prefix="migrate/dispatch-").json()
    assert (stub["ID"], stub["ParentID"], stub["Status"]) == (child_id, "migrate", "running")
    assert clocked.job("migrate")["Status"] == "running"  # type: ignore[index]  # the parent
    waiting = Blocked(clocked, f"/v1/job/{child_id}", index=str(child["ModifyIndex"]), wait="10s")
    clock.advance(5)
    done = waiting.join().json()
    assert done["Status"] == "dead"
    [alloc] = get(clocked, f"/v1/job/{child_id}/allocations").json()
    assert alloc["ClientStatus"] == "complete"
    events = alloc["TaskStates"]["migrate"]["Events"]
    assert [e["Type"] for e in events] == ["Received", "Started", "Terminated"]
    assert events[-1]["DisplayMessage"] == "Exit Code: 0"
    summary = get(clocked, f"/v1/job/{child_id}/summary").json()
    assert summary["Summary"]["migrate"]["Complete"] == 1


def test_a_failing_dispatched_job_reads_like_nomad(fake: FakeNomad) -> None:
    fake.add_job(sample_parameterized_job())
    fake.script_dispatches("failed", exit_code=3, message="relation users already exists")
    child_id = dispatch(fake).json()["DispatchedJobID"]
    job = wait_for(lambda: (j := fake.job(child_id)) and j["Status"] == "dead" and j)
    assert job
    [alloc] = fake.allocations(child_id)
    assert alloc["ClientStatus"] == "failed"
    state = alloc["TaskStates"]["migrate"]
    assert (state["State"], state["Failed"]) == ("dead", True)
    terminated, last = state["Events"][-2:]
    assert terminated["Type"] == "Terminated" and terminated["ExitCode"] == 3
    assert terminated["Details"]["exit_code"] == "3"
    assert terminated["DisplayMessage"] == (
        'Exit Code: 3, Exit Message: "relation users already exists"'
    )
    assert (last["Type"], last["DisplayMessage"]) == ("Not Restarting", "Policy allows no restarts")
    summary = get(fake, f"/v1/job/{child_id}/summary").json()
    assert summary["Summary"]["migrate"]["Failed"] == 1


def test_a_stalled_dispatch_ends_when_told(fake: FakeNomad) -> None:
    fake.add_job(sample_parameterized_job())
    fake.script_dispatches("stall")
    child_id = dispatch(fake).json()["DispatchedJobID"]
    assert fake.job(child_id)["Status"] == "running"  # type: ignore[index]
    fake.finish_dispatch(child_id, "failed", exit_code=2)
    assert fake.job(child_id)["Status"] == "dead"  # type: ignore[index]
    with pytest.raises(ValueError, match="no running allocation"):
        fake.finish_dispatch(child_id)


def test_an_idempotency_token_returns_the_same_child(fake: FakeNomad) -> None:
    fake.add_job(sample_parameterized_job())
    first = dispatch(fake, token="noman:web:1").json()["DispatchedJobID"]
    again = dispatch(fake, token="noman:web:1").json()
    assert again["DispatchedJobID"] == first and again["EvalID"] == ""
    body_token = dispatch(fake, IdempotencyToken="noman:web:1").json()["DispatchedJobID"]
    assert body_token == first  # the body's field works too
    other = dispatch(fake, token="noman:web:2").json()["DispatchedJobID"]
    assert other != first
    assert len(fake.children("migrate")) == 2
    assert [job_id for job_id, _, _ in fake.dispatches] == ["migrate"] * 4


def test_python_nomads_dispatch_token_is_not_one_nomad_reads(fake: FakeNomad) -> None:
    """python-nomad 2.1 sends "idempotency_token" in the body: Go's decoder has no such field."""
    fake.add_job(sample_parameterized_job())
    client = nomad.Nomad(host="127.0.0.1", port=fake.port, timeout=2)
    meta = {"NOMAN_IMAGE_TAG": TAG}
    first = client.job.dispatch_job("migrate", meta=meta, idempotency_token="t")
    second = client.job.dispatch_job("migrate", meta=meta, idempotency_token="t")
    assert first["DispatchedJobID"] != second["DispatchedJobID"]


@pytest.mark.parametrize(
    ("job_id", "meta", "text"),
    [
        ("nope", {"NOMAN_IMAGE_TAG": TAG}, "parameterized job not found"),
        ("web", {"NOMAN_IMAGE_TAG": TAG}, 'Specified job "web" is not a parameterized job'),
        ("migrate", {}, "Dispatch did not provide required meta keys: [NOMAN_IMAGE_TAG]"),
        (
            "migrate",
            {"NOMAN_IMAGE_TAG": TAG, "OTHER": "x"},
            "Dispatch request included unpermitted metadata keys: [OTHER]",
        ),
    ],
)
def test_dispatch_refusals(fake: FakeNomad, job_id: str, meta: dict[str, str], text: str) -> None:
    fake.add_job(sample_parameterized_job())
    fake.add_job(sample_service_job())
    answer = requests.post(f"{fake.url}/v1/job/{job_id}/dispatch", json={"Meta": meta}, timeout=5)
    assert (answer.status_code, answer.text) == (500, text)
    assert fake.children("migrate") == []


# ---- canaries, promote and fail ----------------------------------------------------------------


def canary_fake(fake: FakeNomad, **job: Any) -> dict[str, Any]:
    """Job "web" with one canary, moved to a new image; its deployment."""
    fake.add_job(sample_canary_job(**job))
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    deployment = fake.latest_deployment("web")
    assert deployment is not None
    return deployment


def promote(fake: FakeNomad, deployment_id: str, **body: Any) -> requests.Response:
    return requests.post(
        f"{fake.url}/v1/deployment/promote/{deployment_id}",
        json={"DeploymentID": deployment_id, "All": True, **body},
        timeout=5,
    )


def test_a_job_s_first_version_gets_no_canaries(fake: FakeNomad) -> None:
    job = sample_canary_job()
    fake.add_job(job)
    assert fake.deployments("web") == []
    fake.change_job("web", lambda j: None)  # unchanged: no version, no deployment
    assert fake.deployments("web") == []


def test_a_canary_deployment_waits_for_promotion(clocked: FakeNomad, clock: FakeClock) -> None:
    clocked.script_canaries(healthy_after=3)
    clocked.script_deployments("successful", after=2)
    deployment = canary_fake(clocked)
    group = deployment["TaskGroups"]["web"]
    assert deployment["StatusDescription"] == "Deployment is running but requires manual promotion"
    assert (group["DesiredCanaries"], group["DesiredTotal"], group["Promoted"]) == (1, 2, False)
    assert (group["PlacedAllocs"], group["HealthyAllocs"]) == (1, 0)
    [canary_id] = group["PlacedCanaries"]
    refused = promote(clocked, deployment["ID"])
    assert (refused.status_code, refused.text) == (
        500,
        '1 error occurred:\n\t* Task group "web" has 0/1 healthy allocations\n\n',
    )
    [stub] = get(clocked, f"/v1/deployment/allocations/{deployment['ID']}").json()
    assert stub["ID"] == canary_id
    assert (
        stub["DeploymentStatus"]["Canary"] is True and stub["DeploymentStatus"]["Healthy"] is None
    )
    clock.advance(3)
    healthy = clocked.deployment(deployment["ID"])
    assert healthy is not None and healthy["TaskGroups"]["web"]["HealthyAllocs"] == 1
    clock.advance(60)  # no promotion: the scripted outcome waits
    assert clocked.deployment(deployment["ID"])["Status"] == "running"  # type: ignore[index]
    answer = promote(clocked, deployment["ID"])
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {
        "EvalID", "EvalCreateIndex", "DeploymentModifyIndex", "RevertedJobVersion", "Index"
    }  # fmt: skip
    promoted = clocked.deployment(deployment["ID"])
    assert promoted is not None
    assert promoted["StatusDescription"] == "Deployment is running"
    assert promoted["TaskGroups"]["web"]["Promoted"] is True
    assert [d for d, _ in clocked.promotions] == [deployment["ID"]]
    clock.advance(2)  # the scripted outcome counts from the promotion
    assert clocked.deployment(deployment["ID"])["Status"] == "successful"  # type: ignore[index]
    again = promote(clocked, deployment["ID"])
    assert (again.status_code, again.text) == (500, "can't promote terminal deployment")


def test_promote_checks_its_body_like_nomad(fake: FakeNomad) -> None:
    deployment = canary_fake(fake)
    url = f"{fake.url}/v1/deployment/promote/{deployment['ID']}"
    assert (
        requests.post(url, json={"All": True}, timeout=5).text == "DeploymentID must be specified"
    )
    mismatch = requests.post(url, json={"DeploymentID": "x", "All": True}, timeout=5)
    assert (mismatch.status_code, mismatch.text) == (400, "Deployment ID does not match")
    unknown = promote(fake, "no-such-deployment")
    assert (unknown.status_code, unknown.text) == (500, "deployment not found")


def test_failing_a_canary_deployment_reverts_and_stops_the_canaries(fake: FakeNomad) -> None:
    deployment = canary_fake(fake)
    [canary_id] = deployment["TaskGroups"]["web"]["PlacedCanaries"]
    answer = requests.post(f"{fake.url}/v1/deployment/fail/{deployment['ID']}", timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json()["RevertedJobVersion"] == 0
    failed = fake.deployment(deployment["ID"])
    assert failed is not None and failed["Status"] == "failed"
    assert (
        failed["StatusDescription"] == "Deployment marked as failed - rolling back to job version 0"
    )
    job = fake.job("web")
    assert job is not None and job["Version"] == 2  # version 0's spec, registered again
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == OLD_IMAGE
    alloc = get(fake, f"/v1/allocation/{canary_id}").json()
    assert (alloc["DesiredStatus"], alloc["ClientStatus"]) == ("stop", "complete")
    again = requests.post(f"{fake.url}/v1/deployment/fail/{deployment['ID']}", timeout=5)
    assert (again.status_code, again.text) == (500, "can't fail terminal deployment")
    assert [d for d, _ in fake.failures] == [deployment["ID"]]


def test_auto_promote_canaries_are_promoted_once_healthy(fake: FakeNomad) -> None:
    fake.script_deployments("stall")
    deployment = canary_fake(fake, auto_promote=True)
    assert deployment["StatusDescription"] == "Deployment is running"  # healthy at once
    assert deployment["TaskGroups"]["web"]["Promoted"] is True
    fake.script_canaries(healthy_after=None)
    fake.change_job("web", lambda j: with_image(j, OLD_IMAGE))
    waiting = fake.latest_deployment("web")
    assert waiting is not None
    assert waiting["StatusDescription"] == "Deployment is running pending automatic promotion"


def test_unhealthy_canaries_fail_the_deployment(clocked: FakeNomad, clock: FakeClock) -> None:
    clocked.script_canaries(healthy_after=1, healthy=False)
    deployment = canary_fake(clocked)
    clocked.script_canaries(healthy_after=None)  # the revert's own canaries: still checking
    clock.advance(1)
    failed = clocked.deployment(deployment["ID"])
    assert failed is not None and failed["Status"] == "failed"
    assert failed["StatusDescription"] == (
        "Failed due to unhealthy allocations - rolling back to job version 0"
    )
    assert failed["TaskGroups"]["web"]["UnhealthyAllocs"] == 1


def test_allocations_carry_addresses_and_ports(fake: FakeNomad) -> None:
    fake.set_ports("web", {"http": ("127.0.0.1", 18080)})
    deployment = canary_fake(fake)
    [canary_id] = deployment["TaskGroups"]["web"]["PlacedCanaries"]
    alloc = get(fake, f"/v1/allocation/{canary_id}").json()
    shared = alloc["AllocatedResources"]["Shared"]
    assert shared["Ports"] == [{"Label": "http", "Value": 18080, "To": 8080, "HostIP": "127.0.0.1"}]
    [network] = shared["Networks"]
    assert network["IP"] == "127.0.0.1"
    assert network["DynamicPorts"][0]["Label"] == "http"
    assert alloc["NetworkStatus"]["Address"].startswith("172.26.64.")
    assert alloc["Job"]["Version"] == 1 and alloc["JobVersion"] == 1
    with_resources = get(fake, "/v1/job/web/allocations", resources="true").json()
    assert with_resources[0]["AllocatedResources"]["Shared"]["Ports"][0]["Value"] == 18080
    missing = requests.get(f"{fake.url}/v1/allocation/nope", timeout=5)
    assert (missing.status_code, missing.text) == (404, "alloc not found")


def test_revert_checks_the_body_like_nomad(fake: FakeNomad) -> None:
    fake.add_job(sample_service_job())
    fake.change_job("web", lambda j: with_image(j, NEW_IMAGE))
    url = f"{fake.url}/v1/job/web/revert"
    assert requests.post(url, json={"JobVersion": 0}, timeout=5).text == "JobID must be specified"
    other = requests.post(url, json={"JobID": "api", "JobVersion": 0}, timeout=5)
    assert (other.status_code, other.text) == (400, "Job ID does not match")
    done = requests.post(
        url, json={"JobID": "web", "JobVersion": 0, "EnforcePriorVersion": 1}, timeout=5
    )
    assert done.status_code == 200 and fake.reverts == [("web", 0)]
