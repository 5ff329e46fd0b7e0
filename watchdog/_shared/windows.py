"""The windows a shared budget lasts for: which one a moment falls in, and when it ends.

A window of ``<n>h`` or ``<n>d`` counts from midnight of 1 January 1970 in the budget's
time zone, so a day's budget starts again at local midnight; ``month`` is the calendar
month there. A window's id names its start, so every worker, whatever its clock says within
the window, names the same budget.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["window_of"]

_SPAN = re.compile(r"([0-9]+)([hd])")
_EPOCH = datetime(1970, 1, 1)  # a wall-clock origin, read in the budget's zone


def window_of(window: str, time_zone: str | None, now: datetime) -> tuple[str, float]:
    """The id of the window ``now`` falls in, and the seconds left until it ends."""
    zone = ZoneInfo(time_zone) if time_zone else UTC
    local = now.astimezone(zone)
    if window == "month":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        after = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        end = datetime(after.year, after.month, 1, tzinfo=zone)
        return f"{start:%Y-%m}", (end - local).total_seconds()
    found = _SPAN.fullmatch(window)
    if found is None:
        msg = f"not a window: {window!r}"
        raise ValueError(msg)
    length = timedelta(hours=int(found[1])) if found[2] == "h" else timedelta(days=int(found[1]))
    wall = local.replace(tzinfo=None)
    start = _EPOCH + length * ((wall - _EPOCH) // length)
    name = f"{start:%Y-%m-%d}" if found[2] == "d" else f"{start:%Y-%m-%dT%H}"
    end = (start + length).replace(tzinfo=zone)
    return f"{name}/{window}", (end - local).total_seconds()
