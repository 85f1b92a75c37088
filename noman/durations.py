"""Durations written as text: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1.5h"``, ``"2d"``.

One parser for every setting that takes a duration; each caller says which units it
accepts (deploy windows and polling count in days and weeks, a canary's timings in
milliseconds) and words its own message for a value that is not one.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: Seconds in each unit a duration may use.
UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
#: Windows, approvals and poll intervals: weeks down to seconds.
CALENDAR = ("w", "d", "h", "m", "s")
#: A rollout stage's timings (release phase, canary bake): hours down to milliseconds.
STAGE = ("h", "m", "s", "ms")


def parse_duration(text: str, units: tuple[str, ...] = CALENDAR) -> float:
    """Seconds in ``text``: numbers (decimals allowed), each followed by one of ``units``.

    Raises:
        ValueError: when ``text`` is not such a duration (it may be zero).
    """
    whole, part = _patterns(units)
    if not whole.fullmatch(text):
        raise ValueError(f'{text!r} is not a duration like "90m", "1h30m" or "2d"')
    return sum(float(n) * UNITS[unit] for n, unit in part.findall(text))


@lru_cache(maxsize=4)
def _patterns(units: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The whole-text and the one-part patterns of durations in ``units``."""
    # Longest first, so that "ms" is not read as "m" followed by junk.
    names = "|".join(sorted(units, key=len, reverse=True))
    part = rf"(\d+(?:\.\d+)?)({names})"
    return re.compile(rf"(?:\d+(?:\.\d+)?(?:{names}))+"), re.compile(part)
