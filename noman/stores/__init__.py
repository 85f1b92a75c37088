"""Where tags and records are kept: one small protocol, a Consul store and a local file store.

Only this package knows Consul. Every store offers check-and-set on a
per-key index, an all-or-nothing transaction over several keys, a blocking
read of a folder, and a leader lock, so the deploy logic and the reconciler
are the same whatever keeps the tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from noman.errors import ConsulUnavailable


class Entry(NamedTuple):
    """A key's value (None when the key does not exist) and its modify index (0 then)."""

    value: str | None
    modify_index: int


class Write(NamedTuple):
    """One check-and-set write of a transaction: ``index`` 0 means "only if missing"."""

    key: str
    value: str
    cas: int


class Snapshot(NamedTuple):
    """Every key under a folder, and the index to block on for the next change."""

    watch_index: int
    entries: dict[str, Entry]


class OutcomeUnknown(ConsulUnavailable):
    """A write was sent but its answer never came: it may or may not have landed."""

    default_message = "Consul did not answer in time; the write may or may not have landed."


class LeaderLock(Protocol):
    """A lock that at most one process holds at a time, lost when its holder dies."""

    def hold(self) -> bool:
        """Acquire or keep the lock (renewing it); True while this process holds it."""
        ...

    def release(self) -> None:
        """Give the lock up (at shutdown) so another process takes over at once."""
        ...


class Store(Protocol):
    """A key/value store with check-and-set writes, transactions and blocking reads."""

    def read(self, key: str) -> Entry:
        """The key's current value and modify index."""
        ...

    def write(self, key: str, value: str, index: int) -> bool:
        """Write only if the key's modify index is still ``index`` (0: only if missing)."""
        ...

    def delete(self, key: str, index: int) -> bool:
        """Delete only if the key's modify index is still ``index``."""
        ...

    def transact(self, writes: Sequence[Write]) -> list[int] | None:
        """Apply every write or none: the keys' new modify indexes, or None when one was stale.

        Raises ``OutcomeUnknown`` when the answer did not come in time.
        """
        ...

    def list(self, prefix: str, index: int = 0, wait: float = 0.0) -> Snapshot:
        """Every key under ``prefix``; with ``index``, block up to ``wait`` s for a change."""
        ...

    def leader_lock(self, key: str, ttl: float, lock_delay: float) -> LeaderLock:
        """The lock the reconcilers of every Noman instance compete for."""
        ...

    def check_ready(self) -> str:
        """A short description of the store; raises UpstreamError when it cannot serve."""
        ...
