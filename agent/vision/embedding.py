"""Face embeddings on the device: align a face, run MobileFaceNet int8, keep the vector in RAM.

The model (``models/mobilefacenet_int8.tflite``, recipe ``models/recipe/mobilefacenet.py``) is
sirius-ai's MobileFaceNet (192-d), int8 convolutions with float PReLU. Input: one 112x112 RGB
face aligned on the standard 5-point template, standardised as ``(x - 127.5) / 128``; the
output's 192 values are normalised here in float.

Alignment (:mod:`agent.vision.align`) is two steps. :func:`align` (called where the frame is,
e.g. the pipeline thread) only cuts the square :data:`INPUT_SIZE` crop around the detector's
box; :meth:`FaceEmbedder.embed_crop` (the embedder's worker) finds five landmarks in that crop
with the landmark model (``models/centerface_landmarks_int8.tflite``) and warps the face onto
the template before embedding it. The detector's box alone is not enough: the same model on
plain box crops scores 80.7% accuracy on the dev pairs against 99.5% aligned
(docs/EMBEDDING.md).

The result is an :class:`Embedding`: a frozen, L2-normalised float32 vector that stays in memory.
Its class name is what ``agent.events`` refuses to encode, it refuses pickling and its ``repr``
shows no values, so a vector cannot reach an event, a log line or a file by accident.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.align import ALIGNED_SIZE, CROP_SIZE, Aligner, face_crop
from agent.vision.detection import Detection
from contract.errors import ModelError
from hw.runtime import Runtime, TensorInfo, TFLiteRuntime

logger = logging.getLogger(__name__)

MODEL = "mobilefacenet_int8"
"""Manifest name of the embedding model (its sha256 is what an enrolment gallery records)."""
LANDMARK_MODEL = "centerface_landmarks_int8"
"""Manifest name of the landmark model used to align faces."""
INPUT_SIZE = CROP_SIZE
"""Side of the square face crop :func:`align` cuts and :meth:`FaceEmbedder.embed_crop` takes."""
DIMENSIONS = 192


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
    """How faces are embedded.

    num_threads: interpreter threads (XNNPACK), for the embedding and the landmark model.
    flip: also embed the mirrored aligned face and average the two vectors (test-time
        augmentation; about twice the cost).
    """

    num_threads: int = 1
    flip: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_threads <= 64:
            raise ValueError(f"num_threads must be between 1 and 64, got {self.num_threads}")


def align(
    rgb: npt.NDArray[np.uint8],
    detection: Detection,
    margin: float = 0.0,
    use_landmarks: bool = True,
) -> npt.NDArray[np.uint8]:
    """The :data:`INPUT_SIZE` square crop around ``detection``'s face, for
    :meth:`FaceEmbedder.embed_crop` (which aligns it on its landmarks).

    ``margin`` and ``use_landmarks`` are accepted for the callers of the earlier box-crop
    embedder and ignored: the crop's geometry is fixed (:data:`agent.vision.align.CROP_GROW`)
    and alignment always uses the landmark model."""
    del margin, use_landmarks
    return face_crop(rgb, detection.box)


def standardize(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The model input for one aligned face: float32 (112, 112, 3), ``(x - 127.5) / 128``."""
    out: npt.NDArray[np.float32] = (crop.astype(np.float32) - np.float32(127.5)) / np.float32(128.0)
    return out


