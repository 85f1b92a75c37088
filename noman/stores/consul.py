"""Tags in Consul KV over Consul's HTTP API, with every failure mapped to a NomanError.

Every request goes through ``_request`` inside ``_mapped``, the one place where a
failure becomes a NomanError (as httpx's ``map_httpcore_exceptions``): requests'
exceptions and the answers a call cannot use are looked up in ``_STATUS_ERRORS`` and
worded by ``_WORDS``, a read's words apart from a write's, with this Consul's address
attached once. Network trouble and 5xx answers become ``ConsulUnavailable`` (503,
retry); a refused token becomes ``ConsulForbidden`` (502, the operator must act); an
address where something else answers (Nomad, a web page, TLS on one side only) becomes
``ConsulWrongAddress``, saying what answered. Nothing here ever retries a write
blindly: a timed-out transaction raises ``OutcomeUnknown`` and the caller re-reads to
learn what happened. The reconciler's leader lock is a Consul session lock.

py-consul builds the HTTP session (address, TLS, token); the calls are plain requests
so that every answer, its headers included, reaches the mapping.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Container, Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import consul
import requests

from noman import transport
from noman.config import ConsulSettings
from noman.errors import (
    ConsulError,
    ConsulForbidden,
    ConsulUnavailable,
    ConsulWrongAddress,
    UpstreamError,
)
from noman.stores import Entry, LeaderLock, OutcomeUnknown, Snapshot, Write

log = logging.getLogger(__name__)

#: Calls that change Consul: only their failures may say "nothing was written"; a
#: read-only command (check, status) that fails wrote nothing by nature, and must not
#: suggest that a write was attempted.
WRITES = frozenset({"write", "delete", "txn"})
ANY_STATUS = range(100, 600)
#: Consul's failing statuses that are not ``ConsulError`` (other 4xx) or
#: ``ConsulUnavailable`` (5xx and anything else).
_STATUS_ERRORS: dict[int, type[UpstreamError]] = {401: ConsulForbidden, 403: ConsulForbidden}
#: The words of each error: (after a read, after a write). ``{detail}`` says what
#: happened when it is known; ``{where}`` is what answers at a wrong address.
_WORDS: dict[type[UpstreamError], tuple[str, str]] = {
    ConsulUnavailable: (
        "Consul is unavailable{detail}; retry later.",
        "Consul is unavailable{detail}; nothing was written. Retry later.",
    ),
    ConsulForbidden: (
        "Consul refused Noman's token; the operator must fix its policy.",
        "Consul refused Noman's token; nothing was written. The operator must fix it.",
    ),
    ConsulError: (
        "Consul rejected the request{detail}.",
        "Consul rejected the request{detail}; nothing was written.",
    ),
    ConsulWrongAddress: (
        "The Consul address {where}.",
        "The Consul address {where}; nothing was written.",
    ),
}
_UNCONFIGURED = (
    "Consul refused the request and Noman has no token configured "
    "(CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE or consul.token)"
)
_NOMAD_HERE = (
    "answers like Nomad, not Consul: point consul.address (CONSUL_HTTP_ADDR) at Consul's HTTP API"
)


class _Unusable(Exception):
    """An answer of the wrong status or shape; ``_mapped`` turns it into a NomanError.

    ``foreign`` marks an answer Consul never gives (a key read without X-Consul-Index,
    a body that is not JSON): something else may answer at the address.
    """

    def __init__(self, answer: requests.Response, detail: str = "", foreign: bool = False):
        super().__init__(answer.status_code)
        self.answer = answer
        self.detail = detail
        self.foreign = foreign


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
        self.session: requests.Session = self.client.http.session
        # Consul is reached directly: no HTTP(S)_PROXY, and no per-call scan of
        # the environment for one (about a millisecond per request).
        transport.configure(self.session, settings.tls_server_name)
        if settings.token:
            self.session.headers["X-Consul-Token"] = settings.token

    def read(self, key: str) -> Entry:
        """The key's value and ModifyIndex (None and 0 when missing)."""
        with self._mapped("read", key):
            answer = self._request("GET", f"kv/{quote(key, safe='/:')}", ok=(200, 404))
            _require_index(answer)
            items = _json(answer) if answer.status_code == 200 else None
            if not items:
                return Entry(None, 0)
            try:
                item = items[0]
                raw = item.get("Value")
                value = base64.b64decode(raw).decode("utf-8", errors="replace") if raw else ""
                return Entry(value, int(item["ModifyIndex"]))
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                raise _Unusable(answer, "an answer that is not Consul's", foreign=True) from None

    def write(self, key: str, value: str, index: int) -> bool:
        """PUT with ``?cas=index``; False when someone else wrote first."""
        with self._mapped("write", key):
            path = f"kv/{quote(key, safe='/:')}"
            answer = self._request("PUT", path, params={"cas": str(index)}, data=value.encode())
            return _json(answer) is True

    def delete(self, key: str, index: int) -> bool:
        """DELETE with ``?cas=index``."""
        with self._mapped("delete", key):
            path = f"kv/{quote(key, safe='/:')}"
            return _json(self._request("DELETE", path, params={"cas": str(index)})) is True

    def read_many(self, keys: Sequence[str]) -> list[Entry]:
        """One read-only ``/v1/txn`` of ``get-tree`` operations, one per key.

        ``get`` would fail the whole transaction for a missing key; ``get-tree`` of
        the key's own name returns it (and any key it prefixes, which is dropped).
        """
        ops = [{"KV": {"Verb": "get-tree", "Key": key}} for key in keys]
        found: dict[str, Entry] = {}
        with self._mapped("read", ",".join(keys)):
            answer = self._request("PUT", "txn", json=ops)
            try:
                for result in _json(answer).get("Results") or []:
                    item = result["KV"]
                    raw = item.get("Value")
                    value = base64.b64decode(raw).decode("utf-8", errors="replace") if raw else ""
                    found[item["Key"]] = Entry(value, int(item["ModifyIndex"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise _Unusable(answer, "an answer that is not Consul's", foreign=True) from None
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
        with self._mapped("txn", ",".join(w.key for w in writes)):
            answer = self._request("PUT", "txn", json=ops, ok=(200, 409))
            if answer.status_code == 409:
                if _stale(answer):
                    return None
                raise _Unusable(answer)
        written = {w.key: 0 for w in writes if w.verb in ("cas", "set")}
        try:
            for result in answer.json()["Results"] or []:
                written[str(result["KV"]["Key"])] = int(result["KV"]["ModifyIndex"])
        except (ValueError, KeyError, TypeError):
            pass  # applied; the indexes are simply unknown (0)
        return written

    def list(self, prefix: str, index: int = 0, wait: float = 0.0) -> Snapshot:
        """``GET /v1/kv/<prefix>?recurse``, blocking on ``index`` up to ``wait`` seconds."""
        params: dict[str, str] = {"recurse": ""}
        timeout = self.settings.timeout
        if index and wait > 0:
            params.update(index=str(index), wait=f"{wait:g}s")
            # Consul adds up to wait/16 of jitter to a blocking read.
            timeout += wait * 1.1
        with self._mapped("list", prefix):
            answer = self._request("GET", f"kv/{prefix}", params, timeout=timeout, ok=(200, 404))
            new_index = _require_index(answer)
            if answer.status_code == 404:
                return Snapshot(new_index, {})
            entries: dict[str, Entry] = {}
            try:
                for item in _json(answer) or []:
                    raw = item.get("Value")
                    value = base64.b64decode(raw).decode("utf-8", errors="replace") if raw else ""
                    entries[item["Key"]] = Entry(value, int(item["ModifyIndex"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise _Unusable(answer, "an answer that is not Consul's", foreign=True) from None
        return Snapshot(new_index, entries)

    def leader_lock(self, key: str, ttl: float, lock_delay: float) -> LeaderLock:
        """A Consul session lock on ``key``."""
        return ConsulLock(self, key, ttl, lock_delay)

    def check_ready(self) -> str:
        """Ready when Consul answers with a known leader."""
        with self._mapped("status", "leader"):
            answer = self._request("GET", "status/leader")
            leader = _json(answer)
            if not isinstance(leader, str):
                raise _Unusable(answer, "an answer that is not Consul's", foreign=True)
            if not transport.marked(answer, "consul") and (
                transport.marked(answer, "nomad") or self._nomad_answers()
            ):
                # Nomad has /v1/status/leader too, answered alike (Consul before 1.9 adds
                # no header of its own there either): ask what only Nomad has.
                log.error("consul status: %s %s", self.settings.address, _NOMAD_HERE)
                raise self._error(ConsulWrongAddress, "status", where=_NOMAD_HERE)
        if not leader:
            raise self._error(ConsulUnavailable, "status", message="Consul has no leader.")
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
        with self._mapped("probe", ",".join(keys)):
            answer = self._request("PUT", "txn", json=ops, ok=(200, 409))
            if answer.status_code == 200:
                # Cannot happen with Consul's semantics; say so rather than claim a proof.
                log.error("consul write probe %s: the guard passed", ",".join(keys))
                raise _Unusable(answer, "the write probe's guard passed")
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

    def call(self, method: str, path: str, **request: Any) -> requests.Response:
        """A call whose every answer is returned (the leader lock reads statuses itself)."""
        with self._mapped("lock", path):
            return self._request(method, path, ok=ANY_STATUS, **request)

    # -- the one way to Consul, and the one mapping of its failures ----------------------------

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        ok: Container[int] = (200,),
    ) -> requests.Response:
        """One call to Consul's HTTP API; an answer whose status is not in ``ok`` is unusable.

        Call it inside ``_mapped``: requests' exceptions and ``_Unusable`` leave from here.
        """
        query = dict(params or {})
        if self.settings.datacenter:
            query["dc"] = self.settings.datacenter
        answer = self.session.request(
            method,
            f"{self.settings.address}/v1/{path}",
            params=query,
            json=json,
            data=data,
            timeout=timeout or self.settings.timeout,
            verify=self.settings.verify,
            cert=self.settings.cert,
        )
        if answer.status_code not in ok:
            raise _Unusable(answer)
        return answer

    @contextlib.contextmanager
    def _mapped(self, action: str, what: str) -> Iterator[None]:
        """Every failure of the calls inside becomes a NomanError: the one place that maps them.

        ``action`` is what the caller does (``read``, ``list``, ``txn``...): a write's
        words say nothing was written; ``what`` names the keys for the log.
        """
        try:
            yield
        except _Unusable as unusable:
            raise self._answer_error(unusable, action, what) from None
        except requests.RequestException as exc:
            raise self._transport_error(exc, action, what) from exc

    def _transport_error(
        self, exc: requests.RequestException, action: str, what: str
    ) -> UpstreamError:
        settings = self.settings
        where = transport.scheme_problem(settings.address, exc, timeout=settings.timeout)
        if where is not None:
            log.error("consul %s %s: %s %s", action, what, self.settings.address, where)
            return self._error(ConsulWrongAddress, action, where=where)
        said = transport.problem(exc, settings.timeout)
        log.warning("consul %s %s: %s: %s", action, what, settings.address, said)
        if isinstance(exc, requests.Timeout):
            if action == "txn":
                return self._error(OutcomeUnknown, action)  # it may have landed: re-read
            return self._error(ConsulUnavailable, action, f"no answer within {settings.timeout:g}s")
        return self._error(ConsulUnavailable, action, "unreachable")

    def _answer_error(self, unusable: _Unusable, action: str, what: str) -> UpstreamError:
        answer = unusable.answer
        status = answer.status_code
        text = answer.text.strip()[:300]
        where = self._what_answers(answer, unusable.foreign)
        if where is not None:
            log.error("consul %s %s: %s %s", action, what, self.settings.address, where)
            return self._error(ConsulWrongAddress, action, where=where)
        kind = _STATUS_ERRORS.get(status)
        if status == 409:  # a transaction Consul refused: its errors say why
            problems = _txn_problems(answer)
            text = "; ".join(problems)[:300]
            denied = any("Permission denied" in p or "ACL not found" in p for p in problems)
            kind = ConsulForbidden if denied else ConsulError
        if kind is ConsulForbidden:
            refused = "no token configured" if not self.settings.token else "token refused"
            log.error("consul %s %s: %s: %s", action, what, refused, text)
            return self._error(ConsulForbidden, action)
        if unusable.detail and 200 <= status < 300:
            log.warning("consul %s %s: %s", action, what, unusable.detail)
            kind = ConsulError if action == "probe" else ConsulUnavailable
            return self._error(kind, action, unusable.detail)
        if 400 <= status < 500:
            log.error("consul %s %s: rejected (%s): %s", action, what, status, text)
            return self._error(ConsulError, action)
        log.warning("consul %s %s: server error (%s): %s", action, what, status, text)
        return self._error(ConsulUnavailable, action, f"answered {status}")

    def _what_answers(self, answer: requests.Response, foreign: bool) -> str | None:
        """What answers at the address instead of Consul, judged from an unusable answer."""
        return transport.what_answers(
            answer,
            foreign,
            address=self.settings.address,
            expected="consul",
            other_here=_NOMAD_HERE,
            refusals=frozenset({401, 403, 409}),
            other_answers=self._nomad_answers,
        )

    def _nomad_answers(self) -> bool:
        settings = self.settings
        return transport.identify(
            self.session,
            settings.address,
            "nomad",
            settings.timeout,
            verify=settings.verify,
            cert=settings.cert,
        )

    def _error(
        self,
        kind: type[UpstreamError],
        action: str,
        detail: str = "",
        where: str = "",
        message: str | None = None,
    ) -> UpstreamError:
        """``kind`` worded for a read or a write, with this Consul's address: the one place."""
        wrote = action in WRITES
        if message is None and kind is ConsulForbidden and not self.settings.token:
            # Not the same fix as a refused token: there is none to fix.
            message = _UNCONFIGURED + ("; nothing was written." if wrote else ".")
        if message is None and kind in _WORDS:
            words = _WORDS[kind][wrote]
            message = words.format(detail=f" ({detail})" if detail else "", where=where)
        error = kind(message)
        error.address = self.settings.address
        return error


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
            answer = self.store.call(
                "GET", f"kv/{self.key}", params=params, timeout=self.store.settings.timeout + wait
            )
        except UpstreamError:
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
            answer = self.store.call(
                "PUT", f"kv/{self.key}", params={"acquire": self.session}, data=self._name.encode()
            )
        except UpstreamError:
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
            self.store.call("PUT", f"kv/{self.key}", params={"release": session})
            self.store.call("PUT", f"session/destroy/{session}")
        except UpstreamError:
            log.warning("leader lock: could not release; it expires with its session")

    def _create(self) -> None:
        body = {
            "Name": self._name,
            "TTL": f"{self.ttl:g}s",
            "LockDelay": f"{self.lock_delay:g}s",
            "Behavior": "release",
        }
        answer = self.store.call("PUT", "session/create", json=body)
        if answer.status_code != 200:
            log.warning("leader lock: session create answered %s", answer.status_code)
            return
        self.session = str(answer.json()["ID"])
        self._renewed = time.monotonic()

    def _renew(self) -> None:
        answer = self.store.call("PUT", f"session/renew/{self.session}")
        if answer.status_code == 404:
            log.warning("leader lock: session expired; competing again")
            self.session = None
            self._held = False
            self._create()
            return
        if answer.status_code == 200:
            self._renewed = time.monotonic()


def _stale(answer: requests.Response) -> bool:
    """A 409 whose every error is a failed check-and-set (someone wrote first)."""
    problems = _txn_problems(answer)
    return bool(problems) and all("index is stale" in p or "doesn't exist" in p for p in problems)


def _txn_problems(answer: requests.Response) -> list[str]:
    try:
        return [str(e.get("What", "")) for e in answer.json().get("Errors") or []]
    except (ValueError, AttributeError):
        return []


def _json(answer: requests.Response) -> Any:
    """The answer's JSON; unusable (and perhaps not Consul's) when it is not JSON."""
    try:
        return answer.json()
    except ValueError:
        raise _Unusable(answer, "an answer that is not Consul's", foreign=True) from None


def _require_index(answer: requests.Response) -> int:
    """The X-Consul-Index of a key read, which Consul sends with every one (found or not)."""
    if "X-Consul-Index" not in answer.headers:
        raise _Unusable(answer, "a key read without X-Consul-Index", foreign=True)
    return _index(answer)


def _index(answer: requests.Response) -> int:
    try:
        return int(answer.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0
