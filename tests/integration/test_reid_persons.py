"""Counting people who show no face, with the real models (BlazePose person detector, CenterFace,
MobileFaceNet), on a clip built from a real photo so that the count is known by construction.

The clip: Eileen Collins (scikit-image's ``astronaut``, from its PyPI wheel) walks across a grey
room, is gone for longer than every hold-over (the face tracker's 8 frames, the person
tracker's 8 detector runs = 24 frames), and walks across again. One person, two visits:

- faces embedded (the default): her face links the two visits, and the person tracks count as
  that visitor, not again: **1** visitor;
- no face embedded (``min_face_px`` above her face's size, as for a person seen from behind):
  two anonymous person tracks (a back cannot be re-identified): **2** visitors;
- the same without ``persons``: **0**, what face re-identification alone counted on the replay
  video's six people seen from behind (docs/PROTOCOL.md).

The replay video itself (6 people, counted by eye and recorded in
tests/data/video/one-by-one-person-detection.visitors.json, checked by
tests/unit/test_evaluate_visitors.py) is measured by ``camveil eval-visitors`` / ``make
eval-visitors`` (tools/evaluate_visitors.py): the whole clip through the real pipeline takes
about a minute of CPU, too long for the test suite; this test needs no ``../shared/data``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from agent.pipeline import Pipeline, PrivacyConfig
from agent.stats import PipelineStats
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.reid import ReidConfig, open_reid
from agent.vision.relink import open_tracking
from camveil.__main__ import main
from hw.frame import Frame
from tests.photos import photo
from tools.evaluate_visitors import count_visitors
from tools.video_truth import sha256_of

W, H = 640, 480
GONE = 30
"""Empty frames between the visits: longer than the person tracker's hold-over (24 frames)."""


def canvas(x: int | None) -> npt.NDArray[np.uint8]:
    """A grey 640x480 frame with the astronaut photo (height 360) at ``x`` (None: empty)."""
    out = np.full((H, W, 3), 90, np.uint8)
    if x is not None:
        img = Image.fromarray(photo("astronaut"))
        img = img.resize((round(img.width * 360 / img.height), 360))
        px = np.asarray(img)[:, : W - x]
        out[H - 360 :, x : x + px.shape[1]] = px
    return out


def visit() -> list[int | None]:
    return [14 * i for i in range(21)]


def count(config: ReidConfig) -> tuple[int, PipelineStats]:
    scenes = visit() + [None] * GONE + visit()
    frames: Iterator[Frame] = iter(
        Frame(canvas(x), i, 1000.0 + i * 0.1, time.monotonic()) for i, x in enumerate(scenes)
    )
    stats = PipelineStats()
    reid = open_reid(config, stats)
    assert reid is not None
    privacy = PrivacyConfig()
    tracker, worker = open_tracking(privacy.tracker, (None, reid), stats)
    assert worker is not None
    with worker:
        pipe = Pipeline(
            lambda: next(frames),
            build_detector(DetectorConfig()),
            lambda _p: None,
            privacy,
            stats,
            faces=worker,
            tracker=tracker,
        )
        for x in scenes:
            pipe.step()
            if x is None:
                time.sleep(0.02)  # the worker catches up while nobody is in view
        worker.wait_idle(10.0)
        window = reid.flush()
    assert window is not None
    assert stats.frames_out == len(scenes)
    return window.unique, stats


PURPOSE = "integration test of visitor counting from people"


@pytest.mark.parametrize(
    ("persons", "min_face_px", "expected"),
    [(True, 40, 1), (True, 1000, 2), (False, 1000, 0)],
    ids=["face-links-both-visits", "no-face-two-people", "faces-only-counts-none"],
)
def test_visitors_counted_from_people(persons: bool, min_face_px: int, expected: int) -> None:
    config = ReidConfig(enabled=True, purpose=PURPOSE, persons=persons, min_face_px=min_face_px)
    unique, stats = count(config)
    assert unique == expected, dict(stats.dropped)
    assert not any(k.startswith("reid_") for k in stats.dropped), stats.dropped
    assert ("persons" in stats.stages) is persons


def test_eval_visitors_counts_a_replayed_clip(tmp_path: Path) -> None:
    """`camveil eval-visitors`'s replay (the daemon's wiring, a folder of frames): one person
    walking across with no face embedded is one visitor with persons on, none without."""
    for i, x in enumerate(visit()):
        Image.fromarray(canvas(x)).save(tmp_path / f"{i:03d}.png")
    config = ReidConfig(enabled=True, purpose=PURPOSE, min_face_px=1000)
    on = count_visitors(tmp_path, config)
    off = count_visitors(tmp_path, dataclasses.replace(config, persons=False))
    assert (on["unique"], off["unique"]) == (1, 0)
    assert on["frames"] == off["frames"] == 21
    assert on["persons_p50_ms"] is not None and off["persons_p50_ms"] is None


def test_eval_visitors_command_checks_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`camveil eval-visitors` on an mp4 of two visits and a visitors file: 0 with the count
    right (the face links both visits: 1 person), 1 when the file says 3 people."""
    video = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for x in visit() + [None] * GONE + visit():
        writer.write(cv2.cvtColor(canvas(x), cv2.COLOR_RGB2BGR))
    writer.release()
    truth = {
        "format": "camveil-video-visitors/1",
        "video": {"file": video.name, "sha256": sha256_of(video)},
        "people": 1,
        "counted": "by construction",
    }
    annotation = tmp_path / "walk.visitors.json"
    annotation.write_text(json.dumps(truth))
    argv = ["eval-visitors", "--video", str(tmp_path), "--annotations", str(annotation)]
    assert main([*argv, "--persons", "on", "--tolerance", "0.1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["people"] == 1 and [r["unique"] for r in report["runs"]] == [1]
    annotation.write_text(json.dumps(truth | {"people": 3}))
    assert main([*argv, "--persons", "on", "--tolerance", "0.1"]) == 1
    assert "1 visitors (error -2)" in capsys.readouterr().out
