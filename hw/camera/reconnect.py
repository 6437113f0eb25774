"""A camera that survives its device disappearing: reopen with capped exponential backoff.

:class:`ReconnectingCamera` wraps a factory of cameras. ``start()`` opens the first one and lets its
error through (a camera that never worked is a configuration or installation problem: say so at
once). After that, ``read()`` hides losses from the caller:

- CameraUnavailableError: the camera is closed and reopened after ``backoff`` delays (with
  jitter, capped) until it works; ``read`` blocks meanwhile and never busy-loops: every reopening
  is preceded by a sleep, and the attempt counter only resets once a *frame* has been delivered
  (a camera that opens but fails at once backs off like one that does not open);
- FrameError: counted and skipped; after ``max_corrupt_in_row`` in a row the camera is treated
  as lost (a device that only sends garbage gets reset);
- EndOfStream and other errors reach the caller.

Frames leave with one continuous ``index`` across reopenings, so gaps in it show every lost frame:
gaps within a session, corrupt frames, and the frames missed while the device was away (the
outage time multiplied by the camera's ``fps``, when it has one). ``stats`` counts them all.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from contract.errors import CameraError, CameraUnavailableError, FrameError
from hw.camera.base import Camera, CameraStats, FrameCounters
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays between reopening attempts: ``initial * factor**attempt``, capped at ``maximum``,
    each shortened by a random fraction up to ``jitter`` (so a fleet does not retry in step)."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"Backoff.initial must be > 0, got {self.initial}")
        if not self.factor >= 1:
            raise ValueError(f"Backoff.factor must be >= 1, got {self.factor}")
        if not self.maximum >= self.initial:
            raise ValueError(f"Backoff.maximum must be >= initial, got {self.maximum}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff.jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt number ``attempt`` (0-based); always in (0, maximum]."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


class ReconnectingCamera:
    """Wraps ``factory`` (which builds an unstarted camera) and keeps a camera open."""

    def __init__(
        self,
        factory: Callable[[], Camera],
        backoff: Backoff | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        fps: float | None = None,
        max_corrupt_in_row: int = 30,
        max_attempts: int | None = None,
        name: str = "camera",
    ) -> None:
        """``fps`` overrides the inner camera's rate for estimating frames missed in an outage;
        ``max_attempts`` (None: forever) gives up with CameraUnavailableError after that many
        failed reopenings in a row."""
        self._factory = factory
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._fps = fps
        self._max_corrupt = max_corrupt_in_row
        self._max_attempts = max_attempts
        self._name = name
        self._camera: Camera | None = None
        self._started = False
        self._counters = FrameCounters()
        self._offset = 0  # outer index = offset + inner index, per session
        self._last_out = -1  # outer index of the last delivered frame
        self._last_mono: float | None = None  # when the last frame was delivered
        self._pending_lost = 0  # known losses not yet visible as a gap
        self._session_fps: float | None = None
        self._new_session = True
        self._corrupt_in_row = 0
        self._corrupt_since_frame = 0
        self._attempt = 0
        self._interrupted = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def fps(self) -> float | None:
        if self._fps is not None:
            return self._fps
        return self._camera.fps if self._camera is not None else self._session_fps

    @property
    def stats(self) -> CameraStats:
        return self._counters.snapshot()

    @property
    def connected(self) -> bool:
        """Whether a camera is open right now (False while waiting to reopen)."""
        return self._camera is not None

    def interrupt(self) -> None:
        """Stop waiting to reopen: a ``read`` blocked in backoff raises CameraUnavailableError at
        once, and so does every later reopening until :meth:`start`. Safe from another thread or a
        signal handler (call it beside ``Pipeline.stop``, so shutdown does not wait out a backoff).
        """
        self._interrupted.set()

    def start(self) -> None:
        if self._started:
            return
        self._interrupted.clear()
        camera = self._factory()
        camera.start()
        self._camera = camera
        self._started = True
        self._begin_session()

    def close(self) -> None:
        self._started = False
        self._drop_camera()

    def __enter__(self) -> ReconnectingCamera:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self) -> Frame:
        if not self._started:
            raise CameraError(f"{self._name} is not started: call start() or use `with`")
        while True:
            camera = self._camera or self._reopen()
            try:
                frame = camera.read()
            except FrameError as exc:
                self._counters.corrupt += 1
                self._corrupt_in_row += 1
                self._corrupt_since_frame += 1
                if self._corrupt_in_row < self._max_corrupt:
                    logger.debug("%s: corrupt frame skipped: %s", self._name, exc)
                    continue
                self._lose(f"{self._corrupt_in_row} corrupt frames in a row")
                continue
            except CameraUnavailableError as exc:
                self._lose(str(exc))
                continue
            return self._deliver(frame)

    def _deliver(self, frame: Frame) -> Frame:
        now = self._clock.monotonic()
        if self._new_session:
            # Known losses: corrupt frames after the last delivered one, and the slots the new
            # session skipped before this frame. Estimated: the outage time at the frame rate.
            missed = self._pending_lost + frame.index
            rate = self._fps or self._session_fps
            if rate and self._last_mono is not None:
                missed = max(missed, round((now - self._last_mono) * rate) - 1)
            self._offset = self._last_out + 1 + missed - frame.index
            self._new_session = False
            self._pending_lost = 0
            if self._counters.reconnects:
                logger.info("%s: frames again, about %d lost meanwhile", self._name, missed)
        index = self._offset + frame.index
        self._counters.lost += max(0, index - self._last_out - 1)
        self._last_out, self._last_mono = index, now
        self._counters.delivered += 1
        self._corrupt_in_row = 0
        self._corrupt_since_frame = 0
        self._attempt = 0
        return dataclasses.replace(frame, index=index)

    def _lose(self, reason: str) -> None:
        logger.warning("%s lost (%s); reopening with backoff", self._name, reason)
        self._drop_camera()
        # Corrupt frames after the last delivered one: no gap in this session will show them.
        self._pending_lost += self._corrupt_since_frame
        self._corrupt_since_frame = 0
        self._corrupt_in_row = 0
        self._new_session = True

    def _reopen(self) -> Camera:
        """Sleep, reopen, repeat until a camera starts. Every attempt is preceded by a sleep."""
        while True:
            if self._max_attempts is not None and self._attempt >= self._max_attempts:
                raise CameraUnavailableError(
                    f"{self._name}: gave up after {self._attempt} attempts to reopen the camera"
                )
            delay = self._backoff.delay(self._attempt, self._rng)
            self._attempt += 1
            if self._clock.wait(self._interrupted, delay):
                raise CameraUnavailableError(f"{self._name}: interrupted while waiting to reopen")
            camera: Camera | None = None
            try:
                camera = self._factory()
                camera.start()
            except CameraUnavailableError as exc:
                if camera is not None:
                    camera.close()
                logger.info(
                    "%s: reopen attempt %d failed (%s); waited %.2fs",
                    self._name,
                    self._attempt,
                    exc,
                    delay,
                )
                continue
            self._camera = camera
            self._counters.reconnects += 1
            self._begin_session()
            logger.info("%s: reopened (attempt %d)", self._name, self._attempt)
            return camera

    def _begin_session(self) -> None:
        self._new_session = True
        camera = self._camera
        if camera is not None and camera.fps is not None:
            self._session_fps = camera.fps

    def _drop_camera(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.close()
        except CameraError as exc:
            logger.debug("%s: error while closing a lost camera: %s", self._name, exc)
