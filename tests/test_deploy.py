"""The deploy use case with the in-memory store: no HTTP, no Consul."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest

from noman.deploy import Deployer, JobState, check_release, needs_write
from noman.errors import (
    InvalidTag,
    NomadUnavailable,
    RepositoryMismatch,
    StaleTag,
    WriteConflict,
)
from noman.model import Service
from noman.ordering import order_key
from noman.release import Release, Rollout
from noman.stores import Entry, Write
from noman.stores.file import FileStore

SERVICE = Service(
    name="web", repository="stut/stut.dev", key="web/IMAGE_TAG", secret_hashes=(b"x" * 32,)
)


def release(tag: str, **kwargs: object) -> Release:
    return Release(tag=tag, sender="test", **kwargs)  # type: ignore[arg-type]


def test_first_deploy_creates_the_key() -> None:
    store = FileStore()
    outcome = Deployer(store).deploy(SERVICE, release("release-20230103082900"))
    assert (outcome.previous, outcome.changed) == (None, True)
    assert store.read("web/IMAGE_TAG").value == "release-20230103082900"


def test_forward_only_same_tag_and_force() -> None:
    store = FileStore()
    deployer = Deployer(store)
    deployer.deploy(SERVICE, release("release-20230103082900"))
    with pytest.raises(StaleTag):
        deployer.deploy(SERVICE, release("release-20230103082859"))
    assert store.read("web/IMAGE_TAG").value == "release-20230103082900"
    assert deployer.deploy(SERVICE, release("release-20230103082900")).changed is False
    rolled = deployer.deploy(SERVICE, release("release-20230103082859", force=True))
    assert (rolled.changed, rolled.previous) == (True, "release-20230103082900")


@pytest.mark.parametrize(
    ("pattern", "tag", "order"),
    [
        (r"^release-(\d{14})$", "release-20230103082900", (20230103082900,)),
        (r"^v(\d+)$", "v10", (10,)),
        (r"^v?(\d+(?:\.\d+)*)$", "v1.2.10", (1, 2, 10)),
        # Letters in the group: no order (see tests/test_ordering.py).
        (r"^build-([a-z]+)$", "build-abc", None),
        (r"^[a-z]+$", "abc", None),
    ],
)
def test_order_key_uses_the_first_group(pattern: str, tag: str, order: object) -> None:
    service = Service("s", "a/b", "k", (b"",), tag_pattern=re.compile(pattern))
    assert order_key(service.tag_pattern, tag) == order


def test_numeric_groups_compare_as_numbers() -> None:
    service = Service("s", "a/b", "k", (b"",), tag_pattern=re.compile(r"^v(\d+)$"))
    assert needs_write(service, "v9", release("v10")) is True
    with pytest.raises(StaleTag):
        needs_write(service, "v10", release("v9"))


def test_unordered_current_value_never_blocks() -> None:
    assert needs_write(SERVICE, "latest", release("release-20000101000000")) is True
    assert needs_write(SERVICE, None, release("release-20000101000000")) is True


@pytest.mark.parametrize(
    "tag",
    [
        "latest",
        "../x",
        "release-2023 0103082900",
        "x" * 129,
        "-leading-dash",
        "release-20230103082900\n",
        "release-" + "\uff12" * 14,
    ],
)
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(InvalidTag):
        check_release(SERVICE, release(tag))


def test_other_repository_is_refused() -> None:
    with pytest.raises(RepositoryMismatch):
        check_release(SERVICE, release("release-20230103082900", repository="evil/x"))


class RacingStore(FileStore):
    """Another writer slips in between our read and our write, ``races`` times."""

    def __init__(self, races: int, intruder_tag: str) -> None:
        super().__init__()
        self.races = races
        self.intruder_tag = intruder_tag
        self.writes = 0

    def transact(self, writes: Sequence[Write]) -> bool:
        self.writes += 1
        if self.races:
            self.races -= 1
            key = writes[0].key
            current = super().read(key)
            super().write(key, f"{self.intruder_tag}", current.modify_index)
            self.intruder_tag = self.intruder_tag[:-1] + str(int(self.intruder_tag[-1]) + 1)
        return super().transact(writes)


def test_lost_race_decides_again_and_wins_when_newer() -> None:
    store = RacingStore(races=2, intruder_tag="release-20230101000001")
    outcome = Deployer(store).deploy(SERVICE, release("release-20240101000000"))
    assert outcome.changed is True
    assert store.read("web/IMAGE_TAG").value == "release-20240101000000"
    assert store.writes == 3


def test_lost_race_to_a_newer_tag_becomes_stale() -> None:
    store = RacingStore(races=1, intruder_tag="release-20250101000000")
    with pytest.raises(StaleTag):
        Deployer(store).deploy(SERVICE, release("release-20240101000000"))
    assert store.read("web/IMAGE_TAG").value == "release-20250101000000"


def test_endless_races_give_a_retryable_conflict() -> None:
    store = RacingStore(races=100, intruder_tag="release-20200101000000")
    with pytest.raises(WriteConflict):
        Deployer(store, cas_retries=3).deploy(SERVICE, release("release-20240101000000"))


def test_file_store_persists_and_keeps_consul_semantics(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "store.json"
    store = FileStore(path)
    assert store.read("k") == Entry(None, 0)
    assert store.write("k", "a", 0) is True
    index = store.read("k").modify_index
    assert store.write("k", "b", 0) is False
    assert store.write("k", "a", index) is True
    assert store.read("k").modify_index == index  # same value: index unchanged
    assert FileStore(path).read("k") == Entry("a", index)
    assert store.delete("k", index + 5) is False
    assert store.delete("k", index) is True
    assert FileStore(path).read("k") == Entry(None, 0)


ROLLING = Service("web", "stut/stut.dev", "web/IMAGE_TAG", (b"x" * 32,), strategy="rolling")


class FakeJobs:
    """An orchestrator double: a job with a tag and an index, optionally failing."""

    def __init__(self, tag: str | None = None, fail: Exception | None = None) -> None:
        self.tag = tag
        self.index = 10
        self.version = 3
        self.fail = fail
        self.registered: list[str] = []

    def read(self, service: Service) -> JobState:
        if self.fail:
            raise self.fail
        return JobState(self.tag, {"Version": self.version}, self.index)

    def register(self, service: Service, state: JobState, tag: str) -> Rollout | None:
        if self.fail:
            raise self.fail
        if state.modify_index != self.index:
            return None
        self.registered.append(tag)
        self.tag, self.index, self.version = tag, self.index + 1, self.version + 1
        return Rollout(job="web", version=self.version, eval_id="e1")

    def follow(
        self, service: Service, version: int, deployment_id: str | None, index: int, wait: float
    ) -> tuple[dict[str, Any] | None, int]:
        return {"id": "d1", "version": version, "status": "successful", "description": ""}, 1


def test_rolling_writes_consul_then_registers_the_job() -> None:
    store, jobs = FileStore(), FakeJobs("release-20230101000000")
    outcome = Deployer(store, jobs).deploy(ROLLING, release("release-20240101000000"))
    assert outcome.rollout == Rollout(job="web", version=4, eval_id="e1")
    assert outcome.status == 200
    assert jobs.registered == ["release-20240101000000"]
    assert store.read("web/IMAGE_TAG").value == "release-20240101000000"


def test_nomad_down_keeps_the_desired_tag_and_answers_pending() -> None:
    """No compensating write: the deploy is durable, the rollout pending with a reason."""
    store = FileStore()
    store.write("web/IMAGE_TAG", "release-20230101000000", 0)
    jobs = FakeJobs(fail=NomadUnavailable())
    deployer = Deployer(store, jobs)
    outcome = deployer.deploy(ROLLING, release("release-20240101000000"))
    assert (outcome.status, outcome.as_dict()["rollout"]) == (
        202,
        {"state": "pending", "reason": "nomad_unavailable"},
    )
    assert store.read("web/IMAGE_TAG").value == "release-20240101000000"
    status = deployer.status(ROLLING)
    assert status["rollout"]["state"] == "pending"
    assert status["rollout"]["reason"] == "nomad_unavailable"
    assert status["rollout"]["attempts"] == 1
    assert status["history"][0]["outcome"] == "pending"


def test_the_same_tag_again_is_unchanged_and_still_pending() -> None:
    store = FileStore()
    jobs = FakeJobs(fail=NomadUnavailable())
    deployer = Deployer(store, jobs)
    deployer.deploy(ROLLING, release("release-20240101000000"))
    again = deployer.deploy(ROLLING, release("release-20240101000000"))
    assert (again.changed, again.status, again.pending_reason) == (False, 202, "nomad_unavailable")


def test_rolling_same_tag_everywhere_is_a_no_op() -> None:
    store, jobs = FileStore(), FakeJobs("release-20240101000000")
    store.write("web/IMAGE_TAG", "release-20240101000000", 0)
    outcome = Deployer(store, jobs).deploy(ROLLING, release("release-20240101000000"))
    assert (outcome.changed, outcome.rollout) == (False, None)
    assert jobs.registered == []


class CountingStore(FileStore):
    """Counts the round trips a deploy makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.transactions = 0

    def read(self, key: str) -> Entry:
        self.reads += 1
        return super().read(key)

    def transact(self, writes: Sequence[Write]) -> list[int] | None:
        self.transactions += 1
        return super().transact(writes)


def test_the_next_deploy_is_one_round_trip_when_nobody_wrote_since() -> None:
    store = CountingStore()
    deployer = Deployer(store)
    deployer.deploy(SERVICE, release("release-20230101000000"))
    store.reads = store.transactions = 0
    deployer.deploy(SERVICE, release("release-20230201000000"))
    assert (store.reads, store.transactions) == (0, 1)
    assert store.read("web/IMAGE_TAG").value == "release-20230201000000"


def test_a_stale_guess_fails_the_check_and_set_and_is_decided_again() -> None:
    store = CountingStore()
    deployer = Deployer(store)
    deployer.deploy(SERVICE, release("release-20230101000000"))
    # Another instance deploys a newer tag: this process's memory is now stale.
    Deployer(store).deploy(SERVICE, release("release-20250101000000"))
    with pytest.raises(StaleTag):
        deployer.deploy(SERVICE, release("release-20240101000000"))
    assert store.read("web/IMAGE_TAG").value == "release-20250101000000"
    # A refusal or a no-op is never decided on remembered values.
    other = Deployer(store)
    other.deploy(SERVICE, release("release-20260101000000"))
    assert deployer.deploy(SERVICE, release("release-20260101000000")).changed is False
