"""A second look at CenterFace's uncertain candidates: YuNet on one mosaic of their crops.

A measurement, not a detector option: on the dev set it protects no more faces than lowering
CenterFace's own thresholds to the same background (docs/PROTECTION.md, "A second look at
uncertain candidates"), so the unit does not ship it. It is kept so that held-back data can
check that verdict: ``python -m tools.second_look --dataset DIR`` prints ``camveil eval``'s
report for CenterFace with the second look.

CenterFace finds nearly every face at a low score, but at that score it also boxes clutter
(on WIDER FACE val, candidates scoring 0.02 and up cover 99.4% of faces of 16 px and more, and
35% of the background). :class:`SecondLookDetector` keeps CenterFace's detections as they are and
gives each candidate in the band ``[band_low, threshold)`` a second opinion from another model:

1. each candidate's box, grown to a square of ``context`` times its longest side about its
   centre, is cut out of the frame and resized into one ``cell`` x ``cell`` cell of a mosaic of
   ``columns`` x ``columns`` cells (black outside the frame), so the face fills about
   ``1 / context`` of its cell whatever its size in the frame;
2. YuNet runs once on the whole mosaic (one interpreter call for up to ``columns ** 2``
   candidates instead of one per crop; the mosaic has a fixed size, so it never re-allocates);
3. a candidate is kept when YuNet scores a face at least ``score_threshold`` whose centre lies
   in the middle of the candidate's cell (within a quarter of the cell of its centre, where the
   candidate's own centre is) and whose size is within a factor 2 of the candidate's in the cell.

Kept candidates become detections with CenterFace's box and score. The rest are dropped, as they
are without a second look. Candidates are looked at highest score first, at most
``max_candidates`` a frame (the cost is bounded; those past the cap are dropped, as without a
second look). An error in either model propagates, so the frame is dropped (fail closed).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.centerface import CenterFaceDetector
from agent.vision.detection import Box, Detection
from agent.vision.yunet import ALIGN, YuNetDetector, decode


@dataclass(frozen=True)
class SecondLookConfig:
    """How uncertain candidates are looked at again.

    band_low: lowest CenterFace score given a second look; candidates from here up to their
        size's threshold are candidates for the mosaic.
    score_threshold: the YuNet score a candidate's cell needs (YuNet's own threshold as a
        detector on whole frames is 0.5).
    cell: side of a mosaic cell in pixels (YuNet finds faces of about 10 px and more; a face
        fills ``cell / context`` of it).
    context: crop side as a multiple of the candidate box's longest side (YuNet was trained on
        whole photos: a face needs some head and background around it to be recognised).
    columns: the mosaic is ``columns`` x ``columns`` cells.
    max_candidates: at most this many candidates a frame, highest score first (a multiple of
        ``columns ** 2``: each full mosaic is one YuNet run).
    """

    band_low: float = 0.05
    score_threshold: float = 0.5
    cell: int = 64
    context: float = 2.0
    columns: int = 8
    max_candidates: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.band_low < 1.0:
            raise ValueError(f"band_low must be in (0, 1), got {self.band_low}")
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 16 <= self.cell <= 256:
            raise ValueError(f"cell must be in [16, 256] pixels, got {self.cell}")
        if not 1.0 <= self.context <= 4.0:
            raise ValueError(f"context must be in [1, 4], got {self.context}")
        if not 1 <= self.columns <= 32:
            raise ValueError(f"columns must be in [1, 32], got {self.columns}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")

    @property
    def cells(self) -> int:
        """Cells in one mosaic."""
        return self.columns * self.columns

    @property
    def side(self) -> int:
        """Side of the mosaic in pixels (a multiple of the model's alignment)."""
        return -(-self.columns * self.cell // ALIGN) * ALIGN


def crop_squares(boxes: npt.NDArray[np.float32], context: float) -> npt.NDArray[np.float64]:
    """Square crops (N, 3) ``x0, y0, side`` in frame pixels: each box's longest side times
    ``context``, about the box's centre."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * context
    side = np.maximum(side, 1.0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, side], axis=1)


def cell_origin(index: int, config: SecondLookConfig) -> tuple[int, int]:
    """Top-left (x, y) in mosaic pixels of cell ``index`` (row by row) of a mosaic."""
    if not 0 <= index < config.cells:
        raise ValueError(f"cell {index} is outside a mosaic of {config.cells} cells")
    row, col = divmod(index, config.columns)
    return col * config.cell, row * config.cell


def build_mosaic(
    rgb: npt.NDArray[np.uint8], squares: npt.NDArray[np.float64], config: SecondLookConfig
) -> npt.NDArray[np.uint8]:
    """One mosaic (side, side, 3) holding the crop ``squares[i]`` of ``rgb`` in cell ``i``.

    A crop is resized so its square fills the cell; parts outside the frame stay black.
    """
    if len(squares) > config.cells:
        raise ValueError(f"{len(squares)} crops do not fit in {config.cells} cells")
    h, w = rgb.shape[:2]
    c = config.cell
    mosaic = np.zeros((config.side, config.side, 3), np.uint8)
    for i, (x0, y0, side) in enumerate(squares):
        ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        ix1, iy1 = min(w, math.ceil(x0 + side)), min(h, math.ceil(y0 + side))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        s = c / side  # frame -> cell
        cx0, cy0 = _clamp(round((ix0 - x0) * s), c), _clamp(round((iy0 - y0) * s), c)
        cx1, cy1 = _clamp(round((ix1 - x0) * s), c), _clamp(round((iy1 - y0) * s), c)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        src = rgb[iy0:iy1, ix0:ix1]
        shrink = (cx1 - cx0) < (ix1 - ix0)
        flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        mx, my = cell_origin(i, config)
        dst = mosaic[my + cy0 : my + cy1, mx + cx0 : mx + cx1]
        dst[...] = cv2.resize(src, (cx1 - cx0, cy1 - cy0), interpolation=flag)
    return mosaic


def _clamp(v: int, hi: int) -> int:
    return min(max(v, 0), hi)


def cell_scores(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    n: int,
    config: SecondLookConfig,
) -> npt.NDArray[np.float32]:
    """The best score (0 if none) of the mosaic ``boxes`` (M, 4) that vouch for each of the
    first ``n`` cells: centre within a quarter cell of the cell's centre, longest side within a
    factor 2 of the face size a cell holds (``cell / context``)."""
    best = np.zeros(n, np.float32)
    if len(boxes) == 0 or n == 0:
        return best
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = config.cell
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    col, row = np.floor(cx / c).astype(np.int64), np.floor(cy / c).astype(np.int64)
    inside = (col >= 0) & (col < config.columns) & (row >= 0) & (row < config.columns)
    index = row * config.columns + col
    centred = (np.abs(cx - (col + 0.5) * c) <= c / 4) & (np.abs(cy - (row + 0.5) * c) <= c / 4)
    face = c / config.context
    longest = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    sized = (longest >= face / 2) & (longest <= face * 2)
    ok = inside & centred & sized & (index < n)
    np.maximum.at(best, index[ok], np.asarray(scores, np.float32)[ok])
    return best


class SecondLookDetector:
    """:class:`agent.vision.detection.Detector`: CenterFace's detections, plus its uncertain
    candidates that YuNet confirms on a mosaic of their crops (see the module docstring)."""

    def __init__(
        self, centerface: CenterFaceDetector, yunet: YuNetDetector, config: SecondLookConfig
    ) -> None:
        self._centerface = centerface
        self._yunet = yunet
        self._config = config

    @property
    def config(self) -> SecondLookConfig:
        return self._config

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        cfg = self._config
        cand = self._centerface.candidates(rgb, floor=cfg.band_low)
        sure = cand.scores >= cand.needed
        band = np.flatnonzero(~sure)[: cfg.max_candidates]  # highest score first
        keep = sure.copy()
        if band.size:
            keep[band] = self.confirm(rgb, cand.boxes[band])
        return [
            Detection(Box(*(float(v) for v in cand.boxes[i])), float(cand.scores[i]))
            for i in np.flatnonzero(keep)
        ]

    def confirm(
        self, rgb: npt.NDArray[np.uint8], boxes: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.bool_]:
        """Which of ``boxes`` (frame pixels) YuNet finds a face in, one mosaic per
        ``columns ** 2`` boxes."""
        cfg = self._config
        squares = crop_squares(boxes, cfg.context)
        out = np.zeros(len(boxes), bool)
        for start in range(0, len(boxes), cfg.cells):
            part = squares[start : start + cfg.cells]
            mosaic = build_mosaic(rgb, part, cfg)
            heads, _, _ = self._yunet.raw(mosaic)
            found, scores = decode(heads, cfg.score_threshold)
            best = cell_scores(found, scores, len(part), cfg)
            out[start : start + len(part)] = best >= cfg.score_threshold
        return out


def build(config: SecondLookConfig, threads: int = 1) -> SecondLookDetector:
    """The default CenterFace and YuNet (hashes checked), loaded, behind a second look."""
    from agent.vision.centerface import CenterFaceConfig
    from agent.vision.yunet import YuNetConfig
    from models import verified_path

    centerface = CenterFaceDetector(
        verified_path("centerface_int8"), CenterFaceConfig(num_threads=threads)
    ).load()
    yunet = YuNetDetector(verified_path("yunet_int8"), YuNetConfig(num_threads=threads)).load()
    return SecondLookDetector(centerface, yunet, config)


def main(argv: list[str] | None = None) -> int:
    """``camveil eval``'s report for CenterFace (its defaults) with a second look."""
    from agent.privacy.redact import RedactionConfig
    from tools.evaluate import evaluate, format_report, read_annotations

    parser = argparse.ArgumentParser(prog="python -m tools.second_look", description=main.__doc__)
    parser.add_argument("--dataset", type=Path, required=True, help="folder with annotations.jsonl")
    parser.add_argument("--band-low", type=float, default=SecondLookConfig.band_low)
    parser.add_argument("--score", type=float, default=SecondLookConfig.score_threshold)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    args = parser.parse_args(argv)
    config = SecondLookConfig(band_low=args.band_low, score_threshold=args.score)
    annotations = read_annotations(args.dataset)
    if args.limit > 0:
        annotations = annotations[: args.limit]
    report = evaluate(build(config), annotations, RedactionConfig())
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
