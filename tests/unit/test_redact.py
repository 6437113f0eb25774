"""Redaction is irreversible, covers the box plus margin, and only redact() builds RedactedFrame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.privacy.redact import (
    FillMode,
    RedactedFrame,
    RedactionConfig,
    pixel_rect,
    redact,
    redaction_mask,
)
from agent.privacy.store import encode_jpeg, require_redacted, write_png
from agent.vision.detection import Box
from contract.errors import UnredactedDataError
from hw.frame import Frame


def _frame(pixels: np.ndarray, index: int = 0) -> Frame:
    return Frame(pixels, index=index, ts=0.0, mono=0.0, source="test")


def _random_image(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fill", [FillMode.SOLID, FillMode.NOISE])
def test_box_pixels_do_not_depend_on_the_original(fill: FillMode) -> None:
    box = Box(40, 30, 80, 90)
    cfg = RedactionConfig(margin=0.25, fill=fill)
    a = redact(_frame(_random_image(1)), [box], cfg)
    b = redact(_frame(_random_image(2)), [box], cfg)
    x0, y0, x1, y1 = pixel_rect(box, 0.25, 160, 120)  # type: ignore[misc]
    region_a = a.pixels[y0:y1, x0:x1]
    region_b = b.pixels[y0:y1, x0:x1]
    if fill is FillMode.SOLID:
        assert np.array_equal(region_a, region_b)
        assert (region_a == 0).all()
    else:
        # Noise is fresh CSPRNG output: uncorrelated with the originals and with each other.
        orig = _random_image(1)[y0:y1, x0:x1].astype(float).ravel()
        corr = np.corrcoef(orig, region_a.astype(float).ravel())[0, 1]
        assert abs(corr) < 0.1
        assert not np.array_equal(region_a, region_b)


def test_margin_grows_the_box_and_outside_is_untouched() -> None:
    img = _random_image(3)
    box = Box(40, 40, 60, 80)  # 20 x 40
    out = redact(_frame(img), [box], RedactionConfig(margin=0.5))
    assert pixel_rect(box, 0.5, 160, 120) == (35, 30, 65, 90)
    mask = redaction_mask((120, 160), [box], 0.5)
    assert mask.sum() == 30 * 60
    assert (out.pixels[mask] == 0).all()
    assert np.array_equal(out.pixels[~mask], img[~mask])


def test_fractional_boxes_round_outwards_and_clip() -> None:
    assert pixel_rect(Box(10.6, 10.4, 20.2, 20.9), 0.0, 100, 100) == (10, 10, 21, 21)
    assert pixel_rect(Box(-30, -30, 5, 5), 0.0, 100, 100) == (0, 0, 5, 5)
    assert pixel_rect(Box(200, 200, 300, 300), 0.0, 100, 100) is None


def test_original_frame_is_not_modified() -> None:
    img = _random_image(4)
    frame = _frame(img.copy())
    redact(frame, [Box(0, 0, 50, 50)], RedactionConfig())
    assert np.array_equal(frame.pixels, img)


def test_redacted_frame_cannot_be_built_elsewhere() -> None:
    with pytest.raises(UnredactedDataError):
        RedactedFrame(_random_image(5), 0, 0.0, 0.0, "x", (), _seal=object())


def test_store_paths_refuse_raw_frames(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = _frame(_random_image(6))
    with pytest.raises(UnredactedDataError):
        require_redacted(raw)
    with pytest.raises(UnredactedDataError):
        encode_jpeg(raw)  # type: ignore[arg-type]
    with pytest.raises(UnredactedDataError):
        write_png(raw.pixels, tmp_path / "x.png")  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()


def test_redacted_frame_pixels_are_read_only() -> None:
    out = redact(_frame(_random_image(7)), [Box(0, 0, 10, 10)], RedactionConfig())
    with pytest.raises(ValueError):
        out.pixels[0, 0, 0] = 1


def test_jpeg_of_redacted_frame_keeps_the_fill() -> None:
    import io

    from PIL import Image

    out = redact(_frame(_random_image(8)), [Box(40, 30, 100, 90)], RedactionConfig(margin=0.0))
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(out, quality=95))))
    assert decoded[35:85, 45:95].max() < 16


@pytest.mark.parametrize("kwargs", [{"margin": -0.1}, {"margin": 5.0}, {"color": (0, 0, 300)}])
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RedactionConfig(**kwargs)  # type: ignore[arg-type]
