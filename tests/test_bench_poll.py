"""bench/poll.py on a small run: one tag list per service per interval, tokens by expiry."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "poll.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_poll", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_poll"] = module
    spec.loader.exec_module(module)
    return module


def test_a_small_run_keeps_the_promise(bench: ModuleType) -> None:
    result = bench.run(20, 150, interval=300, lifetime=300, intervals=2)
    assert result.polls == 40
    assert result.tag_lists - result.polls * 2 in range(0, 3)  # the challenge's 401s
    assert result.tokens == 40
    assert result.holds()
    longer = bench.run(20, 50, interval=60, lifetime=300, intervals=4)
    assert (longer.pages, longer.tokens) == (1, 20)
    assert longer.holds()


def test_the_verdict_fails_a_second_tag_list_or_extra_tokens(bench: ModuleType) -> None:
    base = {
        "services": 10,
        "intervals": 2,
        "polls": 20,
        "tag_lists": 41,
        "tokens": 20,
        "deploys": 10,
        "cpu": 0.1,
        "wall": 0.1,
        "pages": 2,
        "lifetime": 300.0,
        "interval": 300.0,
    }
    assert bench.Result(**base).holds()
    assert not bench.Result(**{**base, "tag_lists": 60}).holds()
    assert not bench.Result(**{**base, "tokens": 30}).holds()
    assert not bench.Result(**{**base, "polls": 30}).holds()
