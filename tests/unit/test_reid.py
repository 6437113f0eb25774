"""Anonymous re-identification without a model: linking, window rotation and wiping, the worker
(failures, overload), the pipeline's independence from it, the sink, the config checks.

The embedder here is real code with a known answer: it maps a crop's mean colour to a fixed
unit vector, so "the same person" is "the same colour". The real FaceNet runs in
tests/integration/test_reid_models.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.config import config_from_mapping
from agent.frame_sink import FrameSink
from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.privacy.visitors import VisitorWindow, dwell_histogram
from agent.stats import PipelineStats
from agent.vision.detection import Box, Detection
from agent.vision.embedding import DIMENSIONS, Embedding
from agent.vision.embedworker import EmbedWorker, Selection
from agent.vision.reid import ReidConfig, Reidentifier, VisitorRegistry, check_windows
from contract.errors import ConfigError
from hw.frame import Frame

CFG = ReidConfig(enabled=True, purpose="unit test of visitor counting", window_s=10.0)
RNG = np.random.default_rng(7)
BASE = RNG.standard_normal((8, DIMENSIONS)).astype(np.float32)


def person(i: int, jitter: float = 0.0) -> Embedding:
    """Person ``i``'s face: a fixed random direction, plus a little noise."""
    v = BASE[i] / np.linalg.norm(BASE[i])
    if jitter:
        noise = RNG.standard_normal(DIMENSIONS).astype(np.float32)
        v = v + jitter * noise / np.linalg.norm(noise)
    return Embedding(v)


def at_cosine(ref: Embedding, cos: float, towards: int) -> Embedding:
    """A unit vector at exactly ``cos`` from ``ref``, turned towards ``BASE[towards]``."""
    r = ref.vector
    other = BASE[towards] - np.dot(BASE[towards], r) * r
    other = other / np.linalg.norm(other)
    return Embedding(cos * r + np.sqrt(1 - cos * cos) * other)


# --- the registry ----------------------------------------------------------------------------


def test_sightings_of_one_person_link_and_others_do_not() -> None:
    reg = VisitorRegistry(CFG, start=100.0)
    for track, ts in ((1, 100.0), (2, 101.0), (3, 102.0)):
        assert reg.seen(track, ts, 0)
    a = reg.link(1, person(0, 0.3))
    b = reg.link(2, person(0, 0.3))  # the same person on a new track (after an occlusion)
    c = reg.link(3, person(1, 0.3))
    assert a is not None and a == b != c
    assert len(reg.visitor_ids()) == 2


def test_the_threshold_decides() -> None:
    reg = VisitorRegistry(CFG, start=0.0)
    ref = person(2)
    for t in (1, 2, 3):
        reg.seen(t, float(t), 0)  # one after the other
    first = reg.link(1, Embedding(ref.vector.copy()))
    assert reg.link(2, at_cosine(ref, CFG.threshold + 0.01, 6)) == first
    assert reg.link(3, at_cosine(ref, CFG.threshold - 0.01, 7)) != first


def test_a_linked_embedding_is_wiped() -> None:
    reg = VisitorRegistry(CFG, start=0.0)
    reg.seen(1, 0.0, 0)
    e = person(3)
    reg.link(1, e)
    assert not e.vector.any()


def test_two_faces_in_view_at_once_are_two_visitors() -> None:
    reg = VisitorRegistry(CFG, start=0.0)
    reg.seen(1, 0.0, 0)
    reg.seen(2, 0.0, 0)  # both in the same frame: however alike, not one person
    reg.seen(1, 1.0, 1)
    reg.seen(2, 1.0, 1)
    a = reg.link(1, person(0))
    b = reg.link(2, person(0, 0.1))
    assert a != b
    reg.seen(3, 5.0, 2)  # later, alone: links to the most similar of the two
    assert reg.link(3, person(0, 0.05)) in (a, b)


def test_dwell_spans_all_tracks_of_a_visitor() -> None:
    reg = VisitorRegistry(CFG, start=0.0)
    reg.seen(1, 0.0, 0)
    reg.seen(1, 4.0, 1)
    reg.link(1, person(0))
    reg.seen(2, 9.0, 2)  # back after an occlusion, a new track
    reg.link(2, person(0, 0.2))
    reg.seen(3, 5.0, 3)
    reg.link(3, person(1))
    assert sorted(reg.dwell_times()) == [0.0, 9.0]
    window = reg.close(10.0)
    assert window.counts == dwell_histogram([0.0, 9.0], CFG.dwell_buckets_s) == (2, 0, 0, 0)


