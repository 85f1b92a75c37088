"""Noman: turns "a new container image was pushed" into "the cluster is running it"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_app"]

if TYPE_CHECKING:
    from noman.app import create_app


def __getattr__(name: str) -> Any:
    # Lazy, so that `gunicorn -c python:noman.server.config` can prepare the
    # environment (the metrics directory) before the app's imports run.
    if name == "create_app":
        from noman.app import create_app

        return create_app
    raise AttributeError(f"module 'noman' has no attribute {name!r}")
