"""Camera tamper detection on downscaled grayscale statistics of redacted frames.

Three conditions, each judged on small thumbnails (cheap on a Pi, and blind to detail):

- **covered**: the view is very dark or nearly uniform (a hand, tape, a cap, a cloth): the
  thumbnail's mean brightness is below ``dark_mean`` or its coefficient of variation (standard
  deviation / mean) below ``flat_cv``; a very dark scene (night without IR light) looks covered;
- **defocused**: the variance of the Laplacian of a medium thumbnail, divided by the squared mean
  brightness (a sharpness measure that ignores light level), falls below ``defocus_ratio`` times
  its running baseline (lens smeared, focus turned, fog);
- **moved**: the global shift between the current and a reference thumbnail (phase correlation)
  exceeds ``max_shift`` of its side, or their correlation drops below ``min_similarity``
  (turned away, knocked over).

A condition must hold for ``persist_frames`` consecutive frames before it is reported, and is
reported once per episode (:meth:`TamperDetector.update` returns only new findings). Covered and
defocused stay active until the view recovers for ``persist_frames`` frames; after a move is
reported the new view becomes the reference. Baselines learn for ``warmup_frames`` frames, then
follow slow changes (light) with an exponential average, only on frames with no condition.
Redacted regions (``RedactedFrame.regions``: where people are) are left out of every measure, and
a frame that is mostly redacted is not judged. Only :class:`~agent.privacy.redact.RedactedFrame`
is accepted.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.privacy.redact import RedactedFrame
from agent.privacy.store import require_redacted

Gray = npt.NDArray[np.float32]


class TamperKind(str, enum.Enum):
    COVERED = "covered"
    MOVED = "moved"
    DEFOCUSED = "defocused"


@dataclass(frozen=True)
class TamperConfig:
    """Thresholds of the tamper detector (all on 0-255 grayscale)."""

    thumb_side: int = 64
    """Longest side of the thumbnail for brightness, uniformity and shift."""
    focus_side: int = 320
    """Longest side of the thumbnail for the sharpness (Laplacian variance) measure."""
    dark_mean: float = 20.0
    """Covered when the mean brightness is below this..."""
    flat_cv: float = 0.05
    """...or when it is nearly uniform: standard deviation / mean of brightness below this."""
    defocus_ratio: float = 0.35
    """Defocused when sharpness drops below this fraction of its baseline."""
    max_shift: float = 0.08
    """Moved when the global shift exceeds this fraction of the thumbnail's side..."""
    min_similarity: float = 0.5
    """...or when the correlation with the reference view falls below this."""
    baseline_alpha: float = 0.02
    """Weight of each normal frame in the running baselines (follows slow light changes)."""
    warmup_frames: int = 10
    """Frames to learn the baselines before defocus and move are judged."""
    persist_frames: int = 3
    """Consecutive frames a condition (or its absence) must hold to change state."""
    min_visible: float = 0.25
    """Frames with less than this fraction unredacted are not judged (nothing to see)."""

    def __post_init__(self) -> None:
        if self.thumb_side < 16 or self.focus_side < self.thumb_side:
            raise ValueError("tamper: need 16 <= thumb_side <= focus_side")
        if not 0 < self.defocus_ratio < 1 or not 0 < self.max_shift < 0.5:
            raise ValueError("tamper: defocus_ratio in (0, 1), max_shift in (0, 0.5)")
        if not 0 < self.baseline_alpha <= 1 or self.warmup_frames < 1 or self.persist_frames < 1:
            raise ValueError("tamper: baseline_alpha in (0, 1], warmup/persist frames >= 1")


@dataclass(frozen=True)
class TamperFinding:
    kind: TamperKind
    score: float
    """0..1: how far past its threshold the evidence is."""


@dataclass(frozen=True)
class FrameMeasures:
    """What the detector measured on one frame (exposed for tests and tuning)."""

    mean: float
    std: float
    sharpness: float
    shift: float
    """Global shift against the reference, as a fraction of the thumbnail side."""
    similarity: float


