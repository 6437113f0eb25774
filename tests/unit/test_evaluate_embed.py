"""eval-embed's pair reader and verification metrics, on hand-made scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.vision.detection import Box, Detection
from contract.errors import InputFileError
from tools.evaluate_embed import pick_face, read_pairs, verification_metrics


def test_metrics_on_separable_and_overlapping_scores() -> None:
    same = np.array([True] * 4 + [False] * 4)
    perfect = verification_metrics(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, -1.0]), same)
    assert perfect["accuracy"] == 1.0 and perfect["auc"] == 1.0
    assert perfect["tar_at_far_1e-3"] == 1.0
    assert perfect["negatives"] == 4 and perfect["false_accepts_at_far_1e-3"] == 0
    # one negative (0.85) above three positives: best accuracy 7/8 (threshold just below 0.6)
    mixed = verification_metrics(np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.4, 0.3, 0.2]), same)
    assert mixed["accuracy"] == pytest.approx(7 / 8)
    assert mixed["tar_at_far_1e-3"] == pytest.approx(1 / 4)  # only 0.9 beats the 0.85 negative
    assert mixed["auc"] == pytest.approx(13 / 16)
    tied = verification_metrics(np.array([0.5, 0.5]), np.array([True, False]))
    assert tied["auc"] == 0.5


def test_far_1e_2_allows_floor_of_far_times_negatives() -> None:
    rng = np.random.default_rng(0)
    neg = rng.uniform(0, 0.5, 300)
    neg[:3] = [0.95, 0.94, 0.93]  # three strong false accepts among 300 negatives
    pos = np.linspace(0.6, 1.0, 100)
    sims = np.concatenate([pos, neg])
    same = np.array([True] * 100 + [False] * 300)
    r = verification_metrics(sims, same)
    assert r["false_accepts_at_far_1e-2"] == 3
    assert r["tar_at_far_1e-2"] == 1.0  # 3 false accepts allowed: threshold at the 4th, 0.5
    assert r["tar_at_far_1e-3"] == pytest.approx(np.mean(pos > 0.95))


def test_read_pairs_reports_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "pairs.tsv").write_text("image_a\timage_b\tsame\na.jpg\tb.jpg\tyes\n")
    with pytest.raises(InputFileError, match=r"pairs.tsv:2"):
        read_pairs(tmp_path)
    (tmp_path / "pairs.tsv").write_text("a.jpg\tb.jpg\t1\n")
    with pytest.raises(InputFileError, match="both"):
        read_pairs(tmp_path)
    with pytest.raises(InputFileError, match="not found"):
        read_pairs(tmp_path / "nowhere")


def test_pick_face_prefers_the_confident_central_face() -> None:
    centre = Detection(Box(40, 40, 60, 60), 0.9)
    side = Detection(Box(0, 0, 30, 30), 0.9)  # larger, off-centre
    weak = Detection(Box(30, 30, 70, 70), 0.2)  # large and central, but a weak box
    assert pick_face([side, centre, weak], 100, 100) is centre
    assert pick_face([side, centre, weak], 100, 100, "largest") is side
    assert pick_face([], 100, 100) is None


def test_all_pairs_far_counts_every_impostor_pair_of_the_source() -> None:
    from agent.vision.embedding import Embedding
    from tools.evaluate_embed import Pair, all_pairs_far

    def e(angle: float) -> Embedding:  # unit vectors in a plane: cosine = cos(angle difference)
        return Embedding(np.array([np.cos(angle), np.sin(angle), 0.0]))

    emb = {
        "ann/1.jpg": e(0.0),
        "ann/2.jpg": e(0.3),  # cos 0.955 to ann/1
        "bob/1.jpg": e(1.0),  # cos 0.54 to ann/1, 0.75 to ann/2
        "cid/1.jpg": e(3.0),  # far from everyone
        "dfc/x.jpg": e(0.05),  # another source: left out even though it is close to ann
    }
    pairs = [
        Pair("ann/1.jpg", "ann/2.jpg", True, "lfw_pairs"),
        Pair("bob/1.jpg", "cid/1.jpg", False, "lfw_pairs"),
        Pair("ann/1.jpg", "dfc/x.jpg", False, "deepface"),
    ]
    t = all_pairs_far(pairs, emb, thresholds=(0.5, 0.7, 0.99))
    assert (t["faces"], t["people"], t["genuine_pairs"], t["impostor_pairs"]) == (4, 3, 1, 5)
    by = {r["threshold"]: r for r in t["rows"]}
    assert by[0.5]["impostors_accepted"] == 2 and by[0.5]["far"] == pytest.approx(2 / 5)
    assert by[0.7]["impostors_accepted"] == 1 and by[0.7]["tar"] == 1.0
    assert by[0.99]["impostors_accepted"] == 0 and by[0.99]["tar"] == 0.0
    assert t["max_impostor"] == pytest.approx(np.cos(0.7))
