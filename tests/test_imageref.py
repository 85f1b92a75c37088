"""Image names as Docker reads them: host and path, Docker Hub's spellings, matching, URLs."""

from __future__ import annotations

import pytest

from noman.imageref import (
    DOCKER_HUB,
    ImageName,
    ImageReference,
    InvalidReference,
    names_image,
    parse_image_name,
    parse_reference,
    same_image,
)


@pytest.mark.parametrize(
    ("name", "host", "path"),
    [
        # Docker Hub: no host, one component under library/, three spellings of the host.
        ("nginx", "docker.io", "library/nginx"),
        ("acme/shop", "docker.io", "acme/shop"),
        ("docker.io/acme/shop", "docker.io", "acme/shop"),
        ("index.docker.io/acme/shop", "docker.io", "acme/shop"),
        ("registry-1.docker.io/library/nginx", "docker.io", "library/nginx"),
        ("docker.io/nginx", "docker.io", "library/nginx"),
        ("registry.hub.docker.com/acme/shop", "docker.io", "acme/shop"),
        # A first component with a dot, a colon, or localhost is a registry host.
        ("ghcr.io/acme/shop", "ghcr.io", "acme/shop"),
        ("registry.example:5000/team/app", "registry.example:5000", "team/app"),
        ("localhost/app", "localhost", "app"),
        ("localhost:5000/team/app", "localhost:5000", "team/app"),
        ("LOCALHOST/app", "localhost", "app"),
        ("[::1]:5000/app", "[::1]:5000", "app"),
        ("myregistry.azurecr.io/a/b/c", "myregistry.azurecr.io", "a/b/c"),
        # Not a host: no dot, no colon, not localhost.
        ("team/app/sub", "docker.io", "team/app/sub"),
        # Case: hosts are DNS names; Docker refuses upper case in paths.
        ("Registry.Example/Team/App", "registry.example", "team/app"),
        # A tag or a digest is not part of the name; a port is.
        ("nginx:1.25", "docker.io", "library/nginx"),
        ("registry.example:5000/app:v1", "registry.example:5000", "app"),
        ("ghcr.io/acme/shop@sha256:" + "a" * 64, "ghcr.io", "acme/shop"),
        ("ghcr.io/acme/shop:v1@sha256:" + "a" * 64, "ghcr.io", "acme/shop"),
    ],
)
def test_parse_image_name(name: str, host: str, path: str) -> None:
    assert parse_image_name(name) == ImageName(host, path)
    assert str(parse_image_name(name)) == f"{host}/{path}"


@pytest.mark.parametrize("name", ["", "/", "registry.example/", "a//b", "ghcr.io//x", "@sha256:x"])
def test_not_an_image_name(name: str) -> None:
    with pytest.raises(ValueError, match="not an image name"):
        parse_image_name(name)


@pytest.mark.parametrize(
    ("configured", "host", "path", "matches"),
    [
        ("registry.example/team/app", "registry.example", "team/app", True),
        ("registry.example/team/app", "REGISTRY.example", "Team/App", True),
        ("registry.example/team/app", "other.example", "team/app", False),
        ("registry.example/team/app", "registry.example", "team/other", False),
        ("registry.example:5000/team/app", "registry.example", "team/app", False),
        # No host in the payload: the path alone, on the configured host.
        ("registry.example/team/app", None, "team/app", True),
        ("registry.example/team/app", None, "team/other", False),
        ("nginx", None, "nginx", True),
        ("nginx", "index.docker.io", "library/nginx", True),
        ("acme/shop", "registry-1.docker.io", "acme/shop", True),
        ("acme/shop", "registry.hub.docker.com", "acme/shop", True),
        ("acme/shop", "ghcr.io", "acme/shop", False),
        # Garbage from a payload matches nothing, and never raises.
        ("registry.example/team/app", "registry.example", "", False),
        ("registry.example/team/app", "", "team/app", False),
    ],
)
def test_names_image(configured: str, host: str | None, path: str, matches: bool) -> None:
    assert names_image(configured, host, path) is matches


