"""The Camera protocol every backend implements, its statistics, and a shared lifecycle base.

Contract of :meth:`Camera.read` (the one method the pipeline calls):

- blocks until the next frame and returns it as an RGB :class:`~hw.frame.Frame`;
- ``Frame.index`` counts frame *slots* of the source: a frame that was lost (dropped because the
  reader was late, corrupt, or missed) consumes its index, so gaps in ``index`` show losses;
- raises :class:`~contract.errors.FrameError` for one corrupt frame (counted in ``stats.corrupt``
  and ``stats.lost``; the camera stays usable, the next ``read`` continues);
- raises :class:`~contract.errors.CameraUnavailableError` when the device cannot be opened or has
  gone; the camera is then dead and must be closed and a new one opened
  (:class:`~hw.camera.reconnect.ReconnectingCamera` does that with backoff);
- raises :class:`~contract.errors.EndOfStream` when a finite, non-looping source (replay) has no
  more frames; it keeps raising it on every later call. We chose a dedicated exception over
  ``StopIteration`` because ``StopIteration`` escaping into a generator becomes a ``RuntimeError``
  (PEP 479) and is invisible to ``except CameraError``.

Lifetimes: a camera is a context manager; ``__enter__`` calls :meth:`Camera.start` (all I/O happens
there, constructors only store) and ``__exit__`` calls :meth:`Camera.close`. Both are idempotent.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar

from contract.errors import CameraError, CameraUnavailableError, EndOfStream, FrameError
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame, Pixels

logger = logging.getLogger(__name__)

_C = TypeVar("_C", bound="Camera")
_B = TypeVar("_B", bound="BaseCamera")


@dataclass(frozen=True)
class CameraStats:
    """A snapshot of a camera's counters (for health reports).

    ``lost`` counts every frame slot that was not delivered for any reason (dropped because the
    reader was late, corrupt, missed while the device was away); ``corrupt`` is the part of
    ``lost`` that raised FrameError (undecodable, or a capture that failed without the device
    going away). ``reconnects`` counts successful reopenings (only a
    :class:`~hw.camera.reconnect.ReconnectingCamera` reopens).
    """

    delivered: int = 0
    lost: int = 0
    corrupt: int = 0
    reconnects: int = 0


class Camera(Protocol):
    """A source of RGB frames. See the module docstring for the exact contract of ``read``."""

    @property
    def name(self) -> str:
        """A short human-readable description of the source, e.g. ``v4l2:/dev/video0``."""
        ...

    @property
    def fps(self) -> float | None:
        """The nominal frame rate once started, or ``None`` when unknown / as fast as possible."""
        ...

    @property
    def stats(self) -> CameraStats:
        """Counters since construction."""
        ...

    def start(self) -> None:
        """Open the device; raises CameraUnavailableError if it cannot. Idempotent."""
        ...

    def read(self) -> Frame:
        """Block for the next frame (see the module docstring for the errors it raises)."""
        ...

    def close(self) -> None:
        """Release the device. Idempotent; never raises for an already-broken device."""
        ...

    def __enter__(self: _C) -> _C: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class FrameCounters:
    """Mutable counters behind :attr:`Camera.stats` (one per camera, single reader thread)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.lost = 0
        self.corrupt = 0
        self.reconnects = 0

    def snapshot(self) -> CameraStats:
        return CameraStats(self.delivered, self.lost, self.corrupt, self.reconnects)


class BaseCamera(ABC):
    """Lifecycle, counters and frame stamping shared by the backends in this package.

    Subclasses implement :meth:`_open`, :meth:`_next` and :meth:`_release`. :meth:`read` counts a
    corrupt frame (``FrameError`` from ``_next``), remembers a lost device (every later ``read``
    raises ``CameraUnavailableError`` again) and keeps raising ``EndOfStream`` once reached.
    """

    def __init__(self, name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._name = name
        self._clock = clock
        self._counters = FrameCounters()
        self._started = False
        self._dead: CameraError | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def fps(self) -> float | None:
        return None

    @property
    def stats(self) -> CameraStats:
        return self._counters.snapshot()

    def start(self) -> None:
        if self._started:
            return
        self._dead = None
        self._open()
        self._started = True
        logger.info("camera %s started", self._name)

    def read(self) -> Frame:
        if self._dead is not None:
            raise type(self._dead)(str(self._dead))
        if not self._started:
            raise CameraError(f"camera {self._name} is not started: call start() or use `with`")
        try:
            frame = self._next()
        except FrameError:
            self._counters.corrupt += 1
            self._counters.lost += 1
            raise
        except (CameraUnavailableError, EndOfStream) as exc:
            self._dead = exc
            raise
        self._counters.delivered += 1
        return frame

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._release()
        finally:
            logger.info("camera %s closed (%s)", self._name, self._counters.snapshot())

    def __enter__(self: _B) -> _B:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _frame(self, pixels: Pixels, index: int) -> Frame:
        """Stamp ``pixels`` (RGB, owned by the frame from now on) with the clock's times."""
        return Frame(
            pixels=pixels,
            index=index,
            ts=self._clock.time(),
            mono=self._clock.monotonic(),
            source=self._name,
        )

    def _count_lost(self, n: int) -> None:
        """Count ``n`` frame slots skipped without a FrameError (late reader, decoder skip)."""
        if n > 0:
            self._counters.lost += n

    @abstractmethod
    def _open(self) -> None:
        """Acquire the device; raise CameraUnavailableError when it is not there."""

    @abstractmethod
    def _next(self) -> Frame:
        """Produce the next frame or raise FrameError / CameraUnavailableError / EndOfStream."""

    @abstractmethod
    def _release(self) -> None:
        """Release whatever ``_open`` acquired; must not raise for a broken device."""
