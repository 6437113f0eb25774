"""`camveil eval-visitors`'s truth files: the replay video's people, counted by eye, and the checks
that keep a count from being compared with the wrong clip. (The count itself runs in
tests/integration/test_reid_persons.py on a clip made from a photo.)"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from contract.errors import InputFileError
from tools.evaluate_visitors import check_clip, format_report, read_visitor_truth

DATA = Path(__file__).resolve().parents[1] / "data" / "video"
REPLAY = DATA / "one-by-one-person-detection.visitors.json"


def test_the_replay_video_has_six_people_counted_by_eye() -> None:
    """Issue 12: "count the people in the clip by eye once and record it in the test"."""
    truth = read_visitor_truth(REPLAY)
    assert truth.file == "one-by-one-person-detection.mp4"
    assert truth.people == 6
    assert "by eye" in truth.counted
    visits = json.loads(REPLAY.read_text(encoding="utf-8"))["visits"]
    assert len(visits) == truth.people
    spans = [v["frames"] for v in visits]
    assert all(a < b for a, b in spans)
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(spans))
    assert spans[-1][1] < 1394  # the clip's frames


@pytest.mark.parametrize(
    ("name", "people"),
    [
        ("face-demographics-walking-and-pause", 3),
        ("face-demographics-walking", 2),
        ("head-pose-face-detection-female-and-male", 2),
    ],
)
def test_a_face_annotation_counts_its_tracks_as_people(name: str, people: int) -> None:
    truth = read_visitor_truth(DATA / f"{name}.faces.json")
    assert truth.people == people and truth.file == f"{name}.gif"


def test_another_video_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "one-by-one-person-detection.mp4"
    other.write_bytes(b"not the clip")
    with pytest.raises(InputFileError, match="sha256"):
        check_clip(read_visitor_truth(REPLAY), other)
    with pytest.raises(InputFileError, match="no such video"):
        check_clip(read_visitor_truth(REPLAY), tmp_path / "missing.mp4")


def test_a_malformed_truth_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.visitors.json"
    bad.write_text('{"format": "camveil-video-visitors/1", "video": {}, "people": 6}')
    with pytest.raises(InputFileError, match=r"needs video\.file"):
        read_visitor_truth(bad)
    bad.write_text('{"format": "something-else/1"}')
    with pytest.raises(InputFileError, match="format"):
        read_visitor_truth(bad)


def test_the_report_shows_each_setting() -> None:
    run = {
        "unique": 6,
        "error": 0,
        "frames": 10,
        "fps": 9.0,
        "cpu_ms_per_frame": 40.0,
        "detect_p50_ms": 30.0,
        "persons_p50_ms": 12.0,
        "dropped": {},
    }
    report = {
        "video": "v.mp4",
        "people": 6,
        "counted": "by eye",
        "runs": [run | {"persons": False, "unique": 1, "error": -5}, run | {"persons": True}],
    }
    text = format_report(report)
    assert "6 people (by eye)" in text
    assert "persons off: 1 visitors (error -5)" in text
    assert "persons on : 6 visitors (error +0)" in text
