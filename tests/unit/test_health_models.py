"""The health event names every model that decides what is redacted, with its manifest hash."""

from __future__ import annotations

from pathlib import Path

from agent.daemon.health import model_hashes
from agent.vision.factory import DetectorConfig
from models import MODELS_DIR, load_manifest


def test_the_detector_alone_is_named_with_its_manifest_hash() -> None:
    manifest = load_manifest(MODELS_DIR / "manifest.json")
    assert model_hashes(DetectorConfig()) == {"centerface_int8": manifest["centerface_int8"].sha256}


def test_a_partner_detector_is_named_beside_the_detector() -> None:
    manifest = load_manifest(MODELS_DIR / "manifest.json")
    hashes = model_hashes(DetectorConfig(partner="yunet_int8"))
    assert hashes == {
        "centerface_int8": manifest["centerface_int8"].sha256,
        "yunet_int8": manifest["yunet_int8"].sha256,
    }


def test_no_manifest_gives_no_hashes(tmp_path: Path) -> None:
    assert model_hashes(DetectorConfig(models_dir=tmp_path)) == {}
