"""Limiting failed authentications per client address, shared by all gunicorn workers.

A fixed one-minute window per address, counted in a small SQLite file in
this instance's private runtime directory (``NOMAN_RUNTIME_DIR``, which
``noman.server.config`` creates with mode 0700 under ``/dev/shm`` and shares
with its workers), so the limit holds whichever worker answers and no other
user can read or pre-create the file. Once an address has failed ``limit`` times in the
current minute, every hook request from it is refused until the minute
ends, a right secret included: otherwise the limit would not slow guessing.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from noman.errors import TooManyFailures

WINDOW_SECONDS = 60


_private_dir: str | None = None


def runtime_dir() -> Path:
    """This instance's private directory: $NOMAN_RUNTIME_DIR, else a fresh 0700 one.

    Never a predictable name in a shared ``/tmp``: another user could create
    it first and read or reset the counts.
    """
    global _private_dir
    configured = os.environ.get("NOMAN_RUNTIME_DIR")
    if configured:
        return Path(configured)
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="noman-")  # mode 0700
    return Path(_private_dir)


def default_path() -> Path:
    """The shared counter file, in this instance's private runtime directory."""
    return runtime_dir() / "auth-failures.sqlite"


class FailureLimiter:
    """Counts failed authentications per address; says when an address is over the limit."""

    def __init__(
        self,
        limit: int,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock
        # One connection per process, opened on first use (never inherited across a
        # fork), shared by its threads under a lock: opening one per call cost about
        # 0.1 ms of every hook request.
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._db_lock = threading.Lock()
        # The last window this process swept old rows from: once per window is enough.
        self._swept = -1
        with self._connect() as db:
            # WAL: a worker reading the count never waits for another one writing it.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS failures ("
                " address TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL,"
                " PRIMARY KEY (address, window))"
            )

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it is under the limit."""
        window, left = self._window()
        with self._connect() as db:
            row = db.execute(
                "SELECT count FROM failures WHERE address = ? AND window = ?", (address, window)
            ).fetchone()
        return left if row is not None and row[0] >= self.limit else None

    def refuse_if_over(self, address: str) -> None:
        """Raise TooManyFailures (429, with Retry-After) when ``address`` is over the limit."""
        wait = self.retry_after(address)
        if wait is not None:
            raise TooManyFailures(wait)

    def record_failure(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        window, _ = self._window()
        with self._connect() as db:
            db.execute(
                "INSERT INTO failures VALUES (?, ?, 1) ON CONFLICT (address, window)"
                " DO UPDATE SET count = count + 1",
                (address, window),
            )
            if self._swept != window:
                self._swept = window
                db.execute("DELETE FROM failures WHERE window < ?", (window,))

    def _window(self) -> tuple[int, int]:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        return window, max(1, int((window + 1) * WINDOW_SECONDS - now))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Workers are processes: SQLite's own file locking serialises them; the lock
        # serialises this process's threads on its one connection.
        with self._db_lock:
            if self._db is None or self._pid != os.getpid():
                self._db = sqlite3.connect(
                    self.path, timeout=2, isolation_level=None, check_same_thread=False
                )
                # A counter in tmpfs: losing it with the machine is fine; waiting on
                # fsync for every failed guess is not.
                self._db.execute("PRAGMA synchronous=OFF")
                self._pid = os.getpid()
                # Closed when the limiter goes, never left to the garbage collector.
                weakref.finalize(self, self._db.close)
            yield self._db

    def close(self) -> None:
        """Close this process's connection (it reopens on the next use)."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
