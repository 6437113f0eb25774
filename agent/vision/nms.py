"""Greedy non-maximum suppression over axis-aligned boxes, vectorised with numpy.

Shared by the face detectors (CenterFace, BlazeFace). Boxes are ``x0, y0, x1, y1`` in any one
coordinate system; ``x1 > x0`` and ``y1 > y0`` are expected, degenerate boxes have zero area.
"""

from __future__ import annotations

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

    A box is suppressed when its IoU with an already kept, higher-scoring box exceeds ``iou``.
    Each round is one vectorised IoU of the best remaining box against all the others, so the
    cost is O(kept x N) in numpy, with no Python loop over pairs.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    limit = len(order) if max_out is None else max_out
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.intp)
