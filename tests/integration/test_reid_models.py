"""Anonymous re-identification with the real models: FaceNet int8 links real photos of one
person across tracks and keeps other people apart; and with the feature on, nothing the unit
publishes, stores or logs holds an embedding (the real daemon, outbox, broker and listener).

Photos from PyPI packages only (tests/photos.py): Eileen Collins (skimage ``astronaut``),
Barack Obama (two photos) and Joe Biden (face_recognition 1.3.0 sdist).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt
import pytest
from harness import Harness
from PIL import Image

from agent.pipeline import Pipeline, PrivacyConfig
from agent.stats import PipelineStats
from agent.vision.embedding import Embedding, FaceEmbedder
from agent.vision.embedworker import open_embed_worker
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.reid import ReidConfig, open_reid
from hw.frame import Frame
from tests.photos import photo

W, H = 640, 480


def canvas(name: str | None, x: int) -> npt.NDArray[np.uint8]:
    """A grey 640x480 frame with ``name``'s photo (height 360) pasted at ``x``."""
    out = np.full((H, W, 3), 90, np.uint8)
    if name is not None:
        img = Image.fromarray(photo(name))
        img = img.resize((round(img.width * 360 / img.height), 360))
        px = np.asarray(img)[:, : W - x]
        out[60 : 60 + px.shape[0], x : x + px.shape[1]] = px
    return out


def test_real_faces_link_across_tracks_and_people_stay_apart() -> None:
    """Collins twice (a new track after she leaves the view), Obama in two different photos,
    Biden once: three visitors."""
    scenes: list[tuple[str | None, int]] = (
        [("astronaut", 20 + 4 * i) for i in range(6)]
        + [(None, 0)] * 12  # gone longer than the tracker's hold-over: her track ends
        + [("astronaut", 200 + 4 * i) for i in range(6)]
        + [(None, 0)] * 12
        + [("obama", 100 + 4 * i) for i in range(6)]
        + [(None, 0)] * 12
        + [("obama2", 100 + 4 * i) for i in range(6)]
        + [(None, 0)] * 12
        + [("biden", 100 + 4 * i) for i in range(6)]
    )
    frames: Iterator[Frame] = iter(
        Frame(canvas(name, x), i, 1000.0 + i * 0.25, time.monotonic())
        for i, (name, x) in enumerate(scenes)
    )
    config = ReidConfig(enabled=True, purpose="integration test of visitor counting")
    stats = PipelineStats()
    reid = open_reid(config, stats)
    worker = open_embed_worker([reid], stats)
    assert reid is not None and worker is not None
    with worker:
        pipe = Pipeline(
            lambda: next(frames),
            build_detector(DetectorConfig()),
            lambda _p: None,
            PrivacyConfig(),
            stats,
            faces=worker,
        )
        for name, _x in scenes:
            pipe.step()
            if name is None:
                time.sleep(0.02)  # the worker catches up while nobody is in view
        time.sleep(0.5)
        window = reid.flush()
    assert window is not None
    assert window.unique == 3, (window, dict(stats.dropped))
    assert not any(k.startswith("reid_") for k in stats.dropped), stats.dropped


# --- nothing that leaves or stays on the unit holds an embedding -------------------------------

MIN_RUN = 64
"""A run of this many plausible embedding components (|x| in (1e-8, 1), finite) is a leak;
random bytes (ciphertext, JPEG) make such a run with probability below 2^-64."""


