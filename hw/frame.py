"""The frame value that cameras produce."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image: RGB, uint8, shape (height, width, 3), read-only.

    ``index`` counts frames delivered by the source (gaps show lost frames); ``ts`` is the
    capture time in seconds since the epoch; ``mono`` a monotonic timestamp for latency.
    """

    pixels: Pixels
    index: int
    ts: float
    mono: float
    source: str = field(default="")

    def __post_init__(self) -> None:
        px = self.pixels
        if px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] != 3:
            raise ValueError(f"Frame pixels must be uint8 HxWx3 RGB, got {px.dtype} {px.shape}")
        if px.flags.writeable:
            px.flags.writeable = False

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])
