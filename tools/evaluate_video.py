"""`camveil eval-video`: how well the unit's frame path protects the faces of an annotated clip.

The clip is replayed frame by frame (every frame, not paced) through the same frame path as the
daemon (:func:`agent.pipeline.open_frame_path`: the detector behind the fail-closed guard, the
tracker with its hold-over, redaction). Each redacted frame is scored against the annotation
(:mod:`tools.video_truth`) exactly as `camveil eval` scores an image (:mod:`tools.evaluate`): a
face is *protected* when at least 90% of its box is overwritten, else it *leaks*.

- **per frame**: faces (one face in one frame) protected, by size bucket of the box's longest
  side, and the frames with at least one leak;
- **per track**: a track is one annotated person across the clip; it *leaks* if any of its
  frames leaks (one frame is enough to see a face);
- background overwritten (outside every face and ignore box), frames per second of the whole
  path with decoding (``fps``), each stage's median latency, and the process's CPU time per
  frame (all threads; it depends less than ``fps`` on what else the machine runs).

A frame the guard drops (detector failed or too slow) publishes nothing, so it cannot leak; it
is counted under ``frames_dropped`` and its faces are not scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from agent.pipeline import PrivacyConfig, ProcessedFrame, open_frame_path
from agent.privacy.redact import redaction_mask
from agent.stats import PipelineStats
from agent.vision.detection import Detector
from agent.vision.factory import DetectorConfig, build_detector
from hw.camera.config import CameraConfig
from tools.evaluate import (
    BUCKETS,
    GROUPS,
    background_overwritten,
    face_coverage,
    is_protected,
    size_bucket,
)
from tools.video_truth import VideoTruth


@dataclass
class _TrackTally:
    frames: int = 0
    leaked_frames: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


class VideoScorer:
    """The frame path's sink: scores every redacted frame against the annotation."""

    def __init__(self, truth: VideoTruth) -> None:
        self._truth = truth
        self.faces = {name: 0 for name, _, _ in BUCKETS}
        self.protected = {name: 0 for name, _, _ in BUCKETS}
        self.tracks = {tid: _TrackTally() for tid in truth.tracks}
        self.frames_scored = 0
        self.frames_with_leak: list[int] = []
        self.background = 0
        self.background_hit = 0

    def __call__(self, out: ProcessedFrame) -> None:
        frame = out.redacted
        if frame.index >= self._truth.frames:
            return
        if (frame.width, frame.height) != (self._truth.width, self._truth.height):
            raise ValueError(
                f"frame {frame.index} is {frame.width}x{frame.height}, the annotation "
                f"{self._truth.width}x{self._truth.height}"
            )
        # what the pipeline overwrote: its regions are already grown and clipped
        mask = redaction_mask((frame.height, frame.width), frame.regions, 0.0)
        truth = self._truth.frame(frame.index)
        leaked = False
        for face in truth.faces:
            covered, total = face_coverage(mask, face.box)
            if total == 0:
                continue
            longest = max(face.box[2], face.box[3])
            bucket = size_bucket(longest)
            track = self.tracks[face.track]
            track.frames += 1
            track.sizes.append(longest)
            self.faces[bucket] += 1
            if is_protected(covered, total):
                self.protected[bucket] += 1
            else:
                track.leaked_frames.append(frame.index)
                leaked = True
        background, hit = background_overwritten(
            mask, [*truth.ignore, *(face.box for face in truth.faces)]
        )
        self.background += background
        self.background_hit += hit
        self.frames_scored += 1
        if leaked:
            self.frames_with_leak.append(frame.index)

    def report(self) -> dict[str, Any]:
        """Per-frame and per-track numbers as a dict (see the module docstring)."""
        named = {name: [name] for name, _, _ in BUCKETS} | GROUPS
        per_frame: dict[str, dict[str, Any]] = {}
        for name, members in named.items():
            faces = sum(self.faces[m] for m in members)
            protected = sum(self.protected[m] for m in members)
            per_frame[name] = {
                "faces": faces,
                "leaked": faces - protected,
                "protected": protected / faces if faces else None,
            }
        tracks = {
            tid: {
                "frames": t.frames,
                "leaked_frames": t.leaked_frames,
                "leaked": bool(t.leaked_frames),
                "median_size": median(t.sizes) if t.sizes else None,
            }
            for tid, t in self.tracks.items()
        }
        seen = [t for t in tracks.values() if t["frames"]]
        return {
            "frames_annotated": self._truth.frames,
            "frames_scored": self.frames_scored,
            "frames_with_leak": self.frames_with_leak,
            "per_frame": per_frame,
            "tracks": tracks,
            "tracks_seen": len(seen),
            "tracks_leaked": sum(1 for t in seen if t["leaked"]),
            "background_overwritten": (
                self.background_hit / self.background if self.background else None
            ),
        }


