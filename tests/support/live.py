"""The Noman app behind a real HTTP server in a thread (werkzeug's), for end-to-end tests.

Requests go over a socket as they would to gunicorn, while the test still reaches the
app's components (its reconciler, to run passes) in this process.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import make_server


class Live:
    """``with Live(app) as live: requests.post(f"{live.url}/hooks/...")``."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.http = requests.Session()
        self.http.trust_env = False
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Live:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.http.close()  # first: the server's connection threads end with the connections
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """POST ``path`` on the live server."""
        return self.http.post(f"{self.url}{path}", timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET ``path`` on the live server."""
        return self.http.get(f"{self.url}{path}", timeout=10, **kwargs)
