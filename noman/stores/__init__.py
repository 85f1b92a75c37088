"""Where tags are kept: one small protocol, a Consul store and a local file store.

Only this package knows Consul. Every store offers check-and-set on a
per-key index, so the deploy logic is the same whatever keeps the tags.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Entry(NamedTuple):
    """A key's value (None when the key does not exist) and its modify index (0 then)."""

    value: str | None
    modify_index: int


class Store(Protocol):
    """A key/value store with check-and-set writes."""

    def read(self, key: str) -> Entry:
        """The key's current value and modify index."""
        ...

    def write(self, key: str, value: str, index: int) -> bool:
        """Write only if the key's modify index is still ``index`` (0: only if missing)."""
        ...

    def delete(self, key: str, index: int) -> bool:
        """Delete only if the key's modify index is still ``index``."""
        ...

    def check_ready(self) -> str:
        """A short description of the store; raises UpstreamError when it cannot serve."""
        ...
