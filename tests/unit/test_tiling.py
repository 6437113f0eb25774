"""TiledDetector with a fake inner detector: tile layout, mapping back, merging."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.vision.detection import Box, Detection
from agent.vision.tiling import MergedDetector, Tile, TiledDetector, merge, tile_grid


class SquareFinder:
    """Finds white squares (pixels == 255), like a detector with a fixed input size.

    A square is seen only if it is at least ``min_share`` of the longest image side (a 192 px
    model shrinks big frames), and one cut by the image edge is reported as the visible part.
    Records the shape of every image it was given.
    """

    def __init__(self, min_share: float = 0.0, kind: str = "face", corner: bool = False) -> None:
        self.min_share = min_share
        self.kind = kind
        self.corner = corner  # report the top-left corner as a landmark
        self.calls: list[tuple[int, ...]] = []

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        self.calls.append(rgb.shape)
        white = np.all(rgb == 255, axis=-1)
        out: list[Detection] = []
        seen = np.zeros_like(white)
        for y, x in zip(*np.nonzero(white), strict=True):
            if seen[y, x]:
                continue
            x1 = x
            while x1 < white.shape[1] and white[y, x1]:
                x1 += 1
            y1 = y
            while y1 < white.shape[0] and white[y1, x]:
                y1 += 1
            seen[y:y1, x:x1] = True
            if max(x1 - x, y1 - y) >= self.min_share * max(rgb.shape[:2]):
                box = Box(float(x), float(y), float(x1), float(y1))
                points = ((float(x), float(y)),) if self.corner else None
                out.append(Detection(box, 0.9, self.kind, points))  # type: ignore[arg-type]
        return out


def frame_with(squares: list[tuple[int, int, int]], h: int = 720, w: int = 1280) -> npt.NDArray:
    img = np.zeros((h, w, 3), np.uint8)
    for x, y, s in squares:
        img[y : y + s, x : x + s] = 255
    return img


def test_grid_covers_frame_with_flush_last_tile() -> None:
    tiles = tile_grid(1280, 720, 384, 0.25)
    assert {t.x0 for t in tiles} == {0, 224, 448, 672, 896}  # stride <= 288 (25% overlap)
    assert {t.y0 for t in tiles} == {0, 168, 336}
    assert max(t.x1 for t in tiles) == 1280 and max(t.y1 for t in tiles) == 720
    assert all(t.x1 - t.x0 == 384 and t.y1 - t.y0 == 384 for t in tiles)
    covered = np.zeros((720, 1280), bool)
    for t in tiles:
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


@given(
    w=st.integers(1, 3000),
    h=st.integers(1, 3000),
    tile=st.integers(32, 1024),
    overlap=st.floats(0.0, 0.8),
)
@settings(deadline=None)  # a property test, not a timing test: big grids are slow on a busy box
def test_grid_properties(w: int, h: int, tile: int, overlap: float) -> None:
    tiles = tile_grid(w, h, tile, overlap)
    xs = sorted({(t.x0, t.x1) for t in tiles})
    ys = sorted({(t.y0, t.y1) for t in tiles})
    for spans, length in ((xs, w), (ys, h)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b - a == min(tile, length) for a, b in spans)
        for (_, prev_end), (start, _) in itertools.pairwise(spans):
            assert prev_end - start >= overlap * tile - 1  # neighbours overlap as asked
    assert len(tiles) == len(xs) * len(ys)


def test_small_face_found_only_by_tiles_and_mapped_back() -> None:
    img = frame_with([(1000, 500, 20)])
    inner = SquareFinder(min_share=0.04)  # 20 px < 4% of 1280: the full frame misses it
    assert inner.detect(img) == []
    found = TiledDetector(inner, tile=384, overlap=0.25).detect(img)
    assert [d.box for d in found] == [Box(1000.0, 500.0, 1020.0, 520.0)]


def test_landmarks_are_mapped_back_from_tiles_and_kept_through_merging() -> None:
    img = frame_with([(1000, 500, 20), (100, 100, 200)])
    found = TiledDetector(SquareFinder(min_share=0.04, corner=True), tile=384).detect(img)
    assert sorted(d.landmarks for d in found) == [((100.0, 100.0),), ((1000.0, 500.0),)]


def test_duplicates_from_overlapping_tiles_and_full_frame_are_merged() -> None:
    img = frame_with([(300, 300, 60)])  # inside the overlap of four tiles, and the full frame
    inner = SquareFinder()
    found = TiledDetector(inner, tile=384, overlap=0.25).detect(img)
    assert [d.box for d in found] == [Box(300.0, 300.0, 360.0, 360.0)]


def test_face_cut_by_tile_border_keeps_whole_box_only() -> None:
    # 200 px face across tile borders: tiles see parts, the full frame sees it whole
    img = frame_with([(250, 200, 200)])
    found = TiledDetector(SquareFinder(), tile=384, overlap=0.25).detect(img)
    assert [d.box for d in found] == [Box(250.0, 200.0, 450.0, 400.0)]


def test_full_frame_off_runs_tiles_only() -> None:
    inner = SquareFinder()
    TiledDetector(inner, tile=384, overlap=0.25, full_frame=False).detect(frame_with([]))
    assert all(shape[:2] == (384, 384) for shape in inner.calls)
    assert len(inner.calls) == len(tile_grid(1280, 720, 384, 0.25))


def test_frame_smaller_than_tile_runs_once() -> None:
    inner = SquareFinder()
    found = TiledDetector(inner, tile=512, overlap=0.25).detect(
        frame_with([(10, 10, 30)], 300, 400)
    )
    assert len(inner.calls) == 1
    assert [d.box for d in found] == [Box(10.0, 10.0, 40.0, 40.0)]


def test_kinds_are_merged_separately() -> None:
    person = Detection(Box(0, 0, 100, 300), 0.95, "person")
    face = Detection(Box(30, 10, 70, 60), 0.8, "face")
    assert sorted(d.kind for d in merge([person, face], iou=0.3, contain=0.8)) == ["face", "person"]


def test_partial_box_joins_the_whole_one_either_way_round() -> None:
    big = Detection(Box(0, 0, 100, 100), 0.9)
    part = Detection(Box(0, 0, 40, 100), 0.6)  # IoU 0.4 but fully inside
    assert merge([big, part], iou=0.5, contain=0.8) == [big]
    # a higher-scoring partial box leads the cluster: it keeps its score, the box grows to all
    part_first = Detection(Box(0, 0, 40, 100), 0.95)
    assert merge([big, part_first], iou=0.5, contain=0.8) == [
        Detection(Box(0.0, 0.0, 100.0, 100.0), 0.95)
    ]


def test_separate_faces_stay_separate() -> None:
    a = Detection(Box(0, 0, 50, 50), 0.9)
    b = Detection(Box(60, 0, 110, 50), 0.8)
    assert merge([a, b], iou=0.3, contain=0.8) == [a, b]


def _covered(dets: list[Detection]) -> npt.NDArray[np.bool_]:
    mask = np.zeros((120, 120), bool)
    for d in dets:
        b = d.box
        mask[int(b.y0) : int(b.y1), int(b.x0) : int(b.x1)] = True
    return mask


@given(
    st.lists(
        st.tuples(
            st.integers(0, 100),
            st.integers(0, 100),
            st.integers(1, 20),
            st.integers(1, 20),
            st.floats(0.1, 1.0),
        ),
        max_size=12,
    )
)
def test_merging_never_uncovers_a_pixel(raw: list[tuple[int, int, int, int, float]]) -> None:
    dets = [Detection(Box(x, y, x + w, y + h), s) for x, y, w, h, s in raw]
    merged = merge(dets, iou=0.3, contain=0.8)
    assert len(merged) <= len(dets)
    before, after = _covered(dets), _covered(merged)
    assert not (before & ~after).any()


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0.25), (-5, 0.25), (256, 1.0), (256, -0.1)])
def test_bad_settings_rejected(tile: int, overlap: float) -> None:
    with pytest.raises(ValueError):
        TiledDetector(SquareFinder(), tile=tile, overlap=overlap)


def test_tile_value() -> None:
    assert Tile(0, 0, 10, 10) == Tile(0, 0, 10, 10)


def test_merged_detector_unions_and_merges_runs() -> None:
    class Fixed:
        def __init__(self, dets: list[Detection]) -> None:
            self.dets = dets

        def detect(self, rgb: np.ndarray) -> list[Detection]:
            return list(self.dets)

    a = Fixed([Detection(Box(10, 10, 30, 30), 0.9), Detection(Box(100, 100, 110, 110), 0.2)])
    b = Fixed([Detection(Box(12, 8, 32, 30), 0.5), Detection(Box(200, 10, 210, 20), 0.3)])
    merged = MergedDetector([a, b]).detect(np.zeros((240, 320, 3), np.uint8))
    boxes = sorted((d.box.x0, d.box.y0, d.box.x1, d.box.y1, d.score) for d in merged)
    # the overlapping pair becomes one box enclosing both, with the higher score
    assert boxes == [(10, 8, 32, 30, 0.9), (100, 100, 110, 110, 0.2), (200, 10, 210, 20, 0.3)]
    with pytest.raises(ValueError, match="at least one"):
        MergedDetector([])
