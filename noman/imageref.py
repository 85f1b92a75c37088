"""Image names as Docker reads them: which registry, which repository, http or https.

A service's ``repository`` is the image name as ``docker pull`` spells it, without a tag:
``registry.example:5000/team/app``, ``ghcr.io/acme/shop``, ``acme/shop`` (Docker Hub), or
``shop`` (Docker Hub's official ``library/shop``). Registries announce pushes with the host
and the path apart (``request.host`` and ``target.repository``), or with Docker Hub's short
names, so comparing strings is not enough.

The rules are Docker's own (``distribution/reference``, ``ParseNormalizedNamed`` and
``splitDockerDomain``): the first component is a registry host when it has a ``.`` or a
``:`` or is ``localhost``; otherwise the image is on Docker Hub, whose host has several
spellings and whose one-component names live under ``library/``. Hosts and paths compare
case-insensitively: hosts are DNS names, and Docker refuses upper case in paths anyway.
Plain HTTP is used only where the Docker daemon uses it: loopback hosts (127.0.0.0/8,
::1, ``localhost``) and the hosts an operator lists as insecure.

Two readings share these rules. Webhook senders compare a payload's image with a
service's (``same_image``, ``names_image``): a ``:tag`` or ``@digest`` is dropped, a path
announced without its host is looked for on the service's host, and what cannot be read
matches nothing. Registry polling and the configuration ask where a service's repository
is served (``parse_reference``): a tag or digest is refused, Docker's grammar is checked,
Docker Hub becomes its API host ``registry-1.docker.io``, and http or https is decided.

Pure functions on strings, no Noman imports: nothing here opens a connection.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_HOSTS",
    "DOCKER_HUB_NAME",
    "ImageName",
    "ImageReference",
    "InvalidReference",
    "is_loopback",
    "is_registry_host",
    "names_image",
    "normalised",
    "parse_image_name",
    "parse_reference",
    "same_image",
]

#: Docker Hub as a normalised image name spells it.
DOCKER_HUB_NAME = "docker.io"
#: Where Docker Hub's registry API answers (``DOCKER_HUB_NAME`` is not an API host).
DOCKER_HUB = "registry-1.docker.io"
#: Every host name that means Docker Hub: all of them reach the same images.
DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# distribution/reference's grammar: path components of lower-case alphanumerics joined by
# one '.', one or two '_', or any number of '-'.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
)
# distribution/reference: a whole name (host and path) is at most 255 characters.
_MAX_NAME = 255


class InvalidReference(ValueError):
    """The text is not an image name (or not one a registry can be asked about)."""


class ImageName(NamedTuple):
    """A normalised image name: registry host (with any port) and repository path."""

    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


@dataclass(frozen=True)
class ImageReference:
    """One repository on one registry: ``host`` (lower case, with any port), ``path``, scheme."""

    host: str
    path: str
    scheme: str = "https"

    @property
    def base_url(self) -> str:
        """The registry's root URL, e.g. ``https://ghcr.io`` (the API is under ``/v2/``)."""
        return f"{self.scheme}://{self.host}"

    @property
    def tags_url(self) -> str:
        """The URL of the repository's tag list (OCI Distribution ``GET /v2/<name>/tags/list``)."""
        return f"{self.base_url}/v2/{self.path}/tags/list"

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


# -- the rules: where the host ends, what a name normalises to ---------------------------------


def normalised(host: str, path: str) -> ImageName:
    """(``host``, ``path``) as a registry announces them, in the form names compare in.

    Raises:
        InvalidReference: an empty host, path or path component.
    """
    host, path = host.lower(), path.lower()
    if not host or not path or "" in path.split("/"):
        raise InvalidReference(f"not an image name: {host!r}/{path!r}")
    if host in DOCKER_HUB_HOSTS:
        host = DOCKER_HUB_NAME
        if "/" not in path:
            path = f"library/{path}"
    return ImageName(host, path)


