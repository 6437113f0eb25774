"""Real-time pacing shared by the synthetic and replay sources: behave like a live sensor.

A live camera produces frame ``k`` at ``t0 + k / fps`` whether anyone reads it or not. A reader
that is early waits; a reader that is late gets the newest frame and the ones in between are lost
(the index jumps, and the caller counts the gap), exactly like a V4L2 queue of depth one.
"""

from __future__ import annotations

import math

from hw.clock import Clock


class FramePacer:
    """Schedules frame slots at a fixed rate on a :class:`~hw.clock.Clock`."""

    def __init__(self, clock: Clock, fps: float) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive finite number, got {fps!r}")
        self._clock = clock
        self._period = 1.0 / fps
        self._t0: float | None = None

    def reset(self) -> None:
        """Forget the schedule: the next :meth:`wait` starts a new one at once."""
        self._t0 = None

    def wait(self, next_index: int) -> int:
        """Block until slot ``next_index`` is due; return the newest due slot (``>= next_index``).

        The first call anchors the schedule so that ``next_index`` is due now.
        """
        now = self._clock.monotonic()
        if self._t0 is None:
            self._t0 = now - next_index * self._period
            return next_index
        due = self._t0 + next_index * self._period
        if now < due:
            self._clock.sleep(due - now)
            return next_index
        # Late: a live sensor has moved on. A small epsilon keeps float noise from skipping a slot.
        newest = math.floor((now - self._t0) / self._period + 1e-9)
        return max(next_index, newest)
