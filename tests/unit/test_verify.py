"""The enrolled matcher without a model (the colour embedder of test_reid: "the same person" is
"the same colour"): it matches once per track, respects the cooldown, and a failure never
touches redaction. tests/integration/test_enrolment.py runs the real FaceNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.stats import PipelineStats
from agent.vision.embedworker import EmbedWorker, Selection
from agent.vision.gallery import EnrolmentConfig, Gallery
from agent.vision.verify import Verifier
from contract.envelope.keys import Identity
from hw.frame import Frame
from tests.unit.test_reid import ColourEmbedder, OneFace, frame, person, settle

MODEL = "ab" * 32
CFG = EnrolmentConfig(
    enabled=True,
    purpose="unit test of the matcher",
    legal_basis="explicit consent (test)",
    refresh_frames=1,
    cooldown_s=5.0,
)


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    g = Gallery(tmp_path / "g", Identity.generate("cv-unit-0001"), MODEL)
    # colour 192 -> person(6); colour 64 -> person(2) is not enrolled
    g.add("staff-0006", "consent-6", [person(6).vector], CFG, MODEL)
    return g


def test_an_enrolled_colour_matches_once_per_track_and_per_cooldown(gallery: Gallery) -> None:
    matches: list[tuple[str, float, float]] = []
    stats = PipelineStats()
    embedder = ColourEmbedder()
    v = Verifier(CFG, gallery, lambda *m: matches.append(m), stats)
    with EmbedWorker(embedder, [v], stats) as work:
        for i in range(4):  # track 1: enrolled (matched once, then left alone); track 2: not
            f, faces = frame(float(i), [192, 64], index=i)
            work.observe(f, faces)
            settle(embedder, 2 + i)
        v.drain()
        assert [(s, round(sc, 3), ts) for s, sc, ts in matches] == [("staff-0006", 1.0, 0.0)]
        assert embedder.calls == 5
        # black squares are not faces to the colour embedder: tracks 3 and 4 are the new ones
        f, faces = frame(3.0, [0, 0, 192], index=5)  # a new track inside the cooldown
        work.observe(f, faces)
        settle(embedder, 6)
        f, faces = frame(10.0, [0, 0, 0, 192], index=6)  # another, after it
        work.observe(f, faces)
        settle(embedder, 7)
        v.drain()
    assert [(m[0], m[2]) for m in matches] == [("staff-0006", 0.0), ("staff-0006", 10.0)]
    assert stats.dropped["verify_cooldown"] == 1
    assert all(not c.any() for c in embedder.crops)  # every crop overwritten after use
    assert all(not e.vector.any() for e in embedder.out)  # every embedding wiped


def test_a_failing_embedder_is_counted_and_matches_nothing(gallery: Gallery) -> None:
    stats = PipelineStats()
    matches: list[Any] = []
    embedder = ColourEmbedder(fail=True)
    v = Verifier(CFG, gallery, lambda *m: matches.append(m), stats)
    with EmbedWorker(embedder, [v], stats) as work:
        f, faces = frame(0.0, [192])
        work.observe(f, faces)
        settle(embedder, 1)
        v.drain()
    assert not matches and stats.dropped["verify_embed_failed"] == 1


class BrokenVerifier(Verifier):
    def select(self, frame: Frame, faces: Any) -> Selection:
        raise RuntimeError("matcher broke")


def test_a_failing_matcher_still_redacts_every_frame_and_counts(gallery: Gallery) -> None:
    def run(faces: EmbedWorker | None, stats: PipelineStats) -> list[ProcessedFrame]:
        out: list[ProcessedFrame] = []
        frames = iter([frame(float(i), [200], index=i)[0] for i in range(3)])
        pipe = Pipeline(
            lambda: next(frames), OneFace(), out.append, PrivacyConfig(), stats, faces=faces
        )
        for _ in range(3):
            pipe.step()
        return out

    plain = run(None, PipelineStats())
    stats = PipelineStats()
    broken_matcher = BrokenVerifier(CFG, gallery, lambda *m: None, stats)
    with EmbedWorker(ColourEmbedder(), [broken_matcher], stats) as work:
        broken = run(work, stats)
    assert len(broken) == len(plain) == 3
    for a, b in zip(plain, broken, strict=True):
        assert np.array_equal(a.redacted.pixels, b.redacted.pixels)
    assert stats.dropped["verify_failed"] == 3 and stats.frames_out == 3
