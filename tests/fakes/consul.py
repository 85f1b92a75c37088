"""A fake Consul agent for tests: KV store, transactions and leader status over real HTTP.

Real Consul cannot be installed where Noman's tests run, so this module plays one on
127.0.0.1 (standard library only). It reproduces what ``shared/specs/consul-kv.md`` lists,
checked against Consul's own sources where they are stricter or more precise:

* ``/v1/kv/<key>``: GET (``recurse``, ``keys`` + ``separator``, ``raw``, blocking ``index`` +
  ``wait``), PUT (``cas``, ``flags``, 512 KiB limit), DELETE (``recurse``, ``cas``); one raft-like
  index with tombstones, so ``X-Consul-Index`` never goes backwards or reads 0;
* ``/v1/txn``: all-or-nothing KV transactions with Consul's verbs (``set``, ``cas``, ``get``,
  ``check-index``, ``check-not-exists``, ``check-session``, ``lock``, ``unlock``, ``delete``,
  ``delete-cas``, ...) and error texts;
* ``/v1/session/{create,destroy,renew,info,list,node}`` and locks: ``PUT ?acquire=`` /
  ``?release=``, ``LockIndex``/``Session`` on entries, TTL expiry with ``release`` or
  ``delete`` behaviour, lock-delay after an invalidation; time comes from the wall clock or a
  :class:`FakeClock` (``FakeConsul(clock=...)``, :meth:`FakeConsul.advance`), and
  :meth:`FakeConsul.expire_session` invalidates a session at once. An unrenewed session dies
  exactly at ``TTL * session_ttl_multiplier`` (default 1; real Consul may wait up to 2 TTLs);
* ``/v1/status/leader``, ``/v1/catalog/datacenters`` (no token needed); the router's 301 for
  ``//`` paths; newer Consul's key validation;
* one datacenter (``datacenter``, default "dc1"): another ``?dc=`` is 500 "No path to
  datacenter"; :meth:`FakeConsul.set_leader` takes the leader away (500 "No cluster leader");
* ACLs with default-deny: one all-powerful token, requests without a token act as the anonymous
  token (403 on keys and session writes, results filtered from lists, 409 inside a
  transaction);
* fault injection: failed answers (at once or ``after`` a delay), answers held back after
  the write was applied (:meth:`FakeServer.answer_late`), hung requests, refused connections.

    with FakeConsul() as fake:
        requests.put(f"{fake.url}/v1/kv/noman/web", data=b"v1")
        assert fake.value("noman/web") == b"v1"

Run it by hand with ``python -m tests.fakes.consul [--port N] [--acl-token T]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import json
import re
import string
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.fakes._server import (
    FakeClock,
    FakeHTTPServer,
    FakeServer,
    Hang,
    QuietHandler,
    parse_duration,
    run_main,
)

__all__ = [
    "ANONYMOUS_ACCESSOR_ID",
    "MAX_VALUE_SIZE",
    "NO_CLUSTER_LEADER",
    "NO_PATH_TO_DATACENTER",
    "FakeClock",
    "FakeConsul",
    "main",
    "parse_duration",
]

JSON = dict[str, Any]

#: Consul's default ``kv_max_value_size`` (and ``txn_max_req_len``).
MAX_VALUE_SIZE = 524288
#: Operations allowed in one transaction: maxTxnOps in Consul's txn endpoint.
MAX_TXN_OPS = 64
#: Blocking reads: Consul's default ``wait`` and its cap.
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
#: The AccessorID Consul reports for the anonymous token (requests without a token).
ANONYMOUS_ACCESSOR_ID = "00000000-0000-0000-0000-000000000002"
NO_LEADER = "rpc error making call: No cluster leader"
#: What a server without a leader answers (structs.ErrNoLeader), see :meth:`FakeConsul.set_leader`.
NO_CLUSTER_LEADER = "No cluster leader"
#: structs.ErrNoDCPath: the answer to a ``?dc=`` naming a datacenter the agent cannot reach.
NO_PATH_TO_DATACENTER = "No path to datacenter"
#: Session limits and defaults (seconds), from Consul's structs and server config.
SESSION_TTL_MIN = 10.0
SESSION_TTL_MAX = 86400.0
DEFAULT_LOCK_DELAY = 15.0
MAX_LOCK_DELAY = 60.0
# FixupLockDelay: a bare number below this counts as seconds, else as nanoseconds.
_LOCK_DELAY_MIN_THRESHOLD = 1000

_UINT64_MAX = 2**64 - 1
# Bodies above this are refused unread and the connection is closed; Consul's own limit is far
# lower, this only keeps a runaway client from filling memory.
_MAX_BODY = 64 * 1024 * 1024
# newer Consul's validateKVKey: anything else is a 400.
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + ",-_./")
_WRITE_VERBS = frozenset({"set", "cas", "delete", "delete-cas", "delete-tree", "lock", "unlock"})
_UNFILTERED_READS = frozenset({"get", "get-tree", "get-or-empty"})


def _q(text: str) -> str:
    """Quote like Go's ``%q``, which Consul uses to name keys in its messages."""
    return json.dumps(text, ensure_ascii=False)


def _denied(access: str, key: str) -> str:
    return (
        f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR_ID}' lacks permission "
        f"'key:{access}' on {_q(key)}"
    )


# --------------------------------------------------------------------------------------------
# Answers


@dataclass
class _Response:
    """What the handler sends; ``None`` in its place means "close without answering"."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Reject(Exception):
    """Ends the handling of a request early with the given answer."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, text.encode(), "text/plain; charset=utf-8", headers or {})


def _json(data: Any, headers: dict[str, str] | None = None, status: int = 200) -> _Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return _Response(status, body, "application/json", headers or {})


def _first(query: dict[str, list[str]], name: str) -> str:
    return query.get(name, [""])[0]


