"""Each unit's recent health, downsampled at ingest for the fleet page's sparklines.

Every stored health event adds to one row of ``health_history`` (schema v4): the unit's
:data:`BUCKET_S`-second bucket of the event's own time (``ts``; the time it was received when
the unit sent none) holds how many health events fell in it, the sum of their fps (the
sparkline shows the mean), the deepest outbox and the highest temperature. So the fleet page
reads one small row per unit and bucket of the last hour in one query, never the events, and the
table stays small: rows older than :data:`KEEP_S` are deleted as new ones come in.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

BUCKET_S: Final = 180
"""Width of one history bucket: 20 points per hour."""
WINDOW_S: Final = 3600
"""What the fleet page draws: the last hour."""
KEEP_S: Final = 86400
"""Rows older than this are deleted."""
POINTS: Final = WINDOW_S // BUCKET_S

_ADD: Final = """
INSERT INTO health_history (bucket, device, n, fps_sum, outbox, temp)
VALUES (?, ?, 1, ?, ?, ?)
ON CONFLICT (bucket, device) DO UPDATE SET
    n = n + 1,
    fps_sum = CASE WHEN excluded.fps_sum IS NULL THEN fps_sum
                   ELSE COALESCE(fps_sum, 0) + excluded.fps_sum END,
    outbox = CASE WHEN excluded.outbox IS NULL THEN outbox
                  WHEN outbox IS NULL THEN excluded.outbox ELSE MAX(outbox, excluded.outbox) END,
    temp = CASE WHEN excluded.temp IS NULL THEN temp
                WHEN temp IS NULL THEN excluded.temp ELSE MAX(temp, excluded.temp) END
"""

SERIES_SQL: Final = (
    "SELECT device, bucket, fps_sum / n, outbox, temp FROM health_history WHERE bucket >= ?"
)


def bucket_of(seconds: float) -> int:
    return int(seconds // BUCKET_S)


def _number(value: Any) -> float | None:
    """A finite number, else None (a unit's health is verified, not necessarily sane)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def record(
    conn: sqlite3.Connection,
    device: str,
    ts_ms: int | None,
    received: float,
    body: Mapping[str, Any],
) -> None:
    """Add one health body to its bucket (inside the caller's transaction)."""
    at = ts_ms / 1000 if ts_ms is not None else received
    outbox = body.get("outbox")
    depth = outbox.get("depth") if isinstance(outbox, Mapping) else None
    temp = body.get("temp_c", body.get("cpu_temp_c"))
    conn.execute(
        _ADD,
        (
            bucket_of(at),
            device,
            _number(body.get("fps")),
            depth if type(depth) is int and 0 <= depth < 2**63 else None,
            _number(temp),
        ),
    )


def prune(conn: sqlite3.Connection, now: float) -> None:
    """Delete the rows older than :data:`KEEP_S` (a range on the primary key: cheap)."""
    conn.execute("DELETE FROM health_history WHERE bucket < ?", (bucket_of(now - KEEP_S),))


@dataclass(frozen=True)
class Series:
    """One unit's last hour, oldest first, one value per bucket (None: no health in it)."""

    fps: tuple[float | None, ...]
    outbox: tuple[float | None, ...]
    temp: tuple[float | None, ...]


def first_bucket(now: float) -> int:
    """The oldest bucket the fleet page draws (the current one is the newest)."""
    return bucket_of(now) - POINTS + 1


def series(rows: Iterable[tuple[Any, ...]], now: float) -> dict[str, Series]:
    """Rows of :data:`SERIES_SQL` (run with :func:`first_bucket`) -> device -> its series."""
    first = first_bucket(now)
    table: dict[str, tuple[list[float | None], list[float | None], list[float | None]]] = {}
    for device, bucket, fps, outbox, temp in rows:
        i = bucket - first
        if not 0 <= i < POINTS:
            continue  # a unit whose clock runs ahead (or rows of another query)
        columns = table.get(device)
        if columns is None:
            columns = table[device] = ([None] * POINTS, [None] * POINTS, [None] * POINTS)
        columns[0][i] = fps
        columns[1][i] = outbox
        columns[2][i] = temp
    return {d: Series(tuple(f), tuple(o), tuple(t)) for d, (f, o, t) in table.items()}
