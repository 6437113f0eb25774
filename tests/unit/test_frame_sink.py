"""Presence windows: max per frame, zones by box centre, window boundaries, flush."""

from __future__ import annotations

import pytest

from agent.config import ZoneConfig
from agent.frame_sink import PresenceWindows, zone_counts
from agent.vision.detection import Box, Detection
from contract.errors import ConfigError

W, H = 200, 100
LEFT = ZoneConfig("left", (0.0, 0.0, 0.5, 1.0))


def face(cx: float, cy: float) -> Detection:
    return Detection(Box(cx - 5, cy - 5, cx + 5, cy + 5), 0.9, "face")


def person(cx: float, cy: float) -> Detection:
    return Detection(Box(cx - 10, cy - 20, cx + 10, cy + 20), 0.9, "person")


def test_zone_counts_by_centre() -> None:
    dets = [face(20, 50), face(150, 50), person(40, 50), person(60, 50), person(120, 50)]
    counts = zone_counts(dets, W, H, [LEFT])
    assert counts == {"all": (3, 2), "left": (2, 1)}


def test_people_at_least_faces_for_face_only_detectors() -> None:
    assert zone_counts([face(20, 50), face(30, 50)], W, H, []) == {"all": (2, 2)}


def test_a_head_region_is_a_person_whose_face_was_not_found() -> None:
    head = Detection(Box(30, 30, 50, 50), 0.8, "head")
    assert zone_counts([face(20, 50), head], W, H, []) == {"all": (2, 1)}


def test_window_keeps_the_maximum_and_closes_on_time() -> None:
    win = PresenceWindows(10.0, [LEFT])
    assert win.observe(100.0, [face(20, 50)], W, H) is None
    assert win.observe(105.0, [face(20, 50), face(150, 50)], W, H) is None
    assert win.observe(109.9, [], W, H) is None
    closed = win.observe(110.0, [face(150, 50)], W, H)
    assert closed is not None
    assert (closed.start, closed.end) == (100.0, 110.0)
    assert closed.counts == {"all": (2, 2), "left": (1, 1)}
    # a gap of several windows: the next one starts at the boundary the frame falls in
    closed = win.observe(135.0, [], W, H)
    assert closed is not None and closed.counts["all"] == (1, 1)
    last = win.flush()
    assert last is not None and last.start == 130.0 and last.counts["all"] == (0, 0)
    assert win.flush() is None


def test_zone_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="rect"):
        ZoneConfig("bad", (0.5, 0.0, 0.2, 1.0))
    with pytest.raises(ConfigError, match="all"):
        ZoneConfig("all", (0.0, 0.0, 1.0, 1.0))
