"""Head regions from the person detector, for redaction (``[detector] persons = true``).

The face detector misses faces it cannot see: people seen from behind or the side, faces too
blurred or too small. MediaPipe's BlazePose detector (:mod:`agent.vision.persons`) finds the
person instead, from the front or behind alike, and gives two of its keypoints along the body's
upper axis whichever way the person faces: the shoulder centre and the full-body circle's point,
which lies on the line from the hip centre through the shoulders, just above the top of the head
(the circle around the whole body is centred on the hips). The head lies between the two.

:func:`head_box` makes a rectangle along that stretch of the axis (:class:`HeadGeometry`, in
shares of the distance between the two points) and returns the axis-aligned box that holds it.
On the test photos the defaults hold the face detector's box; the redaction margin grows the
region like any other. (The model's own box is drawn lower, over chin and neck, so it is not
used.)

:class:`HeadDetector` turns every person into a ``Detection(kind="head")`` with that box, and
:class:`WithHeads` adds those of the people whose face was not found to a face detector's
detections. Both run inside the guarded detector like the face model (:mod:`agent.vision.guard`):
if the person model raises or is too slow, the frame is dropped (fail closed). Head regions are
tracked and held over like faces (:mod:`agent.vision.track` matches tracks of the same kind) and
never merged with face boxes (:mod:`agent.vision.tiling` merges each kind on its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box, Detection, Detector

TOP_POINT = 2
"""Index in a person detection's ``landmarks`` of the full-body circle's point (above the head):
``landmarks`` is the model's box centre, then hip centre, that point, shoulder centre and the
upper-body circle's point (:mod:`agent.vision.persons`)."""
SHOULDERS = 3
"""Index of the shoulder centre in a person detection's ``landmarks``."""


@dataclass(frozen=True)
class HeadGeometry:
    """Where the head is on the axis from the top point to the shoulder centre, in shares of the
    distance between the two (on the five portraits of tests/photos.py the face detector's box
    spans -0.09 to 0.85 of it along the axis and at most 0.54 of it across)."""

    along: float = 0.4
    """Centre of the head region, as a share of the way from the top point to the shoulders."""
    length: float = 1.0
    """Extent of the head region along the axis (0.4 +- 0.5: from a tenth above the top point
    to nine tenths of the way down to the shoulders)."""
    width: float = 0.75
    """Extent of the head region across the axis."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.along <= 1.0:
            raise ValueError(f"along must be in [0, 1], got {self.along}")
        if not 0.0 < self.length <= 2.0:
            raise ValueError(f"length must be in (0, 2], got {self.length}")
        if not 0.0 < self.width <= 2.0:
            raise ValueError(f"width must be in (0, 2], got {self.width}")


def head_box(
    top: tuple[float, float], shoulders: tuple[float, float], geometry: HeadGeometry
) -> Box | None:
    """The head region between ``top`` (the body circle's point above the head) and the shoulder
    centre: a rectangle along that axis (``geometry``), as the axis-aligned box that holds it, so
    a leaning or lying person's head is covered too. ``None`` when the two points coincide (no
    axis to place a head on)."""
    (tx, ty), (sx, sy) = top, shoulders
    length = math.hypot(sx - tx, sy - ty)
    if not math.isfinite(length) or length <= 0.0:
        return None
    ux, uy = abs(sx - tx) / length, abs(sy - ty) / length
    cx = tx + geometry.along * (sx - tx)
    cy = ty + geometry.along * (sy - ty)
    half_along, half_across = geometry.length * length / 2, geometry.width * length / 2
    half_x = ux * half_along + uy * half_across
    half_y = uy * half_along + ux * half_across
    return Box(cx - half_x, cy - half_y, cx + half_x, cy + half_y)


def heads_of(persons: list[Detection], geometry: HeadGeometry) -> list[Detection]:
    """One ``kind="head"`` detection per person detection that has its keypoints; the person's
    score and keypoints are kept. Boxes are not clipped: redaction clips them to the frame."""
    out: list[Detection] = []
    for person in persons:
        points = person.landmarks
        if person.kind != "person" or points is None or len(points) <= SHOULDERS:
            continue
        box = head_box(points[TOP_POINT], points[SHOULDERS], geometry)
        if box is not None:
            out.append(Detection(box, person.score, kind="head", landmarks=points))
    return out


class HeadDetector:
    """:class:`~agent.vision.detection.Detector` of head regions: a person detector's people,
    each turned into its head box (:func:`heads_of`)."""

    def __init__(self, persons: Detector, geometry: HeadGeometry | None = None) -> None:
        self._persons = persons
        self.geometry = geometry or HeadGeometry()

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        return heads_of(self._persons.detect(rgb), self.geometry)


def holds_a_face(head: Box, faces: list[Detection]) -> bool:
    """A face detection's centre lies inside ``head``: that person's face was found."""
    return any(
        head.x0 <= (f.box.x0 + f.box.x1) / 2 <= head.x1
        and head.y0 <= (f.box.y0 + f.box.y1) / 2 <= head.y1
        for f in faces
        if f.kind == "face"
    )


class WithHeads:
    """A face detector's detections followed by the head regions of the people whose face it did
    not find (no face box's centre inside the head region: DESIGN.md, "where a person is detected
    but no face is found"), on the same frame. A found face is redacted by its own box; its
    head region would add hair and background for nothing the face box leaves. Either detector
    raising raises (the guard then drops the frame)."""

    def __init__(self, faces: Detector, heads: Detector) -> None:
        self._faces = faces
        self._heads = heads

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        faces = self._faces.detect(rgb)
        heads = self._heads.detect(rgb)
        return [*faces, *(h for h in heads if not holds_a_face(h.box, faces))]


__all__ = [
    "SHOULDERS",
    "TOP_POINT",
    "HeadDetector",
    "HeadGeometry",
    "WithHeads",
    "head_box",
    "heads_of",
    "holds_a_face",
]
