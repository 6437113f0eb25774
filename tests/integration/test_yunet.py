"""YuNet int8 (models/yunet_int8.tflite), its decoder and CenterFace + YuNet fusion, real photos.

The float reference (tests/fixtures/yunet_float_reference.json) holds the detections of the float
YuNet-n (libfacedetection.train's ONNX converted to TFLite, equal to the ONNX to 3e-4 in score)
through the same decoder, written by ``models/recipe/yunet.py --fixture``; the int8 model must
agree with it. Photos come from PyPI packages (tests/photos.py), never from ../shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.vision.centerface import CenterFaceDetector
from agent.vision.detection import Box, Detection
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.tiling import MergedDetector
from agent.vision.yunet import YuNetConfig, YuNetDetector
from contract.errors import ModelError
from hw.runtime import TFLiteRuntime
from models import load_manifest, verified_path

try:
    from tests.photos import photo
except ModuleNotFoundError:  # `pytest` (not `python -m pytest`) without a tests/conftest.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.photos import photo

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "yunet_float_reference.json"
MODEL = "yunet_int8"
# Eileen Collins' face in skimage.data.astronaut() (512 x 512), hairline to chin
ASTRONAUT_FACE = Box(180.0, 60.0, 270.0, 180.0)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector(verified_path(MODEL)).load()


def _matches(box: Box, others: list[Box], iou: float) -> bool:
    return any(box.iou(o) >= iou for o in others)


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "obama", "biden"])
def test_int8_agrees_with_float_reference(reference: dict[str, Any], name: str) -> None:
    config = YuNetConfig(**reference["config"])
    det = YuNetDetector(verified_path(MODEL), config).load()
    img = photo(name)
    ref = reference["photos"][name]
    assert list(img.shape) == ref["shape"]
    got = det.detect(img)
    ref_boxes = [Box(*r["box"]) for r in ref["detections"]]
    got_boxes = [d.box for d in got]
    for r, box in zip(ref["detections"], ref_boxes, strict=True):
        if r["score"] >= 0.5:
            assert _matches(box, got_boxes, 0.7), (name, r, got)
    for d in got:
        if d.score >= 0.5:
            assert _matches(d.box, ref_boxes, 0.7), (name, d, ref["detections"])
            near = max(ref["detections"], key=lambda r: d.box.iou(Box(*r["box"])))
            assert abs(d.score - near["score"]) <= 0.1, (name, d, near)


def test_face_found_at_the_right_place(detector: YuNetDetector) -> None:
    dets = detector.detect(photo("astronaut"))
    assert len(dets) == 1, dets
    face = dets[0]
    assert face.kind == "face" and face.score > 0.8
    assert face.box.iou(ASTRONAUT_FACE) > 0.6, face.box


@pytest.mark.parametrize("name", ["obama", "biden", "camera"])
def test_portraits_have_one_confident_face(detector: YuNetDetector, name: str) -> None:
    img = photo(name)
    strong = [d for d in detector.detect(img) if d.score >= 0.5]
    assert len(strong) == 1, strong
    box = strong[0].box
    h, w = img.shape[:2]
    assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
    assert box.width > 0.05 * w


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face_photos_yield_nothing(detector: YuNetDetector, name: str) -> None:
    assert detector.detect(photo(name)) == []


def test_boxes_follow_scale_back_to_frame_pixels(detector: YuNetDetector) -> None:
    img = photo("astronaut")
    half = YuNetDetector(verified_path(MODEL), YuNetConfig(scale=0.5)).load()
    (a,) = detector.detect(img)
    (b,) = half.detect(img)
    assert a.box.iou(b.box) > 0.7, (a, b)  # same face, same frame coordinates


def test_same_detector_handles_changing_frame_sizes(detector: YuNetDetector) -> None:
    img = photo("astronaut")
    first = detector.detect(img)
    detector.detect(photo("obama"))
    assert detector.detect(img) == first


def test_centerface_model_is_refused_by_the_yunet_decoder() -> None:
    rt = TFLiteRuntime(verified_path("centerface_int8")).load()
    with pytest.raises(ModelError, match=r"rebuild it with models/recipe/yunet\.py"):
        YuNetDetector(verified_path("centerface_int8")).load(rt)


def test_manifest_records_source_commit_and_licence() -> None:
    info = load_manifest()[MODEL].info
    prov = info["provenance"]
    assert prov["repository"] == "ShiqiYu/libfacedetection.train"
    assert len(prov["commit"]) == 40 and len(prov["sha256"]) == 64
    assert "Apache-2.0" in info["licence"]["model"]


# ----------------------------------------------------------------------------- fusion
def test_factory_builds_yunet_alone() -> None:
    det = build_detector(DetectorConfig(model=MODEL, threshold=0.7))
    assert isinstance(det, YuNetDetector)
    assert det.config.score_threshold == 0.7


def test_partner_merges_both_models_boxes() -> None:
    fused = build_detector(DetectorConfig(partner=MODEL, partner_threshold=0.5))
    assert isinstance(fused, MergedDetector)
    img = photo("astronaut")
    cf = CenterFaceDetector(verified_path("centerface_int8")).load().detect(img)
    yn = YuNetDetector(verified_path(MODEL), YuNetConfig(score_threshold=0.5)).load().detect(img)
    (merged,) = fused.detect(img)  # one face, found by both: one detection
    assert merged.box.iou(ASTRONAUT_FACE) > 0.6
    # the merged box encloses both models' boxes: fusion never uncovers a pixel either wanted
    for d in cf + yn:
        assert _encloses(merged, d), (merged, d)


def test_partner_keeps_a_face_only_the_partner_found() -> None:
    """A face CenterFace misses at a strict threshold is still redacted through YuNet."""
    strict = DetectorConfig(threshold=0.99)
    img = photo("astronaut")
    assert build_detector(strict).detect(img) == []
    fused = build_detector(replace(strict, partner=MODEL))
    (face,) = fused.detect(img)
    assert face.box.iou(ASTRONAUT_FACE) > 0.6


def _encloses(outer: Detection, inner: Detection) -> bool:
    a, b = outer.box, inner.box
    return (
        a.x0 <= b.x0 + 1e-3 and a.y0 <= b.y0 + 1e-3 and a.x1 >= b.x1 - 1e-3 and a.y1 >= b.y1 - 1e-3
    )


def test_eval_command_runs_the_partner(tmp_path: Path) -> None:
    """`camveil eval --partner yunet_int8` on a one-photo dataset, as an operator runs it."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(photo("astronaut")).save(tmp_path / "images" / "astronaut.png")
    f = ASTRONAUT_FACE
    face = [int(f.x0), int(f.y0), int(f.width), int(f.height)]
    line = {"image": "images/astronaut.png", "width": 512, "height": 512, "faces": [face]}
    (tmp_path / "annotations.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")
    done = _camveil("eval", "--dataset", str(tmp_path), "--json", "--partner", MODEL,
                    "--partner-threshold", "0.55")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["detector"]["partner"] == MODEL
    assert report["detector"]["partner_threshold"] == 0.55
    assert report["protected"][">=64"] == 1.0
    done = _camveil("eval", "--dataset", str(tmp_path), "--model", MODEL, "--partner", MODEL)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "--partner applies to centerface_int8 only" in done.stderr


def _camveil(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "camveil", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=root, env=env,
    )  # fmt: skip
