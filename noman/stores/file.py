"""The embedded default store: a JSON file, for `noman serve --dev` and tests.

It keeps Consul's check-and-set semantics (a modify index per key, one
growing global index, all-or-nothing transactions) so the deploy logic
behaves exactly as with Consul. A lock file serialises writers across
gunicorn workers and the CLI; another one elects the reconciler.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from noman.stores import Entry, LeaderLock, Snapshot, Write

# How often a blocking list looks at the file for another process's writes.
_POLL = 0.1


class FileStore:
    """Tags in a local JSON file (or only in memory when ``path`` is None)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, Any] = {"index": 1, "keys": {}}
        self._lock = threading.Lock()
        # Wakes blocking lists in this process at once after a write.
        self._changed = threading.Condition()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self, key: str) -> Entry:
        """The key's value and modify index."""
        with self._state() as state:
            item = state["keys"].get(key)
        return Entry(item["value"], item["index"]) if item else Entry(None, 0)

    def write(self, key: str, value: str, index: int) -> bool:
        """Check-and-set write, as Consul's ``?cas=``."""
        with self._state(write=True) as state:
            item = state["keys"].get(key)
            if (item["index"] if item else 0) != index:
                return False
            if item and item["value"] == value:
                return True
            state["index"] += 1
            state["keys"][key] = {"value": value, "index": state["index"]}
        self._notify()
        return True

    def delete(self, key: str, index: int) -> bool:
        """Check-and-set delete."""
        with self._state(write=True) as state:
            item = state["keys"].get(key)
            if item is None:
                return True
            if item["index"] != index:
                return False
            del state["keys"][key]
            state["index"] += 1
            _tombstone(state, key)
        self._notify()
        return True

    def read_many(self, keys: Sequence[str]) -> list[Entry]:
        """Several keys under one lock."""
        with self._state() as state:
            items = [state["keys"].get(key) for key in keys]
        return [Entry(i["value"], i["index"]) if i else Entry(None, 0) for i in items]

    def transact(self, writes: Sequence[Write]) -> dict[str, int] | None:
        """Every operation, or none (under the one lock), as Consul's ``/v1/txn``."""
        with self._state(write=True) as state:
            keys = state["keys"]
            for w in writes:
                if w.verb in ("cas", "delete-cas"):
                    current = keys[w.key]["index"] if w.key in keys else 0
                    if current != w.cas or (w.verb == "delete-cas" and w.key not in keys):
                        return None
            state["index"] += 1
            written: dict[str, int] = {}
            for w in writes:
                if w.verb in ("delete", "delete-cas"):
                    if keys.pop(w.key, None) is not None:
                        _tombstone(state, w.key)
                    continue
                if w.key not in keys or keys[w.key]["value"] != w.value:
                    keys[w.key] = {"value": w.value, "index": state["index"]}
                written[w.key] = int(keys[w.key]["index"])
        self._notify()
        return written

    def list(self, prefix: str, index: int = 0, wait: float = 0.0) -> Snapshot:
        """Keys under ``prefix``; blocks up to ``wait`` s while nothing under it changed."""
        deadline = time.monotonic() + wait
        while True:
            with self._state() as state:
                found = {
                    k: Entry(v["value"], v["index"])
                    for k, v in state["keys"].items()
                    if k.startswith(prefix)
                }
                # The highest modify index under the prefix, deletions included: it
                # moves with every change there, as Consul's X-Consul-Index does.
                deleted = (i for k, i in state.get("deleted", {}).items() if k.startswith(prefix))
                current = max(
                    max((e.modify_index for e in found.values()), default=1),
                    max(deleted, default=1),
                )
            left = deadline - time.monotonic()
            if not index or current != index or left <= 0:
                return Snapshot(current, found)
            with self._changed:
                self._changed.wait(min(left, _POLL))

    def leader_lock(self, key: str, ttl: float, lock_delay: float) -> LeaderLock:
        """In memory: always the leader. On disk: an flock that one process holds."""
        if self.path is None:
            return _AlwaysLeader()
        return _FileLock(self.path.with_name(f"{self.path.name}.leader"))

    def check_ready(self) -> str:
        """Always ready; says where the tags live."""
        return f"file store {self.path}" if self.path else "in-memory store"

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    @contextmanager
    def _state(self, write: bool = False) -> Iterator[dict[str, Any]]:
        with self._lock:
            if self.path is None:
                yield self._memory
                return
            lock_path = self.path.with_name(self.path.name + ".lock")
            with open(lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                state = self._load()
                yield state
                if write:
                    self._save(state)

    def _load(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            loaded: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"index": 1, "keys": {}}
        return loaded

    def _save(self, state: dict[str, Any]) -> None:
        assert self.path is not None
        # Write-then-rename so a crash never leaves half a file behind.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".store-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)


class _AlwaysLeader:
    """The single process of the in-memory store always leads."""

    def hold(self) -> bool:
        """Always True."""
        return True

    def release(self) -> None:
        """Nothing to give up."""

    def wait_free(self, wait: float) -> None:
        """Never needed: this process always leads."""
        time.sleep(min(wait, _POLL))


class _FileLock:
    """An exclusive flock: one process (one gunicorn worker) leads; the kernel frees it on death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def hold(self) -> bool:
        """Take the flock without waiting, or keep it."""
        if self._handle is not None:
            return True
        handle = open(self.path, "a+")  # noqa: SIM115 (held open while leading)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        """Let another process lead."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def wait_free(self, wait: float) -> None:
        """The kernel gives no notice of a freed flock: wait a little, then try again."""
        time.sleep(min(wait, 1.0))


#: Deletions remembered so a blocking list sees them (bounded, oldest forgotten first).
_TOMBSTONES = 1000


def _tombstone(state: dict[str, Any], key: str) -> None:
    deleted: dict[str, int] = state.setdefault("deleted", {})
    deleted.pop(key, None)
    deleted[key] = int(state["index"])
    while len(deleted) > _TOMBSTONES:
        deleted.pop(next(iter(deleted)))
