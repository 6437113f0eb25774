"""Run any detector on overlapping tiles as well as the whole frame, to find small faces.

A detector with a small fixed input (BlazeFace: 192 px) shrinks a 1280x720 frame about 7 times, so
a 25 px face becomes 4 px and is lost. Running it on tiles of ``tile`` source pixels shrinks each
tile only ``tile / input`` times. The whole frame is still run (``full_frame=True``) so that faces
larger than a tile, or cut by tile borders, are found whole.

Tiles overlap by ``overlap`` of their size and are spread evenly so the last one ends flush with
the frame edge (no tile is smaller than ``tile`` unless the frame is). Boxes from all runs are
mapped to frame coordinates and merged greedily, highest score first: a box whose IoU with the
cluster's leader exceeds ``iou``, or that lies mostly (``contain`` of its area) inside the leader,
joins the cluster (that catches the partial face a tile border cuts off). Each cluster becomes
one detection with the leader's score and the box enclosing all its members, so merging never
uncovers a pixel that one of the runs wanted covered.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box, Detection, Detector
from agent.vision.nms import iou_one_to_many

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    """A window of the frame in source pixels (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[Tile]:
    """Tiles of ``tile`` x ``tile`` covering a ``width`` x ``height`` frame, row by row."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return [
        Tile(x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def merge(detections: list[Detection], iou: float, contain: float) -> list[Detection]:
    """Merge detections from overlapping runs into one per object (see the module docstring).

    Each kind (face, person, head) is merged on its own: a face inside a head or person box is
    kept.
    """
    out: list[Detection] = []
    for kind in sorted({d.kind for d in detections}):
        out.extend(_merge_one([d for d in detections if d.kind == kind], iou, contain))
    return out


def _merge_one(detections: list[Detection], iou: float, contain: float) -> list[Detection]:
    if not detections:
        return []
    boxes = np.asarray([[d.box.x0, d.box.y0, d.box.x1, d.box.y1] for d in detections], np.float64)
    scores = np.asarray([d.score for d in detections], np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    taken = np.zeros(len(detections), bool)
    out: list[Detection] = []
    for i in order:  # highest score first: each untaken box starts a cluster
        if taken[i]:
            continue
        rest = np.flatnonzero(~taken)
        overlap = iou_one_to_many(boxes[i], boxes[rest])
        inter = _intersection(boxes[i], boxes[rest])
        # a member mostly inside the leader, or the leader mostly inside a member
        in_leader = inter / np.maximum(_area(boxes[rest]), 1e-9)
        leader_in = inter / max(float(_area(boxes[i : i + 1])[0]), 1e-9)
        members = rest[(overlap > iou) | (in_leader > contain) | (leader_in > contain)]
        members = np.union1d(members, [i])
        taken[members] = True
        # the cluster's enclosing box: merging never uncovers what a member covered
        x0, y0 = boxes[members, 0].min(), boxes[members, 1].min()
        x1, y1 = boxes[members, 2].max(), boxes[members, 3].max()
        d = detections[i]
        box = Box(float(x0), float(y0), float(x1), float(y1))
        out.append(Detection(box, d.score, d.kind, d.landmarks))
    return out


def _intersection(
    box: npt.NDArray[np.float64], boxes: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    ix = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iy = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    out: npt.NDArray[np.float64] = np.clip(ix, 0.0, None) * np.clip(iy, 0.0, None)
    return out


def _area(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0.0, None
    )
    return out


class TiledDetector:
    """:class:`Detector` that runs ``inner`` on the whole frame and on overlapping tiles.

    tile: tile side in source pixels. Pick it from the smallest face to protect: BlazeFace full
        range (192 px input) finds about half of the faces 10-16 input px tall and three quarters
        from 16 px (WIDER FACE val), so ``tile = 192 * smallest_face_px / 16``: 384 for faces
        from ~32 px (16 runs on a 1280x720 frame), 192 for faces from ~16 px (46 runs).
    overlap: share of a tile shared with its neighbour; at least the largest face you want found
        whole inside one tile, divided by ``tile`` (faces larger than that are found by the whole
        frame run).
    full_frame: also run ``inner`` on the whole frame (needed unless tiles are large).
    iou, contain: merge thresholds (see :func:`merge`).
    """

    def __init__(
        self,
        inner: Detector,
        tile: int,
        overlap: float = 0.25,
        full_frame: bool = True,
        iou: float = 0.3,
        contain: float = 0.8,
    ) -> None:
        if tile <= 0:
            raise ValueError(f"tile must be positive, got {tile}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self._inner = inner
        self._tile = tile
        self._overlap = overlap
        self._full_frame = full_frame
        self._iou = iou
        self._contain = contain

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        h, w = rgb.shape[:2]
        tiles = tile_grid(w, h, self._tile, self._overlap)
        found: list[Detection] = []
        single = len(tiles) == 1 and tiles[0] == Tile(0, 0, w, h)
        if self._full_frame or single:
            found.extend(self._inner.detect(rgb))
        if not single:
            for t in tiles:
                crop = np.ascontiguousarray(rgb[t.y0 : t.y1, t.x0 : t.x1])
                for d in self._inner.detect(crop):
                    b = d.box
                    moved = Box(b.x0 + t.x0, b.y0 + t.y0, b.x1 + t.x0, b.y1 + t.y0)
                    points = d.landmarks and tuple((x + t.x0, y + t.y0) for x, y in d.landmarks)
                    found.append(Detection(moved, d.score, d.kind, points or None))
        merged = merge(found, self._iou, self._contain)
        logger.debug(
            "tiled detect: %d tiles, %d raw, %d merged", len(tiles), len(found), len(merged)
        )
        return merged


class MergedDetector:
    """:class:`Detector` that runs several detectors on the whole frame and merges their boxes
    (see :func:`merge`), e.g. one model at two input scales."""

    def __init__(self, detectors: list[Detector], iou: float = 0.3, contain: float = 0.8) -> None:
        if not detectors:
            raise ValueError("MergedDetector needs at least one detector")
        self._detectors = list(detectors)
        self._iou = iou
        self._contain = contain

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        found: list[Detection] = []
        for detector in self._detectors:
            found.extend(detector.detect(rgb))
        return merge(found, self._iou, self._contain)
