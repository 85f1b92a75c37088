"""Noman: turns "a new container image was pushed" into "the cluster is running it"."""

from noman.app import create_app

__version__ = "0.1.0"
__all__ = ["__version__", "create_app"]
