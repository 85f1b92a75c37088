"""The application factory: settings -> store, Nomad, deployer, reporter -> Flask app.

Everything the views need hangs off ``app.extensions``, wired here and
nowhere else; nothing is created at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from noman import edge, logs
from noman.config import Settings, load
from noman.deploy import Deployer
from noman.notify import Reporter
from noman.ratelimit import FailureLimiter
from noman.stores import Store


class NomanFlask(Flask):
    """Flask, minus the request path in its own exception log line."""

    def log_exception(self, exc_info: Any) -> None:
        """Log unexpected errors without the path (it may carry a hook secret)."""
        self.logger.error("Exception on a %s request", request.method, exc_info=exc_info)


def create_app(config: Settings | str | Path | None = None, *, store: Store | None = None) -> Flask:
    """Build the Noman app from ``config``: Settings, a TOML path, or the environment."""
    settings = config if isinstance(config, Settings) else load(config)
    logs.configure(settings.log_level)
    app = NomanFlask("noman")
    # A redirect would copy a hook path, secret included, into Location.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = store if store is not None else build_store(settings)
    nomad = build_nomad(settings)
    app.extensions["noman.settings"] = settings
    app.extensions["noman.store"] = store
    app.extensions["noman.nomad"] = nomad
    app.extensions["noman.deployer"] = build_deployer(settings, store, nomad)
    app.extensions["noman.reporter"] = Reporter(settings, nomad)
    app.extensions["noman.limiter"] = (
        FailureLimiter(settings.auth_failures_per_minute)
        if settings.auth_failures_per_minute
        else None
    )
    if settings.proxy_hops:
        # The client address comes from the trusted proxies' X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops)  # type: ignore[method-assign]

    from noman.web import bp, register_error_handlers

    app.register_blueprint(bp)
    register_error_handlers(app)
    edge.install(app)
    return app


def build_store(settings: Settings) -> Store:
    """The store the settings ask for."""
    if settings.store_backend == "file":
        from noman.stores.file import FileStore

        return FileStore(settings.store_path)
    from noman.stores.consul import ConsulStore

    return ConsulStore(settings.consul)


def build_nomad(settings: Settings) -> Any:
    """A Nomad client when any service rolls through Nomad, else None."""
    if not settings.uses_nomad:
        return None
    from noman.rollouts.nomad import NomadRollouts

    return NomadRollouts(settings.nomad)


def build_deployer(settings: Settings, store: Store, nomad: Any) -> Deployer:
    """The deploy use case wired to its store and orchestrator."""
    return Deployer(
        store,
        nomad,
        cas_retries=settings.consul.cas_retries,
        register_retries=settings.nomad.register_retries,
    )
