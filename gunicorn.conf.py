"""gunicorn reads ./gunicorn.conf.py by default: plain `gunicorn 'noman:create_app()'`
from this directory gets the production configuration too."""

from noman.server.config import *  # noqa: F403
