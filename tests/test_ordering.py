"""Tag order: the first group as a number, as a dotted version, or no order at all."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from noman import create_app
from noman.deploy import needs_write
from noman.errors import StaleTag
from noman.model import Service
from noman.ordering import is_older, newest, order_key, order_kind
from noman.release import Release
from tests.conftest import ConsulHandle, make_settings

VERSION = r"^v?(\d+(?:\.\d+)*)$"
SHA = r"^([0-9a-f]{7})$"


def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)  # as noman/config/loading.py compiles tag_pattern


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        (r"^release-(\d{14})$", "number"),
        (r"^build-(\d+)$", "number"),
        (r"^(?:main|dev)-(\d+)$", "number"),  # a non-capturing group is not group 1
        (r"^(\d+)-[0-9a-f]{7,40}$", "number"),
        (r"^([0-9]+)$", "number"),
        (VERSION, "version"),
        (r"^(v?[0-9.]+)$", "version"),
        (r"^v(\d+\.\d+\.\d+)(-\w+)?$", "version"),
        (r"^(\d+(?:\.\d+)*)(?:-rc\d+)?$", "version"),
        (SHA, None),
        (r"^([0-9a-f]{40})$", None),
        (r"^(.*)$", None),
        (r"^(\w+)$", None),
        (r"^(\d+|latest)$", None),
        (r"^(main|dev)$", None),
        (r"^([^-]+)$", None),
        (r"^[a-z]+$", None),  # no group at all
        (r"^()x$", None),
    ],
)
def test_the_kind_follows_what_group_one_can_match(pattern: str, kind: str | None) -> None:
    assert order_kind(compiled(pattern)) == kind


@pytest.mark.parametrize(
    ("pattern", "newer", "older"),
    [
        (r"^release-(\d{14})$", "release-20230103082900", "release-20221224120000"),
        (r"^build-(\d+)$", "build-10", "build-9"),
        (VERSION, "1.2.10", "1.2.9"),
        (VERSION, "1.10", "1.9.9"),
        (VERSION, "v1.3", "1.2.10"),
        (VERSION, "2", "1.99.99"),
        (VERSION, "1.2.1", "1.2"),
        (r"^(v?[0-9.]+)$", "v10.0.0", "v9.9.9"),
    ],
)
def test_newer_tags_order_after_older_ones(pattern: str, newer: str, older: str) -> None:
    p = compiled(pattern)
    assert order_key(p, newer) > order_key(p, older)  # type: ignore[operator]
    assert is_older(p, older, newer) and not is_older(p, newer, older)
    assert newest(p, [older, newer]) == newer == newest(p, [newer, older])


@pytest.mark.parametrize(("a", "b"), [("1.2", "1.2.0"), ("v1.2.0", "1.2"), ("1.0.0", "1")])
def test_equal_versions_are_neither_older(a: str, b: str) -> None:
    p = compiled(VERSION)
    assert order_key(p, a) == order_key(p, b)
    assert not is_older(p, a, b) and not is_older(p, b, a)


@pytest.mark.parametrize(
    ("pattern", "tag"),
    [
        (SHA, "0e2a89b"),
        (SHA, "1234567"),  # all digits, yet a SHA: never "newer" than 0e2a89b
        (r"^(v?[0-9.]+)$", "1..2"),
        (r"^(v?[0-9.]+)$", "."),
        (r"^(\d+)?-x$", "-x"),  # group 1 did not take part
        (r"^release-(\d{14})$", "latest"),  # not matched at all
    ],
)
def test_tags_without_a_place_have_no_key(pattern: str, tag: str) -> None:
    assert order_key(compiled(pattern), tag) is None


def test_commit_sha_tags_are_never_stale() -> None:
    """The old string order made 0e2a89b "older" than a41c3f0 at random."""
    service = Service("s", "a/b", "k", (b"",), tag_pattern=compiled(SHA))
    for current, new in [("a41c3f0", "0e2a89b"), ("0e2a89b", "a41c3f0"), ("9999999", "0000000")]:
        assert needs_write(service, current, Release(new, "plain")) is True
    assert newest(service.tag_pattern, ["0e2a89b", "a41c3f0"]) is None


def test_forward_only_uses_version_order() -> None:
    service = Service("s", "a/b", "k", (b"",), tag_pattern=compiled(VERSION))
    assert needs_write(service, "1.2.9", Release("1.2.10", "plain")) is True
    with pytest.raises(StaleTag):
        needs_write(service, "1.2.10", Release("1.2.9", "plain"))
    assert needs_write(service, "1.2.10", Release("1.2.9", "plain", force=True)) is True


class Records(logging.Handler):
    """Keeps what one logger emits (Noman's own logging does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    logger, handler = logging.getLogger("noman.ordering"), Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_an_unordered_service_is_named_in_a_warning_at_start(
    consul: ConsulHandle, secret: str, warnings: list[str]
) -> None:
    create_app(make_settings(consul, secret, tag_pattern=SHA))
    assert len(warnings) == 1
    assert "service web" in warnings[0] and repr(SHA) in warnings[0]
    assert "forward-only is off" in warnings[0]


def test_an_ordered_service_starts_without_a_warning(
    consul: ConsulHandle, secret: str, warnings: list[str]
) -> None:
    create_app(make_settings(consul, secret, tag_pattern=VERSION))
    assert warnings == []