class TamperDetector:
    """Stateful detector; feed it every (or every n-th) redacted frame in order."""

    def __init__(self, config: TamperConfig | None = None) -> None:
        self._config = config or TamperConfig()
        self._frames = 0
        self._sharpness: float | None = None
        self._reference: Gray | None = None
        self._streak: dict[TamperKind, int] = dict.fromkeys(TamperKind, 0)
        self._clear: dict[TamperKind, int] = dict.fromkeys(TamperKind, 0)
        self._active: set[TamperKind] = set()
        self.last: FrameMeasures | None = None

    @property
    def active(self) -> frozenset[TamperKind]:
        """Conditions reported and not yet recovered (covered, defocused)."""
        return frozenset(self._active)

    def update(self, frame: RedactedFrame) -> list[TamperFinding]:
        """Measure one frame; return the conditions that became reportable with it.

        Redacted regions (``frame.regions``) are left out of every measure: they are where
        people are, and their fill says nothing about the lens. A frame that is mostly
        redacted carries no evidence either way and changes nothing.
        """
        cfg = self._config
        view = _measure(require_redacted(frame), cfg.thumb_side, cfg.focus_side)
        if view.valid.mean() < cfg.min_visible:
            return []
        visible = view.thumb[view.valid]
        mean, std = float(visible.mean()), float(visible.std())
        # Laplacian variance relative to brightness squared: a light switched off is not blur.
        sharpness = float(view.laplacian[view.focus_valid].var()) / max(mean * mean, 1.0)
        shift, similarity = _compare(self._reference, view.thumb, view.valid)
        self.last = FrameMeasures(mean, std, sharpness, shift, similarity)

        evidence: dict[TamperKind, float] = {}
        cv = std / max(mean, 1.0)
        if mean < cfg.dark_mean or cv < cfg.flat_cv:
            evidence[TamperKind.COVERED] = max(1 - mean / cfg.dark_mean, 1 - cv / cfg.flat_cv)
        elif self._frames >= cfg.warmup_frames:
            assert self._sharpness is not None
            limit = cfg.defocus_ratio * self._sharpness
            if sharpness < limit:
                evidence[TamperKind.DEFOCUSED] = 1 - sharpness / max(limit, 1e-9)
            if shift > cfg.max_shift or similarity < cfg.min_similarity:
                evidence[TamperKind.MOVED] = max(
                    (shift - cfg.max_shift) / cfg.max_shift,
                    (cfg.min_similarity - similarity) / (cfg.min_similarity + 1),
                )

        findings = self._debounce(evidence)
        if any(f.kind is TamperKind.MOVED for f in findings):
            self._reference = view.thumb  # the new view is the reference from now on
            self._active.discard(TamperKind.MOVED)
            self._streak[TamperKind.MOVED] = 0
        if not evidence and not self._active:
            self._learn(view, sharpness)
        return findings

    def _debounce(self, evidence: dict[TamperKind, float]) -> list[TamperFinding]:
        persist = self._config.persist_frames
        findings = []
        for kind in TamperKind:
            if kind in evidence:
                self._streak[kind] += 1
                self._clear[kind] = 0
                if self._streak[kind] >= persist and kind not in self._active:
                    self._active.add(kind)
                    score = round(min(1.0, max(0.0, evidence[kind])), 4)
                    findings.append(TamperFinding(kind, score))
            else:
                self._streak[kind] = 0
                self._clear[kind] += 1
                if self._clear[kind] >= persist:
                    self._active.discard(kind)
        return findings

    def _learn(self, view: _View, sharpness: float) -> None:
        cfg = self._config
        self._frames += 1
        if self._sharpness is None or self._reference is None:
            self._sharpness, self._reference = sharpness, view.thumb
            return
        # Warm-up: plain average; afterwards an exponential one (slow light changes). Redacted
        # cells keep what the reference had there.
        alpha = max(1.0 / self._frames, cfg.baseline_alpha)
        self._sharpness += alpha * (sharpness - self._sharpness)
        step = np.where(view.valid, alpha * (view.thumb - self._reference), 0.0)
        self._reference = (self._reference + step).astype(np.float32)


@dataclass(frozen=True)
class _View:
    thumb: Gray
    valid: npt.NDArray[np.bool_]
    """Thumbnail cells that no redacted region touches."""
    laplacian: Gray
    focus_valid: npt.NDArray[np.bool_]
    """Medium-thumbnail pixels whose Laplacian does not see a redacted region."""


def _measure(frame: RedactedFrame, thumb_side: int, focus_side: int) -> _View:
    gray = cv2.cvtColor(np.asarray(frame.pixels), cv2.COLOR_RGB2GRAY)
    focus = _resize(gray, focus_side).astype(np.float32)
    thumb = _resize(focus, thumb_side).astype(np.float32)
    return _View(
        thumb=thumb,
        valid=_unredacted(frame, thumb.shape, margin=0),
        laplacian=cv2.Laplacian(focus, cv2.CV_32F),
        focus_valid=_unredacted(frame, focus.shape, margin=2),
    )


def _unredacted(frame: RedactedFrame, shape: tuple[int, ...], margin: int) -> npt.NDArray[np.bool_]:
    """Mask (at ``shape``) of the cells that no redacted region (grown by ``margin``) touches."""
    h, w = shape[:2]
    sx, sy = w / frame.width, h / frame.height
    valid = np.ones((h, w), dtype=bool)
    for box in frame.regions:
        x0 = max(0, math.floor(box.x0 * sx) - margin)
        y0 = max(0, math.floor(box.y0 * sy) - margin)
        x1 = min(w, math.ceil(box.x1 * sx) + margin)
        y1 = min(h, math.ceil(box.y1 * sy) + margin)
        valid[y0:y1, x0:x1] = False
    return valid


def _resize(img: Any, side: int) -> Any:
    h, w = img.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _compare(
    reference: Gray | None, thumb: Gray, valid: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    """(shift as a fraction of the side, correlation) of ``thumb`` against ``reference``.

    Only unredacted cells count: for the phase correlation, redacted cells are filled from the
    reference (matched in brightness) so that they cannot pull the estimate.
    """
    if reference is None or reference.shape != thumb.shape:
        return 0.0, 1.0
    ref_valid, cur_valid = reference[valid], thumb[valid]
    ref_mean = float(ref_valid.mean())
    gain = float(cur_valid.mean()) / ref_mean if ref_mean > 1e-6 else 1.0
    filled = np.where(valid, thumb, reference * gain).astype(np.float32)
    a = ref_valid - ref_mean
    b = cur_valid - cur_valid.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    similarity = float((a * b).sum()) / denom if denom > 1e-6 else 0.0
    window = cv2.createHanningWindow((thumb.shape[1], thumb.shape[0]), cv2.CV_32F)
    # phaseCorrelate writes into its inputs (it applies the window in place): pass copies
    (dx, dy), _response = cv2.phaseCorrelate(reference.copy(), filled, window)
    return math.hypot(dx, dy) / max(thumb.shape), similarity