@pytest.mark.parametrize(
    ("configured", "name", "matches"),
    [
        ("stut/stut.dev", "stut/stut.dev", True),
        ("stut/stut.dev", "docker.io/stut/stut.dev", True),
        ("nginx", "docker.io/library/nginx", True),
        ("nginx", "library/nginx", True),
        ("ghcr.io/stut/stut.dev", "GHCR.io/Stut/stut.dev", True),
        ("harbor.example.com/stut/stut.dev", "harbor.example.com/stut/stut.dev:v1", True),
        ("harbor.example.com/stut/stut.dev", "stut/stut.dev", False),
        ("stut/stut.dev", "", False),
    ],
)
def test_same_image(configured: str, name: str, matches: bool) -> None:
    assert same_image(configured, name) is matches


# -- registry polling and the config: parse_reference ---------------------------------------


@pytest.mark.parametrize(
    ("name", "insecure", "host", "path", "scheme"),
    [
        ("acme/shop", (), DOCKER_HUB, "acme/shop", "https"),
        ("shop", (), DOCKER_HUB, "library/shop", "https"),
        ("docker.io/acme/shop", (), DOCKER_HUB, "acme/shop", "https"),
        ("index.docker.io/library/nginx", (), DOCKER_HUB, "library/nginx", "https"),
        ("docker.io/nginx", (), DOCKER_HUB, "library/nginx", "https"),
        ("ghcr.io/acme/shop", (), "ghcr.io", "acme/shop", "https"),
        ("GHCR.io/Acme/Shop", (), "ghcr.io", "acme/shop", "https"),
        ("quay.io/team/sub/app", (), "quay.io", "team/sub/app", "https"),
        ("registry.example:5000/team/app", (), "registry.example:5000", "team/app", "https"),
        ("localhost:5000/x", (), "localhost:5000", "x", "http"),
        ("localhost/team/x", (), "localhost", "team/x", "http"),
        ("127.0.0.1:5000/a/b", (), "127.0.0.1:5000", "a/b", "http"),
        ("127.8.9.10/a", (), "127.8.9.10", "a", "http"),
        ("[::1]:5000/a", (), "[::1]:5000", "a", "http"),
        ("10.0.0.5:5000/a", (), "10.0.0.5:5000", "a", "https"),
        ("reg.local:5000/team/app", ("reg.local:5000",), "reg.local:5000", "team/app", "http"),
        ("reg.local:5000/team/app", ("REG.local",), "reg.local:5000", "team/app", "http"),
        ("reg.local:5000/team/app", ("reg.local:5001",), "reg.local:5000", "team/app", "https"),
        ("example/app", (), DOCKER_HUB, "example/app", "https"),
        ("acme/b__c.d-e--f", (), DOCKER_HUB, "acme/b__c.d-e--f", "https"),
    ],
)
def test_image_names_are_read_as_docker_reads_them(
    name: str, insecure: tuple[str, ...], host: str, path: str, scheme: str
) -> None:
    assert parse_reference(name, insecure) == ImageReference(host, path, scheme)


@pytest.mark.parametrize(
    "name",
    [
        "",
        " acme/shop",
        "acme/shop:1.0",
        "acme/shop@sha256:" + "0" * 64,
        "acme//shop",
        "acme/-shop",
        "acme/shop_",
        "ghcr.io/",
        "bad_host.example/x",
        "acme/sh op",
        "x" * 256,
    ],
)
def test_names_a_registry_cannot_be_asked_about_are_refused(name: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(name)


def test_a_reference_knows_its_urls() -> None:
    ref = parse_reference("ghcr.io/acme/shop")
    assert ref.base_url == "https://ghcr.io"
    assert ref.tags_url == "https://ghcr.io/v2/acme/shop/tags/list"
    assert str(ref) == "ghcr.io/acme/shop"
    assert parse_reference("localhost:5000/x").base_url == "http://localhost:5000"


@pytest.mark.parametrize(
    "repository",
    [
        "nginx",
        "acme/shop",
        "docker.io/acme/shop",
        "registry.hub.docker.com/library/nginx",
        "GHCR.io/Acme/Shop",
        "registry.example:5000/team/app",
        "localhost:5000/x",
        "LOCALHOST/team/x",
        "[::1]:5000/a",
    ],
)
def test_the_image_polled_is_the_image_a_payload_must_name(repository: str) -> None:
    # Registry polling and webhook senders read a service's repository by the same rules.
    assert same_image(repository, str(parse_reference(repository)))
