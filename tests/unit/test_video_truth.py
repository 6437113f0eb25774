"""The video annotation format: validation, scaling, and the annotation tool's corrections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.errors import InputFileError
from tools.annotate_video import apply_corrections, build, link
from tools.face_ensemble import fuse
from tools.video_truth import FORMAT, check_video, read_video_truth, sha256_of


def _annotation(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "format": FORMAT,
        "video": {"file": "v.mp4", "sha256": "ab" * 32, "width": 200, "height": 100, "frames": 3},
        "frames": [
            {"index": 0, "faces": [{"track": "p1", "box": [10, 10, 20, 20]}]},
            {
                "index": 2,
                "faces": [{"track": "p1", "box": [12, 10, 20, 20]}],
                "ignore": [[0, 0, 4, 4]],
            },
        ],
    }
    raw.update(changes)
    return raw


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_reads_frames_tracks_and_unlisted_frames_are_empty(tmp_path: Path) -> None:
    truth = read_video_truth(_write(tmp_path, _annotation()))
    assert truth.tracks == ("p1",)
    assert truth.frame(1).faces == ()
    assert truth.frame(2).ignore == ((0, 0, 4, 4),)
    scaled = truth.scaled(400, 300)
    assert scaled.frame(0).faces[0].box == (20, 30, 40, 60)
    assert (scaled.width, scaled.height, scaled.frames) == (400, 300, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"frames": [{"index": 3, "faces": []}]}, "outside the annotated"),
        ({"frames": [{"index": 0}, {"index": 0}]}, "listed twice"),
        (
            {"frames": [{"index": 0, "faces": [{"track": "a", "box": [0, 0, 5, 5]}] * 2}]},
            "two boxes",
        ),
        ({"frames": [{"index": 0, "faces": [{"track": "a", "box": [0, 0, 0, 5]}]}]}, "no area"),
        ({"video": {"file": "v.mp4"}}, "missing field 'width'"),
        (
            {"video": {"file": "v", "sha256": "xyz", "width": 2, "height": 2, "frames": 1}},
            "64 hex digits",
        ),
    ],
)
def test_a_malformed_annotation_says_what_is_wrong(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputFileError, match=message):
        read_video_truth(_write(tmp_path, _annotation(**change)))


def test_only_the_annotated_video_is_accepted(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video")
    raw = _annotation()
    raw["video"]["sha256"] = sha256_of(video)
    truth = read_video_truth(_write(tmp_path, raw))
    check_video(truth, video)
    video.write_bytes(b"another video")
    with pytest.raises(InputFileError, match="not the video"):
        check_video(truth, video)


def test_fusion_keeps_the_median_box_and_counts_voters() -> None:
    votes = {
        "a": [((10.0, 10.0, 30.0, 30.0), 0.9)],
        "b": [((12.0, 10.0, 32.0, 30.0), 0.5), ((100.0, 0.0, 110.0, 10.0), 0.2)],
        "c": [((11.0, 11.0, 31.0, 31.0), 0.7)],
    }
    clusters = fuse(votes)
    assert [c.box for c in clusters] == [[11.0, 10.0, 31.0, 30.0], [100.0, 0.0, 110.0, 10.0]]
    assert [c.voters for c in clusters] == [["a", "b", "c"], ["b"]]


def test_linking_follows_boxes_across_a_short_gap() -> None:
    a, b = [0.0, 0.0, 10.0, 10.0], [50.0, 0.0, 60.0, 10.0]
    assert link([[a, b], [b], [], [[1.0, 0.0, 11.0, 10.0]]]) == [["t1", "t2"], ["t2"], [], ["t1"]]


def _ensemble() -> dict[str, Any]:
    box = [10.0, 10.0, 30.0, 30.0]
    return {
        "video": {"file": "v.mp4", "sha256": "ab" * 32, "width": 200, "height": 100, "frames": 4},
        "voters": ["a", "b", "c"],
        "fusion": {},
        "frames": [
            {"index": 0, "faces": [{"box": box, "track": "t1"}], "candidates": []},
            {
                "index": 1,
                "faces": [{"box": box, "track": "t1"}, {"box": [0, 0, 5, 5], "track": "t2"}],
                "candidates": [],
            },
            {"index": 2, "faces": [], "candidates": [{"box": [50, 50, 60, 60]}]},
            {
                "index": 3,
                "faces": [{"box": [20.0, 10.0, 40.0, 30.0], "track": "t3"}],
                "candidates": [],
            },
        ],
    }


def test_corrections_delete_merge_promote_add_interpolate(tmp_path: Path) -> None:
    corrections = {
        "delete_tracks": ["t2"],
        "merge": {"t3": "t1"},
        "promote": [{"track": "t4", "frame": 2, "candidate": 0}],
        "interpolate": [{"track": "t1", "frames": [1, 3]}],
        "add": [{"track": "t4", "frame": 3, "box": [1, 2, 3, 4]}],
        "ignore": [{"frames": [0, 1], "box": [90, 0, 10, 10]}],
        "rename": {"t1": "p1", "t4": "p2"},
    }
    boxes = apply_corrections(_ensemble(), corrections)
    assert boxes[2] == {"t1": [15.0, 10.0, 35.0, 30.0], "t4": [50, 50, 60, 60]}
    assert boxes[3] == {"t1": [20.0, 10.0, 40.0, 30.0], "t4": [1.0, 2.0, 4.0, 6.0]}
    built = build(_ensemble(), corrections, "c.json")
    truth = read_video_truth(_write(tmp_path, built))
    assert truth.tracks == ("p1", "p2")
    assert truth.frame(1).ignore == ((90, 0, 10, 10),)
    assert truth.frame(2).ignore == ()
    assert [f.box for f in truth.frame(2).faces] == [(15, 10, 20, 20), (50, 50, 10, 10)]


def test_a_merge_that_gives_a_person_two_boxes_is_refused() -> None:
    with pytest.raises(ValueError, match="two boxes for t1"):
        apply_corrections(_ensemble(), {"merge": {"t2": "t1"}})
    with pytest.raises(ValueError, match="no box in frame 0"):
        apply_corrections(_ensemble(), {"delete": [{"track": "t2", "frames": [0]}]})
