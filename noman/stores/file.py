"""The embedded default store: a JSON file, for `noman serve --dev` and tests.

It keeps Consul's check-and-set semantics (a modify index per key, one
growing global index) so the deploy logic behaves exactly as with Consul.
A lock file serialises writers across gunicorn workers and the CLI.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noman.stores import Entry


class FileStore:
    """Tags in a local JSON file (or only in memory when ``path`` is None)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, Any] = {"index": 1, "keys": {}}
        self._lock = threading.Lock()
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
            return True

    def check_ready(self) -> str:
        """Always ready; says where the tags live."""
        return f"file store {self.path}" if self.path else "in-memory store"

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
