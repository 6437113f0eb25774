"""Irreversible redaction of face regions on the full-resolution frame.

Each region (a face box, a held-over track, a person's head) is grown by a margin and overwritten
with a constant colour or with CSPRNG noise (``os.urandom``). Neither depends on any original pixel,
so nothing of the face can be recovered: no blur, no mosaic, no keyed scrambling.

:class:`RedactedFrame` can only be built here: its constructor demands a private seal object, so
code elsewhere cannot wrap raw pixels in it by mistake (it raises
:class:`~contract.errors.UnredactedDataError`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box
from contract.errors import UnredactedDataError
from hw.frame import Frame, Pixels

_SEAL = object()


class FillMode(str, Enum):
    """How a redacted region is overwritten."""

    SOLID = "solid"
    NOISE = "noise"


@dataclass(frozen=True)
class RedactionConfig:
    """How faces are overwritten."""

    margin: float = 0.25
    """Each box grows by this fraction of its width and height (half on each side)."""
    fill: FillMode = FillMode.SOLID
    """``solid`` (constant ``color``) or ``noise`` (fresh CSPRNG bytes per frame)."""
    color: tuple[int, int, int] = (0, 0, 0)
    """RGB colour of a solid fill."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 4.0:
            raise ValueError(f"redaction margin must be in [0, 4], got {self.margin}")
        if any(not 0 <= c <= 255 for c in self.color):
            raise ValueError(f"redaction color must be three values 0-255, got {self.color}")


@dataclass(frozen=True, eq=False)
class RedactedFrame:
    """A frame whose face regions have been irreversibly overwritten.

    The only pixel type that event builders, snapshot encoders and file writers accept.
    """

    pixels: Pixels
    index: int
    ts: float
    mono: float
    source: str
    regions: tuple[Box, ...]
    """The regions that were overwritten (already grown by the margin, clipped to the frame)."""
    _seal: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._seal is not _SEAL:
            raise UnredactedDataError(
                "RedactedFrame can only be built by agent.privacy.redact.redact()"
            )
        if self.pixels.flags.writeable:
            self.pixels.flags.writeable = False

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def pixel_rect(
    box: Box, margin: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Integer rectangle (x0, y0, x1, y1) covering ``box`` grown by ``margin``, clipped.

    Rounds outwards so that every pixel the box touches is covered. ``None`` if it misses the frame.
    """
    grown = box.expand(margin)
    x0 = max(0, math.floor(grown.x0))
    y0 = max(0, math.floor(grown.y0))
    x1 = min(width, math.ceil(grown.x1))
    y1 = min(height, math.ceil(grown.y1))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def redaction_mask(
    shape: tuple[int, int], regions: Sequence[Box], margin: float
) -> npt.NDArray[np.bool_]:
    """Boolean mask (height, width) of the pixels that :func:`redact` overwrites."""
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    for box in regions:
        rect = pixel_rect(box, margin, width, height)
        if rect is not None:
            x0, y0, x1, y1 = rect
            mask[y0:y1, x0:x1] = True
    return mask


def redact(frame: Frame, regions: Sequence[Box], config: RedactionConfig) -> RedactedFrame:
    """Overwrite every region (grown by the margin) of a copy of ``frame``.

    The copy is made before anything else, and the fill depends on nothing in the original pixels.
    """
    out = np.array(frame.pixels, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    applied: list[Box] = []
    for box in regions:
        rect = pixel_rect(box, config.margin, width, height)
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        if config.fill is FillMode.NOISE:
            n = (y1 - y0) * (x1 - x0) * 3
            noise = np.frombuffer(os.urandom(n), dtype=np.uint8)
            out[y0:y1, x0:x1] = noise.reshape(y1 - y0, x1 - x0, 3)
        else:
            out[y0:y1, x0:x1] = config.color
        applied.append(Box(float(x0), float(y0), float(x1), float(y1)))
    return RedactedFrame(
        pixels=out,
        index=frame.index,
        ts=frame.ts,
        mono=frame.mono,
        source=frame.source,
        regions=tuple(applied),
        _seal=_SEAL,
    )
