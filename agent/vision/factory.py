"""Builds the configured face detector: model file checked against the manifest, runtime loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.vision.detection import Detector
from contract.errors import ConfigError

DETECTOR_MODELS = ("centerface_int8", "blazeface_full_int8", "yunet_int8")
PARTNER_MODELS = ("yunet_int8",)
EXTRA_SCORE_THRESHOLD = 0.16
EXTRA_SMALL_SCORE_THRESHOLD = 0.10


@dataclass(frozen=True)
class DetectorConfig:
    """Which face detector runs, and how."""

    model: str = "centerface_int8"
    """Model name in models/manifest.json: ``centerface_int8`` (best on small faces),
    ``blazeface_full_int8`` (fastest; needs tiling for faces under ~40 px) or ``yunet_int8``
    (YuNet-n: confident on large faces, weaker on small ones; mostly useful as ``partner``)."""
    threshold: float | None = None
    """One score threshold for every face size; ``None`` uses the model's tuned defaults
    (centerface: 0.07 for faces under 32 px, 0.12 above). Lower protects more faces and
    overwrites more background."""
    small_threshold: float | None = None
    """``centerface_int8`` only: the score threshold for faces under 32 px, which cost little
    background when boxed by mistake; ``None`` uses ``threshold`` if set, else the tuned 0.07.
    ``threshold = 0.10`` with ``small_threshold = 0.06`` is the pairing measured with
    ``partner`` (docs/PROTECTION.md, "Detector comparison")."""
    threads: int = 1
    """CPU threads for the TFLite interpreter (XNNPACK)."""
    scale: float = 1.0
    """Resize factor before ``centerface_int8`` runs. 2.0 finds faces down to half the size at
    about 4 times the cost: on WIDER FACE val it protects 95% of faces under 16 px instead of 76%,
    but fewer large faces (86% of faces >= 64 px instead of 93%). At 1280x720 with 2 threads:
    7.1 fps and 399 MiB peak RSS instead of 25.9 fps and 204 MiB. For cameras mounted far from
    people; keep 1.0 otherwise."""
    extra_scale: float = 0.0
    """``centerface_int8`` only: also run the model at this scale and merge the boxes (0: off).
    2.0 is the maximum-protection mode for offline redaction: on WIDER FACE val it protects
    92.8% of faces under 16 px (default 76.0%), 97.1% of faces >= 16 px (95.9%) and 96.4% of
    faces >= 32 px (95.6%), for 5.5% of background overwritten (4.6%), at 0.45 s/MP (0.09).
    The extra pass uses score thresholds 0.10 under 32 px and 0.16 above."""
    partner: str = ""
    """``centerface_int8`` only: also run this model on the whole frame and merge its boxes
    (``""``: off). ``yunet_int8`` finds large and close faces CenterFace misses or boxes too
    small: on WIDER FACE val the merged boxes protect 96.9% of faces >= 16 px (default 95.9%)
    and 96.5% of faces >= 32 px (95.6%) for 5.6% of background overwritten (4.6%), at about
    1.45 times the default's cost (docs/PROTECTION.md, "Detector comparison"); with
    ``threshold = 0.10`` and ``small_threshold = 0.06``, 97.4% and 96.8% for 6.2%."""
    partner_threshold: float = 0.6
    """Score threshold of the partner's own boxes."""
    persons: bool = False
    """Also run the person detector (MediaPipe BlazePose, ``pose_detection_int8``, about 9 ms a
    frame, on the CPU) and redact the head region, placed from the model's keypoints, of each
    person whose face was not found, so heads seen from behind or the side are covered too
    (:mod:`agent.vision.heads`; needs ``[privacy] redact_person_heads``, on by default). It runs
    inside the detector's deadline: if it fails the frame is dropped. Measured in
    docs/PROTECTION.md, "Person head regions"."""
    tile: int = 0
    """Also run the detector on overlapping tiles of this many source pixels (0: whole frame)."""
    tile_overlap: float = 0.25
    """Overlap between neighbouring tiles, as a share of the tile size."""
    timeout: float = 2.0
    """Seconds a frame may take in the detector before it is dropped (fail closed)."""
    edgetpu: bool = False
    """Use a Coral EdgeTPU delegate (needs libedgetpu and an EdgeTPU-compiled model)."""
    models_dir: Path | None = None
    """Folder with manifest.json and the model files; default: the installed ``models`` package."""

    def __post_init__(self) -> None:
        if self.model not in DETECTOR_MODELS:
            raise ConfigError(
                f"[detector] model = {self.model!r} is unknown; "
                f"use one of {', '.join(DETECTOR_MODELS)}"
            )
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"[detector] threshold = {self.threshold} must be between 0 and 1")
        if self.small_threshold is not None:
            if not 0.0 < self.small_threshold < 1.0:
                raise ConfigError(
                    f"[detector] small_threshold = {self.small_threshold} must be between 0 and 1"
                )
            if self.model != "centerface_int8":
                raise ConfigError("[detector] small_threshold applies to centerface_int8 only")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"[detector] threads = {self.threads} must be between 1 and 64")
        if not 0.25 <= self.scale <= 4.0:
            raise ConfigError(f"[detector] scale = {self.scale} must be between 0.25 and 4")
        if self.scale != 1.0 and self.model == "blazeface_full_int8":
            raise ConfigError(
                f"[detector] scale does not apply to {self.model}: it letterboxes the whole "
                "frame (use tile for small faces)"
            )
        if self.extra_scale and not 0.25 <= self.extra_scale <= 4.0:
            raise ConfigError(
                f"[detector] extra_scale = {self.extra_scale}: use 0 (off) or 0.25 to 4"
            )
        if self.extra_scale and self.model != "centerface_int8":
            raise ConfigError("[detector] extra_scale applies to centerface_int8 only")
        if self.partner and self.partner not in PARTNER_MODELS:
            raise ConfigError(
                f'[detector] partner = {self.partner!r} is unknown; use "" (off) or '
                f"{', '.join(PARTNER_MODELS)}"
            )
        if self.edgetpu and (self.model == "yunet_int8" or self.partner):
            raise ConfigError("[detector] edgetpu: no EdgeTPU build of yunet_int8 exists")
        if self.partner and self.model != "centerface_int8":
            raise ConfigError("[detector] partner applies to centerface_int8 only")
        if not 0.0 < self.partner_threshold < 1.0:
            raise ConfigError(
                f"[detector] partner_threshold = {self.partner_threshold} must be between 0 and 1"
            )
        if self.tile < 0 or (0 < self.tile < 64):
            raise ConfigError(f"[detector] tile = {self.tile}: use 0 (off) or at least 64 pixels")
        if not 0.0 <= self.tile_overlap < 0.9:
            raise ConfigError("[detector] tile_overlap must be in [0, 0.9)")
        if self.timeout <= 0:
            raise ConfigError("[detector] timeout must be > 0 seconds")


