"""The application factory: settings -> wiring -> blueprint.

The components (store, Nomad, deployer, reporter, reconciler) are built by
``wiring.build`` and stored once in ``app.extensions["noman"]``; nothing is
created at import time. The reconciler's thread is started by the server
(gunicorn's ``post_worker_init``, see ``noman.server.config``), not here, so an
app built for a test or a script never leaves a thread behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from noman import logs, ordering, routes
from noman.config import Settings, load
from noman.stores import Store
from noman.wiring import EXTENSION, build, build_limiter


class NomanFlask(Flask):
    """Flask, minus the request path in its own exception log line."""

    def log_exception(self, exc_info: Any) -> None:
        """Log unexpected errors without the path (it may carry a hook secret)."""
        self.logger.error("Exception on a %s request", request.method, exc_info=exc_info)


def create_app(config: Settings | str | Path | None = None, *, store: Store | None = None) -> Flask:
    """Build the Noman app from ``config``: Settings, a TOML path, or the environment."""
    settings = config if isinstance(config, Settings) else load(config)
    logs.configure(settings.log_level)
    ordering.warn_unordered(settings.services)
    app = NomanFlask("noman")
    # A redirect would copy a hook path, secret included, into Location.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The failure limiter is an HTTP concern only: the app's components carry it.
    app.extensions[EXTENSION] = build(settings, store, limiter=build_limiter(settings))
    if settings.proxy_hops:
        # The client address comes from the trusted proxies' X-Forwarded-For,
        # and the scheme from their X-Forwarded-Proto (the UI's Secure cookie).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops
        )

    from noman.web import bp, register_error_handlers

    app.register_blueprint(bp)
    register_error_handlers(app)
    if settings.operators:
        from noman.api import bp as api_bp

        app.register_blueprint(api_bp)
    from noman import ui

    ui.init_app(app, settings)
    routes.install(app)
    return app
