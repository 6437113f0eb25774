"""Greedy non-maximum suppression over axis-aligned boxes.

Shared by the face detectors (CenterFace, BlazeFace). Boxes are ``x0, y0, x1, y1`` in any one
coordinate system; ``x1 > x0`` and ``y1 > y0`` are expected, degenerate boxes have zero area.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt


def iou_one_to_many(
    box: npt.NDArray[np.floating], boxes: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Intersection over union of ``box`` (4,) with each row of ``boxes`` (N, 4)."""
    ix = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iy = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(ix, 0.0, None) * np.clip(iy, 0.0, None)
    area_a = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    area_b = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0.0, None
    )
    union = area_a + area_b - inter
    out: npt.NDArray[np.float64] = np.divide(
        inter, union, out=np.zeros(len(boxes), dtype=np.float64), where=union > 0
    )
    return out


def nms(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    iou: float,
    max_out: int | None = None,
) -> npt.NDArray[np.intp]:
    """Indices of the boxes kept by greedy NMS, highest score first.

    A box is suppressed when its IoU with an already kept, higher-scoring box exceeds ``iou``;
    equal scores keep the lower index first. OpenCV's ``dnn.NMSBoxes`` does the greedy loop in
    C++ (about 4 times faster than numpy on a crowd's ~2,000 CenterFace candidates); it is given
    each box's rank instead of its score, so scores of any sign and ties behave as documented.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    n = len(boxes)
    if n == 0 or max_out == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n, 0, -1, dtype=np.float32)  # exact below 2**24 boxes
    wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)
    empty = wh[:, 0] * wh[:, 1] <= 0
    solid = np.flatnonzero(~empty)
    # a zero-area box has IoU 0 with everything: always kept, never suppresses (OpenCV would
    # count two empty boxes at one point as overlapping)
    found: object = ()
    if solid.size:
        xywh = np.concatenate([boxes[solid, :2], wh[solid]], axis=1)
        # the stubs say sequences; the binding takes (N, 4) float64 and (N,) float32 arrays
        found = cv2.dnn.NMSBoxes(
            cast("Sequence[Sequence[float]]", xywh),
            cast("Sequence[float]", rank[solid]),
            0.0,
            float(iou),
        )
    picked = solid[np.asarray(found, dtype=np.intp).reshape(-1)]
    kept = np.concatenate([picked, np.flatnonzero(empty)])
    kept = kept[np.argsort(-rank[kept], kind="stable")]
    return kept if max_out is None else kept[:max_out]
