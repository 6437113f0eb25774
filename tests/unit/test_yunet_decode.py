"""YuNet's input preparation and decoder, on hand-made head grids (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.vision.yunet import CHANNELS, STRIDES, YuNetConfig, decode, prepare
from contract.errors import ModelError


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _empty_heads(h: int, w: int) -> dict[int, np.ndarray]:
    heads = {}
    for s in STRIDES:
        grid = np.zeros((h // s, w // s, CHANNELS), np.float32)
        grid[:, :, 0:2] = -20.0  # every cell scores ~0
        heads[s] = grid
    return heads


def test_one_cell_decodes_to_its_box() -> None:
    heads = _empty_heads(64, 96)
    # stride 16, cell (row 2, col 3): score sqrt(0.9 * 0.8), centre offset (0.5, 0.25),
    # size exp(1) x exp(0.5) cells
    heads[16][2, 3] = [_logit(0.9), _logit(0.8), 0.5, 0.25, 1.0, 0.5]
    boxes, scores = decode(heads, 0.5)
    assert boxes.shape == (1, 4)
    cx, cy = (3 + 0.5) * 16, (2 + 0.25) * 16
    w, h = math.exp(1.0) * 16, math.exp(0.5) * 16
    np.testing.assert_allclose(
        boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5
    )
    assert scores[0] == pytest.approx(math.sqrt(0.9 * 0.8), rel=1e-5)


def test_threshold_applies_to_the_geometric_mean() -> None:
    heads = _empty_heads(32, 32)
    # cls 0.95 but obj 0.2: sqrt = 0.436, below 0.5 although cls alone is far above
    heads[8][1, 1] = [_logit(0.95), _logit(0.2), 0, 0, 0, 0]
    heads[32][0, 0] = [_logit(0.6), _logit(0.6), 0, 0, 0, 0]  # sqrt = 0.6
    boxes, scores = decode(heads, 0.5)
    assert len(scores) == 1
    assert scores[0] == pytest.approx(0.6, rel=1e-5)
    assert boxes[0, 2] - boxes[0, 0] == pytest.approx(32)  # the stride-32 cell, not stride 8
    _, scores = decode(heads, 0.4)
    assert sorted(np.round(scores, 3)) == [pytest.approx(0.436, abs=1e-3), 0.6]


def test_no_face_gives_empty_arrays() -> None:
    boxes, scores = decode(_empty_heads(64, 64), 0.1)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_huge_log_size_does_not_overflow() -> None:
    heads = _empty_heads(32, 32)
    heads[32][0, 0] = [20.0, 20.0, 0, 0, 500.0, 500.0]
    boxes, _ = decode(heads, 0.5)
    assert np.isfinite(boxes).all()


def test_prepare_pads_to_multiples_of_32_and_maps_pixels_exactly() -> None:
    rgb = np.arange(50 * 70 * 3, dtype=np.uint32).reshape(50, 70, 3).astype(np.uint8)
    x, sx, sy = prepare(rgb, YuNetConfig(), np.dtype(np.int8), 1.0, -128)
    assert x.shape == (1, 64, 96, 3) and x.dtype == np.int8
    assert (sx, sy) == (1.0, 1.0)
    np.testing.assert_array_equal(x[0, :50, :70].astype(np.int16) + 128, rgb)
    assert (x[0, 50:] == -128).all() and (x[0, :, 70:] == -128).all()  # black padding


def test_prepare_scale_and_max_side() -> None:
    rgb = np.zeros((400, 600, 3), np.uint8)
    x, sx, sy = prepare(rgb, YuNetConfig(scale=0.5), np.dtype(np.float32), 0.0, 0)
    assert x.shape == (1, 224, 320, 3) and (sx, sy) == (0.5, 0.5)
    x, sx, _ = prepare(rgb, YuNetConfig(max_side=300), np.dtype(np.float32), 0.0, 0)
    assert x.shape == (1, 224, 320, 3) and sx == 0.5


def test_prepare_refuses_other_inputs() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        prepare(np.zeros((8, 8), np.uint8), YuNetConfig(), np.dtype(np.int8), 1.0, -128)
    with pytest.raises(ModelError, match="unsupported YuNet input"):
        prepare(np.zeros((8, 8, 3), np.uint8), YuNetConfig(), np.dtype(np.uint8), 0.5, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("score_threshold", 1.0),
        ("iou_threshold", 0.0),
        ("scale", 8.0),
        ("max_side", 16),
        ("num_threads", 0),
    ],
)
def test_config_rejects_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        YuNetConfig(**{field: value})