def _split_host(name: str) -> tuple[str, str]:
    """``name`` split as Docker's ``splitDockerDomain`` does: (registry host, the rest).

    The first component is a host when it has a ``.`` or a ``:`` or is ``localhost``;
    otherwise the name is on Docker Hub.
    """
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first.lower() == "localhost"):
        return first, rest
    return DOCKER_HUB_NAME, name


# -- webhook senders: lenient, a tag or digest is dropped, garbage matches nothing -------------


def parse_image_name(name: str) -> ImageName:
    """``name`` as (host, path), normalised; any ``:tag`` or ``@digest`` is dropped.

    >>> parse_image_name("acme/shop")
    ImageName(host='docker.io', path='acme/shop')
    >>> parse_image_name("nginx:1.25")
    ImageName(host='docker.io', path='library/nginx')
    >>> parse_image_name("Registry.Example:5000/Team/App")
    ImageName(host='registry.example:5000', path='team/app')

    Raises:
        InvalidReference: ``name`` has an empty host, path or path component.
    """
    bare = name.split("@", 1)[0]
    slash, colon = bare.rfind("/"), bare.rfind(":")
    if colon > slash:  # a colon after the last slash starts a tag; before it, a port
        bare = bare[:colon]
    return normalised(*_split_host(bare))


def names_image(configured: str, host: str | None, path: str) -> bool:
    """True when a registry's (``host``, ``path``) is the image ``configured`` names.

    ``host`` None means the registry did not say (a notification without its
    request record): then the path alone must match, on the configured host.
    Anything that is not an image name matches nothing.
    """
    try:
        wanted = parse_image_name(configured)
        seen = normalised(wanted.host if host is None else host, path)
    except InvalidReference:
        return False
    return seen == wanted


def same_image(configured: str, name: str) -> bool:
    """True when the image name ``name`` (a payload's spelling) is ``configured``'s image."""
    try:
        seen = parse_image_name(name)
    except InvalidReference:
        return False
    return names_image(configured, seen.host, seen.path)


# -- registry polling and the config: strict, and where the registry API answers ---------------


def parse_reference(repository: str, insecure: Collection[str] = ()) -> ImageReference:
    """Where the registry API of ``repository`` (an image name without tag) answers.

    Args:
        repository: the name as ``docker pull`` takes it, without ``:tag`` or ``@digest``.
        insecure: ``host`` or ``host:port`` entries reached over plain HTTP, compared with
            the reference's host exactly (a bare host also covers that host on any port).

    Raises:
        InvalidReference: when ``repository`` is not a valid image name.
    """
    if not repository or repository != repository.strip() or len(repository) > _MAX_NAME:
        raise InvalidReference(f"{repository!r} is not an image name")
    if "@" in repository:
        raise InvalidReference(f"{repository!r}: name the repository without a digest")
    host, path = _split_host(repository)
    if ":" in path:
        raise InvalidReference(f"{repository!r}: name the repository without a tag")
    if not is_registry_host(host):
        raise InvalidReference(f"{repository!r}: {host.lower()!r} is not a registry host")
    # Registries serve lower-case names only; the hook matches repositories case-blind.
    if not all(_COMPONENT.fullmatch(part) for part in path.lower().split("/")):
        raise InvalidReference(
            f"{repository!r}: a repository is lower-case letters and digits, separated by "
            "'/' and single '.', '_', '__' or '-' runs"
        )
    name = normalised(host, path)
    api_host = DOCKER_HUB if name.host == DOCKER_HUB_NAME else name.host
    return ImageReference(api_host, name.path, _scheme(api_host, insecure))


def is_registry_host(text: str) -> bool:
    """True when ``text`` is a ``host[:port]`` as image names spell a registry."""
    return _HOST.fullmatch(text.lower()) is not None


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    name = _without_port(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def _scheme(host: str, insecure: Collection[str]) -> str:
    listed = {entry.lower() for entry in insecure}
    if is_loopback(host) or host in listed or _without_port(host) in listed:
        return "http"
    return "https"
