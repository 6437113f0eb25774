"""The model files (int8 TFLite), their manifest and the recipe that rebuilt them.

``manifest.json`` lists every model with its sha256; :func:`verified_path` refuses a file whose hash
differs, so a unit never runs a model that is not the one we measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import ModelHashError, ModelMissingError

MODELS_DIR = Path(__file__).resolve().parent
MANIFEST = MODELS_DIR / "manifest.json"


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry: the file name, its sha256 and the free-form description."""

    name: str
    file: str
    sha256: str
    info: dict[str, Any]


def load_manifest(path: Path = MANIFEST) -> dict[str, ModelEntry]:
    """Read the manifest; keys are model names."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelMissingError(f"model manifest {path} is missing; run `make models`") from exc
    except json.JSONDecodeError as exc:
        raise ModelMissingError(f"model manifest {path} is not valid JSON: {exc}") from exc
    out: dict[str, ModelEntry] = {}
    for name, entry in raw.get("models", {}).items():
        out[name] = ModelEntry(name=name, file=entry["file"], sha256=entry["sha256"], info=entry)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_path(name: str, models_dir: Path = MODELS_DIR) -> Path:
    """Path of model ``name`` after checking its sha256 against the manifest in ``models_dir``."""
    manifest = load_manifest(models_dir / "manifest.json")
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise ModelMissingError(
            f"model {name!r} is not in {models_dir}/manifest.json (known: {known})"
        )
    entry = manifest[name]
    path = models_dir / entry.file
    if not path.is_file():
        raise ModelMissingError(f"model file {path} is missing; run `make models` or reinstall")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ModelHashError(
            f"model file {path} has sha256 {digest}, manifest says {entry.sha256}: "
            "refusing to run an unverified model; reinstall the model or rebuild with `make models`"
        )
    return path