DetectorFactory = Callable[[DetectorConfig], Detector]

SETTINGS: dict[str, DetectorConfig] = {
    "default": DetectorConfig(),
    "max": DetectorConfig(extra_scale=2.0),
}
"""``--setting``: ``default`` is the unit's default detector; ``max`` the maximum-protection mode
of docs/PROTECTION.md (``extra_scale = 2.0``: a second CenterFace pass at twice the size, merged).
Both with the default tracker (hold-over of 8 frames) and redaction (margin 0.25)."""


def evaluate_video(
    video: Path,
    truth: VideoTruth,
    detector: DetectorConfig,
    privacy: PrivacyConfig,
    *,
    size: tuple[int, int] | None = None,
    detector_factory: DetectorFactory = build_detector,
) -> dict[str, Any]:
    """Replay ``video`` through the frame path and score it; ``size`` resizes every frame (and
    the annotation with it)."""
    if size is not None:
        truth = truth.scaled(*size)
    camera = CameraConfig(
        kind="replay",
        source=str(video),
        realtime=False,
        reconnect=False,
        width=size[0] if size else None,
        height=size[1] if size else None,
    )
    scorer = VideoScorer(truth)
    stats = PipelineStats()
    frames = 0
    with open_frame_path(
        camera, detector, privacy, scorer, stats=stats, detector_factory=detector_factory
    ) as path:
        start, cpu_start = time.perf_counter(), time.process_time()
        while frames < truth.frames and path.pipeline.run_once():
            frames += 1
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    report = scorer.report()
    snapshot = stats.snapshot()
    report["frames_dropped"] = snapshot["dropped"]
    report["frame_size"] = [truth.width, truth.height]
    report["fps"] = frames / wall if wall > 0 else None
    report["cpu_ms_per_frame"] = 1000 * cpu / frames if frames else None
    report["latency_ms"] = snapshot["latency"]
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a report from :func:`evaluate_video`."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:6.2f}%"

    width, height = report["frame_size"]
    lines = [
        f"frames: {report['frames_scored']} scored of {report['frames_annotated']} annotated "
        f"({width}x{height}), dropped (fail closed): {sum(report['frames_dropped'].values())}",
        "per frame: faces protected (>= 90% of box pixels overwritten)",
    ]
    for name in ["<16", "16-31", "32-63", ">=64", ">=16", ">=32", "all"]:
        row = report["per_frame"][name]
        lines.append(
            f"  {name:>6}: {pct(row['protected'])}  of {row['faces']:<5} leaked {row['leaked']}"
        )
    lines.append(f"  frames with a leak: {len(report['frames_with_leak'])}")
    lines.append(
        f"per track: {report['tracks_leaked']} of {report['tracks_seen']} tracks leaked "
        "(a track leaks if any of its frames leaks)"
    )
    for tid, track in report["tracks"].items():
        state = "LEAKED in frames " + _ranges(track["leaked_frames"]) if track["leaked"] else "ok"
        lines.append(
            f"  {tid}: {track['frames']} frames, median {track['median_size']} px: {state}"
        )
    lines.append(f"background overwritten: {pct(report['background_overwritten'])}")
    fps, cpu = report["fps"], report["cpu_ms_per_frame"]
    lines.append("frames per second:      " + ("n/a" if fps is None else f"{fps:.1f}"))
    lines.append("CPU time per frame:     " + ("n/a" if cpu is None else f"{cpu:.1f} ms"))
    return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