def test_unembedded_tracks_are_not_visitors() -> None:
    reg = VisitorRegistry(CFG, start=0.0)
    reg.seen(1, 0.0, 0)
    assert reg.close(1.0).unique == 0


def test_ids_differ_across_windows_and_the_key_and_samples_are_wiped() -> None:
    first = VisitorRegistry(CFG, start=0.0)
    first.seen(1, 0.0, 0)
    id1 = first.link(1, person(0))
    key, bank = first.key, first.bank
    assert any(key) and bank.any()
    first.close(10.0)
    assert not any(key), "the window's key is zeroed"
    assert not bank.any(), "every kept embedding is zeroed"
    assert first.bank.size == 0 and first.visitor_ids() == []
    second = VisitorRegistry(CFG, start=10.0)
    second.seen(1, 10.0, 0)
    id2 = second.link(1, person(0))
    assert id1 and id2 and id1 != id2
    # same start and visitor number, other key: still another id (the key, not the time, hides it)
    third = VisitorRegistry(CFG, start=0.0)
    third.seen(1, 0.0, 0)
    assert third.link(1, person(0)) != id1


def test_the_bank_grows_and_keeps_a_ring_of_samples() -> None:
    cfg = ReidConfig(enabled=True, purpose="unit test of visitor counting", samples_per_visitor=2)
    reg = VisitorRegistry(cfg, start=0.0)
    for t in range(40):
        reg.seen(t, 0.0, 0)
        reg.link(t, person(t % 8, 0.05) if t < 8 else Embedding(RNG.standard_normal(DIMENSIONS)))
    assert reg.bank.shape[0] >= 40
    for _ in range(5):  # more samples of person 0 only replace its two rows
        reg.seen(0, 0.0, 100)
        reg.link(0, person(0, 0.05))
    assert int((reg._owner == 0).sum()) == 2


# --- the reidentifier with its worker -------------------------------------------------------


