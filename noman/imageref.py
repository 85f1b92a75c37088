"""Image names as Docker reads them: which registry host, which repository path.

A service's ``repository`` is the image name as ``docker pull`` spells it,
without a tag: ``registry.example:5000/team/app``, ``ghcr.io/acme/shop``, or
``acme/shop`` (Docker Hub). Registries announce pushes with the host and
the path apart (``request.host`` and ``target.repository``), or with Docker
Hub's short names, so comparing strings is not enough.

The rules are Docker's own (``distribution/reference``,
``ParseNormalizedNamed`` and ``splitDockerDomain``): the first component is
a registry host when it has a ``.`` or a ``:`` or is ``localhost``;
otherwise the image is on Docker Hub, whose host has three spellings
(``docker.io``, ``index.docker.io``, ``registry-1.docker.io``) and whose
one-component names live under ``library/`` (``nginx`` is
``docker.io/library/nginx``). Hosts and paths compare case-insensitively:
hosts are DNS names, and Docker refuses upper case in paths anyway.

Pure functions, no Noman imports: webhook senders and registry polling
both use them.
"""

from __future__ import annotations

from typing import NamedTuple

DOCKER_HUB = "docker.io"
#: Every host name that means Docker Hub.
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class ImageName(NamedTuple):
    """A normalised image name: registry host (with any port) and repository path."""

    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


def parse_image_name(name: str) -> ImageName:
    """``name`` as (host, path), normalised; any ``:tag`` or ``@digest`` is dropped.

    >>> parse_image_name("acme/shop")
    ImageName(host='docker.io', path='acme/shop')
    >>> parse_image_name("nginx:1.25")
    ImageName(host='docker.io', path='library/nginx')
    >>> parse_image_name("Registry.Example:5000/Team/App")
    ImageName(host='registry.example:5000', path='team/app')

    Raises:
        ValueError: ``name`` has an empty host, path or path component.
    """
    bare = name.split("@", 1)[0]
    slash, colon = bare.rfind("/"), bare.rfind(":")
    if colon > slash:  # a colon after the last slash starts a tag; before it, a port
        bare = bare[:colon]
    first, sep, rest = bare.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return normalised(first, rest)
    return normalised(DOCKER_HUB, bare)


def normalised(host: str, path: str) -> ImageName:
    """(``host``, ``path``) as a registry announces them, in the form names compare in.

    Raises:
        ValueError: an empty host, path or path component.
    """
    host, path = host.lower(), path.lower()
    if not host or not path or "" in path.split("/"):
        raise ValueError(f"not an image name: {host!r}/{path!r}")
    if host in DOCKER_HUB_HOSTS:
        host = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return ImageName(host, path)


def names_image(configured: str, host: str | None, path: str) -> bool:
    """True when a registry's (``host``, ``path``) is the image ``configured`` names.

    ``host`` None means the registry did not say (a notification without its
    request record): then the path alone must match, on the configured host.
    Anything that is not an image name matches nothing.
    """
    try:
        wanted = parse_image_name(configured)
        seen = normalised(wanted.host if host is None else host, path)
    except ValueError:
        return False
    return seen == wanted


def same_image(configured: str, name: str) -> bool:
    """True when the image name ``name`` (a payload's spelling) is ``configured``'s image."""
    try:
        seen = parse_image_name(name)
    except ValueError:
        return False
    return names_image(configured, seen.host, seen.path)
