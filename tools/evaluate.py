"""`camveil eval`: how well the detector + redaction protect ground-truth faces.

Reads an ``annotations.jsonl`` (one JSON object per image: ``image``, ``width``, ``height``,
``faces`` and ``ignore`` as ``[x, y, w, h]`` integer boxes), runs detection and redaction on every
image, and measures:

- *protected*: share of ground-truth faces with at least 90% of their box pixels overwritten,
  overall and per size bucket of the longest side (<16, 16-31, 32-63, >=64 px);
- *face pixels leaked*: share of ground-truth face pixels left intact;
- *background overwritten*: share of pixels outside every face and ignore box that were overwritten;
- *seconds per megapixel* of detection + redaction (image decoding excluded);
- a 95% *interval* for each protected share and the background share: the 2.5th and 97.5th
  percentiles over 1,000 bootstrap resamples of the images (whole images, since faces in one
  photo are not independent). It says how far another set of the same kind may land.

``ignore`` boxes count neither as a miss nor as background.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.privacy.redact import RedactionConfig, redact, redaction_mask
from agent.vision.detection import Detector
from contract.errors import InputFileError
from hw.frame import Frame

logger = logging.getLogger(__name__)

PROTECTED_COVERAGE = 0.9
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("<16", 0, 16),
    ("16-31", 16, 32),
    ("32-63", 32, 64),
    (">=64", 64, 1 << 30),
)
GROUPS: dict[str, list[str]] = {
    "all": [b[0] for b in BUCKETS],
    ">=16": ["16-31", "32-63", ">=64"],
    ">=32": ["32-63", ">=64"],
}
BOOTSTRAP_RESAMPLES = 1000
_BUCKET_COLUMN = {name: i for i, (name, _, _) in enumerate(BUCKETS)}


@dataclass(frozen=True)
class Annotation:
    """One image's ground truth."""

    image: Path
    faces: tuple[tuple[int, int, int, int], ...]
    ignore: tuple[tuple[int, int, int, int], ...]


def read_annotations(dataset: Path) -> list[Annotation]:
    """Parse ``dataset/annotations.jsonl``; a malformed line is an :class:`InputFileError`."""
    path = dataset / "annotations.jsonl" if dataset.is_dir() else dataset
    root = path.parent
    if not path.is_file():
        raise InputFileError(
            f"{path} not found: --dataset must name a folder with annotations.jsonl"
        )
    out: list[Annotation] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                faces = tuple(_box(b) for b in raw.get("faces", []))
                ignore = tuple(_box(b) for b in raw.get("ignore", []))
                out.append(Annotation(root / str(raw["image"]), faces, ignore))
            except (ValueError, KeyError, TypeError) as exc:
                raise InputFileError(f"{path}:{lineno}: not a valid annotation ({exc})") from exc
    return out


def _box(raw: Any) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in raw)
    return x, y, w, h


@dataclass
class _Tally:
    faces: dict[str, int] = field(default_factory=lambda: {b[0]: 0 for b in BUCKETS})
    protected: dict[str, int] = field(default_factory=lambda: {b[0]: 0 for b in BUCKETS})
    face_pixels: int = 0
    face_pixels_left: int = 0
    background: int = 0
    background_hit: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    images: int = 0
    skipped: list[str] = field(default_factory=list)
    per_image: list[list[int]] = field(default_factory=list)
    """Per image: faces then protected faces per bucket, then background and background hit."""


def size_bucket(longest: int) -> str:
    """The size bucket (``BUCKETS``) of a face whose box's longest side is ``longest`` pixels."""
    for name, lo, hi in BUCKETS:
        if lo <= longest < hi:
            return name
    return BUCKETS[-1][0]


def face_coverage(
    mask: np.ndarray[Any, np.dtype[np.bool_]], box: tuple[int, int, int, int]
) -> tuple[int, int]:
    """Pixels of the face box ``(x, y, w, h)`` inside the frame, and how many ``mask`` covers."""
    height, width = mask.shape
    x, y, w, h = box
    region = mask[max(0, y) : min(height, y + h), max(0, x) : min(width, x + w)]
    return int(region.sum()), int(region.size)


def is_protected(covered: int, total: int) -> bool:
    """A face is protected when at least ``PROTECTED_COVERAGE`` of its box is overwritten."""
    return covered >= PROTECTED_COVERAGE * total


def background_overwritten(
    mask: np.ndarray[Any, np.dtype[np.bool_]], boxes: Iterable[tuple[int, int, int, int]]
) -> tuple[int, int]:
    """Background pixels (outside every face and ignore box ``(x, y, w, h)``) and how many of
    them ``mask`` covers."""
    not_background = np.zeros_like(mask)
    for x, y, w, h in boxes:
        not_background[max(0, y) : y + h, max(0, x) : x + w] = True
    background = ~not_background
    return int(background.sum()), int((mask & background).sum())


def evaluate(
    detector: Detector,
    annotations: list[Annotation],
    redaction: RedactionConfig,
    progress: Callable[[Iterator[Annotation]], Iterator[Annotation]] | None = None,
) -> dict[str, Any]:
    """Run the detector + redaction over ``annotations``; return the report as a dict."""
    tally = _Tally()
    items: Iterator[Annotation] = iter(annotations)
    if progress is not None:
        items = progress(items)
    for ann in items:
        try:
            with Image.open(ann.image) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            tally.skipped.append(f"{ann.image}: {exc}")
            continue
        height, width = rgb.shape[:2]
        frame = Frame(rgb, index=tally.images, ts=0.0, mono=0.0, source=str(ann.image))
        start = time.perf_counter()
        detections = detector.detect(frame.pixels)
        regions = [d.box for d in detections]
        redact(frame, regions, redaction)
        tally.seconds += time.perf_counter() - start
        tally.megapixels += width * height / 1e6
        tally.images += 1
        mask = redaction_mask((height, width), regions, redaction.margin)
        _score(tally, mask, ann)
    return _report(tally)


