"""The shared face embedder with both clients on (enrolled matching and re-identification),
without a model: the colour embedder of test_reid ("the same person" is "the same colour").

One crop and one embedding serve both clients; each gets its own copy and every copy, crop and
original is wiped; a failure of one client leaves the other its faces; overload and embedder
failures are counted under each client's own name; the window's end still scrubs the shared
interpreter. tests/integration/test_enrolment.py runs the real FaceNet with both on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.stats import PipelineStats
from agent.vision.embedding import Embedding
from agent.vision.embedworker import EmbedWorker, Selection
from agent.vision.gallery import EnrolmentConfig, Gallery
from agent.vision.reid import ReidConfig, Reidentifier
from agent.vision.verify import Verifier
from contract.envelope.keys import Identity
from hw.frame import Frame
from tests.unit.test_reid import ColourEmbedder, frame, person, settle

MODEL = "cd" * 32
REID = ReidConfig(enabled=True, purpose="unit test of visitor counting", window_s=10.0)
ENROL = EnrolmentConfig(
    enabled=True,
    purpose="unit test of the matcher",
    legal_basis="explicit consent (test)",
    refresh_frames=1,
    cooldown_s=0.0,
)


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    g = Gallery(tmp_path / "g", Identity.generate("cv-unit-0002"), MODEL)
    g.add("staff-0006", "consent-6", [person(6).vector], ENROL, MODEL)  # grey level 192
    return g


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Embedding]]:
    """Every copy the worker hands to a client."""
    made: list[Embedding] = []
    real = Embedding.copy

    def recording(self: Embedding) -> Embedding:
        out = real(self)
        made.append(out)
        return out

    monkeypatch.setattr(Embedding, "copy", recording)
    yield made


class Both:
    """The matcher and the re-identifier behind one worker, sharing one stats object."""

    def __init__(
        self,
        embedder: ColourEmbedder,
        gallery: Gallery,
        *,
        reid: ReidConfig = REID,
        matcher: type[Verifier] = Verifier,
        reidentifier: type[Reidentifier] = Reidentifier,
    ) -> None:
        self.stats = PipelineStats()
        self.matches: list[tuple[str, float, float]] = []
        self.verifier = matcher(ENROL, gallery, lambda *m: self.matches.append(m), self.stats)
        self.reid = reidentifier(reid, self.stats)
        self.worker = EmbedWorker(embedder, [self.verifier, self.reid], self.stats)


def test_a_face_both_want_is_cropped_and_embedded_once_for_both(
    gallery: Gallery, copies: list[Embedding]
) -> None:
    emb = ColourEmbedder()
    both = Both(emb, gallery)
    with both.worker as work:
        work.observe(*frame(0.0, [192, 64]))  # two new tracks: both clients want both
        settle(emb, 2)
        work.observe(*frame(1.0, [192, 64], index=1))  # results picked up
        assert both.reid.registry is not None
        assert len(both.reid.registry.visitor_ids()) == 2
        settle(emb, 3)
        assert emb.calls == 2 + 1, "then only the unmatched track 2, for the matcher"
        window = both.reid.flush()
    assert [m[0] for m in both.matches] == ["staff-0006"]
    assert window is not None and window.unique == 2
    assert len(copies) == 2 * 2 + 1, "each client got its own copy"
    assert all(not c.any() for c in emb.crops), "every crop zeroed"
    assert all(not e.vector.any() for e in emb.out), "every embedding the worker made wiped"
    assert all(not e.vector.any() for e in copies), "every client's copy wiped"
    assert not both.stats.dropped


class BrokenReid(Reidentifier):
    def select(self, frame: Frame, faces: Any) -> Selection:
        raise RuntimeError("re-identification broke")


class BrokenMatch(Verifier):
    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        super().embedded(track_id, ts, tag, embedding)
        raise RuntimeError("matcher broke after its comparison")


def test_one_client_failing_leaves_the_other_its_faces(gallery: Gallery) -> None:
    emb = ColourEmbedder()
    both = Both(emb, gallery, reidentifier=BrokenReid)
    with both.worker as work:
        work.observe(*frame(0.0, [192]))
        settle(emb, 1)
        work.observe(*frame(1.0, [], index=1))
    assert [m[0] for m in both.matches] == ["staff-0006"]
    assert both.stats.dropped == {"reid_failed": 2}


def test_a_client_failing_on_its_result_is_counted_and_the_other_still_links(
    gallery: Gallery, copies: list[Embedding]
) -> None:
    emb = ColourEmbedder()
    both = Both(emb, gallery, matcher=BrokenMatch)
    with both.worker as work:
        work.observe(*frame(0.0, [64]))
        settle(emb, 1)
        work.observe(*frame(1.0, [64], index=1))
        assert both.reid.registry is not None and len(both.reid.registry.visitor_ids()) == 1
    assert both.stats.dropped["verify_embed_failed"] >= 1
    assert "reid_embed_failed" not in both.stats.dropped
    assert copies and all(not e.vector.any() for e in copies)


def test_an_embedder_failure_is_counted_for_each_client(gallery: Gallery) -> None:
    emb = ColourEmbedder(fail=True)
    both = Both(emb, gallery)
    with both.worker as work:
        work.observe(*frame(0.0, [192]))
        settle(emb, 1)
        work.observe(*frame(1.0, [192], index=1))
        window = both.reid.flush()
    assert both.stats.dropped["reid_embed_failed"] >= 1
    assert both.stats.dropped["verify_embed_failed"] >= 1
    assert not both.matches and window is not None and window.unique == 0


def test_a_full_queue_counts_an_overload_for_each_client_and_never_blocks(
    gallery: Gallery,
) -> None:
    gate = threading.Event()
    emb = ColourEmbedder(gate=gate)
    small = ReidConfig(enabled=True, purpose="unit test of visitor counting", queue_size=1)
    both = Both(emb, gallery, reid=small)
    assert both.worker._jobs.maxsize == ENROL.queue_size, "the larger of the two sizes"
    with both.worker as work:
        t0 = time.monotonic()
        for i in range(20):
            work.observe(*frame(float(i) / 10, [32, 64, 96, 128, 160, 192], index=i))
        stuck = emb.calls
        elapsed = time.monotonic() - t0
        gate.set()
    assert stuck == 0 and elapsed < 5, "observe returned while the embedder was held"
    assert both.stats.dropped["reid_overload"] >= 1
    assert both.stats.dropped["verify_overload"] >= 1


def test_the_end_of_a_window_scrubs_the_shared_interpreter_and_matching_goes_on(
    gallery: Gallery,
) -> None:
    emb = ColourEmbedder()
    both = Both(emb, gallery)
    with both.worker as work:
        work.observe(*frame(0.0, [64]))
        settle(emb, 1)
        assert emb.blanks == 0
        work.observe(*frame(10.0, [192], index=1))  # ends the window [0, 10)
        settle(emb, 2)
        assert emb.blanks == 1, "a blank crop overwrote the tensors at the window's end"
        work.observe(*frame(10.5, [192], index=2))
        closed = both.reid.take_closed()
    assert closed is not None and closed.unique == 1
    assert [m[0] for m in both.matches] == ["staff-0006"]


class Listening(Verifier):
    """A listener: asks for nothing, records what it is handed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.got: list[Embedding | None] = []

    def select(self, frame: Frame, faces: Any) -> Selection:
        return Selection()

    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        self.got.append(embedding)
        if embedding is not None:
            embedding.wipe()


@pytest.mark.parametrize("fail", [False, True])
def test_a_listener_gets_a_copy_of_what_others_asked_for_and_no_drop_counts(
    gallery: Gallery, fail: bool
) -> None:
    emb = ColourEmbedder(fail=fail)
    stats = PipelineStats()
    reid = Reidentifier(REID, stats)
    listener = Listening(ENROL, gallery, lambda *m: None, stats)
    with EmbedWorker(emb, [reid], stats, listeners=[listener]) as work:
        work.observe(*frame(0.0, [64, 128]))
        assert work.wait_idle(5.0)
        work.observe(*frame(1.0, [], index=1))  # nobody in view: nothing asked for
        assert work.wait_idle(5.0)
    assert emb.calls == 2 and len(listener.got) == 2
    if fail:
        assert listener.got == [None, None]
        assert stats.dropped == {"reid_embed_failed": 2}
    else:
        assert all(e is not None and not e.vector.any() for e in listener.got)
        assert not stats.dropped
