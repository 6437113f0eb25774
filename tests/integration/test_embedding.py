"""MobileFaceNet int8 embedding (models/mobilefacenet_int8.tflite) and the landmark alignment
(models/centerface_landmarks_int8.tflite) through hw.runtime, on real photos.

Photos come from PyPI packages only (tests/photos.py): Barack Obama (three photos) and Joe Biden
from the face_recognition 1.3.0 sdist, Eileen Collins (skimage ``astronaut``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from agent.events import Header, PresenceEvent, TamperEvent, TamperKind, ZoneCount, to_cbor
from agent.vision.align import ALIGNED_SIZE, Aligner
from agent.vision.centerface import CenterFaceDetector
from agent.vision.detection import Box, Detection
from agent.vision.embedding import (
    DIMENSIONS,
    INPUT_SIZE,
    LANDMARK_MODEL,
    MODEL,
    EmbedderConfig,
    Embedding,
    FaceEmbedder,
    align,
)
from agent.vision.factory import DetectorConfig, build_detector
from camveil.__main__ import main
from contract.errors import UnredactedDataError
from models import load_manifest, verified_path
from tests.photos import photo


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder(verified_path(MODEL)).load()


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    det = build_detector(DetectorConfig())
    assert isinstance(det, CenterFaceDetector)
    return det


def _face(detector: CenterFaceDetector, rgb: npt.NDArray[np.uint8]) -> Detection:
    faces = detector.detect(rgb)
    assert faces, "no face found"
    return max(faces, key=lambda d: d.box.area)


def _embed(embedder: FaceEmbedder, detector: CenterFaceDetector, name: str) -> Embedding:
    rgb = photo(name)
    return embedder.embed(rgb, _face(detector, rgb))


def test_manifest_records_model_and_licence_risk() -> None:
    entry = load_manifest()[MODEL].info
    assert entry["inputs"][0]["shape"] == [1, ALIGNED_SIZE, ALIGNED_SIZE, 3]
    assert entry["outputs"][0]["shape"][-1] == DIMENSIONS
    assert "MS-Celeb-1M" in entry["licence"]["training_data_risk"]
    assert entry["provenance"]["tarball_sha256"] and entry["provenance"]["sha256"]
    landmarks = load_manifest()[LANDMARK_MODEL].info
    assert landmarks["outputs"][0]["shape"] == [1, 32, 32, 15]
    assert "MIT" in landmarks["licence"]


def test_loads_through_hw_runtime_with_int8_kernels(embedder: FaceEmbedder) -> None:
    from hw.runtime import TFLiteRuntime

    rt = TFLiteRuntime(verified_path(MODEL)).load()
    assert rt.delegated is not False  # XNNPACK runs it (None: the runtime cannot say)
    assert [tuple(i.shape) for i in rt.inputs] == [(1, ALIGNED_SIZE, ALIGNED_SIZE, 3)]


def test_embeddings_are_192_d_unit_vectors(
    embedder: FaceEmbedder, detector: CenterFaceDetector
) -> None:
    e = _embed(embedder, detector, "astronaut")
    assert e.dim == DIMENSIONS
    assert e.vector.dtype == np.float32
    assert abs(float(np.linalg.norm(e.vector)) - 1.0) < 1e-5
    assert not e.vector.flags.writeable


def test_same_face_shifted_and_scaled_is_closer_than_another_person(
    embedder: FaceEmbedder, detector: CenterFaceDetector
) -> None:
    rgb = photo("astronaut")
    face = _face(detector, rgb)
    # the same photo, shifted 20 px and shrunk to 70%: detected again, so a new crop
    moved = np.ascontiguousarray(rgb[20:, 30:])
    small = np.asarray(Image.fromarray(moved).resize((int(moved.shape[1] * 0.7),) * 2))
    a = embedder.embed(rgb, face)
    b = embedder.embed(small, _face(detector, small))
    other = _embed(embedder, detector, "biden")
    assert a.cosine(b) > 0.8
    assert a.cosine(other) < 0.5
    assert a.cosine(b) > a.cosine(other) + 0.3


def test_same_person_other_photos_closer_than_different_people(
    embedder: FaceEmbedder, detector: CenterFaceDetector
) -> None:
    obama = [_embed(embedder, detector, n) for n in ("obama", "obama2", "obama3")]
    biden = _embed(embedder, detector, "biden")
    same = [obama[0].cosine(obama[1]), obama[0].cosine(obama[2]), obama[1].cosine(obama[2])]
    different = [o.cosine(biden) for o in obama]
    assert min(same) > max(different) + 0.2, (same, different)


def test_flip_averaging_stays_a_unit_vector_close_to_plain(
    embedder: FaceEmbedder, detector: CenterFaceDetector
) -> None:
    flip = FaceEmbedder(verified_path(MODEL), EmbedderConfig(flip=True)).load()
    rgb = photo("obama")
    face = _face(detector, rgb)
    a, b = embedder.embed(rgb, face), flip.embed(rgb, face)
    assert abs(float(np.linalg.norm(b.vector)) - 1.0) < 1e-5
    assert 0.9 < a.cosine(b) < 1.0


@pytest.fixture(scope="module")
def aligner() -> Aligner:
    return Aligner(verified_path(LANDMARK_MODEL)).load()


def test_landmarks_land_on_the_eyes_nose_and_mouth(
    aligner: Aligner, detector: CenterFaceDetector
) -> None:
    rgb = photo("astronaut")
    crop = align(rgb, _face(detector, rgb))
    assert crop.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    p = aligner.landmarks(crop)
    assert p.shape == (5, 2) and np.all(np.isfinite(p))
    left_eye, right_eye, nose, mouth_l, mouth_r = p
    assert left_eye[0] < nose[0] < right_eye[0]  # image left to right
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])  # top down
    assert mouth_l[0] < mouth_r[0]
    eye_gap = float(np.linalg.norm(right_eye - left_eye))
    assert 0.2 * INPUT_SIZE < eye_gap < 0.5 * INPUT_SIZE  # the face fills 1/1.5 of the crop


def test_rotated_face_aligns_to_nearly_the_same_face(
    aligner: Aligner, detector: CenterFaceDetector
) -> None:
    import cv2

    rgb = photo("obama")
    face = aligner.align(align(rgb, _face(detector, rgb)))
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
    turned = cv2.warpAffine(rgb, m, (w, h))
    face2 = aligner.align(align(turned, _face(detector, turned)))
    assert face.shape == face2.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    diff = float(np.abs(face.astype(np.int16) - face2.astype(np.int16)).mean())
    # without alignment the turned face differs by far more (the box crop keeps the roll)
    plain = cv2.resize(align(turned, _face(detector, turned)), (ALIGNED_SIZE, ALIGNED_SIZE))
    plain_diff = float(np.abs(face.astype(np.int16) - plain.astype(np.int16)).mean())
    assert diff < plain_diff / 2, (diff, plain_diff)


def test_blank_crop_still_embeds(embedder: FaceEmbedder) -> None:
    e = embedder.embed_crop(np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
    assert e.dim == DIMENSIONS


def test_box_outside_the_image_is_a_clear_error() -> None:
    rgb = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        align(rgb, Detection(Box(200, 200, 300, 300), 0.9))


def test_embedding_never_encodes_pickles_or_shows_values(
    embedder: FaceEmbedder, detector: CenterFaceDetector
) -> None:
    e = _embed(embedder, detector, "astronaut")
    header = Header(device="unit-1", boot="b" * 16, seq=1, ts=1)
    for event in (
        TamperEvent(header, TamperKind.COVERED, e),  # type: ignore[arg-type]
        PresenceEvent(header, 0, 1, (ZoneCount("door", 1, 0), ZoneCount(e, 1, 1))),  # type: ignore[arg-type]
    ):
        with pytest.raises(UnredactedDataError, match="embeddings never leave the device"):
            to_cbor(event)
    with pytest.raises(TypeError, match="never leaves the device"):
        pickle.dumps(e)
    with pytest.raises(AttributeError):
        e._vector = np.zeros(DIMENSIONS, np.float32)  # type: ignore[misc]
    assert repr(e) == f"Embedding(dim={DIMENSIONS})"
    with pytest.raises(TypeError):
        json.dumps(e)


def _save(path: Path, rgb: npt.NDArray[np.uint8]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_eval_embed_on_a_tiny_pairs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for person, names in {"obama": ["obama", "obama2", "obama3"], "biden": ["biden"]}.items():
        for n in names:
            _save(tmp_path / person / f"{n}.jpg", photo(n))
    _save(tmp_path / "collins" / "astronaut.png", photo("astronaut"))
    _save(tmp_path / "nobody" / "coffee.png", photo("coffee"))
    rows = [
        "image_a\timage_b\tsame\tsource\tfold",
        "obama/obama.jpg\tobama/obama2.jpg\t1\tt\t1",
        "obama/obama.jpg\tobama/obama3.jpg\t1\tt\t1",
        "obama/obama2.jpg\tobama/obama3.jpg\t1\tt\t1",
        "obama/obama.jpg\tbiden/biden.jpg\t0\tt\t1",
        "collins/astronaut.png\tbiden/biden.jpg\t0\tt\t1",
        "obama/obama2.jpg\tcollins/astronaut.png\t0\tt\t1",
        "nobody/coffee.png\tobama/obama.jpg\t0\tt\t1",
    ]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    # the int8 model stands in for the float one: the two columns must then agree exactly
    model = str(verified_path(MODEL))
    code = main(["eval-embed", "--dataset", str(tmp_path), "--json", "--float-model", model])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"]["no_face"] == 1
    assert report["dataset"]["pairs_with_missing_face"] == 1
    assert report["dataset"]["negatives"] == 4
    for name in ("int8", "float"):
        r = report[name]
        assert set(r) >= {"accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "auc", "ms_per_face"}
        assert r["accuracy"] == 1.0 and r["auc"] == 1.0
    assert report["int8"]["auc"] == report["float"]["auc"]
    main(["eval-embed", "--dataset", str(tmp_path)])
    text = capsys.readouterr().out
    assert "no face found in 1" in text and "4 negatives" in text
