"""`camveil eval-embed`: face verification accuracy of the embedding model on labelled pairs.

Reads ``pairs.tsv`` (``image_a  image_b  same(1|0)  source  fold``, paths relative to the
dataset folder, a header line first), finds the largest face in every image with camveil's own
detector, cuts its crop (:func:`agent.vision.embedding.align`), aligns it on five landmarks and
embeds it (:meth:`~agent.vision.embedding.FaceEmbedder.embed_crop`) and scores each pair by the
cosine similarity of the two embeddings. An image in which no face is found counts as a miss:
its pairs get similarity -1 (a rejection: a false reject if the pair is the same person).

Reported per model (int8, and the float reference when given):

- ``accuracy`` at the best threshold on this set (optimistic: the threshold is fitted here) and
  that ``threshold``;
- ``tar_at_far_1e-2`` / ``tar_at_far_1e-3``: share of same-person pairs accepted at the lowest
  threshold that accepts at most ``floor(FAR * negatives)`` different-person pairs (with 705
  negatives, FAR 1e-3 means no false accept at all);
- ``auc``: area under the ROC curve (ties count one half);
- ``ms_per_face``: median time to embed one face crop: landmark model, alignment warp,
  standardise, embedding model, normalise (one interpreter thread; detection not included).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from agent.vision.detection import Detection, Detector
from agent.vision.embedding import Embedding, FaceEmbedder, align
from contract.errors import InputFileError

logger = logging.getLogger(__name__)

FARS: tuple[tuple[str, float], ...] = (("tar_at_far_1e-2", 1e-2), ("tar_at_far_1e-3", 1e-3))
MISSING_SIMILARITY = -1.0

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterator[T]]


@dataclass(frozen=True)
class Pair:
    """Two images and whether they show the same person."""

    a: str
    b: str
    same: bool
    source: str = ""


def read_pairs(dataset: Path) -> list[Pair]:
    """Parse ``dataset/pairs.tsv``; a malformed line is an :class:`InputFileError`."""
    path = dataset / "pairs.tsv" if dataset.is_dir() else dataset
    if not path.is_file():
        raise InputFileError(f"{path} not found: --dataset must name a folder with pairs.tsv")
    pairs: list[Pair] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or (lineno == 1 and row[0] == "image_a"):
                continue
            if len(row) < 3 or row[2] not in ("0", "1") or not row[0] or not row[1]:
                raise InputFileError(
                    f"{path}:{lineno}: expected image_a<TAB>image_b<TAB>0|1, got {row[:3]}"
                )
            pairs.append(Pair(row[0], row[1], row[2] == "1", row[3] if len(row) > 3 else ""))
    if not pairs:
        raise InputFileError(f"{path} has no pairs")
    if all(p.same for p in pairs) or not any(p.same for p in pairs):
        raise InputFileError(f"{path}: needs both same-person and different-person pairs")
    return pairs


def load_rgb(root: Path, name: str) -> npt.NDArray[np.uint8]:
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputFileError(f"{name}: image path leaves the dataset folder")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputFileError(f"{path}: cannot read image ({exc})") from exc


def pick_face(
    detections: list[Detection], width: int, height: int, pick: str = "central"
) -> Detection | None:
    """The face a pair is about, among confident faces (score at least half the best one; the
    detector's privacy thresholds are low and let weak boxes through): the ``largest`` box, or
    ``central``: the face whose box centre is nearest the image centre, among faces at least a
    quarter the area of the largest (LFW's images are centred on their subject, and other
    people often share the frame)."""
    faces = [d for d in detections if d.kind == "face"]
    if not faces:
        return None
    best = max(d.score for d in faces)
    faces = [d for d in faces if d.score >= best / 2]
    largest = max(faces, key=lambda d: d.box.area)
    if pick == "largest":
        return largest
    big = [d for d in faces if d.box.area >= largest.box.area / 4]
    cx, cy = width / 2, height / 2
    return min(
        big,
        key=lambda d: math.hypot((d.box.x0 + d.box.x1) / 2 - cx, (d.box.y0 + d.box.y1) / 2 - cy),
    )


def aligned_crops(
    detector: Detector,
    root: Path,
    images: list[str],
    pick: str = "central",
    progress: Progress[str] | None = None,
) -> dict[str, npt.NDArray[np.uint8] | None]:
    """The face crop (:func:`align`) of the picked face in each image (``None`` where none is
    found); the embedder aligns it."""
    out: dict[str, npt.NDArray[np.uint8] | None] = {}
    for name in progress(images) if progress else images:
        rgb = load_rgb(root, name)
        face = pick_face(detector.detect(rgb), rgb.shape[1], rgb.shape[0], pick)
        out[name] = None if face is None else align(rgb, face)
    return out


def embed_crops(
    embedder: FaceEmbedder,
    crops: dict[str, npt.NDArray[np.uint8] | None],
    progress: Progress[str] | None = None,
) -> tuple[dict[str, Embedding], float]:
    """Embeddings of the crops and the median milliseconds per face (embedding only; the median
    shrugs off other processes' bursts on a shared machine, the mean would not)."""
    names = [n for n, c in crops.items() if c is not None]
    out: dict[str, Embedding] = {}
    spent: list[float] = []
    for name in progress(names) if progress else names:
        crop = crops[name]
        assert crop is not None
        start = time.perf_counter()
        out[name] = embedder.embed_crop(crop)
        spent.append(time.perf_counter() - start)
    return out, 1000.0 * float(np.median(spent)) if spent else 0.0


def similarities(pairs: list[Pair], embeddings: dict[str, Embedding]) -> npt.NDArray[np.float64]:
    """Cosine similarity per pair; :data:`MISSING_SIMILARITY` where a face is missing."""
    sims = np.full(len(pairs), MISSING_SIMILARITY, np.float64)
    for i, p in enumerate(pairs):
        ea, eb = embeddings.get(p.a), embeddings.get(p.b)
        if ea is not None and eb is not None:
            sims[i] = ea.cosine(eb)
    return sims


def verification_metrics(
    sims: npt.NDArray[np.float64], same: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """Accuracy at the best threshold, TAR at fixed FARs and ROC AUC of similarity scores."""
    pos, neg = np.sort(sims[same]), np.sort(sims[~same])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need both same-person and different-person pairs")
    report: dict[str, Any] = {"positives": int(pos.size), "negatives": int(neg.size)}
    # accept when sim > t; candidate thresholds: below every score, then at every score
    candidates = np.concatenate([[-math.inf], np.unique(sims)])
    accepted_pos = pos.size - np.searchsorted(pos, candidates, side="right")
    accepted_neg = neg.size - np.searchsorted(neg, candidates, side="right")
    correct = accepted_pos + (neg.size - accepted_neg)
    best = int(np.argmax(correct))
    report["accuracy"] = float(correct[best] / sims.size)
    report["threshold"] = float(candidates[best]) if best else float(np.min(sims))
    for key, far in FARS:
        allowed = math.floor(far * neg.size)  # false accepts allowed
        threshold = float(neg[neg.size - 1 - allowed]) if allowed < neg.size else -math.inf
        report[key] = float(np.count_nonzero(pos > threshold) / pos.size)
        report[key.replace("tar", "threshold")] = threshold
        report[key.replace("tar", "false_accepts")] = allowed
    # AUC (Mann-Whitney): P(pos > neg) + 0.5 P(pos == neg)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    report["auc"] = float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))
    return report


ALL_PAIRS_THRESHOLDS: tuple[float, ...] = (0.40, 0.45, 0.48, 0.50, 0.55, 0.57, 0.60, 0.62, 0.65)


def all_pairs_far(
    pairs: list[Pair],
    embeddings: dict[str, Embedding],
    thresholds: tuple[float, ...] = ALL_PAIRS_THRESHOLDS,
    source: str = "lfw",
) -> dict[str, Any]:
    """False-accept and true-accept rates over *every* pair of faces, not only the listed ones.

    The faces are those of the images in pairs whose ``source`` starts with ``source`` (LFW: its
    folder names are people, so the identity is the first path component); every two faces of
    different people are an impostor comparison. This is how the re-identification and
    matching thresholds were chosen (``accepted`` counts scores >= the threshold)."""
    names = sorted(
        {n for p in pairs if p.source.startswith(source) for n in (p.a, p.b) if n in embeddings}
    )
    if len(names) < 2:
        raise ValueError(f"fewer than two embedded faces from pairs of source {source!r}")
    ids = np.array([n.split("/", 1)[0] for n in names])
    vectors = np.stack([embeddings[n].vector for n in names]).astype(np.float64)
    upper = np.triu_indices(len(names), 1)
    sims = (vectors @ vectors.T)[upper]
    vectors.fill(0.0)
    same = ids[upper[0]] == ids[upper[1]]
    genuine, impostor = sims[same], sims[~same]
    rows = [
        {
            "threshold": t,
            "impostors_accepted": int(np.count_nonzero(impostor >= t)),
            "far": float(np.count_nonzero(impostor >= t) / max(impostor.size, 1)),
            "tar": float(np.count_nonzero(genuine >= t) / max(genuine.size, 1)),
        }
        for t in thresholds
    ]
    return {
        "source": source,
        "faces": len(names),
        "people": len(set(ids.tolist())),
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "max_impostor": float(impostor.max()) if impostor.size else None,
        "rows": rows,
    }


def format_all_pairs(table: dict[str, Any]) -> str:
    lines = [
        f"all pairs of {table['faces']} faces ({table['people']} people, source "
        f"{table['source']}*): {table['genuine_pairs']} same-person, "
        f"{table['impostor_pairs']} impostor comparisons; highest impostor "
        f"{table['max_impostor']:.3f}",
        f"{'threshold':>10}{'impostors accepted':>20}{'FAR':>10}{'TAR':>9}",
    ]
    for r in table["rows"]:
        lines.append(
            f"{r['threshold']:>10.2f}{r['impostors_accepted']:>20}{r['far']:>10.1e}{r['tar']:>9.1%}"
        )
    return "\n".join(lines)


def evaluate_model(
    embedder: FaceEmbedder,
    pairs: list[Pair],
    crops: dict[str, npt.NDArray[np.uint8] | None],
    progress: Progress[str] | None = None,
    all_pairs: bool = False,
) -> dict[str, Any]:
    """Verification metrics of one model; ``all_pairs`` adds :func:`all_pairs_far`."""
    embeddings, ms = embed_crops(embedder, crops, progress)
    same = np.array([p.same for p in pairs], bool)
    report = verification_metrics(similarities(pairs, embeddings), same)
    report["ms_per_face"] = ms
    if all_pairs:
        report["all_pairs"] = all_pairs_far(pairs, embeddings)
    for e in embeddings.values():
        e.wipe()
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable side-by-side table of the ``int8`` and ``float`` results."""
    models = [m for m in ("int8", "float") if report.get(m)]
    ds = report["dataset"]
    lines = [
        f"pairs: {ds['pairs']} ({ds['positives']} same person, {ds['negatives']} different); "
        f"images: {ds['images']}, no face found in {ds['no_face']} "
        f"({ds['pairs_with_missing_face']} pairs scored as similarity -1)",
        f"detector: {report['detector']}; alignment: {report['alignment']}; "
        f"flip averaging: {'on' if report['flip'] else 'off'}",
        f"FAR 1e-2 allows {math.floor(1e-2 * ds['negatives'])} false accepts among "
        f"{ds['negatives']} negatives, FAR 1e-3 allows {math.floor(1e-3 * ds['negatives'])}",
        "",
        f"{'':26}" + "".join(f"{m:>12}" for m in models),
    ]
    rows = [
        ("accuracy (best threshold)", "accuracy", "{:.2%}"),
        ("  threshold", "threshold", "{:.3f}"),
        ("TAR at FAR 1e-2", "tar_at_far_1e-2", "{:.2%}"),
        ("TAR at FAR 1e-3", "tar_at_far_1e-3", "{:.2%}"),
        ("ROC AUC", "auc", "{:.4f}"),
        ("ms per face (1 thread)", "ms_per_face", "{:.1f}"),
        ("model size (MB)", "model_mb", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        cells = [report[m].get(key) for m in models]
        if all(c is None for c in cells):
            continue
        lines.append(
            f"{label:26}" + "".join(f"{'-' if c is None else fmt.format(c):>12}" for c in cells)
        )
    for m in models:
        if report[m].get("all_pairs"):
            lines += ["", f"{m}: " + format_all_pairs(report[m]["all_pairs"])]
    if "float" not in models:
        lines.append(
            "(no float model given: --float-model PATH, made by models/recipe/mobilefacenet.py)"
        )
    return "\n".join(lines)