def _uint(query: dict[str, list[str]], name: str) -> int | None:
    """An unsigned query parameter; Consul answers a bad one with strconv's error and a 500."""
    if name not in query:
        return None
    text = _first(query, name)
    if not re.fullmatch(r"[0-9]+", text):
        raise _Reject(_text(500, f"strconv.ParseUint: parsing {_q(text)}: invalid syntax"))
    if int(text) > _UINT64_MAX:
        raise _Reject(_text(500, f"strconv.ParseUint: parsing {_q(text)}: value out of range"))
    return int(text)


def _reject_conflicts(query: dict[str, list[str]], *names: str) -> None:
    if sum(name in query for name in names) > 1:
        pairs = [(name, value) for name, values in sorted(query.items()) for value in values]
        raise _Reject(_text(400, f"Conflicting flags: {urlencode(pairs)}\n"))


def _blocking(query: dict[str, list[str]]) -> tuple[int, float]:
    """(min index, wait seconds) of a blocking read, with Consul's default and cap for wait."""
    wait = DEFAULT_WAIT
    if wait_text := _first(query, "wait"):
        try:
            wait = parse_duration(wait_text)
        except ValueError:
            raise _Reject(_text(400, "Invalid wait time")) from None
    index_text = _first(query, "index")
    if index_text and not re.fullmatch(r"[0-9]+", index_text):
        raise _Reject(_text(400, "Invalid index"))
    wait = MAX_WAIT if wait > MAX_WAIT else DEFAULT_WAIT if wait <= 0 else wait
    return int(index_text or 0), wait


def _key_problem(key: str) -> str | None:
    """Why newer Consul (validateKVKey) rejects this key, or None."""
    for position, char in enumerate(key):
        if char not in _KEY_CHARS:
            offset = len(key[:position].encode())  # Go reports byte offsets
            return (
                f"key contains invalid character '{char}' at position {offset}. "
                "Only alphanumeric characters and ,-_./ are allowed"
            )
    return None


def _clean_path(path: str) -> str:
    """Go's ServeMux path cleaning (without ".." which is rejected earlier); keeps a final /."""
    cleaned = "/" + "/".join(part for part in path.split("/") if part not in ("", "."))
    return cleaned + "/" if path.endswith("/") and cleaned != "/" else cleaned


def _redirect(path: str, raw_query: str, method: str) -> _Response:
    location = quote(path) + (f"?{raw_query}" if raw_query else "")
    if method not in ("GET", "HEAD"):
        return _Response(301, headers={"Location": location})
    body = f'<a href="{html.escape(location)}">Moved Permanently</a>.\n\n'.encode()
    return _Response(301, body, "text/html; charset=utf-8", {"Location": location})


# --------------------------------------------------------------------------------------------
# The KV table


@dataclass(frozen=True)
class _Entry:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str = ""  # the session holding the lock, "" when unlocked

    def as_json(self, with_value: bool = True) -> JSON:
        # Consul sends an empty value as null, and blanks values of written txn entries.
        value = base64.b64encode(self.value).decode() if with_value and self.value else None
        data: JSON = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": value,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:  # Consul omits Session (omitempty) unless the key is locked
            data["Session"] = self.session
        return data


@dataclass
class _Session:
    """One Consul session; ``expires`` is in the fake's clock time, None without a TTL."""

    id: str
    name: str
    node: str
    lock_delay: float  # seconds, as asked (capped at MAX_LOCK_DELAY only when applied)
    behavior: str
    ttl: str
    ttl_seconds: float
    node_checks: list[str]
    service_checks: list[JSON] | None
    create_index: int
    expires: float | None

    def as_json(self) -> JSON:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": round(self.lock_delay * 1e9),  # a Go time.Duration: nanoseconds
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": self.service_checks,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


class _Store:
    """Entries, tombstones and the table index; entries are immutable so copies are cheap."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        # Like Consul's graveyard: a prefix read's index must not slide back after a delete.
        self.tombstones: dict[str, int] = {}
        # Raft starts above 0 and clients treat index 0 as "do not block".
        self.index = 1
        self.mutations = 0

    def copy(self) -> _Store:
        twin = _Store()
        twin.entries, twin.tombstones = dict(self.entries), dict(self.tombstones)
        twin.index, twin.mutations = self.index, self.mutations
        return twin

    def get(self, key: str) -> tuple[int, _Entry | None]:
        entry = self.entries.get(key)
        return (entry.modify_index if entry else self.index), entry

    def list(self, prefix: str) -> tuple[int, list[_Entry]]:
        """Entries under a string prefix, sorted, and the index Consul reports for them."""
        found = [self.entries[key] for key in sorted(self.entries) if key.startswith(prefix)]
        if not prefix:
            return self.index, found
        graves = [index for key, index in self.tombstones.items() if key.startswith(prefix)]
        newest = max([entry.modify_index for entry in found] + graves, default=0)
        return newest or self.index, found

    def set_allowed(self, key: str, cas: int) -> bool:
        entry = self.entries.get(key)
        return entry is None if cas == 0 else entry is not None and entry.modify_index == cas

    def delete_allowed(self, key: str, cas: int) -> bool:
        # Consul's delete-cas succeeds on a missing key whatever the index.
        entry = self.entries.get(key)
        return entry is None or entry.modify_index == cas

    def set(self, key: str, value: bytes, flags: int, index: int) -> None:
        old = self.entries.get(key)
        if old is not None and old.value == value and old.flags == flags:
            return  # Consul skips unchanged writes: ModifyIndex stays put
        if old is None:
            self.entries[key] = _Entry(key, value, flags, index, index)
        else:
            # A plain write keeps the lock (kvsSetTxn without updateSession).
            self.entries[key] = replace(old, value=value, flags=flags, modify_index=index)
        self._changed(index)

    def lock(self, key: str, value: bytes, flags: int, session: str, index: int) -> bool:
        """Consul's kvsLockTxn once the session is known valid: False when another holds it."""
        old = self.entries.get(key)
        if old is None:
            self.entries[key] = _Entry(key, value, flags, index, index, 1, session)
        elif old.session and old.session != session:
            return False
        else:
            # Re-acquiring a lock already held keeps LockIndex; a new acquisition bumps it.
            lock_index = old.lock_index if old.session == session else old.lock_index + 1
            self.entries[key] = replace(
                old,
                value=value,
                flags=flags,
                modify_index=index,
                lock_index=lock_index,
                session=session,
            )
        self._changed(index)
        return True

    def unlock(self, key: str, value: bytes, flags: int, session: str, index: int) -> bool:
        """Consul's kvsUnlockTxn: False unless ``session`` holds the key; the body is written."""
        old = self.entries.get(key)
        if old is None or old.session != session:
            return False
        self.entries[key] = replace(old, value=value, flags=flags, modify_index=index, session="")
        self._changed(index)
        return True

    def release_session(self, session: _Session, index: int) -> tuple[str, ...]:
        """Invalidate ``session``'s locks (release or delete behaviour); returns their keys."""
        held = tuple(key for key, entry in self.entries.items() if entry.session == session.id)
        for key in held:
            if session.behavior == "delete":
                self.delete(key, index)
            else:
                entry = self.entries[key]
                self.entries[key] = replace(entry, session="", modify_index=index)
                self._changed(index)
        return held

    def delete(self, key: str, index: int) -> None:
        if self.entries.pop(key, None) is not None:
            self.tombstones[key] = index
            self._changed(index)

    def delete_tree(self, prefix: str, index: int) -> None:
        doomed = [key for key in self.entries if key.startswith(prefix)]
        for key in doomed:
            del self.entries[key]
        if doomed:
            if prefix:  # Consul buries the prefix; deleting everything moves the table index
                self.tombstones[prefix] = index
            self._changed(index)

    def _changed(self, index: int) -> None:
        self.index = index
        self.mutations += 1


