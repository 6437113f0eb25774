"""A small IoU tracker whose job is temporal safety: hold-over of missed faces.

A face track that is not re-detected keeps being redacted for ``hold_frames`` more frames, at its
position predicted from its recent velocity and grown a little for every missed frame, so a single
missed detection in video does not leak a face. With face embeddings on, a face that comes back
after its track ended can take its old id again (:meth:`Tracker.relink`, driven by
:mod:`agent.vision.relink`); that changes ids only, never what is redacted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.vision.detection import Box, Detection, Kind


@dataclass(frozen=True)
class TrackerConfig:
    """Tracking and hold-over settings."""

    hold_frames: int = 8
    """A track missed this many frames in a row is still redacted; one more and it is dropped."""
    iou_match: float = 0.2
    """Minimum IoU to continue a track with a detection."""
    growth_per_missed: float = 0.15
    """A held box grows by this fraction of its size per missed frame (motion uncertainty)."""
    velocity_smoothing: float = 0.5
    """Weight of the newest displacement in the velocity estimate (0..1)."""
    relink_s: float = 2.0
    """Only with face embeddings on (``[reid]`` or ``[enrolment]``): a face track that ended
    (hidden for longer than the hold-over) continues when the same face comes back within this
    many seconds, recognised by its embedding (:mod:`agent.vision.relink`); 0 turns it off."""
    relink_threshold: float = 0.65
    """Cosine similarity at which a new face track is the same face as a track that ended
    (0.65: a measured false-accept rate of 5.8e-5 per comparison, agent/vision/gallery.py)."""

    def __post_init__(self) -> None:
        if self.hold_frames < 0:
            raise ValueError("hold_frames must be >= 0")
        if not 0.0 < self.iou_match <= 1.0:
            raise ValueError("iou_match must be in (0, 1]")
        if not 0.0 <= self.relink_s <= 60.0:
            raise ValueError("relink_s must be between 0 and 60 seconds")
        if not 0.0 < self.relink_threshold < 1.0:
            raise ValueError("relink_threshold must be in (0, 1) (cosine similarity)")


@dataclass
class _Track:
    track_id: int
    kind: Kind
    box: Box
    vx: float = 0.0
    vy: float = 0.0
    missed: int = 0
    hits: int = 1
    detection: Detection | None = None
    """The detection that last continued (or started) the track."""


@dataclass(frozen=True)
class TrackedRegion:
    """A region to redact this frame: a fresh detection or a held-over track."""

    track_id: int
    kind: Kind
    box: Box
    missed: int
    """0 when detected in this frame, else the number of frames since the last detection."""
    detection: Detection | None = field(default=None, compare=False, repr=False)
    """The detection of this frame that continued the track (None when held over); the
    re-identifier embeds its face."""


def iou_matrix(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pairwise IoU of boxes ``a`` (N x 4) and ``b`` (M x 4) as x0, y0, x1, y1."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return out


def _as_array(boxes: Sequence[Box]) -> npt.NDArray[np.float64]:
    return np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=np.float64).reshape(-1, 4)


@dataclass
class Tracker:
    """Greedy IoU tracker with hold-over. Not thread-safe: one per pipeline."""

    config: TrackerConfig = field(default_factory=TrackerConfig)
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def reset(self) -> None:
        """Forget every track (after a camera reconnect the scene may have changed)."""
        self._tracks.clear()

    def track_ids(self) -> set[int]:
        """The ids of every track, detected in the last frame or held over."""
        return {t.track_id for t in self._tracks}

    def relink(self, track_id: int, to: int) -> bool:
        """Give track ``track_id`` the id ``to`` of a track that ended (the same face came back,
        :mod:`agent.vision.relink`): from the next frame on its regions carry ``to``. Only the
        id changes: the box, velocity and hold-over, so what is redacted, stay as they were.
        False (nothing changed) when ``track_id`` is gone or ``to`` is still in use."""
        if to in self.track_ids():
            return False
        for track in self._tracks:
            if track.track_id == track_id:
                track.track_id = to
                return True
        return False

    def update(self, detections: Sequence[Detection]) -> list[TrackedRegion]:
        """Feed one frame's detections; return every region to redact in this frame."""
        cfg = self.config
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        if self._tracks and detections:
            predicted = [self._predict(t) for t in self._tracks]
            ious = iou_matrix(_as_array(predicted), _as_array([d.box for d in detections]))
            for ti, di in zip(
                *np.unravel_index(np.argsort(-ious, axis=None), ious.shape), strict=True
            ):
                if ious[ti, di] < cfg.iou_match:
                    break
                if ti in matched_tracks or di in matched_dets:
                    continue
                if self._tracks[ti].kind != detections[di].kind:
                    continue
                matched_tracks.add(int(ti))
                matched_dets.add(int(di))
                self._continue(self._tracks[ti], detections[di])
        for ti, track in enumerate(self._tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= cfg.hold_frames]
        for di, det in enumerate(detections):
            if di not in matched_dets:
                self._tracks.append(_Track(self._next_id, det.kind, det.box, detection=det))
                self._next_id += 1
        return [
            TrackedRegion(
                t.track_id,
                t.kind,
                self._held_box(t),
                t.missed,
                t.detection if t.missed == 0 else None,
            )
            for t in self._tracks
        ]

    def _predict(self, track: _Track) -> Box:
        steps = track.missed + 1
        b = track.box
        return Box(
            b.x0 + track.vx * steps,
            b.y0 + track.vy * steps,
            b.x1 + track.vx * steps,
            b.y1 + track.vy * steps,
        )

    def _held_box(self, track: _Track) -> Box:
        if track.missed == 0:
            return track.box
        b = self._predict(track)
        # _predict looks one frame ahead of the last miss; step back to the current frame.
        b = Box(b.x0 - track.vx, b.y0 - track.vy, b.x1 - track.vx, b.y1 - track.vy)
        return b.expand(self.config.growth_per_missed * track.missed)

    def _continue(self, track: _Track, detection: Detection) -> None:
        box = detection.box
        track.detection = detection
        a = self.config.velocity_smoothing
        steps = track.missed + 1
        cx_old = (track.box.x0 + track.box.x1) / 2
        cy_old = (track.box.y0 + track.box.y1) / 2
        cx_new = (box.x0 + box.x1) / 2
        cy_new = (box.y0 + box.y1) / 2
        track.vx = (1 - a) * track.vx + a * (cx_new - cx_old) / steps
        track.vy = (1 - a) * track.vy + a * (cy_new - cy_old) / steps
        track.box = box
        track.missed = 0
        track.hits += 1
