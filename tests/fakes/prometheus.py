"""A fake Prometheus query API for tests (standard library only).

The real Prometheus (Debian's package) is what the end-to-end analysis test
runs against; this fake gives the answers a real one will not produce on
demand: an error of each kind Prometheus answers with, no data, NaN, several
series, a query that takes too long (``hang``), a server that is gone. It
speaks ``GET`` and ``POST`` (form) ``/api/v1/query`` with Prometheus's
envelope (``{"status": "success", "data": {"resultType": ..., "result": ...}}``
or ``{"status": "error", "errorType": ..., "error": ...}``), as documented at
https://prometheus.io/docs/prometheus/latest/querying/api/.

Answers are scripted per query text (:meth:`FakePrometheus.answer`); a query
with no script answers an empty vector, as a real Prometheus does for a
series it has never seen. Every query received is recorded in ``queries``.

Run it by hand with ``python -m tests.fakes.prometheus [--port N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes._server import FakeHTTPServer, FakeServer, Hang, QuietHandler, run_main

__all__ = ["FakePrometheus", "Series", "main"]

#: One series of a vector answer: its labels and its value (NaN and infinities allowed).
Series = tuple[dict[str, str], float]


@dataclass(frozen=True)
class _Script:
    """How one query is answered."""

    kind: str  # "vector", "scalar" or "error"
    series: tuple[Series, ...] = ()
    value: float = 0.0
    status: int = 200
    error_type: str = ""
    error: str = ""


def _number(value: float) -> str:
    """A sample value as Prometheus writes it in JSON: a string, NaN and ±Inf spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


class _Handler(QuietHandler):
    server: FakeHTTPServer[FakePrometheus]

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length > 0 else b"")

    def _serve(self, body: bytes) -> None:
        status, payload, hang = self.server.fake._handle(self.command, self.path, body)
        if hang is not None:
            hang.wait()
            self.close_connection = True
            return
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakePrometheus(FakeServer):
    """An in-process fake of Prometheus's instant query endpoint on ``127.0.0.1``."""

    _handler_class = _Handler
    _thread_name = "fake-prometheus"

    def __init__(self, port: int = 0) -> None:
        super().__init__(host="127.0.0.1", port=port)
        self._scripts: dict[str, _Script] = {}
        #: Every query text received on /api/v1/query, in order (faulted ones included).
        self.queries: list[str] = []

    # ---- test-side scripting ---------------------------------------------------------------

    def answer(self, query: str, *series: Series | float) -> None:
        """Answer ``query`` with a vector of these series (a bare number: one unlabelled one).

        No series at all: an empty vector, which is how "no data" looks.
        """
        found = tuple(item if isinstance(item, tuple) else ({}, float(item)) for item in series)
        with self._lock:
            self._scripts[query] = _Script("vector", series=found)

    def answer_scalar(self, query: str, value: float) -> None:
        """Answer ``query`` with a scalar (``scalar(...)``, or a number literal)."""
        with self._lock:
            self._scripts[query] = _Script("scalar", value=value)

    def refuse(
        self, query: str, status: int = 400, error_type: str = "bad_data", error: str = ""
    ) -> None:
        """Answer ``query`` with Prometheus's error envelope (400 bad_data, 422, 503 timeout...)."""
        text = error or 'invalid parameter "query": 1:1: parse error: unexpected character'
        with self._lock:
            self._scripts[query] = _Script(
                "error", status=status, error_type=error_type, error=text
            )

    # ---- HTTP ------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any, Hang | None]:
        parts = urlsplit(raw_path)
        params = parse_qs(parts.query, keep_blank_values=True)
        if method == "POST":
            params.update(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
        with self._lock:
            if parts.path == "/api/v1/query":
                self.queries.append((params.get("query") or [""])[0])
            self.requests.append((method, parts.path, params, {}))
            fault = self._next_fault()
            if isinstance(fault, Hang):
                return 0, None, fault
            if fault is not None:
                envelope = {"status": "error", "errorType": "internal", "error": fault.body}
                return fault.status, envelope, None
            if parts.path != "/api/v1/query":
                return (
                    404,
                    {"status": "error", "errorType": "not_found", "error": "not found"},
                    None,
                )
            if method not in ("GET", "POST"):
                return 405, {"status": "error", "errorType": "bad_data", "error": "method"}, None
            query = (params.get("query") or [""])[0]
            if not query.strip():
                error = 'invalid parameter "query": 1:1: parse error: no expression found in input'
                return 400, {"status": "error", "errorType": "bad_data", "error": error}, None
            script = self._scripts.get(query, _Script("vector"))
        now = time.time()
        if script.kind == "error":
            envelope = {"status": "error", "errorType": script.error_type, "error": script.error}
            return script.status, envelope, None
        if script.kind == "scalar":
            data: Any = {"resultType": "scalar", "result": [now, _number(script.value)]}
        else:
            result = [
                {"metric": labels, "value": [now, _number(value)]}
                for labels, value in script.series
            ]
            data = {"resultType": "vector", "result": result}
        return 200, {"status": "success", "data": data}, None


def main(argv: list[str] | None = None) -> int:
    """Serve a fake Prometheus until SIGTERM/SIGINT, printing its URL on one line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.prometheus", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: pick a free one)")
    args = parser.parse_args(argv)
    return run_main(FakePrometheus(port=args.port))


if __name__ == "__main__":
    sys.exit(main())
