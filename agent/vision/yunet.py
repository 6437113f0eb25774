"""YuNet-n face detector (libfacedetection's model, int8 TFLite) and its decoder.

The model (see ``models/recipe/yunet.py``) is fully convolutional: it takes RGB 0..255 at any
H, W that are multiples of 32 (the image sits top-left, padded with black) and returns three
grids, one per stride ``s`` of 8, 16 and 32, each ``[H/s, W/s, 6]``:
``[cls logit, obj logit, dx, dy, log w, log h]``. The score of cell (i, j) is
``sqrt(sigmoid(cls) * sigmoid(obj))``; its box has centre ``((j + dx) * s, (i + dy) * s)`` and
size ``(exp(log w) * s, exp(log h) * s)`` in input pixels. This is OpenCV's ``FaceDetectorYN``
decoding, vectorised.

YuNet is anchor-free and light (75k parameters, 145 KB int8). On WIDER FACE val it finds fewer
small faces than CenterFace but scores large and close faces with more confidence, which makes it
a partner for CenterFace (see :mod:`agent.vision.fusion`) more than a replacement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box, Detection
from agent.vision.nms import nms
from contract.errors import ModelError
from hw.runtime import Runtime, TensorInfo, TFLiteRuntime

logger = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
ALIGN = 32
CHANNELS = 6  # cls logit, obj logit, dx, dy, log w, log h
_MAX_LOG_SIZE = 10.0  # guards exp overflow


@dataclass(frozen=True)
class YuNetConfig:
    """Decoder settings.

    score_threshold: minimum score (``sqrt(cls * obj)``); OpenCV's demo uses 0.9. Lower protects
        more faces and overwrites more background (on WIDER FACE val, alone: 0.5 protects 83.7%
        of faces >= 16 px for 3.6% of background, 0.3 protects 87.3% for 5.9%).
    iou_threshold: greedy NMS overlap above which a lower-scoring box is dropped.
    scale: resize factor applied to the image before the model (1.0: native resolution).
    max_side: cap on the longer side of the model input in pixels (after ``scale``).
    num_threads: interpreter threads.
    max_detections: cap on returned detections (highest scores first); ``None`` for no cap.
    """

    score_threshold: float = 0.5
    iou_threshold: float = 0.4
    scale: float = 1.0
    max_side: int | None = None
    num_threads: int = 1
    max_detections: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0.1 <= self.scale <= 4.0:
            raise ValueError(f"scale must be in [0.1, 4], got {self.scale}")
        if self.max_side is not None and self.max_side < ALIGN:
            raise ValueError(f"max_side must be at least {ALIGN}, got {self.max_side}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


def prepare(
    rgb: npt.NDArray[np.uint8],
    config: YuNetConfig,
    dtype: np.dtype[Any],
    q_scale: float,
    q_zero: int,
) -> tuple[npt.NDArray[Any], float, float]:
    """The model input (1, H32, W32, 3) for ``rgb`` and the x, y scale from image to input."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image {rgb.shape}")
    s = config.scale
    if config.max_side is not None and max(h, w) * s > config.max_side:
        s = config.max_side / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img: npt.NDArray[np.uint8] = rgb
    if (nh, nw) != (h, w):
        flag = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        img = np.asarray(cv2.resize(rgb, (nw, nh), interpolation=flag), dtype=np.uint8)
    ph, pw = _align(nh), _align(nw)
    if dtype == np.int8 and q_scale == 1.0 and q_zero == -128:
        buf = np.full((1, ph, pw, 3), -128, np.int8)
        np.bitwise_xor(img, np.uint8(0x80), out=buf[0, :nh, :nw].view(np.uint8))
        return buf, nw / w, nh / h
    if dtype == np.float32:
        fbuf = np.zeros((1, ph, pw, 3), np.float32)
        fbuf[0, :nh, :nw] = img
        return fbuf, nw / w, nh / h
    raise ModelError(f"unsupported YuNet input tensor type {dtype} (scale {q_scale})")


def _align(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)


