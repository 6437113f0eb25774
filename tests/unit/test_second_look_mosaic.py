"""The second look's mosaic: where each crop goes, how a cell maps back, and the keep rule."""

from __future__ import annotations

import numpy as np
import pytest

from tools.second_look import (
    SecondLookConfig,
    build_mosaic,
    cell_origin,
    cell_scores,
    crop_squares,
)

CFG = SecondLookConfig(cell=32, columns=4, context=2.0)


def test_crop_is_a_square_of_context_times_the_longest_side_about_the_centre() -> None:
    boxes = np.array([[10, 20, 30, 60], [0, 0, 8, 4]], np.float32)
    sq = crop_squares(boxes, 2.0)
    assert sq.tolist() == [[-20.0, 0.0, 80.0], [-4.0, -6.0, 16.0]]  # x0, y0, side


def test_cells_fill_row_by_row_and_the_mosaic_is_aligned() -> None:
    assert CFG.cells == 16 and CFG.side == 128
    assert [cell_origin(i, CFG) for i in (0, 1, 3, 4, 15)] == [
        (0, 0), (32, 0), (96, 0), (0, 32), (96, 96)
    ]  # fmt: skip
    assert SecondLookConfig(cell=48, columns=3).side == 160  # 144 rounded up to 32
    with pytest.raises(ValueError, match="outside"):
        cell_origin(16, CFG)


def test_each_crop_lands_in_its_own_cell_scaled_to_fill_it() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[40:60, 40:60] = (255, 0, 0)  # a red square, 20 px
    rgb[10:20, 150:160] = (0, 255, 0)  # a green one, 10 px
    boxes = np.array([[40, 40, 60, 60], [150, 10, 160, 20]], np.float32)
    mosaic = build_mosaic(rgb, crop_squares(boxes, 2.0), CFG)
    assert mosaic.shape == (128, 128, 3)
    # each square fills the middle half of its cell, whatever its size in the frame
    red = mosaic[0:32, 0:32, 0] > 128
    green = mosaic[0:32, 32:64, 1] > 128
    for mask in (red, green):
        ys, xs = np.nonzero(mask)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 23, 8, 23)
    assert not mosaic[32:].any()  # unused cells stay black
    assert not mosaic[0:32, 0:32, 1].any() and not mosaic[0:32, 32:64, 0].any()


def test_parts_of_a_crop_outside_the_frame_stay_black() -> None:
    rgb = np.full((50, 50, 3), 200, np.uint8)
    boxes = np.array([[0, 0, 10, 10]], np.float32)  # crop (-5, -5)..(15, 15)
    mosaic = build_mosaic(rgb, crop_squares(boxes, 2.0), CFG)
    cell = mosaic[:32, :32, 0]
    assert not cell[:8].any() and not cell[:, :8].any()  # the quarter above and left of the frame
    assert (cell[8:, 8:] == 200).all()


def test_too_many_crops_for_one_mosaic_are_refused() -> None:
    squares = np.zeros((17, 3))
    with pytest.raises(ValueError, match="17 crops"):
        build_mosaic(np.zeros((10, 10, 3), np.uint8), squares, CFG)


def test_a_cell_is_vouched_for_by_a_centred_face_of_the_expected_size() -> None:
    # a cell of 32 holds a face of 16 px centred at (16, 16) + the cell's origin
    boxes = np.array(
        [
            [8, 8, 24, 24],  # cell 0: centred, 16 px -> counts
            [32 + 2, 2, 32 + 30, 30],  # cell 1: centred, 28 px (< 2x) -> counts
            [64 + 0, 0, 64 + 12, 12],  # cell 2: centre 6 px from the corner -> not centred
            [96 + 14, 14, 96 + 18, 18],  # cell 3: 4 px, under half the face size -> too small
            [8, 40, 24, 56],  # cell 4: past n -> ignored
        ],
        np.float32,
    )
    scores = np.array([0.6, 0.9, 0.99, 0.99, 0.99], np.float32)
    best = cell_scores(boxes, scores, 4, CFG)
    assert best.tolist() == pytest.approx([0.6, 0.9, 0.0, 0.0])
    # two boxes in one cell: the best score counts
    two = cell_scores(boxes[[0, 0]], np.array([0.3, 0.7], np.float32), 1, CFG)
    assert two.tolist() == pytest.approx([0.7])
    assert cell_scores(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 3, CFG).tolist() == [
        0.0, 0.0, 0.0
    ]  # fmt: skip


def test_config_is_checked() -> None:
    for bad in ({"band_low": 0.0}, {"score_threshold": 1.0}, {"cell": 8}, {"context": 0.5}):
        with pytest.raises(ValueError):
            SecondLookConfig(**bad)  # type: ignore[arg-type]
