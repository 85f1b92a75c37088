"""The production gunicorn configuration: `gunicorn -c python:noman.server.config`.

Environment: NOMAN_BIND (default 127.0.0.1:8000), NOMAN_WORKERS (default 2),
NOMAN_WORKER_TMP_DIR (default /dev/shm, so a read-only root filesystem works),
NOMAN_GUNICORN_LOG_LEVEL (default info),
NOMAN_WORKER_CONNECTIONS (default 1000 per worker), NOMAN_READ_TIMEOUT (default
10 s for one request's headers and body). ``server.tls_cert`` and
``server.tls_key`` in noman.toml turn on HTTPS (TLS 1.2+); SIGHUP reloads them.
"""

import os
import secrets
import shutil
import sys
import tempfile

from noman.errors import ConfigError
from noman.server.environment import Number, positive
from noman.server.worker import DEFAULT_READ_TIMEOUT


def _checked(name: str, default: Number) -> Number:
    """``$name`` as a positive number; a bad value is one line and exit 2, as in noman.toml."""
    try:
        return positive(name, default)
    except ConfigError as exc:
        print(f"noman: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


bind = os.environ.get("NOMAN_BIND", "127.0.0.1:8000")
workers = _checked("NOMAN_WORKERS", 2)
# gevent: each connection is a greenlet, so clients that trickle their
# headers or body (slowloris) never hold the few threads that real webhooks
# need; noman.server.worker adds a read deadline per request and JSON error answers.
# Consul, Nomad (requests) and background threads are cooperative under the
# worker's monkey-patching. See README "Serving model".
worker_class = "noman.server.worker.NomanWorker"
worker_connections = _checked("NOMAN_WORKER_CONNECTIONS", 1000)
# Read by each worker for every connection: checked here, once, before any worker starts.
_checked("NOMAN_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)
# Every Consul and Nomad call has its own few-second timeout, so a request
# never needs this long; it only catches a wedged worker.
timeout = 30
graceful_timeout = 20
# Also the gevent worker's deadline for a request's headers (first request included).
keepalive = 5
_tmp = os.environ.get("NOMAN_WORKER_TMP_DIR", "/dev/shm")  # noqa: S108 (a tmpfs, by design)
worker_tmp_dir = _tmp if os.path.isdir(_tmp) else None

# Prometheus multiprocess mode: each worker writes its metrics to files here
# and /metrics adds them up. Set before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="noman-metrics-", dir=worker_tmp_dir
    )
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
# The status page's session key when ui.session_key_env is unset: made once
# here in the master, so every worker of this start shares it (see noman.ui).
os.environ.setdefault("NOMAN_UI_START_KEY", secrets.token_urlsafe(32))
# This instance's private state (the failed-secret counts), mode 0700, shared
# by its workers through the environment; never a guessable name in /tmp.
if not os.environ.get("NOMAN_RUNTIME_DIR"):
    os.environ["NOMAN_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="noman-run-", dir=worker_tmp_dir)
_runtime_dir = os.environ["NOMAN_RUNTIME_DIR"]
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("NOMAN_GUNICORN_LOG_LEVEL", "info")
# Every line gunicorn writes goes through RedactingFilter (hook secrets).
logger_class = "noman.logs.GunicornLogger"
proc_name = "noman"
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


def _tls_files() -> tuple[str | None, str | None]:
    """server.tls_cert and server.tls_key from Noman's config (read again on SIGHUP)."""
    from noman.config import load

    try:
        settings = load()
    except Exception:  # the app reports config errors, readably, when it loads
        return None, None
    return settings.tls_cert, settings.tls_key


certfile, keyfile = _tls_files()


def ssl_context(conf, default_ssl_context_factory):  # type: ignore[no-untyped-def]
    """gunicorn's context (certificate read now: every new worker, so SIGHUP renews), TLS 1.2+."""
    import ssl

    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# gunicorn 25.1+ opens a control socket under $HOME by default: pointless in
# a container and impossible on a read-only root filesystem.
control_socket_disable = True


def when_ready(server):  # type: ignore[no-untyped-def]
    """Once listening: the start log line, the metrics listener, the dev banner."""
    from noman.server.master import when_ready as ready

    ready(server)


def pre_request(worker, req):  # type: ignore[no-untyped-def]
    """Nothing: gunicorn's default logs the raw request path here (it may hold a secret)."""


def _components(worker):  # type: ignore[no-untyped-def]
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("noman")


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Start the worker's reconciler thread (it leads only while it holds the lock)."""
    parts = _components(worker)  # type: ignore[no-untyped-call]
    if parts is not None:
        parts.reconciler.start()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Stop the reconciler (giving up the lock) and let refusal reports finish."""
    parts = _components(worker)  # type: ignore[no-untyped-call]
    if parts is not None:
        parts.reconciler.stop(timeout=8)
        parts.reporter.wait(5)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Drop a dead worker's live gauges from the metrics (counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics and runtime directories this master created."""
    base = worker_tmp_dir or tempfile.gettempdir()
    if _metrics_dir.startswith(os.path.join(base, "noman-metrics-")):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    if _runtime_dir.startswith(os.path.join(base, "noman-run-")):
        shutil.rmtree(_runtime_dir, ignore_errors=True)
