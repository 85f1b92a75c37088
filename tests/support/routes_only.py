"""The shipped gunicorn configuration with RedactingFilter switched off (layer 1 alone)."""

from noman.server.config import *  # noqa: F403
from tests.support.log_layers import disable_redaction

disable_redaction()