@dataclass(frozen=True)
class _TxnOp:
    verb: str
    key: str
    value: bytes
    flags: int
    index: int
    session: str


class _OpFailed(Exception):
    """One transaction operation failed; the message is Consul's ``What``."""


_JSON_TYPES = {str: "string", bool: "bool", list: "array", dict: "object"}


def _txn_field(fields: JSON, name: str, kind: type) -> Any:
    value = fields.get(name.lower())
    if value is None:
        return kind()
    if kind is str:
        valid = isinstance(value, str)
    else:
        valid = type(value) is int and 0 <= value <= _UINT64_MAX
    if not valid:
        go_type = "string" if kind is str else "uint64"
        json_type = _JSON_TYPES.get(type(value), "number")
        raise _Reject(
            _text(
                400,
                f"Failed to parse body: json: cannot unmarshal {json_type} into "
                f"Go struct field KVTxnOp.KV.{name} of type {go_type}",
            )
        )
    return value


def _parse_txn(body: bytes) -> list[_TxnOp]:
    """Decode a /v1/txn body the way Consul's convertOps does, answering its 400s and 413s."""
    if not body.strip():
        raise _Reject(_text(400, "Failed to parse body: EOF"))
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise _Reject(_text(400, f"Failed to parse body: {exc}")) from None
    if raw is None:
        raw = []  # Go decodes null into an empty list of operations
    if not isinstance(raw, list):
        raise _Reject(_text(400, "Failed to parse body: json: cannot unmarshal into api.TxnOps"))
    if len(raw) > MAX_TXN_OPS:
        message = f"Transaction contains too many operations ({len(raw)} > {MAX_TXN_OPS})"
        raise _Reject(_text(413, message))
    ops = []
    for item in raw:
        if item is None:
            continue
        if not isinstance(item, dict):
            raise _Reject(_text(400, "Failed to parse body: json: cannot unmarshal into api.TxnOp"))
        # Go decodes field names case-insensitively.
        fields = {k.lower(): v for k, v in item.items()}
        if any(fields.get(kind) is not None for kind in ("node", "service", "check", "session")):
            raise _Reject(_text(400, "fake consul: only KV operations are supported in /v1/txn"))
        kv = fields.get("kv")
        if kv is None:
            continue  # Consul silently drops an operation of no known kind
        if not isinstance(kv, dict):
            raise _Reject(_text(400, "Failed to parse body: json: cannot unmarshal into api.TxnOp"))
        kv = {k.lower(): v for k, v in kv.items()}
        encoded = kv.get("value")
        try:
            value = b"" if encoded is None else base64.b64decode(str(encoded), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Reject(
                _text(400, f"Failed to parse body: failed to decode value: {exc}")
            ) from None
        key = _txn_field(kv, "Key", str)
        if len(value) > MAX_VALUE_SIZE:
            message = (
                f"Value for key {_q(key)} is too large ({len(value)} > {MAX_VALUE_SIZE} bytes)"
            )
            raise _Reject(_text(413, message))
        verb, flags = _txn_field(kv, "Verb", str), _txn_field(kv, "Flags", int)
        index, session = _txn_field(kv, "Index", int), _txn_field(kv, "Session", str)
        ops.append(_TxnOp(verb, key, value, flags, index, session))
    return ops


def _precheck(op: _TxnOp, anonymous: bool) -> str | None:
    """Consul's kvsPreApply: the error this operation gets before anything runs, if any."""
    if not op.key and op.verb != "delete-tree":
        return "Must provide key"
    if not anonymous or op.verb in _UNFILTERED_READS:
        return None  # reads are filtered from the results instead
    return _denied("read" if op.verb in ("check-index", "check-session") else "write", op.key)


def _run_op(store: _Store, op: _TxnOp, index: int, sessions: dict[str, _Session]) -> list[JSON]:
    """Apply one operation to ``store`` and return its results; errors use Consul's texts.

    ``sessions`` are the live sessions (``lock`` needs its session to exist).
    """
    key, verb, entry = op.key, op.verb, store.entries.get(op.key)
    if verb in ("set", "cas"):
        if verb == "cas" and not store.set_allowed(key, op.index):
            raise _OpFailed(f"failed to set key {_q(key)}, index is stale")
        store.set(key, op.value, op.flags, index)
        return [{"KV": store.entries[key].as_json(with_value=False)}]
    if verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and not store.delete_allowed(key, op.index):
            raise _OpFailed(f"failed to delete key {_q(key)}, index is stale")
        store.delete(key, index)
        return []
    if verb == "delete-tree":
        store.delete_tree(key, index)
        return []
    if verb == "get":
        if entry is None:
            raise _OpFailed(f"key {_q(key)} doesn't exist")
        return [{"KV": entry.as_json()}]
    if verb == "get-or-empty":
        return [{"KV": (entry or _Entry(key, b"", op.flags, 0, op.index)).as_json()}]
    if verb == "get-tree":
        return [{"KV": found.as_json()} for found in store.list(key)[1]]
    if verb == "check-index":
        if entry is None:
            raise _OpFailed(f"failed to check index, key {_q(key)} doesn't exist")
        if entry.modify_index != op.index:
            raise _OpFailed(
                f"failed index check for key {_q(key)}, "
                f"current modify index {entry.modify_index} != {op.index}"
            )
        return [{"KV": entry.as_json(with_value=False)}]
    if verb == "check-not-exists":
        if entry is not None:
            raise _OpFailed(f"key {_q(key)} exists")
        return []
    if verb == "check-session":
        if entry is None:
            raise _OpFailed(f"failed to check session, key {_q(key)} doesn't exist")
        if entry.session != op.session:
            raise _OpFailed(
                f"failed session check for key {_q(key)}, "
                f"current session {_q(entry.session)} != {_q(op.session)}"
            )
        return [{"KV": entry.as_json(with_value=False)}]
    if verb in ("lock", "unlock"):
        if not op.session:
            raise _OpFailed("missing session")
        if verb == "lock":
            if op.session not in sessions:
                raise _OpFailed(f"invalid session {_q(op.session)}")
            if not store.lock(key, op.value, op.flags, op.session, index):
                raise _OpFailed(f"failed to lock key {_q(key)}, lock is already held")
        elif not store.unlock(key, op.value, op.flags, op.session, index):
            raise _OpFailed(
                f"failed to unlock key {_q(key)}, lock isn't held, or is held by another session"
            )
        return [{"KV": store.entries[key].as_json(with_value=False)}]
    raise _OpFailed(f"unknown KV verb {_q(verb)}")


# --------------------------------------------------------------------------------------------
# HTTP plumbing

_Server = FakeHTTPServer["FakeConsul"]


@dataclass
class _Request:
    method: str
    raw_path: str  # as sent, still percent-encoded
    path: str  # decoded, as Consul's router sees it
    raw_query: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names Title-Cased
    body: bytes


class _Handler(QuietHandler):
    """Turns each HTTP request into one :meth:`FakeConsul._handle` call."""

    server: _Server

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_DELETE = do_POST = do_PATCH = do_HEAD = do_GET

    def _serve(self) -> None:
        try:
            response = self.server.fake._handle(self._request(), self.server)
        except _Reject as rejected:  # the body could not be read: answer, then hang up
            self.close_connection = True
            response = rejected.response
        if response is None:
            # Returning without a word and closing: the client sees the connection dropped
            # without an answer (or its own read timeout first).
            self.close_connection = True
            return
        self._send(response)

    def _request(self) -> _Request:
        parts = urlsplit(self.path)
        return _Request(
            method=self.command,
            raw_path=parts.path,
            path=unquote(parts.path),
            raw_query=parts.query,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={name.title(): value for name, value in self.headers.items()},
            body=self._body(),
        )

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            raise _Reject(_text(400, "bad Content-Length"))
        if int(length) > _MAX_BODY:
            raise _Reject(_text(413, "request body too large"))
        return self.rfile.read(int(length))

    def _chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise _Reject(_text(400, "bad chunked encoding")) from None
            if size == 0:
                break
            if sum(map(len, chunks)) + size > _MAX_BODY:
                raise _Reject(_text(413, "request body too large"))
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF closing the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _send(self, response: _Response) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = {"Date": self.date_time_string(), **response.headers}
        if response.content_type:
            headers["Content-Type"] = response.content_type
        headers["Content-Length"] = str(len(response.body))
        if self.close_connection:
            headers["Connection"] = "close"
        head = f"HTTP/1.1 {response.status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        body = b"" if self.command == "HEAD" else response.body
        # One write, so head and body leave in the same segment(s).
        self.wfile.write(head.encode("latin-1") + body)


# --------------------------------------------------------------------------------------------
# The fake


class FakeConsul(FakeServer):
    """A Consul agent's KV, txn and status HTTP API, served from memory.

    Use as a context manager (``with FakeConsul() as fake: ...``) or call :meth:`start` and
    :meth:`stop`. One lock guards all state; handler threads and test code may use it at once.
    :attr:`requests` records each path as sent (still percent-encoded).

    Sessions (``/v1/session/*``, ``?acquire``/``?release``, txn ``lock``/``unlock``/
    ``check-session``) expire on the fake's clock (:meth:`now`): the wall clock, or a
    :class:`FakeClock` passed as ``clock`` that tests move with :meth:`advance`. An unrenewed
    session is invalidated exactly ``TTL * session_ttl_multiplier`` after its creation or last
    renewal; the multiplier defaults to 1 although real Consul waits up to 2 TTLs (its
    ``SessionTTLMultiplier``), so pass 2 to model the slowest real failover.
    :meth:`expire_session` invalidates one at once.

    Args:
        acl_token: turns ACLs on (default deny): only this token may use /v1/kv, /v1/txn and
            /v1/session; a request without a token acts as Consul's anonymous token, any
            other token is unknown ("ACL not found").
        port: the TCP port; 0 picks a free one when the fake starts.
        host: the address to bind.
        datacenter: the fake's only datacenter; a ``?dc=`` naming another answers 500
            "No path to datacenter".
        clock: a manual clock for session TTLs and lock-delays; None uses the wall clock.
        session_ttl_multiplier: how many TTLs an unrenewed session lives.
    """

    _handler_class = _Handler
    _thread_name = "fake-consul"
    #: The node name sessions are created on (Consul's agent node).
    node_name = "fake-consul"

    def __init__(
        self,
        acl_token: str | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        datacenter: str = "dc1",
        clock: FakeClock | None = None,
        session_ttl_multiplier: float = 1.0,
    ) -> None:
        # The base's _cond guards everything; notified on every change so blocking reads
        # wake up.
        super().__init__(host=host, port=port, clock=clock)
        self.acl_token = acl_token
        self.datacenter = datacenter
        self.session_ttl_multiplier = session_ttl_multiplier
        #: What /v1/status/leader answers; "" means the cluster has no leader. Setting it
        #: alone changes only that answer and X-Consul-KnownLeader; :meth:`set_leader` also
        #: makes every KV, txn and session request fail the way a leaderless cluster does.
        self.leader = "127.0.0.1:8300"
        self._leaderless = False
        #: Mutations applied through HTTP: KV PUTs and DELETEs that changed something, applied
        #: txn operations that changed something. :meth:`set` does not count.
        self.writes = 0
        #: Bytes of request and answer bodies of every request answered, and how many were
        #: answered: what a client moved, for benchmarks and cost tests (headers not counted).
        self.body_bytes = 0
        self.answered = 0
        self._store = _Store()
        self._sessions: dict[str, _Session] = {}
        # key -> clock time until which nobody may acquire it (set on session invalidation).
        self._lock_delays: dict[str, float] = {}

    def start(self) -> Self:
        """Listen and serve in a daemon thread; returns ``self``.

        Raises:
            RuntimeError: when already serving (:meth:`resume` is the idempotent one).
        """
        if self._server is not None:
            raise RuntimeError("FakeConsul is already serving")
        return super().start()

    def fail_next(
        self, count: int = 1, status: int = 500, body: str = NO_LEADER, after: float = 0.0
    ) -> None:
        """Answer the next ``count`` requests (any endpoint) with ``status`` and a text body.

        Nothing is applied. With ``after``, each failure comes that many seconds late.
        Failures queue up after any already pending.
        """
        super().fail_next(count, status, body, after)

    def fail_always(self, status: int = 500, body: str = NO_LEADER, after: float = 0.0) -> None:
        """Answer every request with ``status`` and a text body until :meth:`heal`.

        With ``after``, each answer comes that many seconds late.
        """
        super().fail_always(status, body, after)

    def set_leader(self, present: bool) -> None:
        """Give the cluster a leader again (True) or take it away (False).

        Without a leader, /v1/status/leader answers ``""``, and KV reads (except ``?stale``
        ones), KV writes, transactions and session requests answer 500 "No cluster leader",
        as a Consul server does while no leader is elected.
        """
        with self._cond:
            self._leaderless = not present
            self.leader = "127.0.0.1:8300" if present else ""

    # ---- direct state access for tests -----------------------------------------------------

    def value(self, key: str) -> bytes | None:
        """The stored bytes (``b""`` for an empty value), or None when the key is missing."""
        self._tick()
        with self._cond:
            entry = self._store.entries.get(key)
        return None if entry is None else entry.value

    def keys(self, prefix: str = "") -> list[str]:
        """Every stored key starting with ``prefix``, sorted."""
        self._tick()
        with self._cond:
            return sorted(k for k in self._store.entries if k.startswith(prefix))

    def entry(self, key: str) -> dict[str, Any] | None:
        """The key's record as Consul keeps it (``Value`` is bytes, None when empty).

        ``Session`` is present only while the key is locked, as in Consul's JSON.
        """
        self._tick()
        with self._cond:
            entry = self._store.entries.get(key)
        if entry is None:
            return None
        record: dict[str, Any] = {
            "Key": entry.key,
            "Value": entry.value or None,
            "Flags": entry.flags,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
            "LockIndex": entry.lock_index,
        }
        if entry.session:
            record["Session"] = entry.session
        return record

    def session(self, session_id: str) -> dict[str, Any] | None:
        """The live session as /v1/session/info shows it, or None once gone."""
        self._tick()
        with self._cond:
            found = self._sessions.get(session_id)
            return None if found is None else found.as_json()

    def sessions(self) -> list[dict[str, Any]]:
        """Every live session, as /v1/session/list shows them (oldest first)."""
        self._tick()
        with self._cond:
            return [found.as_json() for found in self._sessions.values()]

    def expire_session(self, session_id: str) -> bool:
        """Invalidate a session now, as if its TTL ran out; False when it does not exist.

        Its locks are released or their keys deleted (per its Behavior), lock-delay starts
        on them and blocking reads wake, exactly as on TTL expiry or destroy.
        """
        with self._cond:
            return self._invalidate(session_id)

    def lock_delay(self, key: str) -> float:
        """Seconds (fake clock) during which ``key`` cannot be acquired any more; 0 if none."""
        with self._cond:
            return max(self._lock_delays.get(key, 0.0) - self.now(), 0.0)

    def set(self, key: str, value: bytes | str, flags: int = 0) -> int:
        """Write a key directly (as a plain PUT would) and return its ModifyIndex.

        Meant for test setup: it wakes blocking reads but does not count in :attr:`writes`.
        """
        if not key:
            raise ValueError("Missing key name")
        data = value.encode() if isinstance(value, str) else value
        with self._cond:
            self._store.set(key, data, flags, self._store.index + 1)
            self._cond.notify_all()
            return self._store.entries[key].modify_index

    # ---- request handling ------------------------------------------------------------------

    # ---- sessions and time (callers hold the lock) -----------------------------------------

    def _next_due(self) -> float | None:
        return min(
            (found.expires for found in self._sessions.values() if found.expires is not None),
            default=None,
        )

    def _apply_due(self) -> bool:
        now = self.now()
        due = [
            found.id
            for found in self._sessions.values()
            if found.expires is not None and found.expires <= now
        ]
        for session_id in due:
            self._invalidate(session_id)
        return bool(due)

    def _invalidate(self, session_id: str) -> bool:
        """Consul's deleteSessionTxn: drop the session, release or delete its keys."""
        found = self._sessions.pop(session_id, None)
        if found is None:
            return False
        self._store.index += 1  # the session table write takes a raft index of its own
        keys = self._store.release_session(found, self._store.index)
        delay = min(found.lock_delay, MAX_LOCK_DELAY)
        if delay > 0:
            until = self.now() + delay
            for key in keys:
                self._lock_delays[key] = until
        self._cond.notify_all()
        return True

    def _in_lock_delay(self, key: str) -> bool:
        until = self._lock_delays.get(key)
        if until is None:
            return False
        if until <= self.now():
            del self._lock_delays[key]
            return False
        return True

    def _handle(self, req: _Request, server: _Server) -> _Response | None:
        with self._cond:
            self.requests.append((req.method, req.raw_path, req.query, dict(req.headers)))
            if self._apply_due():
                self._cond.notify_all()
            fault = self._next_fault()
            late = self._next_late() if fault is None else None
        if isinstance(fault, Hang):
            fault.wait()
            return None
        if fault is not None:
            if fault.delay is not None:
                fault.delay.wait()
            return _text(fault.status, fault.body)
        try:
            response = self._route(req, server)
        except _Reject as rejected:
            response = rejected.response
        if response is not None:
            with self._cond:
                self.body_bytes += len(req.body) + len(response.body)
                self.answered += 1
        if late is not None:
            late.wait()  # applied already: only the answer is late
        return response

    def _route(self, req: _Request, server: _Server) -> _Response | None:
        path = req.path
        if "../" in path or "..\\" in path or path.endswith("/.."):
            return _text(400, "URL path contains invalid traversal sequence")
        if path == "/v1/kv" or _clean_path(path) != path:
            # Consul's router (Go's ServeMux) redirects to the cleaned path.
            target = "/v1/kv/" if path == "/v1/kv" else _clean_path(path)
            return _redirect(target, req.raw_query, req.method)
        dc = _first(req.query, "dc")
        if dc and dc != self.datacenter:
            return _text(500, NO_PATH_TO_DATACENTER)
        leaderless = self._leaderless and not (req.method == "GET" and "stale" in req.query)
        if leaderless and path.startswith(("/v1/kv/", "/v1/txn", "/v1/session/")):
            return _text(500, NO_CLUSTER_LEADER)
        if path.startswith("/v1/kv/"):
            return self._kv(req, path.removeprefix("/v1/kv/"), server)
        if path == "/v1/txn":
            return self._txn(req)
        if path.startswith("/v1/session/"):
            return self._session(req, path.removeprefix("/v1/session/"))
        if path == "/v1/catalog/datacenters":  # no ACL, as in Consul
            if req.method != "GET":
                return _text(405, f"method {req.method} not allowed", {"Allow": "GET"})
            return _json([self.datacenter])
        if path in ("/v1/status/leader", "/v1/status/peers"):
            if req.method != "GET":
                return _text(405, f"method {req.method} not allowed", {"Allow": "GET"})
            if path.endswith("leader"):
                return _json(self.leader)
            return _json([self.leader] if self.leader else [])
        return _text(404, f"fake consul: no such endpoint: {req.method} {path}")

    def _anonymous(self, req: _Request) -> bool:
        """Whether the caller acts as the anonymous token; rejects an unknown token.

        Token sources, first non-empty wins: ?token=, X-Consul-Token, Authorization: Bearer.
        """
        if self.acl_token is None:
            return False
        token = _first(req.query, "token") or req.headers.get("X-Consul-Token", "")
        if not token:
            parts = req.headers.get("Authorization", "").split(" ")
            if len(parts) == 2 and parts[0].lower() == "bearer":
                token = parts[1].strip()
        if not token:
            return True
        if token != self.acl_token:
            raise _Reject(_text(403, "ACL not found"))
        return False

    def _leader_meta(self) -> dict[str, str]:
        return {
            "X-Consul-KnownLeader": "true" if self.leader else "false",
            "X-Consul-LastContact": "0",
        }

    def _meta(self, index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(index), **self._leader_meta()}

    def _kv(self, req: _Request, key: str, server: _Server) -> _Response | None:
        blocking = _blocking(req.query)
        if key and (problem := _key_problem(key)):
            return _text(400, problem)
        if req.method == "GET":
            return self._kv_get(req, key, blocking, server)
        if req.method == "PUT":
            return self._kv_put(req, key)
        if req.method == "DELETE":
            return self._kv_delete(req, key)
        return _text(405, f"method {req.method} not allowed", {"Allow": "GET,PUT,DELETE"})

    def _kv_get(
        self, req: _Request, key: str, blocking: tuple[int, float], server: _Server
    ) -> _Response | None:
        query = req.query
        listing, recurse = "keys" in query, "recurse" in query  # presence flags, any value
        if not (listing or recurse or key):
            return _text(400, "Missing key name")
        anonymous = self._anonymous(req)
        if anonymous and not (listing or recurse):
            return _text(403, _denied("read", key))
        # Consul's historic misspelling is still accepted.
        separator = _first(query, "separator") or _first(query, "seperator")

        def answer(store: _Store) -> tuple[int, _Response]:
            if not (listing or recurse):
                index, entry = store.get(key)
                if entry is None:
                    return index, _Response(404)
                if "raw" in query:
                    safety = {
                        "X-Content-Type-Options": "nosniff",
                        "Content-Security-Policy": "sandbox",
                    }
                    return index, _Response(200, entry.value, "text/plain", safety)
                return index, _json([entry.as_json()])
            index, entries = store.list(key)
            # Consul filters lists by read permission instead of refusing them.
            extra = {"X-Consul-Results-Filtered-By-ACLs": "true"} if anonymous and entries else {}
            visible = [] if anonymous else entries
            if listing:
                names = _key_names(visible, key, separator)
                if names or not key:  # the root listing is [] rather than a 404
                    return index, _json(names, extra)
                return index, _Response(404, headers=extra)
            if not visible:
                return index, _Response(404, headers=extra)
            return index, _json([entry.as_json() for entry in visible], extra)

        result = self._block(answer, *blocking, server)
        if result is None:
            return None
        index, response = result
        response.headers.update(self._meta(index))
        return response

    def _block(
        self,
        answer: Callable[[_Store], tuple[int, _Response]],
        min_index: int,
        wait: float,
        server: _Server,
    ) -> tuple[int, _Response] | None:
        """Consul's blocking query: answer once the index passes ``min_index`` or wait ends."""
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                index, response = answer(self._store)
                remaining = deadline - time.monotonic()
                if not min_index or index > min_index or remaining <= 0:
                    return index, response
                if server.closing.is_set():
                    return None
                self._wait(remaining)

    def _kv_put(self, req: _Request, key: str) -> _Response:
        query = req.query
        if not key:
            return _text(400, "Missing key name")
        _reject_conflicts(query, "cas", "acquire", "release")
        flags, cas = _uint(query, "flags"), _uint(query, "cas")
        if len(req.body) > MAX_VALUE_SIZE:
            return _text(
                413,
                f"Request body({len(req.body)} bytes) too large, max size: {MAX_VALUE_SIZE} "
                "bytes. See https://developer.hashicorp.com/docs/agent/config/config-files"
                "#kv_max_value_size.",
            )
        if self._anonymous(req):
            return _text(403, _denied("write", key))
        with self._cond:
            if "acquire" in query or "release" in query:
                return _json(self._lock_put(req, key, flags or 0))
            if cas is not None and not self._store.set_allowed(key, cas):
                return _json(False)
            self._mutate(lambda store, index: store.set(key, req.body, flags or 0, index))
        return _json(True)

    def _lock_put(self, req: _Request, key: str, flags: int) -> bool:
        """``?acquire=`` / ``?release=``, in Consul's order of checks; the lock is held."""
        acquire = "acquire" in req.query
        session = _first(req.query, "acquire" if acquire else "release")
        # kvsPreApply checks the lock-delay first, then the state store the session.
        if acquire and self._in_lock_delay(key):
            return False
        if not session:
            raise _Reject(_text(500, "missing session"))
        if acquire and session not in self._sessions:
            raise _Reject(_text(500, f"invalid session {_q(session)}"))
        done = False

        def change(store: _Store, index: int) -> None:
            nonlocal done
            lock = store.lock if acquire else store.unlock
            done = lock(key, req.body, flags, session, index)

        self._mutate(change)
        return done

    def _kv_delete(self, req: _Request, key: str) -> _Response:
        query = req.query
        _reject_conflicts(query, "recurse", "cas")
        recurse = "recurse" in query
        if not (recurse or key):
            return _text(400, "Missing key name")
        cas = _uint(query, "cas")
        if self._anonymous(req):
            return _text(403, _denied("write", key))
        with self._cond:
            if cas is not None and not self._store.delete_allowed(key, cas):
                return _json(False)
            if recurse:
                self._mutate(lambda store, index: store.delete_tree(key, index))
            else:
                self._mutate(lambda store, index: store.delete(key, index))
        return _json(True)

    def _mutate(self, change: Callable[[_Store, int], None]) -> None:
        """Apply one change at the next index; the caller holds the lock."""
        before = self._store.mutations
        change(self._store, self._store.index + 1)
        if self._store.mutations != before:
            self.writes += 1
            self._cond.notify_all()

    def _txn(self, req: _Request) -> _Response:
        if req.method != "PUT":
            return _text(405, f"method {req.method} not allowed", {"Allow": "PUT"})
        if len(req.body) > MAX_VALUE_SIZE:
            return _text(413, f"Request body too large, max size: {MAX_VALUE_SIZE} bytes")
        ops = _parse_txn(req.body)
        anonymous = self._anonymous(req)
        results: list[JSON] = []
        with self._cond:
            problems = [
                (i, what) for i, op in enumerate(ops) if (what := self._txn_precheck(op, anonymous))
            ]
            if not problems:
                # All or nothing: run on a copy, keep it only if every operation succeeded.
                work = self._store.copy()
                for i, op in enumerate(ops):
                    try:
                        results.extend(_run_op(work, op, self._store.index + 1, self._sessions))
                    except _OpFailed as failed:
                        problems.append((i, str(failed)))
                if not problems and work.mutations != self._store.mutations:
                    self.writes += work.mutations - self._store.mutations
                    self._store = work
                    self._cond.notify_all()
        if problems:
            errors = [{"OpIndex": i, "What": what} for i, what in problems]
            return _json({"Results": None, "Errors": errors}, status=409)
        read_only = not any(op.verb in _WRITE_VERBS for op in ops)
        # Read-only transactions take Consul's read path, which reports leader contact.
        headers = self._leader_meta() if read_only else {}
        # The anonymous token may read nothing: Consul filters those results out.
        return _json({"Results": [] if anonymous else results, "Errors": None}, headers)

    def _txn_precheck(self, op: _TxnOp, anonymous: bool) -> str | None:
        """kvsPreApply of one operation: ACLs, then the lock-delay of a ``lock``."""
        if problem := _precheck(op, anonymous):
            return problem
        if op.verb == "lock" and self._in_lock_delay(op.key):
            return f"failed to lock key {_q(op.key)} due to lock delay"
        return None

    # ---- /v1/session -----------------------------------------------------------------------

    def _session(self, req: _Request, rest: str) -> _Response:
        action, _, session_id = rest.partition("/")
        writes = {"create": "PUT", "destroy": "PUT", "renew": "PUT"}
        reads = {"info": "GET", "list": "GET", "node": "GET"}
        method = writes.get(action) or reads.get(action)
        if method is None:
            return _text(404, f"fake consul: no such endpoint: {req.method} {req.path}")
        if req.method != method:
            return _text(405, f"method {req.method} not allowed", {"Allow": method})
        if action in ("destroy", "renew", "info", "node") and not session_id:
            what = "node" if action == "node" else "session"
            return _text(400, f"Missing {what}")
        anonymous = self._anonymous(req)
        if anonymous and action in writes:
            return _text(403, _denied_session(self.node_name))
        with self._cond:
            if action == "create":
                return self._session_create(req)
            if action == "destroy":
                self._invalidate(session_id)
                return _json(True)
            found = self._sessions.get(session_id)
            if action == "renew":
                if found is None:
                    return _text(404, f"Session id '{session_id}' not found")
                if found.expires is not None:
                    found.expires = self.now() + found.ttl_seconds * self.session_ttl_multiplier
                return _json([found.as_json()])
            if action == "info":
                listed = [] if found is None else [found]
            else:  # list, or the sessions of one node
                listed = [
                    one
                    for one in self._sessions.values()
                    if action == "list" or one.node == session_id
                ]
            extra = {"X-Consul-Results-Filtered-By-ACLs": "true"} if anonymous and listed else {}
            shown = [] if anonymous else [one.as_json() for one in listed]
            return _json(shown, {**self._meta(self._store.index), **extra})

    def _session_create(self, req: _Request) -> _Response:
        fields = _session_body(req.body)
        behavior = fields.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            return _text(500, f"Invalid Behavior setting '{behavior}'")
        ttl = fields.get("ttl") or ""
        if not isinstance(ttl, str):
            return _text(400, _decode_failed("TTL", ttl, "string"))
        ttl_seconds = 0.0
        if ttl:
            try:
                ttl_seconds = parse_duration(ttl)
            except ValueError as exc:
                return _text(500, f"Session TTL '{ttl}' invalid: {_go_duration_error(exc, ttl)}")
            if ttl_seconds and not SESSION_TTL_MIN <= ttl_seconds <= SESSION_TTL_MAX:
                return _text(
                    500,
                    f"Invalid Session TTL '{round(ttl_seconds * 1e9)}', "
                    "must be between [10s=24h0m0s]",
                )
        node = fields.get("node") or self.node_name
        if node != self.node_name:
            return _text(500, "Missing node registration")
        name = fields.get("name") or ""
        node_checks = fields.get("nodechecks") or fields.get("checks")
        if node_checks is None and not fields.get("servicechecks"):
            node_checks = ["serfHealth"]  # fixupEmptySessionChecks
        self._store.index += 1
        session = _Session(
            id=str(uuid.uuid4()),
            name=str(name),
            node=node,
            lock_delay=fields.get("lockdelay", DEFAULT_LOCK_DELAY),
            behavior=behavior,
            ttl=ttl,
            ttl_seconds=ttl_seconds,
            node_checks=list(node_checks or []),
            service_checks=fields.get("servicechecks"),
            create_index=self._store.index,
            expires=self.now() + ttl_seconds * self.session_ttl_multiplier if ttl_seconds else None,
        )
        self._sessions[session.id] = session
        self._cond.notify_all()
        return _json({"ID": session.id})


def _denied_session(node: str) -> str:
    return (
        f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR_ID}' lacks permission "
        f"'session:write' on {_q(node)}"
    )