def _score(tally: _Tally, mask: np.ndarray[Any, np.dtype[np.bool_]], ann: Annotation) -> None:
    k = len(BUCKETS)
    row = [0] * (2 * k + 2)  # faces per bucket, protected per bucket, background, hit
    faces = [(x, y, w, h) for x, y, w, h in ann.faces if w > 0 and h > 0]
    for face in faces:
        covered, total = face_coverage(mask, face)
        if total == 0:
            continue
        column = _BUCKET_COLUMN[size_bucket(max(face[2], face[3]))]
        row[column] += 1
        if is_protected(covered, total):
            row[k + column] += 1
        tally.face_pixels += total
        tally.face_pixels_left += total - covered
    row[2 * k], row[2 * k + 1] = background_overwritten(mask, [*ann.ignore, *faces])
    for name, column in _BUCKET_COLUMN.items():
        tally.faces[name] += row[column]
        tally.protected[name] += row[k + column]
    tally.background += row[2 * k]
    tally.background_hit += row[2 * k + 1]
    tally.per_image.append(row)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _intervals(per_image: list[list[int]], seed: int = 0) -> dict[str, list[float] | None]:
    """95% percentile intervals of each protected share and of the background share."""
    rows = np.asarray(per_image, dtype=np.float64).reshape(-1, 2 * len(BUCKETS) + 2)
    n = len(rows)
    if n < 2:
        return {}
    picks = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    sums = rows[picks].sum(axis=1)  # (resamples, columns)
    k = len(BUCKETS)
    column = _BUCKET_COLUMN
    out: dict[str, list[float] | None] = {}
    named = {name: [name] for name, _, _ in BUCKETS} | GROUPS
    for name, members in named.items():
        faces = sum(sums[:, column[m]] for m in members)
        hits = sum(sums[:, k + column[m]] for m in members)
        out[name] = _percentiles(hits, faces)
    out["background_overwritten"] = _percentiles(sums[:, 2 * k + 1], sums[:, 2 * k])
    return out


def _percentiles(num: Any, den: Any) -> list[float] | None:
    ok = den > 0
    if not ok.any():
        return None
    lo, hi = np.percentile(num[ok] / den[ok], [2.5, 97.5])
    return [float(lo), float(hi)]


def _report(t: _Tally) -> dict[str, Any]:
    protected: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for name, _, _ in BUCKETS:
        protected[name] = _ratio(t.protected[name], t.faces[name])
        counts[name] = t.faces[name]
    for group, names in GROUPS.items():
        protected[group] = _ratio(
            sum(t.protected[n] for n in names), sum(t.faces[n] for n in names)
        )
        counts[group] = sum(t.faces[n] for n in names)
    return {
        "images": t.images,
        "skipped": t.skipped,
        "faces": counts,
        "protected": protected,
        "face_pixels_leaked": _ratio(t.face_pixels_left, t.face_pixels),
        "background_overwritten": _ratio(t.background_hit, t.background),
        "seconds_per_megapixel": t.seconds / t.megapixels if t.megapixels else None,
        "megapixels": t.megapixels,
        "interval95": _intervals(t.per_image),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a report from :func:`evaluate`."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:6.2f}%"

    lines = [f"images: {report['images']}  ({report['megapixels']:.1f} MP)"]
    for skipped in report["skipped"]:
        lines.append(f"  skipped {skipped}")
    lines.append("protected faces (>= 90% of box pixels overwritten):")
    intervals = report.get("interval95", {})

    def interval(name: str) -> str:
        iv = intervals.get(name)
        return "" if iv is None else f"   (95% interval {pct(iv[0])} - {pct(iv[1])})"

    for name in ["<16", "16-31", "32-63", ">=64", ">=16", ">=32", "all"]:
        lines.append(
            f"  {name:>6}: {pct(report['protected'][name])}  of {report['faces'][name]:<5}"
            + interval(name)
        )
    lines.append(f"face pixels leaked:      {pct(report['face_pixels_leaked'])}")
    lines.append(
        f"background overwritten:  {pct(report['background_overwritten'])}"
        + interval("background_overwritten")
    )
    if intervals:
        lines.append(f"intervals: {BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the images")
    spm = report["seconds_per_megapixel"]
    lines.append("time per megapixel:      " + ("n/a" if spm is None else f"{spm:.4f} s"))
    return "\n".join(lines)


def check_floor(report: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    """Names of the floor entries the report falls below (empty when all hold).

    ``floor`` maps ``protected.<bucket>`` to a minimum, ``background_overwritten`` and
    ``seconds_per_megapixel`` to a maximum.
    """
    failures: list[str] = []
    for bucket, minimum in floor.get("protected", {}).items():
        value = report["protected"].get(bucket)
        if value is None or value < minimum:
            failures.append(f"protected[{bucket}] = {value} < floor {minimum}")
    for key in ("background_overwritten", "seconds_per_megapixel", "face_pixels_leaked"):
        if key in floor:
            value = report.get(key)
            if value is None or value > floor[key]:
                failures.append(f"{key} = {value} > ceiling {floor[key]}")
    return failures