def _max_run(ok: npt.NDArray[np.bool_]) -> int:
    best = run = 0
    for flag in ok:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def float_runs(data: bytes) -> int:
    """The longest run of embedding-like float32 or float16 values (either byte order, any
    alignment) in ``data``."""
    best = 0
    for dtype, size, tiny in (
        ("<f4", 4, 1e-8),
        (">f4", 4, 1e-8),
        ("<f2", 2, 1e-4),
        (">f2", 2, 1e-4),
    ):
        for offset in range(size):
            usable = (len(data) - offset) // size * size
            if usable < MIN_RUN * size:
                continue
            with np.errstate(all="ignore"):
                values = np.frombuffer(data, dtype, count=usable // size, offset=offset)
                mag = np.abs(values.astype(np.float64))
                ok = np.isfinite(mag) & (mag < 1.0) & (mag > tiny)
            if ok.sum() >= MIN_RUN:
                best = max(best, _max_run(ok))
    return best


def vector_encodings(v: npt.NDArray[np.float32]) -> list[bytes]:
    """The bytes an embedding would have if it were written out: float32/16/64, both byte
    orders, whole and its first 8 components."""
    out = []
    for dtype in ("<f4", ">f4", "<f2", ">f2", "<f8", ">f8"):
        raw = v.astype(dtype).tobytes()
        out += [raw, raw[: 8 * np.dtype(dtype).itemsize]]
    return out


def float_lists(value: Any) -> int:
    """The longest list of floats anywhere in a decoded message."""
    if isinstance(value, dict):
        return max([float_lists(v) for v in value.values()], default=0)
    if isinstance(value, list):
        floats = sum(isinstance(v, float) for v in value)
        return max([floats, *(float_lists(v) for v in value)])
    return 0


def plain(value: Any) -> Any:
    """A decoded message as plain dicts and lists (the listener hands out read-only views)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


LOG_FLOATS = re.compile(r"(?:-?\d+\.\d+(?:e-?\d+)?[,;\s\]]+){16,}")


def test_the_scanners_find_a_planted_embedding() -> None:
    """The leak checks below can fail: each finds an embedding put where it looks."""
    v = Embedding(np.random.default_rng(3).standard_normal(512)).vector.copy()
    blob = np.random.default_rng(4).bytes(4000)
    for enc in vector_encodings(v)[::2]:
        planted = blob[:1001] + enc + blob[1001:]
        assert float_runs(planted) >= MIN_RUN or len(enc) > 4 * 512  # float64 is caught by bytes
        assert enc in planted
    assert float_runs(blob) < MIN_RUN
    assert float_lists({"body": {"x": [float(x) for x in v]}}) == 512
    assert LOG_FLOATS.search("vector " + ", ".join(f"{x:.4f}" for x in v[:20]))


def test_nothing_published_stored_or_logged_holds_an_embedding(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[npt.NDArray[np.float32]] = []
    real = FaceEmbedder.embed_crop

    def recording(self: FaceEmbedder, crop: npt.NDArray[np.uint8]) -> Embedding:
        embedding = real(self, crop)
        if crop.any():  # not the blank scrub
            seen.append(embedding.vector.copy())
        return embedding

    monkeypatch.setattr(FaceEmbedder, "embed_crop", recording)
    caplog.set_level(logging.DEBUG)
    harness.config_path.write_text(
        harness.config_path.read_text()
        + '\n[reid]\nenabled = true\npurpose = "leak test of visitor counting"\n'
        "window_s = 2.0\nmin_face_px = 20\nrefresh_frames = 2\n"
    )
    harness.start_agent()
    with_visitors = harness.wait_for(
        lambda r: (
            r.type == "presence" and (r.message["body"].get("visitors") or {}).get("unique", 0) >= 1
        ),
        timeout=40,
    )
    snapshot = harness.command("snapshot", command_id="leak-snap")
    harness.publish(snapshot)
    harness.wait_for(lambda r: r.type == "snapshot", timeout=20)
    time.sleep(1.5)
    harness.stop_agent()
    assert seen, "the embedder ran"
    assert with_visitors.message["body"]["visitors"]["dwell"]

    # the plaintexts the backend decrypted: every event the unit sealed, through its outbox
    published = [cbor2.dumps(plain(r.message)) for r in harness.received]
    stored = [p.read_bytes() for p in sorted(harness.unit_dir.rglob("*")) if p.is_file()]
    assert any(p.name.startswith("outbox.db") for p in harness.unit_dir.rglob("*"))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    blobs = [*published, *stored, logs.encode()]
    needles = [enc for v in seen for enc in vector_encodings(v)]
    for blob in blobs:
        assert float_runs(blob) < MIN_RUN
        assert not any(n in blob for n in needles)
    for r in harness.received:
        assert float_lists(plain(r.message)) < 16
    assert not LOG_FLOATS.search(logs)
    assert "face embedding failed" not in logs
