"""Face embeddings on the device: crop a detected face, run FaceNet int8, keep the vector in RAM.

The model (``models/facenet_int8.tflite``, recipe ``models/recipe/facenet.py``) is David
Sandberg's FaceNet Inception-ResNet-v1 (checkpoint 20180408-102900, 512-d), cut before its L2
normalisation so the int8 graph ends on the 512 bottleneck values; :class:`FaceEmbedder`
normalises them in float. Input: one 160x160 RGB crop standardised as ``(x - 127.5) / 128``,
the "fixed image standardization" the 2018 checkpoints were trained with (FaceNet's older
per-image ``prewhiten`` is kept as an option: on LFW pairs it ruins this checkpoint, 86.8%
accuracy against 97.8% with the same landmark-aligned float model).

Cropping (:func:`align`): by default the detector's box, grown by ``margin``, is cropped and
resized to 160x160 without keeping its aspect ratio, as FaceNet's training crops were (MTCNN box
plus margin). With ``use_landmarks`` and a detector that gives landmarks (BlazeFace: eyes, nose
tip, mouth centre) a similarity transform (``cv2.estimateAffinePartial2D``) maps them onto
:data:`TEMPLATE` instead; that measured worse (see :class:`EmbedderConfig`), so it is opt-in.

The result is an :class:`Embedding`: a frozen, L2-normalised float32 vector that stays in memory.
Its class name is what ``agent.events`` refuses to encode, it refuses pickling and its ``repr``
shows no values, so a vector cannot reach an event, a log line or a file by accident.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.detection import Detection
from contract.errors import ModelError
from hw.runtime import Runtime, TensorInfo, TFLiteRuntime

logger = logging.getLogger(__name__)

INPUT_SIZE = 160
DIMENSIONS = 512
ALIGN_POINTS = 4  # BlazeFace keypoints used: right eye, left eye, nose tip, mouth centre

# Where the four keypoints land in the 160x160 crop (x, y): the subject's right eye (image left),
# left eye, nose tip, mouth centre. The medians of BlazeFace's keypoints inside the box crops
# (CenterFace box + 0.2 margin) of the 160 calibration faces (WIDER FACE val, never the
# verification pairs), made left-right symmetric: landmark-aligned crops frame a face as the box
# crops do, minus the roll and jitter.
TEMPLATE: npt.NDArray[np.float32] = np.array(
    [[52.8, 65.1], [109.0, 65.1], [80.9, 91.3], [80.9, 112.2]], np.float32
)

Standardize = Literal["prewhiten", "fixed"]


class Embedding:
    """One face's L2-normalised embedding: a read-only float32 vector, in memory only.

    Deliberately not a dataclass and not picklable: ``agent.events`` refuses any value whose
    class is named ``Embedding``, and nothing here turns the vector into bytes or text.
    """

    __slots__ = ("_vector",)
    _vector: npt.NDArray[np.float32]

    def __init__(self, vector: npt.NDArray[np.floating]) -> None:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("an embedding needs a finite, non-zero vector")
        v = v / np.float32(norm)
        v.flags.writeable = False
        object.__setattr__(self, "_vector", v)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Embedding is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Embedding never leaves the device: it cannot be pickled")

    def __repr__(self) -> str:
        return f"Embedding(dim={self._vector.size})"

    @property
    def vector(self) -> npt.NDArray[np.float32]:
        """The unit vector (read-only view)."""
        return self._vector

    @property
    def dim(self) -> int:
        return int(self._vector.size)

    def wipe(self) -> None:
        """Overwrite the vector with zeros (done when a re-identification window ends); the
        object then holds no trace of the face, and no longer a unit vector."""
        v = self._vector
        v.flags.writeable = True  # the array owns its memory (made in __init__)
        v.fill(0.0)
        v.flags.writeable = False

    def copy(self) -> Embedding:
        """An independent copy (its own memory, wiped on its own)."""
        out: Embedding = object.__new__(Embedding)
        v = self._vector.copy()
        v.flags.writeable = False
        object.__setattr__(out, "_vector", v)
        return out

    def cosine(self, other: Embedding) -> float:
        """Cosine similarity with ``other`` (both are unit vectors): 1 same, about 0 unrelated."""
        return float(np.dot(self._vector, other._vector))


@dataclass(frozen=True)
class EmbedderConfig:
    """How faces are cropped and embedded.

    num_threads: interpreter threads (XNNPACK).
    margin: for the box fallback (no landmarks): grow the box by this share of its width and
        height before cropping (0.2 adds 10% per side).
    flip: also embed the mirrored crop and average the two vectors (test-time augmentation;
        twice the cost).
    standardize: ``fixed`` (``(x - 127.5) / 128``, what checkpoint 20180408-102900 was trained
        with) or ``prewhiten`` (per-image mean and standard deviation, FaceNet's older input;
        wrong for this checkpoint, kept for other FaceNet graphs).
    use_landmarks: align from detector landmarks when present (BlazeFace's) instead of cropping
        the box. Off by default: measured on LFW pairs it is worse (TAR at FAR 1e-3 0.74 against
        0.95 for the box crop): the model was trained on MTCNN box crops resized without keeping
        the aspect ratio, which a similarity transform cannot reproduce, and BlazeFace's int8
        keypoints are noisy (docs/EMBEDDING.md).
    """

    num_threads: int = 1
    margin: float = 0.2
    flip: bool = False
    standardize: Standardize = "fixed"
    use_landmarks: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_threads <= 64:
            raise ValueError(f"num_threads must be between 1 and 64, got {self.num_threads}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2], got {self.margin}")
        if self.standardize not in ("prewhiten", "fixed"):
            raise ValueError(f"standardize must be prewhiten or fixed, got {self.standardize!r}")


def align(
    rgb: npt.NDArray[np.uint8],
    detection: Detection,
    margin: float = 0.2,
    use_landmarks: bool = True,
) -> npt.NDArray[np.uint8]:
    """The 160x160 RGB crop of ``detection``'s face: landmark-aligned, else the grown box."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    points = detection.landmarks
    if use_landmarks and points is not None and len(points) >= ALIGN_POINTS:
        src = np.asarray(points[:ALIGN_POINTS], np.float32)
        matrix, _ = cv2.estimateAffinePartial2D(src, TEMPLATE, method=cv2.LMEDS, refineIters=10)
        if matrix is not None and np.all(np.isfinite(matrix)):
            warped = cv2.warpAffine(
                rgb,
                matrix,
                (INPUT_SIZE, INPUT_SIZE),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            return np.asarray(warped, dtype=np.uint8)
    return crop_box(rgb, detection, margin)


def crop_box(
    rgb: npt.NDArray[np.uint8], detection: Detection, margin: float
) -> npt.NDArray[np.uint8]:
    """The box grown by ``margin``, resized to 160x160 (aspect not kept, as FaceNet's crops)."""
    box = detection.box.expand(margin)
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    x1, y1 = min(w, int(np.ceil(box.x1))), min(h, int(np.ceil(box.y1)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {detection.box} lies outside the {w}x{h} image")
    crop = rgb[y0:y1, x0:x1]
    small = max(x1 - x0, y1 - y0) > INPUT_SIZE
    flag = cv2.INTER_AREA if small else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=flag)
    return np.asarray(resized, dtype=np.uint8)


def standardize(
    crop: npt.NDArray[np.uint8], mode: Standardize = "fixed"
) -> npt.NDArray[np.float32]:
    """The model input for one crop: float32 (160, 160, 3)."""
    x = crop.astype(np.float32)
    if mode == "fixed":
        out: npt.NDArray[np.float32] = (x - np.float32(127.5)) / np.float32(128.0)
        return out
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    out = (x - np.float32(x.mean())) / np.float32(std)
    return out


class FaceEmbedder:
    """FaceNet int8 (or float, for evaluation) through :mod:`hw.runtime`.

    The constructor only stores; :meth:`load` opens the model (or takes a ready ``runtime``).
    Pass ``models.verified_path("facenet_int8")`` so the model hash is checked.
    """

    def __init__(self, model_path: Path, config: EmbedderConfig | None = None) -> None:
        self._path = model_path
        self._config = config or EmbedderConfig()
        self._runtime: Runtime | None = None
        self._in: TensorInfo | None = None
        self._out: TensorInfo | None = None

    @property
    def config(self) -> EmbedderConfig:
        return self._config

    def load(self, runtime: Runtime | None = None) -> FaceEmbedder:
        """Open the model and check it takes [1, 160, 160, 3] and gives 512 values."""
        rt = runtime or TFLiteRuntime(self._path, num_threads=self._config.num_threads).load()
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or tuple(ins[0].shape) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ModelError(
                f"{self._path.name}: expected one input [1, 160, 160, 3], got "
                f"{[list(i.shape) for i in ins]}; is this the FaceNet embedding model?"
            )
        if len(outs) != 1 or int(np.prod(outs[0].shape)) != DIMENSIONS:
            raise ModelError(
                f"{self._path.name}: expected one output of {DIMENSIONS} values, got "
                f"{[list(o.shape) for o in outs]}; is this the FaceNet embedding model?"
            )
        self._runtime, self._in, self._out = rt, ins[0], outs[0]
        return self

    def embed(self, rgb: npt.NDArray[np.uint8], detection: Detection) -> Embedding:
        """Align ``detection``'s face in the RGB frame ``rgb`` and embed it."""
        cfg = self._config
        return self.embed_crop(align(rgb, detection, cfg.margin, cfg.use_landmarks))

    def embed_crop(self, crop: npt.NDArray[np.uint8]) -> Embedding:
        """Embed an already aligned 160x160 RGB crop (``flip`` adds its mirror image)."""
        if crop.shape != (INPUT_SIZE, INPUT_SIZE, 3) or crop.dtype != np.uint8:
            raise ValueError(f"expected a 160x160x3 uint8 crop, got {crop.shape} {crop.dtype}")
        vector = self._raw(crop)
        if self._config.flip:
            vector = vector / np.linalg.norm(vector) + _unit(self._raw(crop[:, ::-1]))
        return Embedding(vector)

    def _raw(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        rt, info, out_info = self._runtime, self._in, self._out
        if rt is None or info is None or out_info is None:
            raise RuntimeError("FaceEmbedder.load() was not called")
        x = standardize(np.ascontiguousarray(crop), self._config.standardize)[None]
        (out,) = rt.run(_quantize(x, info))
        return _dequantize(out, out_info).reshape(DIMENSIONS)


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = v / np.float32(max(float(np.linalg.norm(v)), 1e-12))
    return out


def _quantize(x: npt.NDArray[np.float32], info: TensorInfo) -> npt.NDArray[Any]:
    if info.dtype == np.float32:
        return x
    q = np.round(x / info.scale) + info.zero_point
    lim = np.iinfo(info.dtype)
    out: npt.NDArray[Any] = np.clip(q, lim.min, lim.max).astype(info.dtype)
    return out


def _dequantize(value: npt.NDArray[Any], info: TensorInfo) -> npt.NDArray[np.float32]:
    if value.dtype == np.float32:
        return value
    out: npt.NDArray[np.float32] = (
        (value.astype(np.float32) - info.zero_point) * np.float32(info.scale)
    ).astype(np.float32)
    return out
