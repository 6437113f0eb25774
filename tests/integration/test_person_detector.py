"""The int8 person detector (models/pose_detection_int8.tflite) on real photos, and its manifest.

The model is MediaPipe's BlazePose detector quantized by ``models/recipe/pose_detection.py``;
the recipe's ``check`` step compares it with the float original (which does not ship). Here:
what ships is int8 and hash-checked, and it finds the people in the test photos and none in
the photos without people. The counting it serves is tested in test_reid_persons.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.vision.persons import MODEL, PersonDetector, build_person_detector
from contract.errors import ModelHashError
from models import MODELS_DIR, load_manifest, verified_path
from tests.photos import photo

FLOAT_SOURCE_SHA256 = "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"


@pytest.fixture(scope="module")
def detector() -> PersonDetector:
    return build_person_detector()


def test_the_shipped_person_detector_is_int8_with_its_float_source_recorded() -> None:
    manifest = load_manifest()
    assert MODEL == "pose_detection_int8"
    assert "pose_detection" not in manifest  # the float file no longer ships
    info = manifest[MODEL].info
    assert info["file"] == "pose_detection_int8.tflite"
    assert info["provenance"]["sha256"] == FLOAT_SOURCE_SHA256
    assert info["provenance"]["package"] == "mediapipe==0.10.14"
    assert info["licence"]["model"].startswith("Apache-2.0")
    assert "static int8" in info["quantization"]
    # calibrated on photos, never on the clips that evaluate counting
    assert "intel-sample-videos" not in info["provenance"]["calibration"]
    assert (MODELS_DIR / info["file"]).stat().st_size < 4 * 1024 * 1024


def test_the_backbone_runs_on_int8_tensors() -> None:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(verified_path(MODEL)))
    details = interp.get_tensor_details()
    int8 = [d for d in details if d["dtype"] == np.int8]
    # weights and activations of every backbone conv: far more than half the tensors
    assert len(int8) > len(details) // 2
    # the interface stays float: the decoder needs no change
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert all(o["dtype"] == np.float32 for o in interp.get_output_details())


@pytest.mark.parametrize("name", ["astronaut", "obama", "biden", "obama2", "obama3"])
def test_one_person_in_each_portrait(detector: PersonDetector, name: str) -> None:
    img = photo(name)
    people = detector.detect(img)
    assert len(people) == 1, people
    h, w = img.shape[:2]
    box = people[0].box
    assert people[0].score > 0.7
    # a portrait: the body fills the width and reaches the bottom of the photo
    assert box.x1 - box.x0 > 0.6 * w and box.y1 > 0.95 * h, box


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_person_in_photos_without_people(detector: PersonDetector, name: str) -> None:
    assert detector.detect(photo(name)) == []


def test_wrong_hash_is_refused(tmp_path: Path) -> None:
    entry = load_manifest()[MODEL]
    shutil.copy(MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((MODELS_DIR / entry.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / entry.file).write_bytes(bytes(data))
    with pytest.raises(ModelHashError, match="sha256"):
        verified_path(MODEL, tmp_path)