def _decode_failed(name: str, value: Any, go_type: str) -> str:
    json_type = _JSON_TYPES.get(type(value), "number")
    return (
        f"Request decode failed: json: cannot unmarshal {json_type} into Go struct field "
        f"Session.{name} of type {go_type}"
    )


def _go_duration_error(exc: ValueError, text: str) -> str:
    del exc  # parse_duration's message uses Python quoting; Go's uses %q
    return f"time: invalid duration {_q(text)}"


def _session_body(body: bytes) -> JSON:
    """The create body with lower-cased field names and LockDelay in seconds (FixupLockDelay)."""
    if not body.strip():
        return {}
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise _Reject(_text(400, f"Request decode failed: {exc}")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _Reject(
            _text(400, "Request decode failed: json: cannot unmarshal into structs.Session")
        )
    fields = {key.lower(): value for key, value in raw.items()}
    for name in ("name", "node", "behavior"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise _Reject(_text(400, _decode_failed(name.title(), fields[name], "string")))
    if "lockdelay" in fields:
        delay = fields["lockdelay"]
        if isinstance(delay, str):
            try:
                fields["lockdelay"] = max(parse_duration(delay), 0.0)
            except ValueError as exc:
                message = f"Request decode failed: {_go_duration_error(exc, delay)}"
                raise _Reject(_text(400, message)) from None
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            seconds = delay if delay < _LOCK_DELAY_MIN_THRESHOLD else delay / 1e9
            fields["lockdelay"] = max(float(seconds), 0.0)
        elif delay is None:
            fields["lockdelay"] = DEFAULT_LOCK_DELAY
        else:
            raise _Reject(_text(400, _decode_failed("LockDelay", delay, "time.Duration")))
    return fields


def _key_names(entries: list[_Entry], prefix: str, separator: str) -> list[str]:
    """Key names for ?keys; with a separator, everything past its first match is folded."""
    names: list[str] = []
    for entry in entries:
        name = entry.key
        if separator and (cut := name.find(separator, len(prefix))) >= 0:
            name = name[: cut + len(separator)]
        if not names or names[-1] != name:
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    """Serve a fake Consul until SIGTERM/SIGINT, printing its URL on one line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.consul",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: pick a free one)")
    parser.add_argument("--acl-token", default=None, help="turn ACLs on with this token")
    args = parser.parse_args(argv)
    return run_main(FakeConsul(acl_token=args.acl_token, port=args.port, host=args.host))


if __name__ == "__main__":
    sys.exit(main())
