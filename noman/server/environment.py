"""The server's numeric ``NOMAN_*`` variables, each parsed by one helper.

A bad value is one line naming the variable and what it holds, never a
``ValueError`` traceback from deep inside gunicorn's configuration loading,
and never a silent fallback to the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TypeVar

from noman.errors import ConfigError

Number = TypeVar("Number", int, float)


def positive(name: str, default: Number, environ: Mapping[str, str] | None = None) -> Number:
    """``$name`` as a number above 0 of ``default``'s type (int or float); ``default`` if unset.

    Raises:
        ConfigError: the variable is set to anything else (empty included).
    """
    env = os.environ if environ is None else environ
    text = env.get(name)
    if text is None:
        return default
    kind = type(default)
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not (value > 0 and math.isfinite(value)):
        wanted = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{name} is {text[:40]!r}; it must be {wanted} above 0")
    return value
