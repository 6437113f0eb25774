"""Person tracks of one re-identification window, and which face tracks were seen inside them.

Re-identification (:mod:`agent.vision.reid`) counts visitors from faces; a person seen only from
behind shows none. With ``[reid] persons`` on, the person detector (:mod:`agent.vision.persons`)
runs every ``person_every`` frames and :class:`PersonTracks` follows its people with the same
greedy IoU tracker as faces (:class:`agent.vision.track.Tracker`; hold-over counted in detector
runs). On those frames every fresh face detection whose centre lies inside a person's box is
attributed to that person's track (the person whose head is nearest, when boxes overlap).

At the window's end (:meth:`PersonTracks.visitors`) a person track that was detected at least
``min_hits`` times counts as:

- the face visitor(s) of the face tracks seen inside it, when any of them became a visitor
  (its sightings extend that visitor's dwell time; it is not counted a second time);
- otherwise one anonymous visitor, whose dwell time is the track's first to last sighting.

Nothing here holds pixels or embeddings: boxes, times and ids only, dropped with the window.
Two tracks of one person who left and came back without showing a face cannot be linked
(there is no embedding of a back): they count twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.vision.detection import Box, Detection
from agent.vision.track import Tracker, TrackerConfig

HOLD_FRAMES: Final = 24
"""A person track missed for more frames than this ends (2.4 s at 10 fps): shorter than the
time between two people on the replay video, longer than its detector's gaps."""
IOU_MATCH: Final = 0.05
"""Minimum IoU to continue a person track (the tracker matches the best overlaps first)."""


@dataclass
class _Person:
    first: float
    last: float
    hits: int = 0
    faces: set[int] = field(default_factory=set)
    """Face track ids seen inside this person."""


def _centre(box: Box) -> tuple[float, float]:
    return (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2


def _inside(point: tuple[float, float], box: Box) -> bool:
    return box.x0 <= point[0] <= box.x1 and box.y0 <= point[1] <= box.y1


def _head(det: Detection) -> tuple[float, float]:
    """The head's centre (the person detector's first landmark), else the box's top centre."""
    if det.landmarks:
        return det.landmarks[0]
    return (det.box.x0 + det.box.x1) / 2, det.box.y0 + det.box.height * 0.15


class PersonTracks:
    """One window's person tracks (pipeline thread only)."""

    @classmethod
    def every(
        cls, person_every: int, min_frames: int, hold_frames: int = HOLD_FRAMES
    ) -> PersonTracks:
        """Person tracks fed by a detector that runs every ``person_every`` frames: hold-over
        and the detections needed to count, both given in frames, converted to runs."""
        return cls(
            hold_runs=max(1, math.ceil(hold_frames / person_every)),
            min_hits=max(1, math.ceil(min_frames / person_every)),
        )

    def __init__(self, hold_runs: int = 8, min_hits: int = 3) -> None:
        if min_hits < 1:
            raise ValueError("min_hits must be >= 1")
        self.min_hits = min_hits
        # A person walking in grows from a sliver at the frame's edge to a whole body within a
        # few runs; the faces' IoU of 0.2 splits such a track (IoU of a box inside a box 7
        # times its size is 0.14), so any overlap continues a person track; and the growing
        # box's moving centre is no velocity: a predicted box overshoots, the last one is kept.
        self._tracker = Tracker(
            TrackerConfig(
                hold_frames=hold_runs, iou_match=IOU_MATCH, velocity_smoothing=0.0, relink_s=0.0
            )
        )
        self._people: dict[int, _Person] = {}

    def update(
        self,
        ts: float,
        persons: Sequence[Detection],
        faces: Sequence[tuple[int, Detection]],
    ) -> None:
        """One run of the person detector at capture time ``ts``: its ``persons`` and the
        frame's fresh face detections with their face track ids."""
        fresh: list[tuple[int, Detection]] = []
        for region in self._tracker.update([p for p in persons if p.kind == "person"]):
            if region.missed or region.detection is None:
                continue
            person = self._people.get(region.track_id)
            if person is None:
                person = self._people[region.track_id] = _Person(ts, ts)
            person.last = max(person.last, ts)
            person.hits += 1
            fresh.append((region.track_id, region.detection))
        for face_id, face in faces:
            centre = _centre(face.box)
            near = [
                (float((_head(p)[0] - centre[0]) ** 2 + (_head(p)[1] - centre[1]) ** 2), pid)
                for pid, p in fresh
                if _inside(centre, p.box)
            ]
            if near:
                self._people[min(near)[1]].faces.add(face_id)

    def visitors(
        self, visitor_of: Callable[[int], int | None]
    ) -> tuple[dict[int, tuple[float, float]], list[float]]:
        """What the window's person tracks add: per face visitor (``visitor_of`` maps a face
        track id to its visitor index, or None) the first and last sighting of the person
        tracks that carried its faces, and the dwell time of each anonymous person."""
        linked: dict[int, tuple[float, float]] = {}
        anonymous: list[float] = []
        for person in self._people.values():
            if person.hits < self.min_hits:
                continue
            found = {v for v in map(visitor_of, sorted(person.faces)) if v is not None}
            if not found:
                anonymous.append(person.last - person.first)
            for v in found:
                first, last = linked.get(v, (person.first, person.last))
                linked[v] = (min(first, person.first), max(last, person.last))
        return linked, anonymous

    def clear(self) -> None:
        self._tracker.reset()
        self._people.clear()


__all__ = ["PersonTracks"]
