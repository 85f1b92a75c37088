"""How a payload's repository is compared with the service's: as Docker names images."""

from __future__ import annotations

import pytest

from noman import create_app
from tests.conftest import ConsulHandle, make_settings

TAG = "release-20230103082900"


# -- one image, several spellings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "named"),
    [
        ("stut/stut.dev", "docker.io/stut/stut.dev"),
        ("stut/stut.dev", "index.docker.io/stut/stut.dev"),
        ("nginx", "library/nginx"),
        ("ghcr.io/stut/stut.dev", "GHCR.IO/stut/stut.dev"),
    ],
)
def test_a_repository_is_matched_as_docker_names_images(
    consul: ConsulHandle, secret: str, configured: str, named: str
) -> None:
    client = create_app(make_settings(consul, secret, repository=configured)).test_client()
    answer = client.post(f"/hooks/{secret}", json={"tag": TAG, "repository": named})
    assert answer.status_code == 200, answer.json
    other = client.post(f"/hooks/{secret}", json={"tag": TAG, "repository": "quay.io/x/y"})
    assert other.status_code == 403
    assert other.json["error"] == "repository_mismatch"
