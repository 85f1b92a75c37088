"""The shipped Nomad job files parse and say what the README promises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from noman.config import parse_settings

NOMAD = Path(__file__).resolve().parent.parent / "deploy" / "nomad"


def load(name: str) -> dict[str, Any]:
    with (NOMAD / name).open() as handle:
        data: dict[str, Any] = hcl2.load(handle)
    return data


def blocks(node: Any, name: str) -> Iterator[Any]:
    """Every block called ``name`` anywhere below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name:
                yield from value if isinstance(value, list) else [value]
            yield from blocks(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from blocks(item, name)


def unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


@pytest.mark.parametrize("name", sorted(p.name for p in NOMAD.glob("*.hcl")))
def test_job_files_parse(name: str) -> None:
    assert list(blocks(load(name), "job"))


def test_restart_example_restarts_on_key_change() -> None:
    modes = [
        unquote(t.get("change_mode")) for t in blocks(load("example-restart.nomad.hcl"), "template")
    ]
    assert "restart" in modes


def test_rolling_example_is_set_up_for_rolling_deploys() -> None:
    job = load("example-rolling.nomad.hcl")
    assert all(unquote(t["change_mode"]) == "noop" for t in blocks(job, "template"))
    update = next(blocks(job, "update"))
    assert update["auto_revert"] is True
    assert unquote(update["health_check"]) == "checks"
    meta = next(blocks(job, "meta"))
    assert "NOMAN_IMAGE_TAG" in meta
    images = [unquote(c["image"]) for c in blocks(job, "config")]
    assert any("${NOMAD_META_NOMAN_IMAGE_TAG}" in image for image in images)


def test_noman_job_runs_two_checked_hardened_instances() -> None:
    job = load("noman.nomad.hcl")
    group = next(iter(next(blocks(job, "group")).values()))
    assert group["count"] == 2
    assert next(blocks(job, "update"))["auto_revert"] is True
    checks = {unquote(c["path"]): c for c in blocks(job, "check")}
    assert set(checks) == {"/healthz", "/readyz"}
    # Liveness restarts; readiness (which needs Consul) only routes.
    assert "check_restart" in checks["/healthz"]
    assert "check_restart" not in checks["/readyz"]
    config = next(blocks(job, "config"))
    assert config["readonly_rootfs"] is True
    assert [unquote(c) for c in config["cap_drop"]] == ["all"]


SERVICE_JOBS = sorted(
    p.name
    for p in NOMAD.glob("*.hcl")
    if any(
        unquote(body.get("type")) == "service"
        for job in blocks(load(p.name), "job")
        for body in job.values()
    )
)


@pytest.mark.parametrize("name", SERVICE_JOBS)
def test_every_service_job_checks_health_itself(name: str) -> None:
    """Each group's health is its own HTTP check, never an image's HEALTHCHECK.

    An image built in OCI format (podman's default) carries no HEALTHCHECK at all,
    and Nomad's deployments read only the job's checks (``health_check = "checks"``).
    """
    job = load(name)
    for update in blocks(job, "update"):  # the restart example has none: nothing rolls
        assert unquote(update["health_check"]) == "checks"
    for group in blocks(job, "group"):
        for group_name, body in group.items():
            checks = list(blocks(list(blocks(body, "service")), "check"))
            assert checks, f"{name}: group {group_name} has no check of its own"
            for check in checks:
                assert unquote(check["type"]) == "http", (name, check)
                assert unquote(check["path"]).startswith("/"), (name, check)
                assert unquote(check["interval"]) and unquote(check["timeout"]), (name, check)


def test_noman_job_checks_its_own_health_endpoints_on_its_port() -> None:
    job = load("noman.nomad.hcl")
    [service] = list(blocks(job, "service"))
    assert unquote(service["port"]) == "http"
    checks = {unquote(c["path"]): unquote(c["type"]) for c in blocks(service, "check")}
    assert checks == {"/healthz": "http", "/readyz": "http"}


def test_noman_job_config_template_is_a_valid_noman_toml() -> None:
    text = (NOMAD / "noman.nomad.hcl").read_text()
    start = text.index("<<-EOT", text.index('destination = "local/noman.toml"')) + len("<<-EOT")
    body = text[start : text.index("EOT", start)]
    lines = [line.strip() for line in body.splitlines()]
    toml = "\n".join(line for line in lines if "{{" not in line)
    settings = parse_settings(toml, source="noman.nomad.hcl", environ={})
    assert settings.services


def test_image_runs_noman_serve() -> None:
    """`noman serve` validates the config first: one line and exit 2 on a mistake."""
    dockerfile = (NOMAD.parent.parent / "Dockerfile").read_text()
    cmd = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert cmd == ['CMD ["/opt/venv/bin/noman", "serve"]']


def test_the_release_job_is_parameterized_for_noman() -> None:
    job = next(iter(next(blocks(load("shop-migrate.nomad.hcl"), "job")).values()))
    assert unquote(job["type"]) == "batch"
    [parameterized] = job["parameterized"]
    assert [unquote(k) for k in parameterized["meta_required"]] == ["NOMAN_IMAGE_TAG"]
    assert next(blocks(job, "restart"))["attempts"] == 0  # a failed migration is not re-run
    assert next(blocks(job, "reschedule"))["attempts"] == 0
    images = [unquote(c["image"]) for c in blocks(job, "config")]
    assert images == ["stut/shop:${NOMAD_META_NOMAN_IMAGE_TAG}"]


def test_the_web_job_places_a_canary_that_noman_promotes() -> None:
    job = load("shop-web.nomad.hcl")
    update = next(blocks(job, "update"))
    assert update["canary"] >= 1
    assert update["auto_promote"] is False  # else Nomad promotes on health alone
    assert update["auto_revert"] is True  # a failed analysis brings the old version back
    assert "NOMAN_IMAGE_TAG" in next(blocks(job, "meta"))
    service = next(blocks(job, "service"))
    assert unquote(next(blocks(service, "meta"))["version"]) == "${NOMAD_META_NOMAN_IMAGE_TAG}"
    assert all(unquote(t["change_mode"]) == "noop" for t in blocks(job, "template"))
    worker = load("shop-worker.nomad.hcl")
    assert next(blocks(worker, "update"))["auto_revert"] is True
    assert "canary" not in next(blocks(worker, "update"))


def test_the_readme_stages_example_is_a_valid_config_naming_these_jobs() -> None:
    import re

    readme = (NOMAD.parent.parent / "README.md").read_text()
    section = readme.split("### A complete example", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert toml is not None
    text = toml.group(1).replace("<64 hex chars>", "ab" * 32)
    service = parse_settings(text, source="README.md", environ={}).service("shop")
    assert service.nomad is not None and service.release_phase is not None
    names = {
        unquote(name)
        for path in NOMAD.glob("shop-*.nomad.hcl")
        for job in blocks(load(path.name), "job")
        for name in job
    }
    assert {*service.nomad.job_ids, service.release_phase.job} == names
    assert service.canary is not None and service.canary.promote == "manual"
    assert [c.kind for c in service.canary.checks] == ["prometheus", "http"]
