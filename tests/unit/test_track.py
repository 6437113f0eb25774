"""Hold-over keeps a missed face redacted for N frames, then lets it go."""

from __future__ import annotations

from agent.vision.detection import Box, Detection
from agent.vision.track import Tracker, TrackerConfig


def _det(x: float, y: float, size: float = 20, kind: str = "face") -> Detection:
    return Detection(Box(x, y, x + size, y + size), 0.9, kind)  # type: ignore[arg-type]


def test_missed_face_is_held_for_hold_frames() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=3))
    assert len(tracker.update([_det(10, 10)])) == 1
    for missed in range(1, 4):
        regions = tracker.update([])
        assert len(regions) == 1
        assert regions[0].missed == missed
    assert tracker.update([]) == []


def test_held_box_follows_velocity_and_grows() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=5, velocity_smoothing=1.0, growth_per_missed=0.1))
    tracker.update([_det(10, 10)])
    tracker.update([_det(14, 10)])  # moving +4 px/frame in x
    held = tracker.update([])[0]
    cx = (held.box.x0 + held.box.x1) / 2
    assert abs(cx - (18 + 10)) < 1e-6
    assert held.box.width > 20


def test_track_identity_is_kept_while_moving() -> None:
    tracker = Tracker()
    ids = set()
    for step in range(10):
        (region,) = tracker.update([_det(10 + 3 * step, 10)])
        ids.add(region.track_id)
    assert len(ids) == 1


def test_two_faces_get_two_tracks_and_new_face_new_track() -> None:
    tracker = Tracker()
    regions = tracker.update([_det(0, 0), _det(100, 100)])
    assert len({r.track_id for r in regions}) == 2
    regions = tracker.update([_det(0, 0), _det(100, 100), _det(300, 0)])
    assert len({r.track_id for r in regions}) == 3


def test_reset_forgets_tracks() -> None:
    tracker = Tracker()
    tracker.update([_det(0, 0)])
    tracker.reset()
    assert tracker.update([]) == []


def test_kinds_do_not_mix() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=2))
    tracker.update([_det(0, 0, kind="person")])
    regions = tracker.update([_det(0, 0, kind="face")])
    assert sorted(r.kind for r in regions) == ["face", "person"]
