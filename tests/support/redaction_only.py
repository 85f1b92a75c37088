"""The shipped gunicorn configuration with every line built from the raw request (layer 2 alone)."""

from noman import routes
from noman.server import worker
from noman.server.config import *  # noqa: F403
from tests.support import log_layers

logger_class = "tests.support.log_layers.RawLogger"
worker._WorkerMixin.handle_error = log_layers.leaky_handle_error  # type: ignore[method-assign]
routes.current_route = log_layers.raw_route


def pre_request(worker, req):  # type: ignore[no-untyped-def]
    """gunicorn's default: the raw method and path at debug level."""
    worker.log.debug("%s %s", req.method, req.path)
