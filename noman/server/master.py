"""What the gunicorn master does once it listens: say what it serves, start the extras.

Called from ``noman.server.config``'s ``when_ready`` hook, so it runs once per
server (not once per worker) and only after the listening socket is bound:
the start log line, the internal metrics listener (``server.metrics_bind``)
and, for ``noman serve --dev``, the banner with ready-to-paste commands.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from noman import __version__, logs, metrics
from noman.config import Settings, load
from noman.errors import ConfigError

log = logging.getLogger("noman.start")
# Set by `noman serve --dev`: a file whose text is printed once serving.
DEV_BANNER_ENV = "NOMAN_DEV_BANNER"


def when_ready(server: Any) -> None:
    """Log one start line, start the metrics listener, print the dev banner."""
    try:
        settings = load()
    except ConfigError:
        return  # plain gunicorn with a bad config: each worker reports it
    logs.configure(settings.log_level)
    if settings.metrics_bind:
        try:
            metrics.serve(settings.metrics_bind)
        except OSError as exc:
            # Before any worker exists: stop here rather than serve without metrics.
            log.error("cannot listen on server.metrics_bind %s: %s", settings.metrics_bind, exc)
            raise SystemExit(1) from None
    log.info("noman started", extra={"fields": start_fields(settings, server.cfg)})
    banner = os.environ.get(DEV_BANNER_ENV)
    if banner:
        print(Path(banner).read_text(encoding="utf-8"), flush=True)


def start_fields(settings: Settings, cfg: Any) -> dict[str, Any]:
    """What this server loaded and how it serves; service names, never secrets."""
    kind = cfg.worker_class_str
    if kind == "noman.server.worker.NomanWorker":
        kind = "gevent"  # gunicorn's gevent worker with Noman's read deadlines
    model = f"gunicorn {kind}, {cfg.workers} worker(s)"
    if kind == "gthread":
        model += f" x {getattr(cfg, 'threads', 1)} threads"
    elif kind == "gevent":
        model += f" x {getattr(cfg, 'worker_connections', 1000)} connections"
    return {
        "version": __version__,
        "config": settings.source,
        "services": len(settings.services),
        "service_names": [service.name for service in settings.services],
        "store": settings.store_backend,
        # None where unused: no Consul with the file store, no Nomad without rolling services.
        "consul": settings.consul.address if settings.store_backend == "consul" else None,
        "store_path": settings.store_path if settings.store_backend == "file" else None,
        "nomad": settings.nomad.address if settings.uses_nomad else None,
        "bind": list(cfg.bind),
        "metrics_bind": settings.metrics_bind,
        "serving": model,
        "reports": "logged, not sent (dry run)" if settings.notify.dry_run else "sent",
    }


def unavailable(address: str) -> str | None:
    """Why ``address`` (host:port) cannot be listened on, or None if it can.

    A probe bind with SO_REUSEADDR, as gunicorn binds: it fails only when
    something already listens there (or the address is not this machine's).
    Other forms (unix:...) are left to gunicorn.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (gunicorn's meaning of ":port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
