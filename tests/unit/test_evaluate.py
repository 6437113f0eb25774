"""The evaluator counts protection, leaks and background exactly, on a dataset made here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.privacy.redact import RedactionConfig
from agent.vision.detection import Box, Detection
from contract.errors import InputFileError
from tools.evaluate import check_floor, evaluate, format_report, read_annotations


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


def _many(tmp_path: Path, n: int) -> Path:
    """n images of one 20x20 face each; image i's face sits at x = 10 * (i % 5)."""
    (tmp_path / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        name = f"images/{i}.png"
        Image.fromarray(np.zeros((60, 100, 3), np.uint8)).save(tmp_path / name)
        face = [10 * (i % 5), 20, 20, 20]
        lines.append(json.dumps({"image": name, "width": 100, "height": 60, "faces": [face]}))
    (tmp_path / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_bootstrap_interval_brackets_the_estimate_and_widens_with_fewer_images(
    tmp_path: Path,
) -> None:
    # the box covers faces at x = 0, 10, 20 fully enough (>= 90%) but not those at 30 and 40
    det = Fixed([Box(0, 20, 40, 40)])
    big = evaluate(det, read_annotations(_many(tmp_path / "big", 200)), RedactionConfig(0.0))
    small = evaluate(det, read_annotations(_many(tmp_path / "small", 10)), RedactionConfig(0.0))
    for report in (big, small):
        assert report["protected"]["16-31"] == pytest.approx(0.6)
        lo, hi = report["interval95"]["16-31"]
        assert lo < 0.6 < hi
        assert report["interval95"][">=16"] == report["interval95"]["16-31"]
        assert report["interval95"]["<16"] is None  # no face of that size
        bg_lo, bg_hi = report["interval95"]["background_overwritten"]
        assert bg_lo <= report["background_overwritten"] <= bg_hi

    def width(report: dict[str, Any]) -> float:
        lo, hi = report["interval95"]["16-31"]
        return float(hi - lo)

    assert width(small) > 2 * width(big)
    assert 0.05 < width(big) < 0.2  # ~ 4 * sqrt(0.24 / 200) = 0.14
    text = format_report(big)
    assert "95% interval" in text and "bootstrap" in text
    assert (
        evaluate(det, read_annotations(_many(tmp_path / "one", 1)), RedactionConfig(0.0))[
            "interval95"
        ]
        == {}
    )
