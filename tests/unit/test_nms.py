"""NMS against a plain-Python greedy oracle written from the definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.vision.nms import iou_one_to_many, nms


def oracle(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou_one_to_many(boxes[k], boxes[i : i + 1])[0] <= iou for k in keep):
            keep.append(i)
    return keep


coords = st.integers(0, 60)
box = st.tuples(coords, coords, st.integers(0, 40), st.integers(0, 40)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(box, st.sampled_from([-1.0, 0.0, 0.1, 0.5, 0.5, 0.9])), max_size=60),
    st.sampled_from([0.0, 0.3, 0.4, 0.5, 1.0]),
    st.one_of(st.none(), st.integers(0, 5)),
)
def test_nms_matches_the_greedy_definition(
    items: list[tuple[list[int], float]], iou: float, max_out: int | None
) -> None:
    boxes = np.array([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
    scores = np.array([s for _, s in items], dtype=np.float64)
    expected = oracle(boxes, scores, iou)  # ties (many equal scores) keep the lower index
    if max_out is not None:
        expected = expected[:max_out]
    assert nms(boxes, scores, iou, max_out).tolist() == expected
