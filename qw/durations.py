"""Durations as users write them: `90`, `90s`, `30m`, `2h` (also `1.5h`, `1h30m`)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhd]?\s*)+$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text) -> float:
    """Seconds in `text`; a bare number is seconds. Raises ValueError on anything else.

    Accepts an int or float as well (TOML may give either), but not a bool.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"not a duration: {text!r} (negative)")
        return float(text)
    if not isinstance(text, str) or not _WHOLE.match(text.lower()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 90s, 30m, 2h)")
    parts = _PART.findall(text.lower())
    if len(parts) > 1 and any(unit == "" for _, unit in parts):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 90s, 30m, 2h)")
    return float(sum(float(n) * _UNIT[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """A short human form: `45s`, `12m`, `1h05m`, `1.2s` under ten seconds."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m"
