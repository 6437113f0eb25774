"""A deterministic synthetic camera: moving shapes drawn with numpy, with injectable faults.

It is the fake that tests and the demo use, so it behaves like a live camera: frames are paced at
``fps`` (a late reader loses frames, counted, and the index jumps), corrupt frames raise FrameError
and consume their index, and a disconnect makes every later ``read`` raise CameraUnavailableError
until a new camera is opened. Pixels depend only on (seed, size, index): the same config gives the
same frames, on any machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from contract.errors import CameraUnavailableError, FrameError
from hw.camera.base import BaseCamera
from hw.camera.config import CameraConfig
from hw.camera.pacing import FramePacer
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame, Pixels

logger = logging.getLogger(__name__)

DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 15.0
_SHAPES = 3


@dataclass(frozen=True)
class SyntheticFaults:
    """Faults a :class:`SyntheticCamera` injects, to exercise error paths like a real device."""

    corrupt: frozenset[int] = field(default_factory=frozenset)
    """Frame indices delivered as FrameError instead of a frame."""

    corrupt_every: int = 0
    """Every n-th frame (indices n-1, 2n-1, ...) is corrupt; 0 never."""

    disconnect_after: int | None = None
    """The device disappears once this many frame slots have passed: the read of index
    ``disconnect_after`` and every later one raise CameraUnavailableError."""

    fail_open: bool = False
    """``start()`` raises CameraUnavailableError, as if the device were absent."""

    def is_corrupt(self, index: int) -> bool:
        every = self.corrupt_every
        return index in self.corrupt or (every > 0 and (index + 1) % every == 0)


class SyntheticCamera(BaseCamera):
    """Moving shapes on a gradient; ``CameraConfig.kind == "synthetic"``."""

    def __init__(
        self,
        config: CameraConfig,
        *,
        faults: SyntheticFaults | None = None,
        seed: int = 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(f"synthetic:{seed}", clock)
        self._config = config
        self._faults = faults or SyntheticFaults()
        self._seed = seed
        self._size = (
            (config.width, config.height)
            if config.width is not None and config.height is not None
            else DEFAULT_SIZE
        )
        self._rate = config.fps if config.fps is not None else DEFAULT_FPS
        self._pacer = FramePacer(clock, self._rate) if config.realtime else None
        self._next_index = 0
        self._background: Pixels | None = None
        self._shapes: npt.NDArray[np.float64] | None = None

    @property
    def fps(self) -> float | None:
        return self._rate if self._pacer is not None else None

    def _open(self) -> None:
        if self._faults.fail_open:
            raise CameraUnavailableError(f"{self.name}: device absent (injected fault)")
        width, height = self._size
        rng = np.random.default_rng(self._seed)
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        bg = np.empty((height, width, 3), np.uint8)
        bg[..., 0] = (0.5 * xs).astype(np.uint8)
        bg[..., 1] = (0.5 * ys).astype(np.uint8)
        bg[..., 2] = 96
        self._background = bg
        # Per shape: x0, y0 (fraction of the frame), vx, vy (pixels/frame), radius, r, g, b.
        self._shapes = np.column_stack(
            [
                rng.uniform(0.2, 0.8, (_SHAPES, 2)),
                rng.uniform(-6.0, 6.0, (_SHAPES, 2)),
                rng.uniform(0.05, 0.15, _SHAPES) * min(width, height),
                rng.integers(0, 256, (_SHAPES, 3)),
            ]
        )
        self._next_index = 0
        if self._pacer is not None:
            self._pacer.reset()

    def _release(self) -> None:
        self._background = None
        self._shapes = None

    def _next(self) -> Frame:
        index = self._next_index
        if self._pacer is not None:
            index = self._pacer.wait(index)
        limit = self._faults.disconnect_after
        if limit is not None and index >= limit:
            raise CameraUnavailableError(f"{self.name}: device disconnected (injected fault)")
        self._count_lost(index - self._next_index)
        self._next_index = index + 1
        if self._faults.is_corrupt(index):
            raise FrameError(f"{self.name}: frame {index} is corrupt (injected fault)")
        return self._frame(self.render(index), index)

    def render(self, index: int) -> Pixels:
        """The pixels of frame ``index`` (pure function of seed, size and index). Needs start()."""
        if self._background is None or self._shapes is None:
            raise CameraUnavailableError(f"{self.name}: not started")
        img = self._background.copy()
        height, width = img.shape[:2]
        for i, (x0, y0, vx, vy, radius, r, g, b) in enumerate(self._shapes):
            cx = _bounce(x0 * width + vx * index, width)
            cy = _bounce(y0 * height + vy * index, height)
            rad = int(radius)
            top, bottom = max(0, int(cy) - rad), min(height, int(cy) + rad + 1)
            left, right = max(0, int(cx) - rad), min(width, int(cx) + rad + 1)
            if top >= bottom or left >= right:
                continue
            colour = np.array([r, g, b], np.uint8)
            if i % 2 == 0:  # a disc
                yy, xx = np.ogrid[top:bottom, left:right]
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                img[top:bottom, left:right][mask] = colour
            else:  # a square
                img[top:bottom, left:right] = colour
        # A frame counter stripe (binary, 16 bits) so any frame says its own index.
        bits = (index >> np.arange(16)) & 1
        cell = max(1, width // 64)
        stripe = np.repeat(bits.astype(np.uint8) * 255, cell)[:width]
        img[: min(cell, height), : stripe.size] = stripe[None, :, None]
        return img


def _bounce(pos: float, extent: int) -> float:
    """Reflect a position moving linearly off the walls of ``[0, extent)``."""
    if extent <= 1:
        return 0.0
    span = 2 * (extent - 1)
    p = pos % span
    return p if p < extent - 1 else span - p
