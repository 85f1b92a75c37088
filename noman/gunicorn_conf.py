"""The production gunicorn configuration: `gunicorn -c python:noman.gunicorn_conf`.

Environment: NOMAN_BIND (default 127.0.0.1:8000), NOMAN_WORKERS (default 2),
NOMAN_WORKER_TMP_DIR (default /dev/shm, so a read-only root filesystem works).
"""

import os

bind = os.environ.get("NOMAN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("NOMAN_WORKERS", "2"))
# Threads let a worker answer health checks while another request waits on
# Consul or Nomad; background deployment watches run in the workers too.
worker_class = "gthread"
threads = 4
# Every Consul and Nomad call has its own few-second timeout, so a request
# never needs this long; it only catches a wedged worker.
timeout = 30
graceful_timeout = 20
keepalive = 5
_tmp = os.environ.get("NOMAN_WORKER_TMP_DIR", "/dev/shm")  # noqa: S108 (a tmpfs, by design)
worker_tmp_dir = _tmp if os.path.isdir(_tmp) else None
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


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Give outcome reports in flight a few seconds to be sent before a worker goes."""
    app = getattr(worker, "wsgi", None)
    reporter = getattr(app, "extensions", {}).get("noman.reporter")
    if reporter is not None:
        reporter.wait(5)
