"""agent.vision.align: crop geometry, landmark decoding and the similarity fit (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.vision.align import (
    ALIGNED_SIZE,
    CROP_GROW,
    CROP_SIZE,
    TEMPLATE,
    decode_landmarks,
    face_crop,
    similarity,
    warp,
)
from agent.vision.detection import Box


def _transform(
    points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]
) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ (scale * rot).T + np.asarray(shift)


def test_similarity_recovers_a_known_transform() -> None:
    src = _transform(TEMPLATE, 0.3, 2.5, (40.0, -7.0))
    m = similarity(src, TEMPLATE)
    mapped = src @ m[:, :2].T + m[:, 2]
    assert np.allclose(mapped, TEMPLATE, atol=1e-6)
    # a similarity: equal scale on both axes, no shear, no reflection
    a = m[:, :2]
    assert np.allclose(a @ a.T, (1 / 2.5) ** 2 * np.eye(2), atol=1e-9)
    assert np.linalg.det(a) > 0


def test_similarity_never_reflects() -> None:
    mirrored = TEMPLATE * np.array([-1.0, 1.0])
    m = similarity(mirrored, TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0  # the best rotation, not a mirror image


def test_similarity_refuses_degenerate_points() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        similarity(np.ones((5, 2)), TEMPLATE)
    with pytest.raises(ValueError, match="matching"):
        similarity(np.ones((4, 2)), TEMPLATE)


def test_warp_puts_marked_points_onto_the_template() -> None:
    crop = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    points = _transform(TEMPLATE, -0.2, 1.1, (20.0, 25.0))
    for x, y in points:  # a bright 3x3 dot on each landmark
        crop[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2] = 255
    face = warp(crop, points)
    assert face.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    for x, y in TEMPLATE:
        assert face[round(y), round(x)].max() > 100, (x, y)
    assert face.mean() < 10  # and little else is bright


def test_face_crop_centres_the_box_and_blacks_out_the_outside() -> None:
    rgb = np.full((200, 300, 3), 90, np.uint8)
    rgb[40:80, 100:140] = 250  # the "face"
    crop = face_crop(rgb, Box(100, 40, 140, 80))
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    inner = round(CROP_SIZE / CROP_GROW)
    lo = (CROP_SIZE - inner) // 2
    assert crop[lo + 5 : lo + inner - 5, lo + 5 : lo + inner - 5].min() == 250
    assert crop[2, 2].max() == 90
    edge = face_crop(rgb, Box(0, 0, 40, 40))  # half of its square lies outside the frame
    assert edge[:10, :10].max() == 0
    with pytest.raises(ValueError, match="outside"):
        face_crop(rgb, Box(500, 500, 540, 540))
    with pytest.raises(ValueError, match="empty"):
        face_crop(rgb, Box(10, 10, 10, 10))


def test_decode_picks_the_central_face_and_its_points() -> None:
    n = 32
    head = np.zeros((1, n, n, 15), np.float32)
    head[..., 0] = -10.0
    head[0, 2, 2, 0] = 9.0  # a hotter face at the edge is ignored
    i, j = 15, 17
    head[0, i, j, 0] = 5.0
    head[0, i, j, 1:3] = np.log(80 / 4), np.log(64 / 4)  # h = 80, w = 64
    head[0, i, j, 3:5] = 0.25, -0.5  # offset y, x
    lm = np.array([[0.3, 0.25], [0.3, 0.75], [0.55, 0.5], [0.8, 0.3], [0.8, 0.7]])  # (y, x)
    head[0, i, j, 5:] = lm.reshape(-1)
    p = decode_landmarks(head)
    x0 = (j - 0.5 + 0.5) * 4 - 32
    y0 = (i + 0.25 + 0.5) * 4 - 40
    assert np.allclose(p, np.stack([x0 + lm[:, 1] * 64, y0 + lm[:, 0] * 80], 1), atol=1e-4)
