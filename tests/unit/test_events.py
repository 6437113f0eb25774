"""Events: CBOR validates against docs/events.cddl, headers, persisted seqs, snapshot cap, the
RedactedFrame-only rule, embedding refusal, and differential-privacy noise statistics."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cbor2
import numpy as np
import pycddl  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.events import (
    EventBuilder,
    Header,
    LinkState,
    PresenceEvent,
    SnapshotPolicy,
    TamperEvent,
    TamperKind,
    ZoneCount,
    new_boot_id,
    seal_event,
    to_cbor,
    to_map,
    topic_for,
)
from agent.outbox import OutboxStats
from agent.privacy.counts import CountPrivacy
from agent.privacy.redact import RedactedFrame, RedactionConfig, redact
from agent.privacy.store import encode_jpeg
from agent.sequence import CountingSequence, SequenceStore
from agent.stats import PipelineStats
from agent.vision.detection import Box
from contract.confighash import ConfigDigest, digest
from contract.envelope import Identity, PeerKeys, ReplayGuard, open_envelope
from contract.envelope.cose import strict_loads
from contract.errors import EventError, SnapshotTooLargeError, UnredactedDataError
from hw.frame import Frame

CDDL_PATH = Path(__file__).resolve().parents[2] / "docs" / "events.cddl"
SCHEMA = pycddl.Schema(CDDL_PATH.read_text())
DEVICE = "cv-test-0001"
BOOT = "0123456789abcdef"
NOW = 1_764_000_000.125


def builder(**kwargs: Any) -> EventBuilder:
    kwargs.setdefault("clock", lambda: NOW)
    return EventBuilder(DEVICE, BOOT, kwargs.pop("seqs", CountingSequence(start=100)), **kwargs)


def scene(h: int = 240, w: int = 320, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = np.kron(low, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]
    return np.ascontiguousarray(img)


def redacted(pixels: np.ndarray, boxes: tuple[Box, ...] = ()) -> RedactedFrame:
    return redact(Frame(pixels, index=0, ts=NOW, mono=0.0, source="test"), boxes, RedactionConfig())


def health_event(b: EventBuilder, config: ConfigDigest | None = None) -> Any:
    stats = PipelineStats(frames_in=10, frames_out=9)
    stats.drop("detector_timeout")
    stats.time("detect", 0.021)
    stats.time("redact", 0.002)
    stats.stages["idle"] = type(stats.stages["detect"])()  # a stage with no samples: nulls
    outbox = OutboxStats(
        depth=3,
        bytes=1800,
        in_flight=1,
        oldest_age_s=12.5,
        evicted_total=MappingProxyType({"bytes": 2, "age": 1}),
        rejected_total=MappingProxyType({"full": 1}),
        corrupt_recovered=0,
        awaiting_receipt=2,
        receipted=40,
        republished=1,
    )
    return b.health(
        fps=14.9,
        pipeline=stats,
        outbox=outbox,
        cpu_temp_c=51.2,
        uptime_s=3600.0,
        versions={"camveil": "0.1.0", "python": "3.11.2"},
        models={"blazeface": "ab" * 32},
        config=config,
    )


def all_events(b: EventBuilder) -> list[Any]:
    frame = redacted(scene(), (Box(40, 40, 90, 110),))
    return [
        b.presence(NOW - 60, NOW, {"door": (3, 1), "hall": (0, 0)}),
        builder(count_privacy=CountPrivacy(epsilon=1.0, suppress_below=3)).presence(
            NOW - 60, NOW, {"door": (0, 0), "hall": (40, 12)}
        ),
        b.presence(NOW - 60, NOW, {}),
        b.snapshot(frame, trigger="tamper"),
        b.snapshot(frame, command="cmd-7f3a"),
        *(b.tamper(kind, 0.8) for kind in TamperKind),
        health_event(b),
        health_event(b, digest({"detector": {"threads": 2}}, {"detector": {"threads": 2}})),
        b.status(LinkState.ONLINE),
        b.status(LinkState.ONLINE, delivery="receipt"),
        b.status(LinkState.OFFLINE),
    ]


def test_every_event_type_validates_against_the_cddl() -> None:
    events = all_events(builder())
    assert {e.TYPE for e in events} == {"presence", "snapshot", "tamper", "health", "status"}
    for event in events:
        SCHEMA.validate_cbor(to_cbor(event))


def test_the_cddl_is_not_vacuous() -> None:
    good = to_map(builder().tamper(TamperKind.COVERED, 0.5))
    SCHEMA.validate_cbor(cbor2.dumps(good))
    bad_maps = [
        {**good, "v": 2},
        {**good, "extra": 1},
        {**good, "type": "presence"},
        {**good, "seq": -1},
        {**good, "body": {"kind": "stolen", "score": 0.5}},
        {**good, "body": {"kind": "covered", "score": 0.5, "embedding": b"\x00" * 512}},
        {k: v for k, v in good.items() if k != "boot"},
        {**good, "device": "x" * 65},
        {**good, "device": ""},
        {**good, "ts": 1.5},
    ]
    digested = to_map(health_event(builder(), digest({}, {})))
    bad_maps.append(
        {**digested, "body": {**digested["body"], "config": {"effective": "x", "remote": "y"}}}
    )
    snap = to_map(builder().snapshot(redacted(scene()), trigger="motion"))
    bad_maps.append({**snap, "body": {**snap["body"], "cmd": "c1"}})  # two reasons
    bad_maps.append({**snap, "body": {k: v for k, v in snap["body"].items() if k != "trigger"}})
    for bad in bad_maps:
        with pytest.raises(pycddl.ValidationError):
            SCHEMA.validate_cbor(cbor2.dumps(bad))


def test_header_fields() -> None:
    b = builder()
    first, second = b.tamper(TamperKind.MOVED, 1.0), b.status(LinkState.ONLINE)
    m = to_map(first)
    assert (m["v"], m["device"], m["boot"], m["seq"], m["ts"], m["type"]) == (
        1,
        DEVICE,
        BOOT,
        100,
        1_764_000_000_125,
        "tamper",
    )
    assert to_map(second)["seq"] == 101
    assert topic_for(first) == f"camveil/v1/{DEVICE}/event/tamper"
    assert topic_for(second) == f"camveil/v1/{DEVICE}/status"
    assert len(new_boot_id()) == 16 and new_boot_id() != new_boot_id()


def test_the_documented_example_is_exact() -> None:
    """docs/PROTOCOL.md, "Events": the tamper example, byte for byte."""
    b = EventBuilder(
        "cv-0001", "9f2c4e1a7b3d5c60", CountingSequence(start=42), clock=lambda: 1764000000.123
    )
    data = to_cbor(b.tamper(TamperKind.COVERED, 0.97))
    assert data.hex() == (
        "a76176016274731b0000019ab697e87b63736571182a64626f6479a2646b696e6467636f76657265646573"
        "636f7265fb3fef0a3d70a3d70a64626f6f74703966326334653161376233643563363064747970656674616d"
        "706572666465766963656763762d30303031"
    )
    assert len(data) == 105


def test_encoding_is_deterministic_with_short_text_keys() -> None:
    for event in all_events(builder()):
        data = to_cbor(event)
        assert strict_loads(data) == cbor2.loads(data)  # the one deterministic encoding
        assert data == to_cbor(event)
        decoded = cbor2.loads(data)
        assert list(decoded) == sorted(decoded, key=lambda k: (len(k), k))
        assert all(isinstance(k, str) and len(k) <= 8 for k in decoded["body"])


def test_sealed_event_opens_at_the_backend_and_still_matches_the_cddl() -> None:
    device, backend = Identity.generate(DEVICE), Identity.generate("backend-test")
    b = builder()
    for event in all_events(b):
        env = seal_event(event, sender=device, recipient=backend.public())
        assert (env.topic, env.seq) == (topic_for(event), event.header.seq)
        opened = open_envelope(
            env.data,
            topic=env.topic,
            trusted_senders=PeerKeys([device.public()]),
            recipient=backend,
            replay_guard=ReplayGuard(),
        )
        plaintext = dict(opened.message)
        assert plaintext == {**to_map(event), "topic": env.topic}
        SCHEMA.validate_cbor(cbor2.dumps(plaintext, canonical=True))


# --- seq persistence -------------------------------------------------------------------------


def test_seq_continues_above_the_last_after_restart_and_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    handed: list[int] = []
    with SequenceStore(path, block=8) as seqs:
        b = builder(seqs=seqs)
        handed += [b.tamper(TamperKind.COVERED, 1).header.seq for _ in range(5)]
    with SequenceStore(path, block=8) as seqs:  # orderly restart: no gap
        b = builder(seqs=seqs)
        handed.append(b.status(LinkState.ONLINE).header.seq)
        assert handed[-1] == handed[-2] + 1
    crashed = SequenceStore(path, block=8)
    crashed.open()
    b = builder(seqs=crashed)
    handed += [b.status(LinkState.ONLINE).header.seq for _ in range(3)]  # reserved a block
    crashed._unlock()  # killed between reservation and use of the rest of the block
    with SequenceStore(path, block=8) as seqs:
        b = builder(seqs=seqs)
        after = [b.status(LinkState.ONLINE).header.seq for _ in range(20)]
    assert min(after) > max(handed)
    assert len(set(handed + after)) == len(handed) + len(after)
    assert handed == sorted(handed)


# --- snapshots -------------------------------------------------------------------------------


def noisy(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_snapshot_is_a_jpeg_of_the_redacted_frame() -> None:
    pixels = scene(240, 320)
    frame = redacted(pixels, (Box(100, 60, 200, 180),))
    event = builder(snapshot_policy=SnapshotPolicy(max_side=None)).snapshot(frame, trigger="t")
    img = np.asarray(Image.open(io.BytesIO(event.jpeg)).convert("RGB"))
    assert (event.width, event.height) == (320, 240) == (img.shape[1], img.shape[0])
    inner = img[80:160, 120:180].astype(int)  # inside the redacted box: black, not the scene
    assert inner.mean() < 8


def test_snapshot_is_reduced_until_under_the_cap() -> None:
    frame = redacted(noisy(720, 1280))  # noise compresses badly
    policy = SnapshotPolicy(max_bytes=40_000, max_side=None, min_side=64)
    event = builder(snapshot_policy=policy).snapshot(frame, trigger="schedule")
    assert len(event.jpeg) <= 40_000
    # Full size does not fit even at the lowest quality, so the size went down; at the size
    # that fits, the highest quality that fits is kept.
    assert len(encode_jpeg(frame, quality=policy.min_quality)) > 40_000
    assert max(event.width, event.height) < 1280
    assert policy.min_quality <= event.quality <= policy.quality
    if event.quality < policy.quality:
        better = encode_jpeg(frame, event.quality + policy.quality_step, max(event.width, 1))
        assert len(better) > 40_000
    with Image.open(io.BytesIO(event.jpeg)) as img:
        assert img.format == "JPEG" and img.size == (event.width, event.height)
    SCHEMA.validate_cbor(to_cbor(event))


def test_snapshot_within_cap_keeps_quality() -> None:
    frame = redacted(scene(120, 160))
    event = builder().snapshot(frame, trigger="schedule")
    assert event.quality == 85 and (event.width, event.height) == (160, 120)


def test_snapshot_that_cannot_fit_is_refused() -> None:
    frame = redacted(noisy(480, 640))
    policy = SnapshotPolicy(max_bytes=500, min_side=160)
    seqs = CountingSequence()
    with pytest.raises(SnapshotTooLargeError, match="500 bytes"):
        builder(snapshot_policy=policy, seqs=seqs).snapshot(frame, trigger="t")
    assert seqs.next() == 0  # no seq was used up by the refused snapshot


@pytest.mark.parametrize("kwargs", [{}, {"trigger": "a", "command": "b"}, {"trigger": "bad key"}])
def test_snapshot_needs_exactly_one_valid_reason(kwargs: dict[str, str]) -> None:
    with pytest.raises(EventError):
        builder().snapshot(redacted(scene()), **kwargs)


def test_snapshot_accepts_only_a_redacted_frame() -> None:
    pixels = scene()
    raw = Frame(pixels, index=0, ts=NOW, mono=0.0)
    b = builder()
    for bad in (raw, pixels, raw.pixels, Image.fromarray(pixels), None):
        with pytest.raises(UnredactedDataError):
            b.snapshot(bad, trigger="t")  # type: ignore[arg-type]
    with pytest.raises(UnredactedDataError):  # and nobody outside redact() can make one
        RedactedFrame(pixels, 0, NOW, 0.0, "x", (), _seal=object())


# --- the encoder refuses everything else -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Embedding:
    vector: tuple[float, ...]


class FaceVector(Embedding):
    """A subclass under another name is still an embedding."""


def _header() -> Header:
    return Header(device=DEVICE, boot=BOOT, seq=1, ts=1)


@pytest.mark.parametrize(
    "smuggled",
    [
        Embedding((0.1, 0.2)),
        FaceVector((0.3,)),
        np.zeros(128, dtype=np.float32),
        np.float32(0.5),
        np.float64(0.5),
        np.int64(3),
        [0.1, 0.2],
        b"\x00" * 16,
        "0.5",
        1,
        True,
        None,
    ],
    ids=lambda v: type(v).__name__,
)
def test_encoder_refuses_embeddings_arrays_and_non_plain_fields(smuggled: object) -> None:
    event = TamperEvent(_header(), TamperKind.COVERED, smuggled)  # type: ignore[arg-type]
    with pytest.raises(UnredactedDataError):
        to_cbor(event)


def test_encoder_refuses_an_embedding_anywhere_in_an_event() -> None:
    b = builder()
    health = health_event(b)
    spiked = dataclasses.replace(health, versions={"camveil": Embedding((1.0,))})
    with pytest.raises(UnredactedDataError, match="embeddings never leave"):
        to_cbor(spiked)
    zones = (ZoneCount("door", 1, 0), ZoneCount("hall", np.array([3]), 0))  # type: ignore[arg-type]
    presence = PresenceEvent(_header(), 0, 1, zones)
    with pytest.raises(UnredactedDataError, match="numpy"):
        to_cbor(presence)
    with pytest.raises(UnredactedDataError):
        to_cbor(dataclasses.replace(health, models={"m": np.zeros(4)}))


def test_encoder_refuses_anything_that_is_not_an_event() -> None:
    class MyTamper(TamperEvent):
        pass

    ok = builder().tamper(TamperKind.COVERED, 0.5)
    for bad in (
        Embedding((0.1,)),
        np.zeros(8),
        to_map(ok),
        {"type": "tamper"},
        b"cbor",
        MyTamper(ok.header, ok.kind, ok.score),
        ok.header,
    ):
        with pytest.raises(UnredactedDataError):
            to_cbor(bad)  # type: ignore[arg-type]


def test_builders_validate_inputs() -> None:
    b = builder()
    with pytest.raises(EventError, match="before it starts"):
        b.presence(NOW, NOW - 1, {"door": (1, 1)})
    with pytest.raises(EventError, match=">= 0"):
        b.presence(NOW - 1, NOW, {"door": (-1, 0)})
    with pytest.raises(EventError, match="zone"):
        b.presence(NOW - 1, NOW, {"": (1, 0)})
    with pytest.raises(EventError, match="finite"):
        b.tamper(TamperKind.MOVED, float("nan"))
    assert b.tamper(TamperKind.MOVED, 7.0).score == 1.0


# --- differential privacy --------------------------------------------------------------------


def test_exact_counts_carry_no_dp_field() -> None:
    body = to_map(builder().presence(0, 1, {"door": (2, 1)}))["body"]
    assert "dp" not in body
    assert body["zones"] == [{"zone": "door", "people": 2, "faces": 1}]


_labels = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,20}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.dictionaries(
        _labels, st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), max_size=6
    ),
    epsilon=st.none() | st.floats(0.01, 10.0),
    suppress=st.integers(0, 20),
    window=st.tuples(st.floats(0, 2e9), st.floats(0, 86_400)),
)
def test_any_presence_event_matches_the_cddl(
    counts: dict[str, tuple[int, int]],
    epsilon: float | None,
    suppress: int,
    window: tuple[float, float],
) -> None:
    privacy = CountPrivacy(epsilon=epsilon, suppress_below=suppress)
    start, length = window
    event = builder(count_privacy=privacy).presence(start, start + length, counts)
    data = to_cbor(event)
    SCHEMA.validate_cbor(data)
    body = cbor2.loads(data)["body"]
    assert [z["zone"] for z in body["zones"]] == list(counts)
    assert all(v is None or v >= suppress for z in body["zones"] for v in (z["people"], z["faces"]))