class FaceEmbedder:
    """MobileFaceNet int8 (or float, for evaluation) and the landmark model, through
    :mod:`hw.runtime`.

    The constructor only stores; :meth:`load` opens the models (or takes ready runtimes). Pass
    ``models.verified_path(MODEL)`` so the model hash is checked; the landmark model is
    ``landmark_path``, by default ``verified_path(LANDMARK_MODEL)`` in the same folder.
    """

    def __init__(
        self,
        model_path: Path,
        config: EmbedderConfig | None = None,
        landmark_path: Path | None = None,
    ) -> None:
        self._path = model_path
        self._config = config or EmbedderConfig()
        self._landmark_path = landmark_path
        self._runtime: Runtime | None = None
        self._aligner: Aligner | None = None
        self._in: TensorInfo | None = None
        self._out: TensorInfo | None = None

    @property
    def config(self) -> EmbedderConfig:
        return self._config

    def load(
        self, runtime: Runtime | None = None, landmark_runtime: Runtime | None = None
    ) -> FaceEmbedder:
        """Open the models; the embedding model must take [1, 112, 112, 3] and give 192 values."""
        rt = runtime or TFLiteRuntime(self._path, num_threads=self._config.num_threads).load()
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or tuple(ins[0].shape) != (1, ALIGNED_SIZE, ALIGNED_SIZE, 3):
            raise ModelError(
                f"{self._path.name}: expected one input [1, {ALIGNED_SIZE}, {ALIGNED_SIZE}, 3], "
                f"got {[list(i.shape) for i in ins]}; is this the MobileFaceNet embedding model?"
            )
        if len(outs) != 1 or int(np.prod(outs[0].shape)) != DIMENSIONS:
            raise ModelError(
                f"{self._path.name}: expected one output of {DIMENSIONS} values, got "
                f"{[list(o.shape) for o in outs]}; is this the MobileFaceNet embedding model?"
            )
        landmark_path = self._landmark_path
        if landmark_path is None and landmark_runtime is None:
            from models import verified_path

            landmark_path = verified_path(LANDMARK_MODEL, self._path.parent)
        aligner = Aligner(landmark_path or self._path, self._config.num_threads)
        self._aligner = aligner.load(landmark_runtime)
        self._runtime, self._in, self._out = rt, ins[0], outs[0]
        return self

    def embed(self, rgb: npt.NDArray[np.uint8], detection: Detection) -> Embedding:
        """Crop and align ``detection``'s face in the RGB frame ``rgb`` and embed it."""
        return self.embed_crop(align(rgb, detection))

    def embed_crop(self, crop: npt.NDArray[np.uint8]) -> Embedding:
        """Embed a :func:`align` crop: landmarks, alignment, then the model (``flip`` adds the
        mirrored face). A crop whose landmarks give no usable transform (e.g. a blank one) is
        embedded from its centre, resized, so this never fails on content."""
        if crop.shape != (INPUT_SIZE, INPUT_SIZE, 3) or crop.dtype != np.uint8:
            raise ValueError(
                f"expected a {INPUT_SIZE}x{INPUT_SIZE}x3 uint8 crop, got {crop.shape} {crop.dtype}"
            )
        aligner = self._aligner
        if aligner is None:
            raise RuntimeError("FaceEmbedder.load() was not called")
        try:
            face = aligner.align(np.ascontiguousarray(crop))
        except ValueError:
            face = _centre(crop)
        try:
            vector = self._raw(face)
            if self._config.flip:
                vector = _unit(vector) + _unit(self._raw(np.ascontiguousarray(face[:, ::-1])))
            return Embedding(vector)
        finally:
            face.fill(0)

    def _raw(self, face: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        rt, info, out_info = self._runtime, self._in, self._out
        if rt is None or info is None or out_info is None:
            raise RuntimeError("FaceEmbedder.load() was not called")
        x = standardize(face)[None]
        (out,) = rt.run(_quantize(x, info))
        return _dequantize(out, out_info).reshape(DIMENSIONS)


def _centre(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The face box's part of a crop (its central 1 / CROP_GROW), resized to the model input."""
    from agent.vision.align import CROP_GROW

    side = round(INPUT_SIZE / CROP_GROW)
    lo = (INPUT_SIZE - side) // 2
    out = cv2.resize(crop[lo : lo + side, lo : lo + side], (ALIGNED_SIZE, ALIGNED_SIZE))
    return np.asarray(out, dtype=np.uint8)


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
