"""Tamper detection on redacted frames: covered, defocused, moved; quiet on normal scenes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.events import EventBuilder, to_map
from agent.privacy.redact import RedactedFrame, RedactionConfig, redact
from agent.sequence import CountingSequence
from agent.tamper import TamperConfig, TamperDetector, TamperFinding, TamperKind
from agent.vision.detection import Box
from contract.errors import UnredactedDataError
from hw.frame import Frame

H, W = 360, 480


def world(seed: int = 7) -> np.ndarray:
    """A scene larger than the view, with structure at several scales (walls, objects, text)."""
    rng = np.random.default_rng(seed)
    big = np.zeros((H * 2, W * 2, 3), dtype=np.float32)
    for scale in (96, 24, 6):
        low = rng.uniform(0, 1, (2 * H // scale + 2, 2 * W // scale + 2, 3)).astype(np.float32)
        size = (2 * W + scale * 2, 2 * H + scale * 2)
        up = np.asarray(cv2.resize(low, size, interpolation=cv2.INTER_CUBIC))
        big += up[: 2 * H, : 2 * W]
    big = 40 + 170 * (big - big.min()) / (big.max() - big.min())
    return np.asarray(big, dtype=np.uint8)


WORLD = world()


def view(dx: int = 0, dy: int = 0, seed: int = 0) -> np.ndarray:
    """The camera's view of WORLD, offset by (dx, dy), with a little sensor noise."""
    y0, x0 = H // 2 + dy, W // 2 + dx
    img = WORLD[y0 : y0 + H, x0 : x0 + W].astype(np.int16)
    noise = np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def rf(pixels: np.ndarray, boxes: tuple[Box, ...] = ()) -> RedactedFrame:
    frame = Frame(np.ascontiguousarray(pixels), index=0, ts=0.0, mono=0.0, source="test")
    return redact(frame, boxes, RedactionConfig())


def feed(det: TamperDetector, frames: list[np.ndarray]) -> list[TamperFinding]:
    found: list[TamperFinding] = []
    for px in frames:
        found += det.update(rf(px))
    return found


def warm(det: TamperDetector, n: int = 15) -> None:
    assert feed(det, [view(seed=i) for i in range(n)]) == []


def test_normal_scene_with_noise_people_and_light_changes_is_quiet() -> None:
    det = TamperDetector()
    warm(det)
    frames = []
    for i in range(60):
        px = view(seed=100 + i)
        gain = 1.0 - 0.3 * i / 60  # dusk: 30 % darker over a minute
        px = np.clip(px * gain, 0, 255).astype(np.uint8)
        x = 20 + 6 * i  # someone walks through; their face box is redacted (black)
        frames.append(rf(px, (Box(x, 100, x + 60, 180), Box(x + 5, 180, x + 55, 330))))
    assert [f for frame in frames for f in det.update(frame)] == []
    assert det.active == frozenset()


def test_lights_switched_off_is_not_tamper() -> None:
    det = TamperDetector()
    warm(det)
    dim = [(view(seed=800 + i) * 0.4).astype(np.uint8) for i in range(10)]
    assert feed(det, dim) == []


def test_a_mostly_redacted_frame_is_not_judged() -> None:
    det = TamperDetector()
    warm(det)
    close_face = (Box(0, 0, W, H * 0.9),)  # someone right in front of the lens
    frames = [rf(view(seed=900 + i), close_face) for i in range(6)]
    assert [f for frame in frames for f in det.update(frame)] == []


def test_covered_lens_is_reported_once_and_clears() -> None:
    det = TamperDetector()
    warm(det)
    dark = [np.full((H, W, 3), 4, np.uint8) + np.uint8(i % 3) for i in range(10)]
    found = feed(det, dark)
    assert [f.kind for f in found] == [TamperKind.COVERED]
    assert found[0].score > 0.5
    assert det.active == {TamperKind.COVERED}
    assert feed(det, [view(seed=50 + i) for i in range(5)]) == []
    assert det.active == frozenset()
    assert [f.kind for f in feed(det, dark[:5])] == [TamperKind.COVERED]  # again


def test_uniform_bright_cover_counts_as_covered() -> None:
    det = TamperDetector()
    warm(det)
    cloth = [np.full((H, W, 3), 180, np.uint8) for _ in range(5)]
    assert [f.kind for f in feed(det, cloth)] == [TamperKind.COVERED]


def test_a_brief_occlusion_is_not_reported() -> None:
    det = TamperDetector(TamperConfig(persist_frames=3))
    warm(det)
    dark = np.zeros((H, W, 3), np.uint8)
    frames = [dark, dark, view(seed=1), dark, view(seed=2), view(seed=3)]
    assert feed(det, frames) == []


def test_defocus_is_reported_and_not_confused_with_move_or_cover() -> None:
    det = TamperDetector()
    warm(det)
    blurred = [cv2.GaussianBlur(view(seed=200 + i), (0, 0), 5) for i in range(8)]
    found = feed(det, blurred)
    assert [f.kind for f in found] == [TamperKind.DEFOCUSED]
    assert 0 < found[0].score <= 1
    assert det.last is not None and det.last.shift < 0.02
    assert feed(det, [view(seed=300 + i) for i in range(4)]) == []
    assert det.active == frozenset()


def test_slight_softening_is_not_defocus() -> None:
    det = TamperDetector()
    warm(det)
    soft = [cv2.GaussianBlur(view(seed=400 + i), (0, 0), 0.6) for i in range(10)]
    assert feed(det, soft) == []


@pytest.mark.parametrize("dx, dy", [(90, 0), (0, -70), (-80, 60)])
def test_moved_camera_is_reported_once_and_the_new_view_is_adopted(dx: int, dy: int) -> None:
    det = TamperDetector()
    warm(det)
    moved = [view(dx, dy, seed=500 + i) for i in range(20)]
    found = feed(det, moved)
    assert [f.kind for f in found] == [TamperKind.MOVED]
    assert det.active == frozenset()  # a move is an event, not a state
    assert feed(det, [view(dx, dy, seed=600 + i) for i in range(10)]) == []


def test_camera_turned_to_a_different_scene_is_moved() -> None:
    det = TamperDetector()
    warm(det)
    other = world(seed=99)[:H, :W]
    found = feed(det, [other] * 5)
    assert [f.kind for f in found] == [TamperKind.MOVED]


def test_small_jitter_is_not_a_move() -> None:
    det = TamperDetector()
    warm(det)
    jitter = [view(dx=int(d), dy=-int(d), seed=700 + i) for i, d in enumerate([2, -3, 4, 1] * 5)]
    assert feed(det, jitter) == []


def test_accepts_only_redacted_frames() -> None:
    det = TamperDetector()
    raw = Frame(view(), index=0, ts=0.0, mono=0.0)
    for bad in (raw, raw.pixels, None):
        with pytest.raises(UnredactedDataError):
            det.update(bad)  # type: ignore[arg-type]


def test_findings_become_tamper_events() -> None:
    det = TamperDetector()
    warm(det)
    (finding,) = feed(det, [np.zeros((H, W, 3), np.uint8)] * 3)
    event = EventBuilder("cv-test-0001", "b" * 16, CountingSequence()).tamper(
        finding.kind, finding.score
    )
    assert to_map(event)["body"] == {"kind": "covered", "score": finding.score}


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        TamperConfig(defocus_ratio=1.5)
    with pytest.raises(ValueError):
        TamperConfig(thumb_side=8)