def decode(
    heads: dict[int, npt.NDArray[np.float32]], threshold: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Candidate boxes (N, 4) in model-input pixels and their scores, before NMS.

    ``heads`` maps each stride to its ``(h, w, 6)`` grid.
    """
    # sqrt(sig(a) * sig(b)) > t  <=>  sig(a) * sig(b) > t^2: test it without a sqrt per cell
    t2 = threshold * threshold
    boxes, scores = [], []
    for stride, grid in sorted(heads.items()):
        cls_p = _sigmoid(grid[:, :, 0])
        # a cell passes only if both factors exceed t^2; check the cheap bound first
        cand = cls_p > t2
        if not cand.any():
            continue
        prob = np.where(cand, cls_p * _sigmoid(grid[:, :, 1]), 0.0)
        ys, xs = np.nonzero(prob > t2)
        if ys.size == 0:
            continue
        cell = grid[ys, xs].astype(np.float32)
        half_w = np.exp(np.minimum(cell[:, 4], _MAX_LOG_SIZE)) * (stride / 2)
        half_h = np.exp(np.minimum(cell[:, 5], _MAX_LOG_SIZE)) * (stride / 2)
        cx = (xs + cell[:, 2]) * stride
        cy = (ys + cell[:, 3]) * stride
        boxes.append(np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1))
        scores.append(np.sqrt(prob[ys, xs]))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
    )


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))
    return out


class YuNetDetector:
    """:class:`agent.vision.detection.Detector` for YuNet (int8 or float TFLite, any size).

    The constructor only stores; :meth:`load` opens the model. Pass the path from
    ``models.verified_path("yunet_int8")`` so the hash is checked. The interpreter is resized
    when the input shape changes (a fixed camera size never re-allocates).
    """

    def __init__(self, model_path: Path, config: YuNetConfig | None = None) -> None:
        self._path = model_path
        self._config = config or YuNetConfig()
        self._runtime: Runtime | None = None
        self._shape: tuple[int, ...] | None = None
        self._input: TensorInfo | None = None

    @property
    def config(self) -> YuNetConfig:
        return self._config

    def load(self, runtime: Runtime | None = None) -> YuNetDetector:
        """Open the model (or use ``runtime``) and check its signature."""
        rt = runtime or TFLiteRuntime(self._path, num_threads=self._config.num_threads).load()
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or len(ins[0].shape) != 4 or ins[0].shape[-1] != 3:
            raise ModelError(
                f"{self._path.name}: expected one input [1, H, W, 3], got "
                f"{[list(i.shape) for i in ins]}; is this the YuNet model?"
            )
        if len(outs) != len(STRIDES) or any(
            len(o.shape) != 4 or o.shape[-1] != CHANNELS for o in outs
        ):
            raise ModelError(
                f"{self._path.name}: expected {len(STRIDES)} outputs [1, H/s, W/s, {CHANNELS}], "
                f"got {[list(o.shape) for o in outs]}; rebuild it with models/recipe/yunet.py"
            )
        self._runtime = rt
        self._input = ins[0]
        return self

    def raw(
        self, rgb: npt.NDArray[np.uint8]
    ) -> tuple[dict[int, npt.NDArray[np.float32]], float, float]:
        """Run the model on ``rgb``: the grid per stride and the image-to-input scales."""
        info, rt = self._input, self._runtime
        if info is None or rt is None:
            raise RuntimeError("YuNetDetector.load() was not called")
        x, sx, sy = prepare(rgb, self._config, info.dtype, info.scale, info.zero_point)
        if tuple(x.shape) != self._shape:
            rt.resize_input(tuple(x.shape))
            self._shape = tuple(x.shape)
        outs = rt.run(x)
        heads: dict[int, npt.NDArray[np.float32]] = {}
        for out, oinfo in zip(outs, rt.outputs, strict=True):
            if out.dtype != np.float32:
                out = (out.astype(np.float32) - oinfo.zero_point) * np.float32(oinfo.scale)
            stride = x.shape[1] // out.shape[1]
            heads[stride] = out[0]
        if sorted(heads) != list(STRIDES):
            raise ModelError(f"{self._path.name}: output strides {sorted(heads)}, not {STRIDES}")
        return heads, sx, sy

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        cfg = self._config
        heads, sx, sy = self.raw(rgb)
        boxes, scores = decode(heads, cfg.score_threshold)
        if scores.size == 0:
            return []
        keep = nms(boxes, scores, cfg.iou_threshold, cfg.max_detections)
        h, w = rgb.shape[:2]
        out = boxes[keep]
        out[:, [0, 2]] = np.clip(out[:, [0, 2]] / sx, 0, w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]] / sy, 0, h)
        sc = scores[keep]
        return [
            Detection(Box(*(float(v) for v in out[i])), float(sc[i]))
            for i in range(len(keep))
            if out[i, 2] > out[i, 0] and out[i, 3] > out[i, 1]
        ]
