"""BlazeFace full-range face detector (MediaPipe ``face_detection_full_range``), any TFLite build.

The model takes one RGB image letterboxed to 192x192 and scaled to [-1, 1], and returns, for each
of 2,304 anchors (a 48x48 grid, stride 4, one anchor per cell, centres at (i + 0.5) / 48), a face
logit and 16 regressors: box centre offset, width and height, then six keypoints, all in input
pixels (MediaPipe's ``x_scale = y_scale = w_scale = h_scale = 192``).

Decoding follows MediaPipe's ``TensorsToDetectionsCalculator`` for this graph: logits clipped to
+-80 (MediaPipe uses 100, which overflows float32 in ``exp``), sigmoid, a score threshold
(MediaPipe 0.5; ours 0.2, see :class:`BlazeFaceConfig`), then weighted NMS at IoU 0.3 (each
output box is the score-weighted mean of the boxes it suppresses). Boxes are stretched to cover
forehead and chin (``height_scale``), mapped back through the letterbox to the caller's pixel
coordinates and clipped to the image.

The whole frame shrinks to 192 px, so faces below ~40 px in a 720p frame are missed: wrap the
detector in :class:`agent.vision.tiling.TiledDetector` for those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box, Detection
from agent.vision.nms import iou_one_to_many, nms
from contract.errors import ModelError
from hw.runtime import Runtime, TensorInfo, TFLiteRuntime

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

INPUT_SIZE = 192
GRID = 48  # 192 / stride 4
NUM_ANCHORS = GRID * GRID
KEYPOINTS = 6
"""MediaPipe's order: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
tragion (the subject's right and left: the right eye is on the image's left in a frontal face)."""
RAW_SCORE_LIMIT = 80.0
_NO_INFO = TensorInfo(-1, "", (), np.dtype(np.float32), 0.0, 0)


@dataclass(frozen=True)
class BlazeFaceConfig:
    """Decoder settings.

    score_threshold: minimum sigmoid score of a detection. MediaPipe uses 0.5, which suits
        selfie-like photos but misses many faces in crowds: on WIDER FACE val (tiled, 384 px)
        0.5 protects 45% of faces >= 16 px, 0.2 protects 70% at ~8% of background overwritten.
        Privacy first, the default is 0.2.
    iou_threshold: NMS overlap above which a lower-scoring box is merged/suppressed (MediaPipe 0.3).
    weighted_nms: average suppressed boxes into the kept one (MediaPipe's ``WEIGHTED``), which
        gives steadier boxes; ``False`` is plain greedy NMS.
    num_threads: interpreter threads.
    interpolation: resampling for the letterbox: ``"area"`` (anti-aliased, better for small
        faces when shrinking a large frame) or ``"linear"`` (MediaPipe's bilinear).
    max_detections: cap on returned detections (highest scores first); ``None`` for no cap.
    height_scale: stretch each box's height about its centre by this factor. BlazeFace boxes are
        squares about as wide as the face, from the brows to the mouth; a face from hairline to
        chin is about 1.3 times as tall as it is wide, which is what redaction must cover.
    """

    score_threshold: float = 0.2
    iou_threshold: float = 0.3
    weighted_nms: bool = True
    num_threads: int = 1
    interpolation: str = "area"
    max_detections: int | None = None
    height_scale: float = 1.3

    def __post_init__(self) -> None:
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0.5 <= self.height_scale <= 3.0:
            raise ValueError(f"height_scale must be in [0.5, 3], got {self.height_scale}")
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}")


_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def anchor_centres() -> npt.NDArray[np.float32]:
    """Anchor centres (2304, 2) in input pixels, row-major over the 48x48 grid (x, y)."""
    idx = (np.arange(GRID, dtype=np.float32) + 0.5) * (INPUT_SIZE / GRID)
    ys, xs = np.meshgrid(idx, idx, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the square model input: ``input = image * scale + offset``."""

    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int

    def to_image(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (N, 4) x0, y0, x1, y1 boxes from input pixels to image pixels."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.offset_y) / self.scale_y
        return out

    def points_to_image(self, points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (N, 2) x, y points from input pixels to image pixels."""
        out = points.astype(np.float32, copy=True)
        out[:, 0] = (out[:, 0] - self.offset_x) / self.scale_x
        out[:, 1] = (out[:, 1] - self.offset_y) / self.scale_y
        return out


def decode_anchors(
    regs: npt.NDArray[np.floating[Any]],
    logits: npt.NDArray[np.floating[Any]],
    anchors: npt.NDArray[np.floating[Any]],
    keypoints: int,
    threshold: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Candidate boxes of a MediaPipe SSD head (BlazeFace, BlazePose's person detector).

    ``logits`` (N,) are the raw scores (sigmoid, clipped at :data:`RAW_SCORE_LIMIT`); each row of
    ``regs`` is (dx, dy, w, h, then ``keypoints`` (x, y) pairs), all relative to its anchor's
    centre in ``anchors`` (N, 2), in the letterboxed input's pixels. Returns the boxes
    (x0, y0, x1, y1), scores and flattened keypoints of the rows that score at least
    ``threshold`` and whose box has a positive size, as float32 (empty when none)."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
    keep = np.flatnonzero(scores >= threshold)
    regs, scores, anchors = regs[keep], scores[keep], anchors[keep]
    cx, cy = regs[:, 0] + anchors[:, 0], regs[:, 1] + anchors[:, 1]
    half_w, half_h = regs[:, 2] / 2, regs[:, 3] / 2
    valid = (half_w > 0) & (half_h > 0)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    end = 4 + 2 * keypoints
    points = (regs[:, 4:end].reshape(-1, keypoints, 2) + anchors[:, None, :]).reshape(
        -1, 2 * keypoints
    )
    return (
        boxes[valid].astype(np.float32),
        scores[valid].astype(np.float32),
        points[valid].astype(np.float32),
    )


def letterbox(
    rgb: npt.NDArray[np.uint8], size: int = INPUT_SIZE, interpolation: str = "area"
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Resize ``rgb`` to fit ``size`` x ``size`` keeping its aspect, centred on black."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image {rgb.shape}")
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    flag = _INTERP[interpolation] if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (nw, nh), interpolation=flag)
    canvas = np.zeros((size, size, 3), np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas[oy : oy + nh, ox : ox + nw] = small
    return canvas, Letterbox(nw / w, nh / h, ox, oy)


def weighted_nms(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    iou: float,
    extra: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of its cluster.

    ``extra`` (N, K) columns (keypoints) are averaged with the same weights and returned third
    ((M, 0) when not given)."""
    cols = extra if extra is not None else np.zeros((len(boxes), 0), np.float32)
    order = np.argsort(-scores, kind="stable")
    out_boxes: list[npt.NDArray[np.float32]] = []
    out_extra: list[npt.NDArray[np.float32]] = []
    out_scores: list[float] = []
    while order.size:
        best = order[0]
        overlap = iou_one_to_many(boxes[best], boxes[order])
        members = order[overlap > iou]
        members = members if members.size else order[:1]
        w = scores[members].astype(np.float64)
        out_boxes.append((boxes[members] * w[:, None]).sum(axis=0) / w.sum())
        out_extra.append((cols[members] * w[:, None]).sum(axis=0) / w.sum())
        out_scores.append(float(scores[best]))
        order = order[overlap <= iou]
        order = order[order != best]
    if not out_boxes:
        empty = np.zeros((0, cols.shape[1]), np.float32)
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), empty
    return (
        np.asarray(out_boxes, np.float32),
        np.asarray(out_scores, np.float32),
        np.asarray(out_extra, np.float32).reshape(len(out_boxes), cols.shape[1]),
    )


class BlazeFaceDetector:
    """:class:`agent.vision.detection.Detector` for BlazeFace full range (float or int8 TFLite).

    The constructor only stores; :meth:`load` opens the model (or takes a ready ``runtime``).
    Pass the path from ``models.verified_path("blazeface_full_int8")`` so the hash is checked.
    """

    def __init__(
        self, model_path: Path, config: BlazeFaceConfig | None = None, edgetpu: bool = False
    ) -> None:
        self._path = model_path
        self._config = config or BlazeFaceConfig()
        self._edgetpu = edgetpu
        self._runtime: Runtime | None = None
        self._anchors = anchor_centres()
        self._box_out = 0
        self._score_out = 1
        self._in_info: TensorInfo | None = None
        self._out_info: tuple[TensorInfo, TensorInfo] = (_NO_INFO, _NO_INFO)

    @property
    def config(self) -> BlazeFaceConfig:
        return self._config

    def load(self, runtime: Runtime | None = None) -> BlazeFaceDetector:
        """Open the model (or use ``runtime``) and check its input and output shapes."""
        rt = (
            runtime
            or (
                TFLiteRuntime(
                    self._path, num_threads=self._config.num_threads, edgetpu=self._edgetpu
                )
            ).load()
        )
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or tuple(ins[0].shape) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ModelError(
                f"{self._path.name}: expected one input [1, 192, 192, 3], got "
                f"{[list(i.shape) for i in ins]}; is this BlazeFace full range?"
            )
        shapes = [tuple(o.shape) for o in outs]
        try:
            self._box_out = shapes.index((1, NUM_ANCHORS, 16))
            self._score_out = shapes.index((1, NUM_ANCHORS, 1))
        except ValueError:
            raise ModelError(
                f"{self._path.name}: expected outputs [1, 2304, 16] and [1, 2304, 1], got "
                f"{[list(s) for s in shapes]}; is this BlazeFace full range?"
            ) from None
        self._runtime = rt
        self._in_info = ins[0]
        self._out_info = (outs[self._box_out], outs[self._score_out])
        return self

    def _input_tensor(self, canvas: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        info = self._in_info
        assert info is not None
        x: npt.NDArray[np.float32] = canvas.astype(np.float32)[None] * np.float32(2.0 / 255.0)
        x -= np.float32(1.0)
        if info.dtype == np.float32:
            return x
        # fully integer input: quantize with the tensor's own parameters
        q = np.round(x / info.scale) + info.zero_point
        lim = np.iinfo(info.dtype)
        out: npt.NDArray[Any] = np.clip(q, lim.min, lim.max).astype(info.dtype)
        return out

    def raw(
        self, rgb: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Letterbox]:
        """Run the model: regressors (2304, 16), logits (2304,) and the letterbox used."""
        rt = self._runtime
        if rt is None:
            raise RuntimeError("BlazeFaceDetector.load() was not called")
        canvas, lb = letterbox(rgb, INPUT_SIZE, self._config.interpolation)
        outputs = rt.run(self._input_tensor(canvas))
        box_info, score_info = self._out_info
        regs = _dequantize(outputs[self._box_out], box_info.scale, box_info.zero_point).reshape(
            NUM_ANCHORS, 16
        )
        logits = _dequantize(
            outputs[self._score_out], score_info.scale, score_info.zero_point
        ).reshape(NUM_ANCHORS)
        return regs, logits, lb

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        cfg = self._config
        regs, logits, lb = self.raw(rgb)
        cand, cand_scores, cand_points = decode_anchors(
            regs, logits, self._anchors, KEYPOINTS, cfg.score_threshold
        )
        if cand_scores.size == 0:
            return []
        if cfg.weighted_nms:
            merged, sc, kp = weighted_nms(cand, cand_scores, cfg.iou_threshold, cand_points)
        else:
            idx = nms(cand, cand_scores, cfg.iou_threshold)
            merged, sc, kp = cand[idx], cand_scores[idx], cand_points[idx]
        if cfg.height_scale != 1.0:
            half = (merged[:, 3] - merged[:, 1]) * (cfg.height_scale - 1.0) / 2
            merged[:, 1] -= half
            merged[:, 3] += half
        boxes = lb.to_image(merged)
        kp_img = lb.points_to_image(kp.reshape(-1, 2)).reshape(-1, KEYPOINTS, 2)
        h, w = rgb.shape[:2]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        order = np.argsort(-sc, kind="stable")[: cfg.max_detections]
        return [
            Detection(
                Box(*(float(v) for v in boxes[i])),
                float(sc[i]),
                landmarks=tuple((float(x), float(y)) for x, y in kp_img[i]),
            )
            for i in order
            if boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]
        ]


def _dequantize(value: npt.NDArray[Any], scale: float, zero_point: int) -> npt.NDArray[np.float32]:
    if value.dtype == np.float32:
        return value
    if scale == 0.0:
        return value.astype(np.float32)
    return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)
