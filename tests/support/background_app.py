"""The real Noman app plus a background thread like a reconciler's: Consul blocking queries.

Used to show that under gunicorn's gevent worker (monkey-patched threading
and sockets) such a thread runs, sees writes, and never blocks requests.
"""

from __future__ import annotations

import os
import threading

import requests
from flask import Flask

import noman
from noman.wiring import components


def create_app() -> Flask:
    app = noman.create_app()
    consul = components(app).settings.consul.address
    seen = os.environ["NOMAN_TEST_SEEN"]

    def follow() -> None:
        index = 0
        while True:
            try:
                answer = requests.get(
                    f"{consul}/v1/kv/web/IMAGE_TAG",
                    params={"index": index, "wait": "30s"},
                    timeout=40,
                )
            except requests.RequestException:
                return  # the fake Consul went away: the test is over
            index = int(answer.headers.get("X-Consul-Index", index))
            with open(seen, "a") as out:
                out.write(f"{index} {answer.status_code}\n")

    threading.Thread(target=follow, name="follower", daemon=True).start()
    return app
