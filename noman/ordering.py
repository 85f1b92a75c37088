"""How releases of one service are ordered: by the first capture group of ``tag_pattern``.

Forward-only deploys and the choice among several tags of one push both need
to know which of two tags is newer. People tag in three common ways, and
the pattern's first group says which one a service uses:

* a number (``^release-(\\d{14})$``, ``^build-(\\d+)$``): compared as an
  integer, so ``build-10`` is newer than ``build-9``;
* a dotted version (``^v?(\\d+(?:\\.\\d+)*)$``, ``^(v?[0-9.]+)$``): compared part
  by part as numbers, so ``1.2.10`` is newer than ``1.2.9`` and ``v1.3`` is
  newer than ``1.2.10``; an optional ``v``/``V`` prefix is allowed;
* anything else (commit SHAs such as ``0e2a89b``, branch names, no group at
  all): no order. Forward-only is off for that service and several accepted
  tags in one push are refused as ambiguous; ``create_app`` warns at start.

The kind is decided once per pattern from what group 1 *can* match (its
characters), never from one tag at a time, so a SHA that happens to be all
digits (``1234567``) is not suddenly "newer" than ``0e2a89b``.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Kind = Literal["number", "version"]
# A release's place in its service's order; tuples of one kind compare correctly.
OrderKey = tuple[int, ...]


class Ordered(Protocol):
    """What ``warn_unordered`` reads of a service (``noman.model.Service`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def tag_pattern(self) -> re.Pattern[str]: ...


_DIGITS = frozenset(range(ord("0"), ord("9") + 1))
_VERSION_CHARS = _DIGITS | {ord("."), ord("v"), ord("V")}
_VERSION = re.compile(r"[vV]?(\d+(?:\.\d+)*)", re.ASCII)
# Character classes wider than this are "anything" for our purpose.
_MAX_RANGE = 256


def order_kind(pattern: re.Pattern[str]) -> Kind | None:
    """How ``pattern``'s first group orders tags: "number", "version", or None (no order)."""
    return _kind(pattern.pattern, pattern.flags)


def order_key(pattern: re.Pattern[str], tag: str | None) -> OrderKey | None:
    """Where ``tag`` sits in the order ``pattern`` defines; None when it has no place.

    >>> order_key(re.compile(r"^v?(\\d+(?:\\.\\d+)*)$"), "1.2.10") > order_key(
    ...     re.compile(r"^v?(\\d+(?:\\.\\d+)*)$"), "1.2.9")
    True
    """
    kind = order_kind(pattern)
    if tag is None or kind is None:
        return None
    match = pattern.fullmatch(tag)
    value = match.group(1) if match is not None else None
    if not value:
        return None
    if kind == "number":
        return (int(value),) if value.isascii() and value.isdigit() else None
    version = _VERSION.fullmatch(value)
    if version is None:
        return None
    parts = [int(part) for part in version.group(1).split(".")]
    # 1.2 and 1.2.0 name the same release: neither is older than the other.
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def is_older(pattern: re.Pattern[str], tag: str, than: str | None) -> bool:
    """True when both tags are ordered and ``tag`` comes strictly before ``than``."""
    new, old = order_key(pattern, tag), order_key(pattern, than)
    return new is not None and old is not None and new < old


def newest(pattern: re.Pattern[str], tags: Iterable[str]) -> str | None:
    """The newest of ``tags``; None when any of them has no place in the order."""
    keyed: list[tuple[OrderKey, str]] = []
    for tag in tags:
        key = order_key(pattern, tag)
        if key is None:
            return None
        keyed.append((key, tag))
    return max(keyed)[1] if keyed else None


def warn_unordered(services: Iterable[Ordered]) -> None:
    """Log, once per start, each service whose ``tag_pattern`` gives its tags no order."""
    for service in services:
        if order_kind(service.tag_pattern) is None:
            log.warning(
                "service %s: tag_pattern %r has no first group of digits or of a dotted "
                "version, so its tags have no order: forward-only is off, and a push "
                "with several accepted tags is refused as ambiguous",
                service.name,
                service.tag_pattern.pattern,
                extra={"fields": {"service": service.name}},
            )


@lru_cache(maxsize=256)
def _kind(source: str, flags: int) -> Kind | None:
    try:
        parser: Any = importlib.import_module("re._parser")
        tree = parser.parse(source, flags)
        group = _find_group(list(tree), 1)
        chars = _chars(group) if group is not None else None
    except Exception:  # a private module: any surprise means "no order"
        return None
    if not chars:
        return None
    if chars <= _DIGITS:
        return "number"
    if chars <= _VERSION_CHARS and chars & _DIGITS:
        return "version"
    return None


def _children(name: str, arg: Any) -> list[Any]:
    """The sub-patterns nested in one parsed item; empty for a leaf."""
    if name == "SUBPATTERN":
        return [arg[3]]
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return [arg[2]]
    if name == "BRANCH":
        return list(arg[1])
    if name in ("ASSERT", "ASSERT_NOT"):
        return [arg[1]]
    if name == "ATOMIC_GROUP":
        return [arg]
    return []


def _find_group(items: list[tuple[Any, Any]], number: int) -> list[tuple[Any, Any]] | None:
    """The parsed body of capture group ``number``, searched depth-first."""
    for op, arg in items:
        name = str(op)
        if name == "SUBPATTERN" and arg[0] == number:
            return list(arg[3])
        for child in _children(name, arg):
            found = _find_group(list(child), number)
            if found is not None:
                return found
    return None


def _chars(items: list[tuple[Any, Any]]) -> frozenset[int] | None:
    """Every character the parsed ``items`` can consume; None when that is unbounded."""
    result: set[int] = set()
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            result.add(arg)
        elif name == "IN":
            chars = _class(arg)
            if chars is None:
                return None
            result |= chars
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue  # zero-width: consumes nothing
        elif _children(name, arg):
            for child in _children(name, arg):
                inner = _chars(list(child))
                if inner is None:
                    return None
                result |= inner
        else:
            return None  # ANY, NOT_LITERAL, back-references...: could be anything
    return frozenset(result)


def _class(items: list[tuple[Any, Any]]) -> set[int] | None:
    result: set[int] = set()
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            result.add(arg)
        elif name == "RANGE":
            low, high = arg
            if high - low > _MAX_RANGE:
                return None
            result.update(range(low, high + 1))
        elif name == "CATEGORY" and str(arg) == "CATEGORY_DIGIT":
            result |= _DIGITS
        else:
            return None  # NEGATE, \w, \s...: too wide to order
    return result
