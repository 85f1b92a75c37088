"""Where tags and records are kept: one small protocol, a Consul store and a local file store.

Only this package knows Consul. Every store offers check-and-set on a
per-key index, an all-or-nothing transaction over several keys, a blocking
read of a folder, and a leader lock, so the deploy logic and the reconciler
are the same whatever keeps the tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol

from noman.errors import ConsulUnavailable


class Entry(NamedTuple):
    """A key's value (None when the key does not exist) and its modify index (0 then)."""

    value: str | None
    modify_index: int


class Write(NamedTuple):
    """One operation of a transaction.

    ``cas`` (the default) writes only if the key's modify index is still ``cas`` (0:
    only if missing); ``set`` writes whatever is there; ``delete`` removes the key
    (missing is fine); ``delete-cas`` removes it only at index ``cas``.
    """

    key: str
    value: str
    cas: int
    verb: Literal["cas", "set", "delete", "delete-cas"] = "cas"


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

    def wait_free(self, wait: float) -> None:
        """Block up to ``wait`` s, returning early when the lock may have become free."""
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

    def read_many(self, keys: Sequence[str]) -> list[Entry]:
        """Several keys in one round trip (Consul: one read-only transaction)."""
        ...

    def transact(self, writes: Sequence[Write]) -> dict[str, int] | None:
        """Apply every write or none: written keys -> new modify index (0 when Consul did
        not say), or None when a check-and-set was stale.

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
