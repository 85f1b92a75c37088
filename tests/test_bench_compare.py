"""bench/compare.py's arithmetic and generated configurations, and the minimal relay it runs.

The benchmark itself needs wrk and webhook and takes minutes; these tests cover what decides
its verdicts (percentiles, stalls, ratios, goals) and what it feeds the three systems, so a
broken configuration is caught here rather than as a strange figure in the README.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from noman.config import parse_settings
from tests.conftest import ConsulHandle

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


compare = _load("compare")
relay = _load("minimal_relay")


@pytest.mark.parametrize(
    ("samples", "fraction", "expected"),
    [
        (list(range(1, 101)), 0.99, 99),
        (list(range(1, 101)), 0.5, 50),
        (list(range(100, 0, -1)), 1.0, 100),
        ([7.0], 0.99, 7.0),
        ([1, 2, 3], 0.0, 1),
    ],
)
def test_percentile_is_nearest_rank(samples: list[float], fraction: float, expected: float) -> None:
    assert compare.percentile(samples, fraction) == expected


def test_percentile_of_nothing_is_nan() -> None:
    value = compare.percentile([], 0.99)
    assert value != value


def test_ratio_handles_zero_denominators() -> None:
    assert compare.ratio(6, 3) == 2
    assert compare.ratio(1, 0) == float("inf")
    nan = compare.ratio(0, 0)
    assert nan != nan


def test_wrk_tail_counts_timeouts_and_silence() -> None:
    fine = compare.WrkRun(requests=1000, duration=10, timeouts=5, p99=0.02)
    assert fine.tail == 0.02
    stalled = compare.WrkRun(requests=1000, duration=10, timeouts=50, p99=0.02)
    assert stalled.tail == compare.WRK_TIMEOUT_S
    silent = compare.WrkRun(requests=0, duration=10, timeouts=0)
    assert silent.tail == float("inf")
    assert compare.WrkRun(requests=500, duration=10, status_errors=100).ok_rate == 40


def test_parse_wrk_reads_the_bench_line() -> None:
    output = (
        "Running 10s test @ http://127.0.0.1:1\n"
        'BENCH {"requests":1200,"duration_us":10000000,"status":3,"timeout":2,"connect":1,'
        '"read":4,"write":0,"p50_us":2500,"p99_us":9000,"sent":[600,601]}\n'
    )
    run = compare.parse_wrk(output)
    assert (run.requests, run.duration, run.status_errors, run.timeouts) == (1200, 10, 3, 2)
    assert run.socket_errors == 5
    assert (run.p50, run.p99, run.sent) == (0.0025, 0.009, (600, 601))
    assert run.rate == 120
    with pytest.raises(ValueError, match="no BENCH line"):
        compare.parse_wrk("wrk: connection refused\n")


def test_probe_marks_a_stalled_p99_as_a_lower_bound() -> None:
    quick = compare.Probe(tuple([0.01] * 100))
    assert quick.cell() == "10.0"
    stalled = compare.Probe(tuple([0.01] * 90 + [12.0] * 10), censored=10)
    assert stalled.p99 == 12.0
    assert stalled.cell() == "≥ 12000.0"


def _result(deploy: float, p99: float, rejected: float, quiet: float, slow: float, rss: float):  # type: ignore[no-untyped-def]
    run = compare.WrkRun(requests=int(deploy * 10), duration=10, p50=p99 / 2, p99=p99)
    return compare.SystemResult(
        deploy1=run,
        deploy8=run,
        rejected8=compare.WrkRun(requests=int(rejected * 10), duration=10, status_errors=1),
        quiet=compare.Probe((quiet,)),
        slow=compare.Probe((slow,)),
        mixed={200: 10},
        rss_mb=[rss, rss - 1],
    )


def test_goals_pass_and_fail_on_their_thresholds() -> None:
    passing = {
        "noman": _result(900, 0.01, 5000, 0.01, 0.015, 45),
        "relay": _result(1000, 0.01, 5000, 0.01, 0.015, 40),
        "webhook": _result(300, 0.05, 9000, 0.05, 0.05, 15),
    }
    goals = compare.evaluate(passing)
    assert len(goals) == 11
    assert all(goal.passed for goal in goals), compare.goal_lines(goals)
    failing = {
        "noman": _result(800, 0.03, 3000, 0.01, 0.5, 70),
        "relay": _result(1000, 0.01, 5000, 0.01, 0.015, 40),
        "webhook": _result(500, 0.05, 9000, 0.05, 0.05, 15),
    }
    verdicts = {goal.name: goal.passed for goal in compare.evaluate(failing)}
    assert not any(verdicts.values()), verdicts
    lines = compare.goal_lines(compare.evaluate(failing)).splitlines()
    assert len(lines) == 11 and all(line.startswith("FAIL") for line in lines)
    assert compare.table(passing).count("\n") == 4  # header, rule, three systems


def test_a_nan_goal_fails() -> None:
    assert not compare.Goal("x", float("nan"), 1, True).passed
    assert not compare.Goal("x", float("nan"), 1, False).passed


def test_lua_script_sends_increasing_tags_per_connection() -> None:
    targets = [compare.Target("/hooks/a", "/hooks/x"), compare.Target("/hooks/b", "/hooks/x")]
    script = compare.lua_script("deploy", targets, 20230100000000)
    assert '{path="/hooks/a", wrong="/hooks/x"}' in script
    assert "local base = 20230100000000" in script
    assert '{"tag":"release-%014d","repository":"bench/app"}' in script
    assert "function done(summary, latency, requests)" in script
    for mode in ("reject", "mixed"):
        assert f'local mode = "{mode}"' in compare.lua_script(mode, targets, 0)
    with pytest.raises(ValueError):
        compare.lua_script("flood", targets, 0)


def test_noman_toml_is_a_valid_noman_config() -> None:
    services = compare.make_services(3)
    settings = parse_settings(
        compare.noman_toml("http://127.0.0.1:8500", services), source="bench", environ={}
    )
    assert [s.name for s in settings.services] == ["svc0", "svc1", "svc2"]
    assert [s.key for s in settings.services] == [s.key("noman") for s in services]
    assert settings.consul.address == "http://127.0.0.1:8500"


def test_webhook_hooks_write_the_payload_tag_and_check_the_token() -> None:
    services = compare.make_services(2)
    hooks = compare.webhook_hooks("http://127.0.0.1:8500", services, "/usr/bin/curl")
    assert [hook["id"] for hook in hooks] == ["svc0", "svc1"]
    hook = hooks[1]
    assert hook["execute-command"] == "/usr/bin/curl"
    assert hook["include-command-output-in-response"] is True
    args = hook["pass-arguments-to-command"]
    assert {"source": "payload", "name": "tag"} in args
    assert args[-1]["name"] == "http://127.0.0.1:8500/v1/kv/bench/webhook/svc1/IMAGE_TAG"
    rules = [rule["match"] for rule in hook["trigger-rule"]["and"]]
    assert rules[0]["value"] == services[1].secret
    tag_rule = re.compile(rules[2]["regex"])
    assert tag_rule.search(compare.tag(20230101000000))
    assert not tag_rule.search("@/etc/passwd")
    json.dumps(hooks)  # webhook reads it as JSON


def test_targets_put_the_secret_where_each_system_reads_it() -> None:
    services = compare.make_services(1)
    noman = compare.targets_for("noman", services)[0]
    hook = compare.targets_for("webhook", services)[0]
    assert noman.path == f"/hooks/{services[0].secret}"
    assert hook.path == f"/hooks/svc0?token={services[0].secret}"
    assert services[0].secret not in noman.wrong_path + hook.wrong_path


def test_minimal_relay_reads_and_writes_with_cas(consul: ConsulHandle) -> None:
    services = compare.make_services(2)
    key = consul.key("relay/IMAGE_TAG")
    config = {
        "consul": consul.url,
        "services": [
            {"secret_sha256": s.digest, "repository": "bench/app", "key": key} for s in services
        ],
    }
    client = relay.create_app(config).test_client()
    url = f"/hooks/{services[1].secret}"
    first = client.post(url, json={"tag": compare.tag(1), "repository": "bench/app"})
    assert first.status_code == 200 and first.json["changed"] is True
    assert consul.get(key)[0] == compare.tag(1)
    again = client.post(url, json={"tag": compare.tag(1)})
    assert again.status_code == 200 and again.json["changed"] is False
    refusals = [
        ("/hooks/nope", {"tag": compare.tag(2)}, 401),
        (url, {"tag": compare.tag(2), "repository": "other/app"}, 403),
        (url, {"tag": "../x"}, 400),
        (url, ["not", "an", "object"], 400),
    ]
    for path, body, status in refusals:
        answer = client.post(path, json=body)
        assert answer.status_code == status, (path, body, answer.json)
        assert set(answer.json) == {"error", "message"}
    assert consul.get(key)[0] == compare.tag(1)


def test_rounds_combine_into_one_run_and_one_probe() -> None:
    runs = [
        compare.WrkRun(requests=100, duration=4, status_errors=1, p50=0.002, p99=0.030),
        compare.WrkRun(requests=300, duration=4, timeouts=2, p50=0.001, p99=0.010, sent=(3,)),
        compare.WrkRun(requests=200, duration=4, p50=0.003, p99=0.020, sent=(5,)),
    ]
    run = compare.combine(runs)
    assert (run.requests, run.duration, run.status_errors, run.timeouts) == (600, 12, 1, 2)
    assert (run.p50, run.p99, run.rate) == (0.002, 0.020, 50)
    probe = compare.merge(
        [compare.Probe((0.1, 0.2), censored=1), compare.Probe((0.3,), failures=2)]
    )
    assert probe == compare.Probe((0.1, 0.2, 0.3), censored=1, failures=2)
