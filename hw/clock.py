"""The clock edge: wall time, monotonic time and sleep, real (:class:`SystemClock`) or fake.

Camera backends pace frames and :class:`~hw.camera.reconnect.ReconnectingCamera` waits between
reopen attempts through a :class:`Clock`, so tests drive time with :class:`FakeClock` instead of
sleeping. Code that only reads the wall time takes a ``Callable[[], float]``: pass
``clock.time`` of either kind (one fake clock for every test).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Where a camera reads the time and waits."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for ``Frame.ts``)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for pacing, ``Frame.mono`` and backoff)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (non-positive values return at once)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Block for ``seconds`` or until ``event`` is set; return whether it is set."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic`, :func:`time.sleep`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told: ``sleep`` advances it instead of blocking.

    Every sleep is recorded in :attr:`sleeps`, so tests can assert a backoff sequence and that
    nothing busy-loops (a loop that never sleeps never advances the clock).
    """

    def __init__(self, start: float = 1_000.0, epoch: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._offset = epoch - start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self._mono + self._offset

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self._mono += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Like :meth:`sleep` (recorded, time advances) unless ``event`` is already set."""
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass without recording a sleep (time spent elsewhere)."""
        self._mono += seconds

    def set_time(self, wall: float) -> None:
        """Step the wall clock to ``wall``, forward or back, as NTP does; monotonic time stays."""
        self._offset = wall - self._mono


SYSTEM_CLOCK = SystemClock()
