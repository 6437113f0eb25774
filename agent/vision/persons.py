"""Person detector for visitor counting: MediaPipe's BlazePose detector, int8
(``pose_detection_int8``; ``models/recipe/pose_detection.py`` quantizes MediaPipe's float model).

Re-identification counts people who never show a face (seen from behind) with it; it is never
used for redaction (:mod:`agent.vision.reid`). The model takes one RGB image letterboxed to
224x224 and scaled to [-1, 1] and returns, for each of 2,254 SSD anchors (strides 8, 16, 32,
32, 32: a 28x28 grid with 2 anchors a cell, 14x14 with 2, 7x7 with 6; centres at
(i + 0.5) / grid), a logit and 12 regressors in input pixels relative to the anchor: the box
of the head and shoulders, then four keypoints: hip centre, a point whose distance to the hip
centre is the radius of a circle around the whole body, shoulder centre and an upper-body
radius point. It finds people from behind as well as from the front (it is trained on whole
bodies, not on faces).

Decoding as MediaPipe's pose detection graph: sigmoid of the clipped logit, a score threshold
(MediaPipe 0.5), weighted NMS at IoU 0.3 on the head boxes, then greedy NMS at IoU 0.3 on the
person boxes, and a box lying 80% inside a higher-scoring one is dropped. The person's box is
the body circle's square narrowed to half its width (a standing person is about half as wide as
tall), clipped to the image; ``landmarks`` holds the head box's centre first, then the four
keypoints, in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from agent.vision.blazeface import Letterbox, decode_anchors, letterbox, weighted_nms
from agent.vision.detection import Box, Detection
from agent.vision.nms import nms
from contract.errors import ModelError
from hw.runtime import Runtime, TFLiteRuntime

MODEL: Final = "pose_detection_int8"
INPUT_SIZE: Final = 224
STRIDES: Final = (8, 16, 32, 32, 32)
NUM_ANCHORS: Final = 2254
REGRESSORS: Final = 12
KEYPOINTS: Final = 4


@dataclass(frozen=True)
class PersonDetectorConfig:
    """Decoder settings."""

    score_threshold: float = 0.5
    """Minimum sigmoid score (MediaPipe's). On the replay video (people from behind) people
    score 0.66-0.98 and the empty room below 0.5 in every frame."""
    iou_threshold: float = 0.3
    num_threads: int = 1
    width_share: float = 0.5
    """Width of the person box as a share of the body circle's diameter."""
    body_iou: float = 0.3
    """Second NMS, on the person boxes: two head boxes of one person (a head seen from behind
    can give two) are one person when their bodies overlap by more than this."""
    body_cover: float = 0.8
    """A person box that lies this much (share of its area) inside a higher-scoring one is the
    same person (a part of a body taken for a smaller person), not a second one."""

    def __post_init__(self) -> None:
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0.0 < self.body_cover <= 1.0:
            raise ValueError(f"body_cover must be in (0, 1], got {self.body_cover}")
        if not 0.0 < self.body_iou <= 1.0:
            raise ValueError(f"body_iou must be in (0, 1], got {self.body_iou}")
        if not 0.1 <= self.width_share <= 1.0:
            raise ValueError(f"width_share must be in [0.1, 1], got {self.width_share}")


def anchor_centres() -> npt.NDArray[np.float32]:
    """Anchor centres (2254, 2) in input pixels (x, y), in the model's output order."""
    out: list[npt.NDArray[np.float32]] = []
    i = 0
    while i < len(STRIDES):
        stride, per_cell = STRIDES[i], 0
        while i < len(STRIDES) and STRIDES[i] == stride:
            per_cell += 2
            i += 1
        grid = INPUT_SIZE // stride
        idx = (np.arange(grid, dtype=np.float32) + 0.5) * (INPUT_SIZE / grid)
        ys, xs = np.meshgrid(idx, idx, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


class PersonDetector:
    """:class:`agent.vision.detection.Detector` of people (``kind="person"``).

    The constructor only stores; :meth:`load` opens the model (or takes a ready ``runtime``).
    Pass the path from ``models.verified_path("pose_detection_int8")`` so the hash is checked.
    """

    def __init__(self, model_path: Path, config: PersonDetectorConfig | None = None) -> None:
        self._path = model_path
        self.config = config or PersonDetectorConfig()
        self._runtime: Runtime | None = None
        self._anchors = anchor_centres()
        self._box_out = 0
        self._score_out = 1

    def load(self, runtime: Runtime | None = None) -> PersonDetector:
        """Open the model (or use ``runtime``) and check its input and output shapes."""
        rt = runtime or TFLiteRuntime(self._path, num_threads=self.config.num_threads).load()
        ins, outs = rt.inputs, rt.outputs
        if len(ins) != 1 or tuple(ins[0].shape) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ModelError(
                f"{self._path.name}: expected one input [1, 224, 224, 3], got "
                f"{[list(i.shape) for i in ins]}; is this MediaPipe's pose_detection?"
            )
        if ins[0].dtype != np.float32:
            raise ModelError(f"{self._path.name}: expected a float32 input")
        shapes = [tuple(o.shape) for o in outs]
        try:
            self._box_out = shapes.index((1, NUM_ANCHORS, REGRESSORS))
            self._score_out = shapes.index((1, NUM_ANCHORS, 1))
        except ValueError:
            raise ModelError(
                f"{self._path.name}: expected outputs [1, 2254, 12] and [1, 2254, 1], got "
                f"{[list(s) for s in shapes]}; is this MediaPipe's pose_detection?"
            ) from None
        self._runtime = rt
        return self

    def raw(
        self, rgb: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Letterbox]:
        """Run the model: regressors (2254, 12), logits (2254,) and the letterbox used."""
        rt = self._runtime
        if rt is None:
            raise RuntimeError("PersonDetector.load() was not called")
        canvas, lb = letterbox(rgb, INPUT_SIZE, "area")
        x: npt.NDArray[Any] = canvas.astype(np.float32)[None] * np.float32(2.0 / 255.0)
        x -= np.float32(1.0)
        outputs = rt.run(x)
        regs = np.asarray(outputs[self._box_out], np.float32).reshape(NUM_ANCHORS, REGRESSORS)
        logits = np.asarray(outputs[self._score_out], np.float32).reshape(NUM_ANCHORS)
        return regs, logits, lb

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        cfg = self.config
        regs, logits, lb = self.raw(rgb)
        heads, head_scores, points = decode_anchors(
            regs, logits, self._anchors, KEYPOINTS, cfg.score_threshold
        )
        if head_scores.size == 0:
            return []
        merged, sc, kp = weighted_nms(heads, head_scores, cfg.iou_threshold, points)
        h, w = rgb.shape[:2]
        head_img = lb.to_image(merged)
        kp_img = lb.points_to_image(kp.reshape(-1, 2)).reshape(-1, KEYPOINTS, 2)
        hip = kp_img[:, 0]
        radius = np.hypot(*(kp_img[:, 1] - hip).T)
        half = radius * cfg.width_share
        bodies = np.stack(
            [
                np.clip(hip[:, 0] - half, 0, w),
                np.clip(hip[:, 1] - radius, 0, h),
                np.clip(hip[:, 0] + half, 0, w),
                np.clip(hip[:, 1] + radius, 0, h),
            ],
            axis=1,
        )
        out: list[Detection] = []
        for i in nms(bodies, sc, cfg.body_iou):
            x0, y0, x1, y1 = (float(v) for v in bodies[i])
            if x1 <= x0 or y1 <= y0 or any(_covered(bodies[i], d.box, cfg.body_cover) for d in out):
                continue
            head = head_img[i]
            centre = (float(head[0] + head[2]) / 2, float(head[1] + head[3]) / 2)
            out.append(
                Detection(
                    Box(x0, y0, x1, y1),
                    float(sc[i]),
                    kind="person",
                    landmarks=(centre, *((float(x), float(y)) for x, y in kp_img[i])),
                )
            )
        return out


def _covered(box: npt.NDArray[np.float32], by: Box, share: float) -> bool:
    """``box`` (x0, y0, x1, y1) lies at least ``share`` of its area inside ``by``."""
    ix = min(float(box[2]), by.x1) - max(float(box[0]), by.x0)
    iy = min(float(box[3]), by.y1) - max(float(box[1]), by.y0)
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    return ix > 0 and iy > 0 and ix * iy >= share * area


def build_person_detector(
    config: PersonDetectorConfig | None = None, models_dir: Path | None = None
) -> PersonDetector:
    """Load the person detector (hash checked against the manifest; ModelError if it differs)."""
    from models import MODELS_DIR, verified_path

    return PersonDetector(verified_path(MODEL, models_dir or MODELS_DIR), config).load()


__all__ = [
    "MODEL",
    "PersonDetector",
    "PersonDetectorConfig",
    "anchor_centres",
    "build_person_detector",
]
