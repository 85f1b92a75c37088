"""NomadRollouts' calls for the stages, against the fake Nomad over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from noman.config import NomadSettings
from noman.errors import NomadError, NomadForbidden, NomadUnavailable
from noman.model import NomadTarget, Service
from noman.rollouts.nomad import NomadRollouts, alloc_address, for_job, release_outcome
from tests.fakes.nomad import FakeNomad, sample_canary_job, sample_parameterized_job

OLD = "release-20230101000000"
NEW = "release-20240101000000"
SERVICE = Service(
    "shop",
    "stut/shop",
    "configs/shop/IMAGE_TAG",
    (b"x" * 32,),
    strategy="rolling",
    nomad=NomadTarget("web", jobs=("web", "worker")),
)


@pytest.fixture
def fake() -> Iterator[FakeNomad]:
    with FakeNomad() as server:
        server.add_job(sample_parameterized_job("migrate"))
        server.add_job(sample_canary_job("web", image=f"stut/shop:{OLD}"))
        yield server


@pytest.fixture
def rollouts(fake: FakeNomad) -> NomadRollouts:
    return NomadRollouts(NomadSettings(address=fake.url, timeout=2, poll_interval=0.05))


def test_for_job_shares_every_setting_but_the_job() -> None:
    worker = for_job(SERVICE, "worker")
    assert worker.nomad == NomadTarget("worker")
    assert for_job(worker, "worker") is worker


def test_a_dispatch_sends_its_token_so_nomad_runs_it_once(
    fake: FakeNomad, rollouts: NomadRollouts
) -> None:
    fake.script_dispatches("stall")
    child = rollouts.dispatch(SERVICE, "migrate", NEW, "noman:shop:1")
    again = rollouts.dispatch(SERVICE, "migrate", NEW, "noman:shop:1")
    assert again == child
    assert [c["ID"] for c in fake.children("migrate")] == [child]
    assert fake.job(child)["Meta"]["NOMAN_IMAGE_TAG"] == NEW  # type: ignore[index]
    _, query, body = fake.dispatches[0]
    assert query["idempotency_token"] == ["noman:shop:1"]
    assert body == {"Meta": {"NOMAN_IMAGE_TAG": NEW}, "IdempotencyToken": "noman:shop:1"}


def test_running_children_name_their_tokens(fake: FakeNomad, rollouts: NomadRollouts) -> None:
    fake.script_dispatches("stall")
    first = rollouts.dispatch(SERVICE, "migrate", NEW, "noman:shop:1")
    second = rollouts.dispatch(SERVICE, "migrate", NEW, "noman:shop:2")
    assert sorted(rollouts.running_children(SERVICE, "migrate")) == sorted(
        [(first, "noman:shop:1"), (second, "noman:shop:2")]
    )
    fake.finish_dispatch(first)
    assert rollouts.running_children(SERVICE, "migrate") == [(second, "noman:shop:2")]


def test_a_dispatch_nomad_refuses_is_a_nomad_error_with_its_text(
    rollouts: NomadRollouts,
) -> None:
    with pytest.raises(NomadError) as refused:
        rollouts.dispatch(SERVICE, "web", NEW, "t")
    assert refused.value.code == "nomad_error"
    assert 'Specified job "web" is not a parameterized job' in refused.value.message
    with pytest.raises(NomadError, match="parameterized job not found"):
        rollouts.dispatch(SERVICE, "nope", NEW, "t")


def test_an_outage_stays_retryable(fake: FakeNomad, rollouts: NomadRollouts) -> None:
    fake.fail_next(status=500, body="No cluster leader")
    with pytest.raises(NomadUnavailable):
        rollouts.dispatch(SERVICE, "migrate", NEW, "t")
    fake.fail_next(status=403, body="Permission denied")
    with pytest.raises(NomadForbidden):
        rollouts.promote(SERVICE, "some-deployment")


def test_release_follows_the_child_until_it_is_dead(
    fake: FakeNomad, rollouts: NomadRollouts
) -> None:
    fake.script_dispatches("stall")
    child = rollouts.dispatch(SERVICE, "migrate", NEW, "t1")
    run, index = rollouts.release(SERVICE, child, 0, 0)
    assert run.status == "running" and index > 0
    fake.finish_dispatch(child, "complete")
    done, _ = rollouts.release(SERVICE, child, index, 5)
    assert (done.status, done.exit_code) == ("complete", 0)


def test_a_failed_release_says_exit_code_and_last_event(
    fake: FakeNomad, rollouts: NomadRollouts
) -> None:
    fake.script_dispatches("failed", exit_code=3, message="relation users already exists")
    child = rollouts.dispatch(SERVICE, "migrate", NEW, "t2")
    run, _ = rollouts.release(SERVICE, child, 0, 0)
    assert run.status == "failed"
    assert run.exit_code == 3
    assert run.message == (
        'Exit Code: 3, Exit Message: "relation users already exists"; Policy allows no restarts'
    )
    assert run.allocation == fake.allocations(child)[0]["ID"]


def test_release_outcome_of_odd_endings() -> None:
    assert release_outcome({"Status": "dead"}, []).message == (
        "the job ended with no allocation was placed"
    )
    stopped = {"ID": "a", "ClientStatus": "complete", "DesiredStatus": "stop", "TaskStates": {}}
    outcome = release_outcome({"Status": "dead", "Stop": True}, [stopped])
    assert outcome.status == "failed" and outcome.message is not None
    assert outcome.message.startswith("stopped")
    rescheduled = {"ID": "a", "ClientStatus": "failed", "NextAllocation": "b"}
    replaced = {"ID": "b", "ClientStatus": "complete", "DesiredStatus": "run"}
    assert release_outcome({"Status": "dead"}, [rescheduled, replaced]).status == "complete"


def test_canaries_promote_and_fail(fake: FakeNomad, rollouts: NomadRollouts) -> None:
    fake.script_canaries(healthy_after=None)
    fake.set_ports("web", {"http": ("127.0.0.1", 18080)})
    fake.change_job("web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG=NEW))
    deployment = fake.latest_deployment("web")
    assert deployment is not None
    web = for_job(SERVICE, "web")
    found = rollouts.deployment(web, deployment["ID"])
    assert found is not None
    assert found["canaries"] == {
        "desired": 1,
        "placed": 1,
        "promoted": False,
        "auto_promote": False,
    }
    [canary] = rollouts.canaries(web, deployment["ID"], "http")
    assert (canary.address, canary.port, canary.healthy) == ("127.0.0.1", 18080, None)
    assert rollouts.canaries(web, deployment["ID"], "grpc")[0].port is None
    with pytest.raises(NomadError, match='Task group "web" has 0/1 healthy allocations'):
        rollouts.promote(web, deployment["ID"])
    assert rollouts.fail(web, deployment["ID"]) == 0
    with pytest.raises(NomadError, match="can't fail terminal deployment"):
        rollouts.fail(web, deployment["ID"])


def test_revert_is_a_check_and_set_on_the_version(fake: FakeNomad, rollouts: NomadRollouts) -> None:
    fake.change_job("web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG=NEW))
    web = for_job(SERVICE, "web")
    with pytest.raises(NomadError, match="Current job has version 1; enforcing version 7"):
        rollouts.revert(web, 0, prior=7)
    rollouts.revert(web, 0, prior=1)
    assert fake.reverts == [("web", 0)]
    versions = rollouts.versions(web)
    assert [v["Version"] for v in versions] == [2, 1, 0]
    assert rollouts.tag_of(web, versions[1]) == NEW


@pytest.mark.parametrize(
    ("alloc", "label", "expected"),
    [
        (
            {"AllocatedResources": {"Shared": {"Ports": [{"Label": "http", "Value": 8080}]}}},
            None,
            (None, 8080),
        ),
        (
            {
                "AllocatedResources": {
                    "Shared": {
                        "Networks": [
                            {"IP": "10.0.0.5", "DynamicPorts": [{"Label": "web", "Value": 25000}]}
                        ]
                    }
                }
            },
            "web",
            ("10.0.0.5", 25000),
        ),
        (
            {
                "AllocatedResources": {
                    "Tasks": {
                        "app": {
                            "Networks": [
                                {"IP": "10.0.0.6", "ReservedPorts": [{"Label": "a", "Value": 80}]}
                            ]
                        }
                    }
                }
            },
            "a",
            ("10.0.0.6", 80),
        ),
        ({}, "http", (None, None)),
    ],
)
def test_alloc_address_reads_every_place_nomad_keeps_ports(
    alloc: dict[str, object], label: str | None, expected: tuple[str | None, int | None]
) -> None:
    assert alloc_address(alloc, label) == expected  # type: ignore[arg-type]


def test_check_warns_about_the_stages_setup(fake: FakeNomad, rollouts: NomadRollouts) -> None:
    import dataclasses

    from noman.model import CanaryPlan, ReleasePhase
    from tests.fakes.nomad import sample_service_job

    worker = sample_service_job("worker", image=f"stut/shop:{NEW}")
    worker["Meta"]["NOMAN_IMAGE_TAG"] = NEW
    fake.add_job(worker)
    fake.change_job("web", lambda job: job["Meta"].update(NOMAN_IMAGE_TAG=OLD))
    fake.add_job(sample_parameterized_job("strict", meta_required=("OTHER",)))
    staged = dataclasses.replace(SERVICE, release_phase=ReleasePhase("strict"))
    warnings = rollouts.check(staged)
    assert f"jobs disagree: web runs {OLD}, worker runs {NEW}" in warnings
    assert any("does not allow meta key NOMAN_IMAGE_TAG" in w for w in warnings)
    for job, text in (("web", "is not a parameterized job"), ("nope", "was not found")):
        other = dataclasses.replace(SERVICE, release_phase=ReleasePhase(job))
        assert any(text in w for w in rollouts.check(other)), job
    plain = dataclasses.replace(
        SERVICE, nomad=NomadTarget("worker"), canary=CanaryPlan(), release_phase=None
    )
    assert "[canary] is set but no job's update block places canaries (canary = 0)" in (
        rollouts.check(plain)
    )
    assert rollouts.check(dataclasses.replace(SERVICE, nomad=NomadTarget("web"))) == []
