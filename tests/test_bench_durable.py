"""The pure helpers of bench/durable.py (the benchmark itself is run by hand, not in CI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from noman.config import parse_settings

BENCH = Path(__file__).resolve().parent.parent / "bench" / "durable.py"


@pytest.fixture(scope="module")
def durable() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_durable", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_durable"] = module
    spec.loader.exec_module(module)
    return module


def test_percentile_takes_the_nearest_rank(durable: ModuleType) -> None:
    samples = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert durable.percentile(samples, 0.0) == 1.0
    assert durable.percentile(samples, 0.5) == 3.0
    assert durable.percentile(samples, 0.95) == 5.0
    assert durable.percentile(samples, 1.0) == 5.0
    with pytest.raises(ValueError):
        durable.percentile([], 0.5)


def test_requests_per_change_and_the_failover_budget(durable: ModuleType) -> None:
    assert durable.per_change(12, 9) == pytest.approx(4 / 3)
    assert durable.per_change(3, 0) == float("inf")
    assert durable.failover_budget(10, 4) == 24


def test_tags_are_ordered_and_newer_than_the_running_one(durable: ModuleType) -> None:
    assert durable.tag(1) == "release-20240000000001"
    assert durable.OLD < durable.tag(0) < durable.tag(9) < durable.tag(10)


def test_nomad_paths_are_counted_without_their_ids(durable: ModuleType) -> None:
    assert durable.classify("/v1/job/web") == "/v1/job/<job>"
    assert durable.classify("/v1/job/web/deployments") == "/v1/job/<job>/deployments"
    assert durable.classify("/v1/deployment/64cf-91b8") == "/v1/deployment/<id>"
    assert durable.classify("/v1/kv/noman/web") == "/v1/kv/noman/web"


def test_the_table_marks_each_goal(durable: ModuleType) -> None:
    text = durable.table(
        [
            durable.Verdict("latency", "0.01 s", "<= 0.5 s", True),
            durable.Verdict("hook ratio", "3.10x", "<= 1.25x", False),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["goal", "measured", "target", "result"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("latency") and lines[2].endswith("PASS")
    assert lines[3].startswith("hook ratio") and lines[3].endswith("FAIL")
    # Columns line up: every row puts its result at the same offset.
    assert (
        len({line.rfind(word) for line, word in zip(lines[2:], ("PASS", "FAIL"), strict=True)}) == 1
    )


def test_the_settings_text_is_a_valid_config(durable: ModuleType) -> None:
    text = durable.settings_text(
        "http://127.0.0.1:1",
        "s3cret",
        strategy="rolling",
        nomad_url="http://127.0.0.1:2",
        notify_url="http://127.0.0.1:3/n",
        session_ttl=10,
    )
    settings = parse_settings(text, source="bench.toml", environ={})
    (service,) = settings.services
    assert (service.name, service.strategy) == ("web", "rolling")
    assert settings.consul.session_ttl == 10
    assert settings.consul.state_prefix == durable.PREFIX
    assert [t.url for t in settings.notify.targets] == ["http://127.0.0.1:3/n"]
    restart = durable.settings_text("http://127.0.0.1:1", "s3cret", strategy="restart")
    (plain,) = parse_settings(restart, source="bench.toml", environ={}).services
    assert plain.strategy == "restart" and not settings.notify.dry_run
