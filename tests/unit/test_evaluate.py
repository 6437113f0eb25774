"""The evaluator counts protection, leaks and background exactly, on a dataset made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.errors import InputFileError
from agent.evaluate import check_floor, evaluate, format_report, read_annotations
from agent.privacy.redact import RedactionConfig
from agent.vision.detection import Box, Detection


class Fixed:
    def __init__(self, boxes: list[Box]) -> None:
        self.boxes = boxes

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection(b, 0.9) for b in self.boxes]


def _dataset(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    ann = {
        "image": "images/a.jpg",
        "width": 200,
        "height": 100,
        "faces": [[10, 10, 10, 10], [50, 50, 40, 40], [150, 10, 20, 20]],
        "ignore": [[0, 80, 20, 20]],
    }
    (tmp_path / "annotations.jsonl").write_text(json.dumps(ann) + "\n")
    return tmp_path


def test_protection_per_bucket_background_and_leak(tmp_path: Path) -> None:
    data = read_annotations(_dataset(tmp_path))
    # Covers face 1 fully, face 2 only 80% (width 32 of 40), face 3 not at all; plus an FP
    # box of 10x10 on background and one over the ignore box (not background).
    det = Fixed(
        [Box(10, 10, 20, 20), Box(50, 50, 82, 90), Box(100, 0, 110, 10), Box(0, 80, 20, 100)]
    )
    report = evaluate(det, data, RedactionConfig(margin=0.0))
    assert report["faces"]["all"] == 3
    assert report["protected"]["<16"] == 1.0
    assert report["protected"]["32-63"] == 0.0
    assert report["protected"]["16-31"] == 0.0
    assert report["protected"]["all"] == pytest.approx(1 / 3)
    face_px = 100 + 1600 + 400
    assert report["face_pixels_leaked"] == pytest.approx((8 * 40 + 400) / face_px)
    background = 200 * 100 - face_px - 400
    assert report["background_overwritten"] == pytest.approx(100 / background)
    assert "protected faces" in format_report(report)
    assert check_floor(report, {"protected": {"all": 0.3}}) == []
    assert check_floor(report, {"protected": {"all": 0.5}, "background_overwritten": 0.0})


def test_margin_counts_in_protection(tmp_path: Path) -> None:
    data = read_annotations(_dataset(tmp_path))
    det = Fixed([Box(52, 52, 88, 88)])  # 36 px box, 90% of 40 -> with margin covers it
    assert evaluate(det, data, RedactionConfig(margin=0.0))["protected"]["32-63"] == 0.0
    assert evaluate(det, data, RedactionConfig(margin=0.25))["protected"]["32-63"] == 1.0


def test_unreadable_image_is_skipped_and_reported(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    (root / "images" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    report = evaluate(Fixed([]), read_annotations(root), RedactionConfig())
    assert report["images"] == 0 and len(report["skipped"]) == 1


def test_bad_annotation_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "annotations.jsonl").write_text('{"image": "x.jpg", "faces": [[1,2]]}\n')
    with pytest.raises(InputFileError, match=":1:"):
        read_annotations(tmp_path)


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"annotations\.jsonl"):
        read_annotations(tmp_path / "nope")
