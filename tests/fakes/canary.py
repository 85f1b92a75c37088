"""A stand-in for a canary allocation's HTTP server (standard library only).

It is what the fake Nomad's allocations point at (``FakeNomad.set_ports``): the
HTTP checks of a canary analysis GET it, and a real Prometheus scrapes its
``/metrics`` (the text exposition format, version 0.0.4). The test sets the
status every other path answers with (:meth:`CanaryApp.set_status`) and the
gauges ``/metrics`` exposes (:meth:`CanaryApp.set_gauge`).

Run it by hand with ``python -m tests.fakes.canary [--port N]``.
"""

from __future__ import annotations

import argparse
import sys

from tests.fakes._server import FakeHTTPServer, FakeServer, QuietHandler, run_main

__all__ = ["CanaryApp", "main"]


class _Handler(QuietHandler):
    server: FakeHTTPServer[CanaryApp]

    def do_GET(self) -> None:
        status, content_type, body = self.server.fake._handle(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CanaryApp(FakeServer):
    """An application's HTTP server: one status for every path, and ``/metrics``."""

    _handler_class = _Handler
    _thread_name = "canary-app"

    def __init__(self, port: int = 0) -> None:
        super().__init__(host="127.0.0.1", port=port)
        self._status = 200
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: The paths GET asked for, in order (``/metrics`` included).
        self.paths: list[str] = []

    def set_status(self, status: int) -> None:
        """Answer every path but ``/metrics`` with ``status`` from now on."""
        with self._lock:
            self._status = status

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Expose gauge ``name{labels} value`` on ``/metrics``."""
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value

    def _handle(self, path: str) -> tuple[int, str, bytes]:
        with self._lock:
            self.paths.append(path)
            if path.split("?", 1)[0] == "/metrics":
                return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
            status = self._status
        return status, "text/plain; charset=utf-8", f"status {status}\n".encode()

    def _metrics(self) -> bytes:
        lines: list[str] = []
        for name in sorted({name for name, _ in self._gauges}):
            lines.append(f"# TYPE {name} gauge")
            for (gauge, labels), value in sorted(self._gauges.items()):
                if gauge == name:
                    text = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value!r}" if text else f"{name} {value!r}")
        return ("\n".join(lines) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    """Serve a canary stand-in until SIGTERM/SIGINT, printing its URL on one line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.canary", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: pick a free one)")
    args = parser.parse_args(argv)
    return run_main(CanaryApp(port=args.port))


if __name__ == "__main__":
    sys.exit(main())
