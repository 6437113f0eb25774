"""`camveil eval-visitors`: re-identification's unique-visitor count on a clip whose people were
counted by eye, and what counting from people costs.

The clip is replayed frame by frame (every frame, not paced) through the daemon's wiring:
:func:`agent.vision.reid.open_reid`, :func:`agent.vision.relink.open_tracking` (tracker, relinker,
shared face embedder) and :func:`agent.pipeline.open_frame_path` (detector behind the fail-closed
guard, redaction). The clip is shorter than one re-identification window, so the window that
:meth:`~agent.vision.reid.Reidentifier.flush` closes at the end holds every visitor; its
``unique`` is compared with the people counted by eye.

The truth is either a visitors file (``camveil-video-visitors/1``: the clip's name, sha256 and
``people``) or a face annotation (``camveil-video-faces/1``, docs/VIDEO_EVAL.md: one track per
person). Either names its video by sha256; any other file is refused.

Each ``[reid] persons`` setting asked for is measured in turn: unique visitors, their error
against the truth, frames per second of the whole path with decoding, the process's CPU time
per frame (all threads), median latency of the face detector and of the person detector, and
the drop counters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.pipeline import PrivacyConfig, open_frame_path
from agent.stats import PipelineStats
from agent.vision.factory import DetectorConfig
from agent.vision.reid import ReidConfig, open_reid
from agent.vision.relink import open_tracking
from contract.errors import InputFileError
from hw.camera.config import CameraConfig
from tools.video_truth import FORMAT as FACES_FORMAT
from tools.video_truth import read_video_truth

FORMAT = "camveil-video-visitors/1"
PURPOSE = "camveil eval-visitors: unique-visitor count on a clip counted by eye"


@dataclasses.dataclass(frozen=True)
class VisitorTruth:
    """A clip and the number of different people in it."""

    file: str
    sha256: str
    people: int
    counted: str


def read_visitor_truth(path: Path) -> VisitorTruth:
    """A visitors file, or a face annotation (its tracks are its people)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read the annotation: {exc}") from None
    kind = raw.get("format") if isinstance(raw, dict) else None
    if kind == FACES_FORMAT:
        faces = read_video_truth(path)
        return VisitorTruth(faces.file, faces.sha256, len(faces.tracks), "face tracks annotated")
    if kind != FORMAT:
        raise InputFileError(f"{path}: format must be {FORMAT!r} or {FACES_FORMAT!r}")
    try:
        video, people = raw["video"], raw["people"]
        file, sha = str(video["file"]), str(video["sha256"])
    except (KeyError, TypeError):
        raise InputFileError(f"{path}: needs video.file, video.sha256 and people") from None
    if not isinstance(people, int) or people < 0 or len(sha) != 64:
        raise InputFileError(f"{path}: people must be an integer >= 0, sha256 64 hex digits")
    return VisitorTruth(file, sha, people, str(raw.get("counted", "")))


def check_clip(truth: VisitorTruth, video: Path) -> None:
    if not video.is_file():
        raise InputFileError(f"{video}: no such video")
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    if digest != truth.sha256:
        raise InputFileError(
            f"{video}: sha256 {digest}, the annotation is for {truth.file} {truth.sha256}"
        )


def count_visitors(
    source: Path, reid: ReidConfig, detector: DetectorConfig | None = None
) -> dict[str, Any]:
    """Replay ``source`` (a video file or an image folder) through the daemon's wiring with
    ``reid``; the closed window's count and the costs (module docstring)."""
    stats = PipelineStats()
    reidentifier = open_reid(reid, stats)
    if reidentifier is None:
        raise ValueError("count_visitors needs [reid] enabled")
    privacy = PrivacyConfig()
    tracker, faces = open_tracking(privacy.tracker, (None, reidentifier), stats)
    camera = CameraConfig(kind="replay", source=str(source), realtime=False)
    load = os.getloadavg()[0]
    with open_frame_path(
        camera,
        detector or DetectorConfig(),
        privacy,
        lambda _p: None,
        stats=stats,
        faces=faces,
        tracker=tracker,
    ) as path:
        t0, cpu0 = time.perf_counter(), time.process_time()
        path.pipeline.run()
        if faces is not None:
            faces.wait_idle(10.0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        window = reidentifier.flush()
    snap = stats.snapshot()
    latency: dict[str, Any] = snap["latency"]  # type: ignore[assignment]
    frames = stats.frames_out
    return {
        "persons": reid.persons,
        "unique": window.unique if window is not None else 0,
        "dwell_counts": list(window.counts) if window is not None else [],
        "frames": frames,
        "fps": round(frames / elapsed, 1) if elapsed > 0 else None,
        "cpu_ms_per_frame": round(cpu * 1000 / max(frames, 1), 1),
        "detect_p50_ms": latency.get("detect", {}).get("p50_ms"),
        "persons_p50_ms": latency.get("persons", {}).get("p50_ms"),
        "dropped": dict(stats.dropped),
        "load_1m_before": round(load, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
    }


def evaluate_visitors(
    video: Path,
    truth: VisitorTruth,
    reid: ReidConfig,
    detector: DetectorConfig | None = None,
    persons: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    """Each ``persons`` setting in turn on ``video`` (checked against ``truth``); JSON-ready."""
    check_clip(truth, video)
    runs = []
    for on in persons:
        result = count_visitors(video, dataclasses.replace(reid, persons=on), detector)
        error = result["unique"] - truth.people
        result["error"] = error
        result["relative_error"] = round(abs(error) / truth.people, 3) if truth.people else None
        runs.append(result)
    return {"video": truth.file, "people": truth.people, "counted": truth.counted, "runs": runs}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['video']}: {report['people']} people ({report['counted']})"]
    for r in report["runs"]:
        lines.append(
            f"  persons {'on ' if r['persons'] else 'off'}: {r['unique']} visitors "
            f"(error {r['error']:+d}), {r['frames']} frames, {r['fps']} fps, "
            f"{r['cpu_ms_per_frame']} ms CPU/frame, detect p50 {r['detect_p50_ms']} ms, "
            f"persons p50 {r['persons_p50_ms']} ms, dropped {r['dropped'] or 'none'}"
        )
    return "\n".join(lines)


__all__ = [
    "FORMAT",
    "VisitorTruth",
    "check_clip",
    "count_visitors",
    "evaluate_visitors",
    "format_report",
    "read_visitor_truth",
]
