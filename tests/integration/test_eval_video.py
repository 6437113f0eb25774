"""`camveil eval-video` end to end on a clip made here: two real face photos (tests/photos.py)
moving across a real background photo, written to an mp4, annotated by construction. The real
int8 detector, the real tracker and redaction run through the unit's frame path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from camveil.__main__ import main
from tools.video_truth import FORMAT, sha256_of

try:
    from tests.photos import photo
except ModuleNotFoundError:  # `pytest` (not `python -m pytest`): the repo root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.photos import photo

WIDTH, HEIGHT, FRAMES = 640, 360, 14
BLURRED_FRAME = 6
"""In this frame the astronaut moves so fast that the frame is smeared (a 41 px horizontal motion
blur): the detector finds no face there, though a person would still see one. The
maximum-protection setting misses it too."""

Box = tuple[int, int, int, int]
# track: (photo, crop x0, y0, x1, y1 of the photo, face box x, y, w, h inside the crop, scale of
# the crop, start x, y, step x per frame). The face boxes are where the faces lie in the photos
# (checked by eye, hairline to chin as in WIDER FACE). Faces: 78x88 px (bucket >= 64) and, at
# scale 0.5, 27x36 px (bucket 32-63).
PEOPLE: dict[str, tuple[str, Box, Box, float, int, int, int]] = {
    "astronaut": ("astronaut", (170, 40, 290, 200), (17, 30, 78, 88), 1.0, 40, 100, 12),
    "cameraman": ("camera", (180, 100, 280, 220), (23, 22, 54, 72), 0.5, 500, 150, -10),
}


def _patch(name: str, crop: Box, scale: float) -> np.ndarray:
    x0, y0, x1, y1 = crop
    patch = photo(name)[y0:y1, x0:x1]
    size = (round(patch.shape[1] * scale), round(patch.shape[0] * scale))
    return np.asarray(cv2.resize(patch, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _motion_blur(patch: np.ndarray, length: int = 41) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    return np.asarray(cv2.filter2D(patch, -1, kernel), dtype=np.uint8)


def _clip(tmp_path: Path) -> tuple[Path, Path]:
    """The mp4 and its annotation (camveil-video-faces/1)."""
    background = cv2.resize(photo("coffee"), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    video = tmp_path / "two-faces.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    frames: list[dict[str, Any]] = []
    for index in range(FRAMES):
        rgb = background.copy()
        faces = []
        for track, (name, crop, face, scale, x, y, step) in PEOPLE.items():
            patch = _patch(name, crop, scale)
            if track == "astronaut" and index == BLURRED_FRAME:
                patch = _motion_blur(patch)
            left = x + step * index
            rgb[y : y + patch.shape[0], left : left + patch.shape[1]] = patch
            fx, fy, fw, fh = (round(v * scale) for v in face)
            faces.append({"track": track, "box": [left + fx, y + fy, fw, fh]})
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append({"index": index, "faces": faces})
    writer.release()
    annotation = {
        "format": FORMAT,
        "video": {
            "file": video.name,
            "sha256": sha256_of(video),
            "width": WIDTH,
            "height": HEIGHT,
            "frames": FRAMES,
        },
        "made": {"by": "tests/integration/test_eval_video.py, by construction"},
        "frames": frames,
    }
    path = tmp_path / "two-faces.faces.json"
    path.write_text(json.dumps(annotation), encoding="utf-8")
    return video, path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _clip(tmp_path_factory.mktemp("clip"))


def _eval(capsys: pytest.CaptureFixture[str], clip: tuple[Path, Path], *extra: str) -> Any:
    video, annotation = clip
    argv = ["eval-video", "--video", str(video), "--annotations", str(annotation), "--json"]
    argv += ["--timeout", "60"]  # a busy machine must not drop frames (fail closed) here
    assert main([*argv, *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("setting", ["default", "max"])
def test_one_missed_frame_leaks_the_whole_track_without_hold_over(
    capsys: pytest.CaptureFixture[str], clip: tuple[Path, Path], setting: str
) -> None:
    report = _eval(capsys, clip, "--hold-frames", "0", "--setting", setting)
    assert report["setting"]["name"] == setting
    assert report["setting"]["detector"]["extra_scale"] == (2.0 if setting == "max" else 0.0)
    assert report["frames_scored"] == FRAMES
    assert report["frames_dropped"] == {}
    all_faces = report["per_frame"]["all"]
    assert all_faces["faces"] == 2 * FRAMES
    assert all_faces["leaked"] == 1  # one face in one frame of 28
    assert report["per_frame"][">=64"] == {
        "faces": FRAMES,
        "leaked": 1,
        "protected": (FRAMES - 1) / FRAMES,
    }
    assert report["per_frame"]["32-63"] == {"faces": FRAMES, "leaked": 0, "protected": 1.0}
    assert report["frames_with_leak"] == [BLURRED_FRAME]
    astronaut, cameraman = report["tracks"]["astronaut"], report["tracks"]["cameraman"]
    assert astronaut["leaked"] is True
    assert astronaut["leaked_frames"] == [BLURRED_FRAME]
    assert astronaut["frames"] == FRAMES
    assert cameraman["leaked"] is False
    assert cameraman["frames"] == FRAMES
    assert (report["tracks_seen"], report["tracks_leaked"]) == (2, 1)
    assert 0.0 < report["background_overwritten"] < 0.1  # the faces plus margins: 4-6%
    assert report["frame_size"] == [WIDTH, HEIGHT]
    assert report["fps"] > 0 and report["cpu_ms_per_frame"] > 0


def test_the_tracker_hold_over_covers_the_missed_frame(
    capsys: pytest.CaptureFixture[str], clip: tuple[Path, Path]
) -> None:
    report = _eval(capsys, clip)  # default hold-over: 8 frames
    assert report["setting"]["hold_frames"] == 8
    assert report["per_frame"]["all"] == {"faces": 2 * FRAMES, "leaked": 0, "protected": 1.0}
    assert report["frames_with_leak"] == []
    assert (report["tracks_seen"], report["tracks_leaked"]) == (2, 0)


def test_the_text_report_names_the_leaked_track_and_frame(
    capsys: pytest.CaptureFixture[str], clip: tuple[Path, Path]
) -> None:
    video, annotation = clip
    # the folder holding the video under the annotation's name works as well as the file
    argv = ["eval-video", "--video", str(video.parent), "--annotations", str(annotation)]
    assert main([*argv, "--hold-frames", "0", "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 tracks leaked" in out
    assert f"astronaut: {FRAMES} frames" in out
    assert f"LEAKED in frames {BLURRED_FRAME}" in out


def test_another_video_is_refused(
    capsys: pytest.CaptureFixture[str], clip: tuple[Path, Path], tmp_path: Path
) -> None:
    video, annotation = clip
    other = tmp_path / "other.mp4"
    other.write_bytes(video.read_bytes() + b"\0")
    assert main(["eval-video", "--video", str(other), "--annotations", str(annotation)]) == 2
    assert "not the video this annotation was made on" in capsys.readouterr().err
