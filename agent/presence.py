"""Presence windows: the most people and faces seen at once, per zone, per time window.

A frame's detections are counted per zone: the zone ``all`` (the whole view) and each configured
rectangle (fractions of the frame), where a detection counts if its box centre is inside. Faces
are ``face`` detections; people are ``person`` detections, or the faces when there are more of
those (a face-only detector still counts people). Over a window the highest count of any one
frame is kept: that is what one person changes by at most 1 (see the differential-privacy note in
docs/_protocol_events.md). Windows follow the frames' capture time; a window is closed by the
first frame at or after its end, or by :meth:`PresenceWindows.flush`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.config import ZoneConfig
from agent.vision.detection import Detection, Detector

ALL_ZONE = "all"


@dataclass(frozen=True)
class ClosedWindow:
    """A finished window: [start, end] in Unix seconds and zone -> (people, faces)."""

    start: float
    end: float
    counts: dict[str, tuple[int, int]]


def zone_counts(
    detections: Iterable[Detection], width: int, height: int, zones: Sequence[ZoneConfig]
) -> dict[str, tuple[int, int]]:
    """Zone -> (people, faces) in one frame."""
    per_zone = {ALL_ZONE: [0, 0], **{z.name: [0, 0] for z in zones}}
    for det in detections:
        slot = 1 if det.kind == "face" else 0
        cx = (det.box.x0 + det.box.x1) / 2 / max(width, 1)
        cy = (det.box.y0 + det.box.y1) / 2 / max(height, 1)
        per_zone[ALL_ZONE][slot] += 1
        for zone in zones:
            x0, y0, x1, y1 = zone.rect
            if x0 <= cx < x1 and y0 <= cy < y1:
                per_zone[zone.name][slot] += 1
    return {name: (max(p, f), f) for name, (p, f) in per_zone.items()}


class PresenceWindows:
    """Accumulates per-frame counts into fixed windows of ``window_s`` seconds."""

    def __init__(self, window_s: float, zones: Sequence[ZoneConfig] = ()) -> None:
        if window_s <= 0:
            raise ValueError("presence window must be positive")
        self._window_s = window_s
        self._zones = tuple(zones)
        self._start: float | None = None
        self._last_ts: float | None = None
        self._max: dict[str, tuple[int, int]] = {}

    def _empty(self) -> dict[str, tuple[int, int]]:
        return {ALL_ZONE: (0, 0), **{z.name: (0, 0) for z in self._zones}}

    def observe(
        self, ts: float, detections: Iterable[Detection], width: int, height: int
    ) -> ClosedWindow | None:
        """Count one frame captured at ``ts``; returns the window this frame closed, if any."""
        closed = None
        if self._start is None:
            self._start, self._max = ts, self._empty()
        elif ts >= self._start + self._window_s:
            closed = ClosedWindow(self._start, self._start + self._window_s, self._max)
            # the next window starts at the boundary this frame falls in (no overlap, no drift)
            skipped = int((ts - self._start) // self._window_s)
            self._start += skipped * self._window_s
            self._max = self._empty()
        counts = zone_counts(detections, width, height, self._zones)
        for zone, (people, faces) in counts.items():
            p, f = self._max[zone]
            self._max[zone] = (max(p, people), max(f, faces))
        self._last_ts = ts
        return closed

    def flush(self) -> ClosedWindow | None:
        """Close the current (partial) window, ending at the last frame seen; None if empty."""
        if self._start is None or self._last_ts is None:
            return None
        closed = ClosedWindow(self._start, max(self._start, self._last_ts), self._max)
        self._start = self._last_ts = None
        self._max = {}
        return closed


class RecordingDetector:
    """Wraps a detector and keeps its last result, for counting in the pipeline's sink (which
    runs on the same thread right after detection; a failed detection leaves no result and the
    sink is not called for that frame)."""

    def __init__(self, inner: Detector) -> None:
        self._inner = inner
        self.last: list[Detection] = []

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        self.last = []
        result = self._inner.detect(rgb)
        self.last = list(result)
        return result