class ColourEmbedder:
    """Crop -> the unit vector of person ``round(mean colour / 32)``; real code, known answers."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.calls = 0
        self.blanks = 0
        self.crops: list[npt.NDArray[np.uint8]] = []
        self.out: list[Embedding] = []

    def embed_crop(self, crop: npt.NDArray[np.uint8]) -> Embedding:
        if self.gate is not None:
            self.gate.wait(10)
        if not crop.any():  # the scrub after a window: overwrites the model's tensors
            self.blanks += 1
            return Embedding(np.ones(DIMENSIONS))
        self.calls += 1
        self.crops.append(crop)
        if self.fail:
            raise RuntimeError("embedder broke")
        level = round(float(crop.mean()) / 32)
        out = person(level % 8) if level else Embedding(np.ones(DIMENSIONS))
        self.out.append(out)
        return out


def frame(
    ts: float, colours: list[int], index: int = 0
) -> tuple[Frame, list[tuple[int, Detection]]]:
    """A 480x640 frame with one 80x80 square of each grey level; faces keyed by track id."""
    px = np.zeros((480, 640, 3), np.uint8)
    faces = []
    for i, c in enumerate(colours):
        x = 20 + i * 120
        px[100:180, x : x + 80] = c
        faces.append((i + 1, Detection(Box(x + 8, 108, x + 72, 172), 0.9)))
    return Frame(px, index, ts, time.monotonic()), faces


def reidentify(
    cfg: ReidConfig, embedder: ColourEmbedder, stats: PipelineStats | None = None
) -> tuple[Reidentifier, EmbedWorker]:
    """A re-identifier and the shared worker that feeds it (enter the worker)."""
    stats = stats if stats is not None else PipelineStats()
    reid = Reidentifier(cfg, stats)
    return reid, EmbedWorker(embedder, [reid], stats)


def settle(embedder: ColourEmbedder, calls: int) -> None:
    deadline = time.monotonic() + 10
    while embedder.calls < calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def test_reidentifier_counts_visitors_per_window_and_wipes_crops() -> None:
    emb = ColourEmbedder()
    reid, work = reidentify(CFG, emb)
    with work:
        f, faces = frame(0.0, [64, 128])
        work.observe(f, faces)
        settle(emb, 2)
        f, faces = frame(5.0, [64, 128])
        work.observe(f, faces)  # picks up the two results, links them
        assert reid.registry is not None and len(reid.registry.visitor_ids()) == 2
        assert reid.take_closed() is None
        f, faces = frame(10.0, [64])  # the window [0, 10) ends on this frame
        work.observe(f, faces)
        closed = reid.take_closed()
        assert closed is not None and (closed.start, closed.end) == (0.0, 10.0)
        assert closed.unique == 2 and closed.counts == (2, 0, 0, 0)
        settle(emb, 3)
        assert emb.blanks == 1, "a blank crop overwrote the model's tensors at the window's end"
        last = reid.flush()
        assert last is not None and last.start == 10.0 and last.unique == 1
    assert emb.crops and all(not c.any() for c in emb.crops), "face crops are zeroed after use"


def test_doubtful_and_small_faces_are_not_embedded() -> None:
    emb = ColourEmbedder()
    reid, work = reidentify(CFG, emb)
    with work:
        f, faces = frame(0.0, [64, 128])
        (t1, d1), (t2, d2) = faces
        doubtful = Detection(d1.box, CFG.min_score - 0.01)
        small = Detection(Box(d2.box.x0, d2.box.y0, d2.box.x0 + 30, d2.box.y0 + 30), 0.9)
        work.observe(f, [(t1, doubtful), (t2, small)])
        registry = reid.registry
        assert registry is not None
        assert not registry._tracks[t1].pending and not registry._tracks[t2].pending, "queued"
        window = reid.flush()
    assert emb.calls == 0 and window is not None and window.unique == 0


def test_embedder_failure_is_counted_and_costs_only_statistics() -> None:
    stats = PipelineStats()
    emb = ColourEmbedder(fail=True)
    reid, work = reidentify(CFG, emb, stats)
    with work:
        f, faces = frame(0.0, [64])
        work.observe(f, faces)
        settle(emb, 1)
        work.observe(*frame(1.0, [64]))
        window = reid.flush()
    assert stats.dropped["reid_embed_failed"] >= 1
    assert window is not None and window.unique == 0


def test_a_stuck_embedder_never_blocks_observe() -> None:
    stats = PipelineStats()
    gate = threading.Event()
    cfg = ReidConfig(enabled=True, purpose="unit test of visitor counting", queue_size=1)
    emb = ColourEmbedder(gate=gate)
    _reid, work = reidentify(cfg, emb, stats)
    with work:
        for i in range(20):
            f, faces = frame(float(i), [32, 64, 96, 128], index=i)
            work.observe(f, faces)
        stuck = emb.calls  # the embedder is still held at its gate
        gate.set()
    assert stuck == 0, "every observe returned while the embedder had not finished one crop"
    assert stats.dropped["reid_overload"] >= 1


def test_an_embedding_that_arrives_after_its_window_ended_is_wiped_not_linked() -> None:
    gate = threading.Event()
    emb = ColourEmbedder(gate=gate)
    reid, work = reidentify(CFG, emb)
    with work:
        work.observe(*frame(0.0, [64]))  # queued; the embedder is held
        work.observe(*frame(10.0, []))  # the window ends before the result exists
        gate.set()
        settle(emb, 1)
        work.observe(*frame(11.0, []))
        assert reid.registry is not None and reid.registry.visitor_ids() == []
        closed = reid.take_closed()
    assert closed is not None and closed.unique == 0
    assert emb.out and not emb.out[0].vector.any()


# --- the pipeline: redaction does not depend on re-identification ----------------------------


class OneFace:
    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        return [Detection(Box(28, 108, 92, 172), 0.9)]


class BrokenReid(Reidentifier):
    def select(self, frame: Frame, faces: Any) -> Selection:
        raise RuntimeError("re-identification broke")


def _run(faces: EmbedWorker | None, stats: PipelineStats) -> list[ProcessedFrame]:
    out: list[ProcessedFrame] = []
    frames = iter([frame(float(i), [200], index=i)[0] for i in range(3)])
    pipe = Pipeline(
        lambda: next(frames), OneFace(), out.append, PrivacyConfig(), stats, faces=faces
    )
    for _ in range(3):
        pipe.step()
    return out


def test_a_failing_reidentifier_still_redacts_every_frame_and_counts() -> None:
    plain = _run(None, PipelineStats())
    stats = PipelineStats()
    with EmbedWorker(ColourEmbedder(), [BrokenReid(CFG, stats)], stats) as work:
        broken = _run(work, stats)
    assert len(broken) == len(plain) == 3
    for a, b in zip(plain, broken, strict=True):
        assert np.array_equal(a.redacted.pixels, b.redacted.pixels)
        assert a.redacted.regions == b.redacted.regions
    assert stats.dropped["reid_failed"] == 3 and stats.frames_out == 3


def test_the_pipeline_hands_fresh_faces_to_the_reidentifier() -> None:
    emb = ColourEmbedder()
    reid, work = reidentify(CFG, emb)
    with work:
        _run(work, PipelineStats())
        settle(emb, 1)
        window = reid.flush()
    assert window is not None and window.unique == 1
    assert emb.calls == 1, "one track, embedded once (refresh after 15 frames)"
    assert emb.blanks >= 1, "a blank crop overwrote the model's tensors when the worker stopped"


# --- the sink attaches a closed window to the presence event ending with it -------------------


class Source:
    def __init__(self) -> None:
        self.pending: VisitorWindow | None = None

    def take_closed(self) -> VisitorWindow | None:
        out, self.pending = self.pending, None
        return out

    def flush(self) -> VisitorWindow | None:
        return VisitorWindow.of(10.0, 12.0, [1.0], (30,))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def emit(self, make: Any, ts: float | None = None) -> None:
        self.calls.append(make)


def test_sink_attaches_visitor_windows_to_presence_events() -> None:
    from agent.config import EventsConfig

    source, rec = Source(), Recorder()
    sink = FrameSink(EventsConfig(presence_window_s=10.0, tamper_every=0), rec, source)  # type: ignore[arg-type]

    class Builder:
        def presence(self, *args: Any) -> Any:
            return args

    def processed(ts: float) -> ProcessedFrame:
        return _run_one(ts)

    sink(processed(0.0))
    source.pending = VisitorWindow.of(0.0, 10.0, [3.0, 200.0], (30,))
    sink(processed(10.0))
    sink.flush()
    events = [make(Builder()) for make in rec.calls]
    assert events[0][3] == source_window(0.0, 10.0, [3.0, 200.0])
    assert events[1][3] == source_window(10.0, 12.0, [1.0])


def source_window(start: float, end: float, dwell: list[float]) -> VisitorWindow:
    return VisitorWindow.of(start, end, dwell, (30,))


def _run_one(ts: float) -> ProcessedFrame:
    out: list[ProcessedFrame] = []
    f = frame(ts, [])[0]
    Pipeline(lambda: f, OneFace(), out.append, PrivacyConfig(), PipelineStats()).step()
    return out[0]


# --- configuration ------------------------------------------------------------------------------


def test_off_by_default_and_on_only_with_a_purpose() -> None:
    assert config_from_mapping({}).reid.enabled is False
    with pytest.raises(ConfigError, match="purpose"):
        config_from_mapping({"reid": {"enabled": True}})
    on = config_from_mapping({"reid": {"enabled": True, "purpose": "footfall per hour"}})
    assert on.reid.window_s == 600.0 and on.reid.threshold == 0.57


@pytest.mark.parametrize(
    ("window", "presence", "ok"),
    [(600, 60, True), (600, 600, True), (90, 60, False), (30, 60, False)],
)
def test_window_must_be_a_whole_number_of_presence_windows(
    window: float, presence: float, ok: bool
) -> None:
    cfg = ReidConfig(enabled=True, purpose="footfall per hour", window_s=window)
    if ok:
        check_windows(cfg, presence)
    else:
        with pytest.raises(ConfigError, match="whole multiple"):
            check_windows(cfg, presence)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threshold", 1.5),
        ("dwell_buckets_s", [30, 10]),
        ("window_s", 0),
        ("samples_per_visitor", 0),
    ],
)
def test_bad_values_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_mapping({"reid": {"purpose": "footfall per hour", key: value}})
