"""The real Noman app, except that one tag makes the deploy crash unexpectedly.

Used by the gunicorn log test to prove that even an unexpected exception,
whose text carries the request path and headers, leaks no secret to logs.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

import noman
from noman.wiring import components

CRASH_TAG = "release-29991231235959"


class _CrashOnTag:
    def __init__(self, real: Any) -> None:
        self.real = real

    def deploy(self, service: Any, release: Any, request_id: Any = None) -> Any:
        if release.tag == CRASH_TAG:
            raise RuntimeError(
                f"boom in {request.path} auth={request.headers.get('Authorization')}"
            )
        return self.real(service, release, request_id)


def create_app() -> Flask:
    app = noman.create_app()
    deployer = components(app).deployer
    deployer.deploy = _CrashOnTag(deployer.deploy).deploy  # type: ignore[method-assign]
    return app
