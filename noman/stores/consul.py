"""Tags in Consul KV, through py-consul, with every failure mapped to a NomanError.

Network trouble and 5xx answers become ``ConsulUnavailable`` (503, retry);
a refused token becomes ``ConsulForbidden`` (502, the operator must act).
Nothing here ever retries a write blindly: a timed-out transaction raises
``OutcomeUnknown`` and the caller re-reads to learn what happened. The
reconciler's leader lock is a Consul session lock.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import requests
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from noman import transport
from noman.config import ConsulSettings
from noman.errors import ConsulError, ConsulForbidden, ConsulUnavailable, UpstreamError
from noman.stores import Entry, LeaderLock, OutcomeUnknown, Snapshot, Write

log = logging.getLogger(__name__)
T = TypeVar("T")
E = TypeVar("E", bound=UpstreamError)

#: Calls that change Consul: only their failures may say "nothing was written"; a
#: read-only command (check, status) that fails wrote nothing by nature, and must not
#: suggest that a write was attempted.
WRITES = frozenset({"write", "delete", "txn", "PUT", "DELETE"})


class ConsulStore:
    """A Store backed by Consul's KV API."""

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        url = urlsplit(settings.address)
        default_port = 443 if url.scheme == "https" else 80
        self.client = consul.Consul(
            host=url.hostname,
            port=url.port or default_port,
            scheme=url.scheme,
            token=settings.token,
            dc=settings.datacenter,
            verify=settings.verify,
            cert=settings.cert,
            connections_timeout=settings.timeout,
        )
        # Consul is reached directly: no HTTP(S)_PROXY, and no per-call scan of
        # the environment for one (about a millisecond per request).
        transport.configure(self.client.http.session, settings.tls_server_name)
        if settings.token:
            # py-consul leaves the token off some calls (txn); a session-wide
            # header makes every request carry it.
            self.client.http.session.headers["X-Consul-Token"] = settings.token

    def read(self, key: str) -> Entry:
        """The key's value and ModifyIndex (None and 0 when missing)."""
        _, data = self._call(
            "read", key, lambda: self.client.kv.get(key, dc=self.settings.datacenter)
        )
        if data is None:
            return Entry(None, 0)
        raw = data.get("Value")
        value = raw.decode("utf-8", errors="replace") if raw is not None else ""
        return Entry(value, int(data["ModifyIndex"]))

    def write(self, key: str, value: str, index: int) -> bool:
        """PUT with ``?cas=index``; False when someone else wrote first."""
        return bool(
            self._call(
                "write",
                key,
                lambda: self.client.kv.put(key, value, cas=index, dc=self.settings.datacenter),
            )
        )

    def delete(self, key: str, index: int) -> bool:
        """DELETE with ``?cas=index``."""
        return bool(
            self._call(
                "delete",
                key,
                lambda: self.client.kv.delete(key, cas=index, dc=self.settings.datacenter),
            )
        )

    def read_many(self, keys: Sequence[str]) -> list[Entry]:
        """One read-only ``/v1/txn`` of ``get-tree`` operations, one per key.

        ``get`` would fail the whole transaction for a missing key; ``get-tree`` of
        the key's own name returns it (and any key it prefixes, which is dropped).
        """
        ops = [{"KV": {"Verb": "get-tree", "Key": key}} for key in keys]
        what = ",".join(keys)
        try:
            answer = self._http("PUT", "txn", json=ops)
        except requests.Timeout:
            raise self._fail(ConsulUnavailable, "read", "no answer in time") from None
        if answer.status_code != 200:
            self._raise_txn(answer, "read", what)
        found: dict[str, Entry] = {}
        try:
            for result in answer.json().get("Results") or []:
                item = result["KV"]
                raw = item.get("Value")
                value = base64.b64decode(raw).decode("utf-8", errors="replace") if raw else ""
                found[item["Key"]] = Entry(value, int(item["ModifyIndex"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("consul txn read %s: an answer that is not Consul's", what)
            raise self._fail(ConsulUnavailable, "read", "an answer that is not Consul's") from None
        return [found.get(key, Entry(None, 0)) for key in keys]

    def transact(self, writes: Sequence[Write]) -> dict[str, int] | None:
        """One ``/v1/txn``: written keys -> new ModifyIndex, None when a ``cas`` was stale."""
        ops: list[dict[str, Any]] = []
        for w in writes:
            op: dict[str, Any] = {"Verb": w.verb, "Key": w.key}
            if w.verb in ("cas", "set"):
                op["Value"] = base64.b64encode(w.value.encode("utf-8")).decode("ascii")
            if w.verb in ("cas", "delete-cas"):
                op["Index"] = w.cas
            ops.append({"KV": op})
        what = ",".join(w.key for w in writes)
        try:
            answer = self._http("PUT", "txn", json=ops)
        except requests.Timeout:
            log.warning("consul txn %s: no answer within %ss", what, self.settings.timeout)
            raise OutcomeUnknown() from None
        if answer.status_code == 200:
            written = {w.key: 0 for w in writes if w.verb in ("cas", "set")}
            try:
                for result in answer.json()["Results"] or []:
                    written[str(result["KV"]["Key"])] = int(result["KV"]["ModifyIndex"])
            except (ValueError, KeyError, TypeError):
                pass  # applied; the indexes are simply unknown (0)
            return written
        if answer.status_code == 409 and self._stale(answer):
            return None
        self._raise_txn(answer, "txn", what)
        return None  # pragma: no cover (_raise_txn always raises)

    @staticmethod
    def _stale(answer: requests.Response) -> bool:
        """A 409 whose every error is a failed check-and-set (someone wrote first)."""
        problems = _txn_problems(answer)
        return bool(problems) and all(
            "index is stale" in p or "doesn't exist" in p for p in problems
        )

    def _raise_txn(self, answer: requests.Response, action: str, what: str) -> None:
        if answer.status_code == 409:
            problems = _txn_problems(answer)
            if any("Permission denied" in p or "ACL not found" in p for p in problems):
                raise self._forbidden(action, what, problems[0][:300])
            log.error("consul txn %s: rejected: %s", what, "; ".join(problems)[:300])
            raise self._fail(ConsulError, action)
        self._raise_for(answer, action, what)

    def list(self, prefix: str, index: int = 0, wait: float = 0.0) -> Snapshot:
        """``GET /v1/kv/<prefix>?recurse``, blocking on ``index`` up to ``wait`` seconds."""
        params: dict[str, str] = {"recurse": ""}
        timeout = self.settings.timeout
        if index and wait > 0:
            params.update(index=str(index), wait=f"{wait:g}s")
            # Consul adds up to wait/16 of jitter to a blocking read.
            timeout += wait * 1.1
        try:
            answer = self._http("GET", f"kv/{prefix}", params=params, timeout=timeout)
        except requests.Timeout:
            raise self._fail(ConsulUnavailable, "list", "no answer in time") from None
        new_index = _index(answer)
        if answer.status_code == 404:
            return Snapshot(new_index, {})
        if answer.status_code != 200:
            self._raise_for(answer, "list", prefix)
        entries: dict[str, Entry] = {}
        for item in answer.json() or []:
            raw = item.get("Value")
            value = base64.b64decode(raw).decode("utf-8", errors="replace") if raw else ""
            entries[item["Key"]] = Entry(value, int(item["ModifyIndex"]))
        return Snapshot(new_index, entries)

    def leader_lock(self, key: str, ttl: float, lock_delay: float) -> LeaderLock:
        """A Consul session lock on ``key``."""
        return ConsulLock(self, key, ttl, lock_delay)

    def _http(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """A raw call to Consul's HTTP API (for what py-consul does not cover well)."""
        query = dict(params or {})
        if self.settings.datacenter:
            query["dc"] = self.settings.datacenter
        try:
            answer: requests.Response = self.client.http.session.request(
                method,
                f"{self.settings.address}/v1/{path}",
                params=query,
                json=json,
                data=data,
                timeout=timeout or self.settings.timeout,
                verify=self.settings.verify,
            )
            return answer
        except requests.Timeout:
            raise
        except requests.RequestException as exc:
            log.warning("consul %s %s: unreachable: %s", method, path, type(exc).__name__)
            error = self._fail(ConsulUnavailable, method, f"unreachable: {type(exc).__name__}")
            raise error from None

    def _raise_for(self, answer: requests.Response, action: str, key: str) -> None:
        text = answer.text.strip()[:300]
        if answer.status_code in (401, 403):
            raise self._forbidden(action, key, text)
        if 400 <= answer.status_code < 500:
            log.error("consul %s %s: rejected (%s): %s", action, key, answer.status_code, text)
            raise self._fail(ConsulError, action)
        log.warning("consul %s %s: server error (%s): %s", action, key, answer.status_code, text)
        raise self._fail(ConsulUnavailable, action, f"answered {answer.status_code}")

    def _forbidden(self, action: str, key: str, text: str) -> ConsulForbidden:
        """Consul refused the request: one mapping for py-consul's calls and the raw ones."""
        if not self.settings.token:
            # Not the same fix as a refused token: there is none to fix.
            log.error("consul %s %s: no token configured: %s", action, key, text)
            written = "; nothing was written." if action in WRITES else "."
            refused = ConsulForbidden(
                "Consul refused the request and Noman has no token configured "
                f"(CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE or consul.token){written}"
            )
            refused.address = self.settings.address
            return refused
        log.error("consul %s %s: token refused: %s", action, key, text)
        return self._fail(ConsulForbidden, action)

    def _fail(self, kind: type[E], action: str, detail: str = "") -> E:
        """``kind`` with this Consul's address; "nothing was written" only after a write."""
        if action in WRITES:
            error = kind()  # the default messages are about writes
        else:
            text = {
                ConsulUnavailable: "Consul is unavailable{detail}; retry later.",
                ConsulForbidden: "Consul refused Noman's token; the operator must fix its policy.",
                ConsulError: "Consul rejected the request{detail}.",
            }.get(kind, "Consul failed{detail}.")
            error = kind(text.format(detail=f" ({detail})" if detail else ""))
        error.address = self.settings.address
        return error

    def check_ready(self) -> str:
        """Ready when Consul answers with a known leader."""
        leader = self._call("status", "leader", self.client.status.leader)
        if not leader:
            error = ConsulUnavailable("Consul has no leader.")
            error.address = self.settings.address
            raise error
        return f"consul {self.settings.address} (leader {leader})"

    def probe_writes(self, keys: Sequence[str]) -> dict[str, str]:
        """Prove the token may write each of ``keys`` without writing anything.

        One ``/v1/txn`` that would write every key as a deploy does (``cas`` to its
        current value at its current ModifyIndex; index 0, i.e. create, when missing),
        led by a ``check-index`` at index 0 that can never pass (no existing key has
        ModifyIndex 0, a missing key fails it too). Consul checks the ACL of every
        operation before it runs any (kvsPreApply): a token that may not write a key
        fails there, with "Permission denied" at that operation's index; a token that
        may reaches the state store, where the failed check aborts the whole
        transaction. Nothing is applied either way (a same-value ``cas`` alone would
        leave an existing key's ModifyIndex unchanged, as Consul's kvsSetTxn skips
        unchanged entries, but would create a missing one). Returns ``{key: Consul's
        refusal}`` for each refused key: empty when every key may be written.
        """
        current = [self.read(key) for key in keys]
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "check-index", "Key": keys[0], "Index": 0}}]
        for key, entry in zip(keys, current, strict=True):
            value = (entry.value or "").encode("utf-8")
            ops.append(
                {
                    "KV": {
                        "Verb": "cas",
                        "Key": key,
                        "Value": base64.b64encode(value).decode("ascii"),
                        "Index": entry.modify_index,
                    }
                }
            )
        try:
            answer = self._http("PUT", "txn", json=ops)
        except requests.Timeout:
            raise self._fail(ConsulUnavailable, "probe", "no answer in time") from None
        if answer.status_code == 200:
            # Cannot happen with Consul's semantics; say so rather than claim a proof.
            log.error("consul write probe %s: the guard passed", ",".join(keys))
            raise self._fail(ConsulError, "probe", "the write probe's guard passed")
        if answer.status_code != 409:
            self._raise_for(answer, "probe", ",".join(keys))
        try:
            errors = answer.json().get("Errors") or []
        except (ValueError, AttributeError):
            errors = []
        refused: dict[str, str] = {}
        for error in errors:
            what = str(error.get("What", ""))
            position = error.get("OpIndex")
            if ("Permission denied" in what or "ACL not found" in what) and isinstance(
                position, int
            ):
                key = str(ops[position]["KV"]["Key"]) if 0 <= position < len(ops) else "?"
                refused.setdefault(key, what[:300])
        return refused

    def _call(self, action: str, key: str, call: Callable[[], T]) -> T:
        where = self.settings.address
        written = "; nothing was written." if action in WRITES else "."
        try:
            return call()
        except requests.Timeout:
            log.warning("consul %s %s: no answer within %ss", action, key, self.settings.timeout)
            error = ConsulUnavailable(
                f"Consul did not answer within {self.settings.timeout:g}s{written}"
            )
            error.address = where
            raise error from None
        except requests.RequestException as exc:
            log.warning("consul %s %s: %s unreachable: %s", action, key, where, type(exc).__name__)
            raise self._fail(ConsulUnavailable, action, "unreachable") from None
        except (ACLPermissionDenied, ACLDisabled) as exc:
            raise self._forbidden(action, key, _first_line(exc)) from None
        except (BadRequest, ClientError, NotFound) as exc:
            log.error("consul %s %s: rejected: %s", action, key, _first_line(exc))
            raise self._fail(ConsulError, action) from None
        except ConsulException as exc:
            # 5xx, or a body that is not Consul's JSON: both pass with time.
            log.warning("consul %s %s: server error: %s", action, key, _first_line(exc))
            raise self._fail(ConsulUnavailable, action, "server error") from None


class ConsulLock:
    """Leader election with a Consul session: acquire the key, renew the session.

    If this process dies, the session is not renewed; Consul invalidates it
    after its TTL, releases the key, and after ``lock_delay`` another
    instance acquires it.
    """

    def __init__(self, store: ConsulStore, key: str, ttl: float, lock_delay: float) -> None:
        self.store = store
        self.key = key
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.session: str | None = None
        self._renewed = 0.0
        self._held = False
        self._name = f"noman {socket.gethostname()} pid {os.getpid()}"
        # The leadership thread renews while a pass (or `deploy --wait`) also asks.
        self._mutex = threading.Lock()
        self._watch_index = 0

    def hold(self) -> bool:
        """Create/renew our session, then acquire the key unless we hold it already.

        While the session lives nobody else can hold the key, so a leader only
        renews: re-acquiring would write the key and wake every watcher.
        """
        with self._mutex:
            return self._hold()

    def wait_free(self, wait: float) -> None:
        """A blocking read of the lock key: returns when its holder changes, or after ``wait``.

        A follower costs one request per ``wait`` while a leader holds the key, instead
        of one acquire attempt (and a session) per pass.
        """
        params = {"index": str(self._watch_index or 1), "wait": f"{max(wait, 0.1):g}s"}
        try:
            answer = self.store._http(
                "GET", f"kv/{self.key}", params=params, timeout=self.store.settings.timeout + wait
            )
        except (ConsulUnavailable, requests.Timeout):
            time.sleep(min(wait, 1.0))
            return
        self._watch_index = _index(answer)
        try:
            holder = answer.json()[0].get("Session") if answer.status_code == 200 else None
        except (ValueError, IndexError, AttributeError, KeyError):
            holder = None
        if not holder:
            # Free, but perhaps still in its lock-delay: the next attempt comes after it.
            time.sleep(min(wait, max(self.lock_delay, 0.1)))

    def _hold(self) -> bool:
        try:
            if self.session is None:
                self._held = False
                self._create()
            elif time.monotonic() - self._renewed > self.ttl / 3:
                self._renew()
            if self.session is None:
                return False
            if self._held:
                return True
            answer = self.store._http(
                "PUT", f"kv/{self.key}", params={"acquire": self.session}, data=self._name.encode()
            )
        except (ConsulUnavailable, requests.Timeout):
            return False
        if answer.status_code == 500 and "session" in answer.text.lower():
            self.session = None  # invalidated under us: start a new one next time
            return False
        if answer.status_code != 200:
            log.warning("leader lock: consul answered %s", answer.status_code)
            return False
        self._held = answer.json() is True
        if self._held:
            log.info("leader lock %s: acquired; this instance reconciles", self.key)
        return self._held

    def release(self) -> None:
        """Release the key and destroy the session, so another instance leads at once."""
        with self._mutex:
            self._release()

    def _release(self) -> None:
        session, self.session = self.session, None
        self._held = False
        if session is None:
            return
        try:
            self.store._http("PUT", f"kv/{self.key}", params={"release": session})
            self.store._http("PUT", f"session/destroy/{session}")
        except (ConsulUnavailable, requests.Timeout):
            log.warning("leader lock: could not release; it expires with its session")

    def _create(self) -> None:
        body = {
            "Name": self._name,
            "TTL": f"{self.ttl:g}s",
            "LockDelay": f"{self.lock_delay:g}s",
            "Behavior": "release",
        }
        answer = self.store._http("PUT", "session/create", json=body)
        if answer.status_code != 200:
            log.warning("leader lock: session create answered %s", answer.status_code)
            return
        self.session = str(answer.json()["ID"])
        self._renewed = time.monotonic()

    def _renew(self) -> None:
        answer = self.store._http("PUT", f"session/renew/{self.session}")
        if answer.status_code == 404:
            log.warning("leader lock: session expired; competing again")
            self.session = None
            self._held = False
            self._create()
            return
        if answer.status_code == 200:
            self._renewed = time.monotonic()


def _txn_problems(answer: requests.Response) -> list[str]:
    try:
        return [str(e.get("What", "")) for e in answer.json().get("Errors") or []]
    except (ValueError, AttributeError):
        return []


def _index(answer: requests.Response) -> int:
    try:
        return int(answer.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0


def _first_line(exc: Any) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
