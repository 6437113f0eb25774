"""The daemon's frame sink (:class:`FrameSink`): what it derives from each processed frame.
Presence windows (the most people and faces seen at once, per zone, per time window), tamper
findings, and the latest redacted frame for snapshots.

A frame's detections are counted per zone: the zone ``all`` (the whole view) and each configured
rectangle (fractions of the frame), where a detection counts if its box centre is inside. Faces
are ``face`` detections; people are ``person`` detections, or the faces when there are more of
those (a face-only detector still counts people). Over a window the highest count of any one
frame is kept: that is what one person changes by at most 1 (see the differential-privacy note in
docs/PROTOCOL.md, "Events"). Windows follow the frames' capture time; a window is closed by the
first frame at or after its end, or by :meth:`PresenceWindows.flush`.

With re-identification on (``visitors``, an :class:`agent.vision.reid.Reidentifier`), the
presence event whose window ends where a re-identification window ends also carries that
window's unique-visitor and dwell-time histogram (the windows are whole multiples of each other
and start on the same frame, so they end on the same frame).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.config import EventsConfig, ZoneConfig
from agent.events import Event, EventBuilder
from agent.pipeline import ProcessedFrame
from agent.privacy.redact import RedactedFrame
from agent.privacy.visitors import VisitorWindow
from agent.publisher import Emitter
from agent.tamper import TamperDetector, TamperFinding
from agent.vision.detection import Detection

logger = logging.getLogger(__name__)

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
    """Zone -> (people, faces) in one frame. A ``person`` box may hold a found face, so people
    are at least the faces; a ``head`` region (``[detector] persons``) is only made for a
    person whose face was not found, so heads add to the faces."""
    per_zone = {ALL_ZONE: [0, 0, 0], **{z.name: [0, 0, 0] for z in zones}}
    for det in detections:
        slot = {"face": 1, "head": 2}.get(det.kind, 0)
        cx = (det.box.x0 + det.box.x1) / 2 / max(width, 1)
        cy = (det.box.y0 + det.box.y1) / 2 / max(height, 1)
        per_zone[ALL_ZONE][slot] += 1
        for zone in zones:
            x0, y0, x1, y1 = zone.rect
            if x0 <= cx < x1 and y0 <= cy < y1:
                per_zone[zone.name][slot] += 1
    return {name: (max(p, f) + h, f) for name, (p, f, h) in per_zone.items()}


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


class VisitorSource(Protocol):
    """Closed re-identification windows (:class:`agent.vision.reid.Reidentifier`)."""

    def take_closed(self) -> VisitorWindow | None: ...

    def flush(self) -> VisitorWindow | None: ...


class FrameSink:
    """Receives every RedactedFrame: presence windows, tamper checks, the latest frame."""

    def __init__(
        self, events: EventsConfig, emitter: Emitter, visitors: VisitorSource | None = None
    ) -> None:
        self._events = events
        self._emitter = emitter
        self._visitors = visitors
        self._presence = PresenceWindows(events.presence_window_s, events.zones)
        self._tamper = TamperDetector()
        self._frames = 0
        self._lock = threading.Lock()
        self._latest: RedactedFrame | None = None

    def __call__(self, processed: ProcessedFrame) -> None:
        frame = processed.redacted
        with self._lock:
            self._latest = frame
        closed = self._presence.observe(frame.ts, processed.detections, frame.width, frame.height)
        if closed is not None:
            visitors = self._visitors.take_closed() if self._visitors is not None else None
            self._emitter.emit(presence_event(closed, visitors), frame.ts)
        self._frames += 1
        every = self._events.tamper_every
        if every and self._frames % every == 0:
            for finding in self._tamper.update(frame):
                logger.warning("tamper: %s (score %.2f)", finding.kind.value, finding.score)
                self._emitter.emit(tamper_event(finding), frame.ts)
                if self._events.snapshot_on_tamper:
                    self._emitter.emit(snapshot_event(frame, trigger="tamper"), frame.ts)

    @property
    def latest(self) -> RedactedFrame | None:
        with self._lock:
            return self._latest

    def flush(self) -> None:
        """Emit the current partial presence window (at stop or before a swap)."""
        closed = self._presence.flush()
        visitors = self._visitors.flush() if self._visitors is not None else None
        if closed is not None:
            self._emitter.emit(presence_event(closed, visitors))


def presence_event(
    closed: ClosedWindow, visitors: VisitorWindow | None = None
) -> Callable[[EventBuilder], Event]:
    return lambda b: b.presence(closed.start, closed.end, closed.counts, visitors)


def tamper_event(finding: TamperFinding) -> Callable[[EventBuilder], Event]:
    return lambda b: b.tamper(finding.kind, finding.score)


def snapshot_event(
    frame: RedactedFrame, *, trigger: str | None = None, command: str | None = None
) -> Callable[[EventBuilder], Event]:
    return lambda b: b.snapshot(frame, trigger=trigger, command=command)
