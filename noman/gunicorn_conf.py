"""The production gunicorn configuration: `gunicorn -c python:noman.gunicorn_conf`.

Environment: NOMAN_BIND (default 127.0.0.1:8000), NOMAN_WORKERS (default 2),
NOMAN_WORKER_TMP_DIR (default /dev/shm, so a read-only root filesystem works),
NOMAN_GUNICORN_LOG_LEVEL (default info).
"""

import os
import secrets
import shutil
import tempfile

bind = os.environ.get("NOMAN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("NOMAN_WORKERS", "2"))
# Threads let a worker answer health checks while another request waits on
# Consul or Nomad. Each worker also runs one reconciler thread; one of them
# (in one instance of the cluster) holds the leader lock and does the work.
worker_class = "gthread"
threads = 4
# Every Consul and Nomad call has its own few-second timeout, so a request
# never needs this long; it only catches a wedged worker.
timeout = 30
graceful_timeout = 20
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
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("NOMAN_GUNICORN_LOG_LEVEL", "info")
# Every line gunicorn writes goes through RedactingFilter (hook secrets).
logger_class = "noman.logs.GunicornLogger"
proc_name = "noman"
limit_request_line = 4094
limit_request_fields = 100
# gunicorn 25.1+ opens a control socket under $HOME by default: pointless in
# a container and impossible on a read-only root filesystem.
control_socket_disable = True


def when_ready(server):  # type: ignore[no-untyped-def]
    """Once listening: the start log line, the metrics listener, the dev banner."""
    from noman.serving import when_ready as ready

    ready(server)


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
    """Remove the metrics directory this master created."""
    if _metrics_dir.startswith(
        os.path.join(worker_tmp_dir or tempfile.gettempdir(), "noman-metrics-")
    ):
        shutil.rmtree(_metrics_dir, ignore_errors=True)