def build_detector(config: DetectorConfig) -> Detector:
    """Load the configured detector (verifies the model hash; raises ModelError on mismatch)."""
    from models import MODELS_DIR, verified_path

    path = verified_path(config.model, config.models_dir or MODELS_DIR)
    # Each model's own config keeps its tuned defaults; [detector] overrides threads/threshold.
    overrides: dict[str, Any] = {"num_threads": config.threads}
    if config.threshold is not None:
        overrides["score_threshold"] = config.threshold
    detector: Detector
    if config.model == "centerface_int8":
        from agent.vision.centerface import CenterFaceConfig, CenterFaceDetector

        if config.threshold is not None:  # one threshold for every face size...
            overrides["small_score_threshold"] = config.threshold
        if config.small_threshold is not None:  # ...unless small faces have their own
            overrides["small_score_threshold"] = config.small_threshold
        overrides["scale"] = config.scale
        cf = dataclasses.replace(CenterFaceConfig(), **overrides)
        detector = CenterFaceDetector(path, cf, edgetpu=config.edgetpu).load()
        if config.extra_scale:
            from agent.vision.tiling import MergedDetector

            extra = dataclasses.replace(
                cf,
                scale=config.extra_scale,
                score_threshold=EXTRA_SCORE_THRESHOLD,
                small_score_threshold=EXTRA_SMALL_SCORE_THRESHOLD,
            )
            second = CenterFaceDetector(path, extra, edgetpu=config.edgetpu).load()
            detector = MergedDetector([detector, second])
        if config.partner:
            from agent.vision.tiling import MergedDetector
            from agent.vision.yunet import YuNetConfig, YuNetDetector

            partner_path = verified_path(config.partner, config.models_dir or MODELS_DIR)
            yn = YuNetConfig(score_threshold=config.partner_threshold, num_threads=config.threads)
            detector = MergedDetector([detector, YuNetDetector(partner_path, yn).load()])
    elif config.model == "yunet_int8":
        from agent.vision.yunet import YuNetConfig, YuNetDetector

        overrides["scale"] = config.scale
        yc = dataclasses.replace(YuNetConfig(), **overrides)
        detector = YuNetDetector(path, yc).load()
    else:
        from agent.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector

        bf = dataclasses.replace(BlazeFaceConfig(), **overrides)
        detector = BlazeFaceDetector(path, bf, edgetpu=config.edgetpu).load()
    if config.tile:
        from agent.vision.tiling import TiledDetector

        detector = TiledDetector(detector, tile=config.tile, overlap=config.tile_overlap)
    if config.persons:
        from agent.vision.heads import HeadDetector, WithHeads
        from agent.vision.persons import MODEL as PERSON_MODEL
        from agent.vision.persons import PersonDetector, PersonDetectorConfig

        person_path = verified_path(PERSON_MODEL, config.models_dir or MODELS_DIR)
        people = PersonDetector(person_path, PersonDetectorConfig(num_threads=config.threads))
        detector = WithHeads(detector, HeadDetector(people.load()))
    return detector
