"""The operator status page at ``/ui``: off unless ``[ui]`` names an admin token or
``[[operators]]`` exist.

Server-rendered pages over the same Deployer operations as the HTTP API
(status, rollback, freeze), behind a login with a separate admin token, a
signed session cookie and CSRF tokens. When the page is off nothing is
registered, so every ``/ui`` path is the usual JSON 404.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta

from flask import Flask

from noman.config import Settings, UISettings

# Set by noman.server.config in the master process, so that every worker of
# one start signs with the same random key when ui.session_key_env is unset.
START_KEY_ENV = "NOMAN_UI_START_KEY"
COOKIE_NAME = "noman_ui"

log = logging.getLogger("noman.ui")


def init_app(app: Flask, settings: Settings) -> None:
    """Register the status page on ``app`` when an admin token or an operator is configured."""
    if not settings.page_enabled:
        return
    from noman.ui import operate  # noqa: F401  (its routes join views.bp)
    from noman.ui.session import UISessionInterface
    from noman.ui.views import bp

    app.secret_key = session_key(settings.ui)
    app.session_interface = UISessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        # Sent to the page only: hook requests never carry it.
        SESSION_COOKIE_PATH="/ui",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.ui.session_hours),
        # No fresh cookie on every poll; the login time in the session bounds it.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.register_blueprint(bp)


def session_key(ui: UISettings) -> bytes:
    """The key that signs session cookies: configured, else one made at this start."""
    if ui.session_key is not None:
        return ui.session_key
    log.warning(
        "ui: no ui.session_key_env; session cookies are signed with a random key made at "
        "this start, so a restart logs everyone out"
    )
    shared = os.environ.get(START_KEY_ENV, "")
    if len(shared) >= 32:
        return shared.encode("utf-8")
    # Outside the shipped gunicorn configuration (tests, plain gunicorn):
    # a key per process; several workers would then not share logins.
    return secrets.token_bytes(32)
