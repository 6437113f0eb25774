"""Detection values and the detector contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Kind = Literal["face", "person", "head"]
"""``face``: a face box; ``person``: a whole person (the visitor counter's); ``head``: the head
region of a person, redacted like a face (:mod:`agent.vision.heads`)."""


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in frame pixel coordinates (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def expand(self, margin: float) -> Box:
        """Grow by ``margin`` times width/height on each axis (0.25 adds 12.5% per side)."""
        dx = self.width * margin / 2
        dy = self.height * margin / 2
        return Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy)

    def iou(self, other: Box) -> float:
        ix = min(self.x1, other.x1) - max(self.x0, other.x0)
        iy = min(self.y1, other.y1) - max(self.y0, other.y0)
        if ix <= 0 or iy <= 0:
            return 0.0
        inter = ix * iy
        return inter / (self.area + other.area - inter)


@dataclass(frozen=True)
class Detection:
    """One detected object in frame coordinates."""

    box: Box
    score: float
    kind: Kind = "face"
    landmarks: tuple[tuple[float, float], ...] | None = None
    """Face keypoints (x, y) in frame pixels when the detector gives them, else ``None``.
    BlazeFace gives six: right eye, left eye, nose tip, mouth centre, right ear, left ear (the
    subject's right and left). Used to align faces for the embedding model."""


class Detector(Protocol):
    """Finds faces (and optionally persons) in an RGB uint8 image of any size.

    Implementations return boxes in the coordinates of the image they were given. They may raise
    any exception; the pipeline treats that as a failed frame (fail closed).
    """

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]: ...
