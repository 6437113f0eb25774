"""Framing of the provisioning protocol: COBS, CRC, resynchronisation, message shape."""

from __future__ import annotations

import random
import struct
import threading
import zlib
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import LinkTimeoutError, RefusedError
from provisioning import cobs
from provisioning.serial_proto import (
    MAX_FRAME,
    Channel,
    FrameReader,
    MemoryLink,
    Message,
    encode_frame,
    error_reply,
    reply_to,
)


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs.encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(encoded) == data


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [  # examples from the COBS paper / Wikipedia
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_known_answers(raw: bytes, encoded: bytes) -> None:
    assert cobs.encode(raw) == encoded
    assert cobs.decode(encoded) == raw


def test_cobs_decoder_accepts_run_without_trailing_block() -> None:
    assert cobs.decode(b"\xff" + bytes(range(1, 255))) == bytes(range(1, 255))


@pytest.mark.parametrize("bad", [b"\x00", b"\x05\x11", b"\x03\x11\x00"])
def test_cobs_rejects_invalid(bad: bytes) -> None:
    with pytest.raises(cobs.CobsDecodeError):
        cobs.decode(bad)


message_strategy = st.builds(
    Message,
    t=st.text(max_size=20),
    id=st.integers(min_value=0, max_value=2**63),
    b=st.dictionaries(st.text(max_size=8), st.binary(max_size=300) | st.integers(), max_size=5),
)


@given(message_strategy)
def test_frame_round_trip(message: Message) -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame(message)) == [message]


@given(st.lists(message_strategy, max_size=5), st.integers(min_value=1, max_value=64))
def test_frames_survive_any_chunking(messages: list[Message], chunk: int) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    reader = FrameReader()
    got: list[Message] = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i : i + chunk])
    assert got == messages
    assert reader.stats.rejected == 0


def _frame_with_crc(payload: bytes, crc: int) -> bytes:
    return b"\x00" + cobs.encode(payload + struct.pack(">I", crc)) + b"\x00"


def test_bad_crc_is_rejected_and_counted() -> None:
    payload = cbor2.dumps({"t": "hello", "id": 1, "b": {}})
    reader = FrameReader()
    assert reader.feed(_frame_with_crc(payload, zlib.crc32(payload) ^ 1)) == []
    assert reader.stats.bad_crc == 1
    assert reader.feed(_frame_with_crc(payload, zlib.crc32(payload))) == [Message("hello", 1, {})]


def test_every_single_bit_flip_is_rejected_or_resynced() -> None:
    good = Message("bundle", 7, {"x": b"\x00" * 40 + b"abc"})
    frame = encode_frame(good)
    for i in range(len(frame)):
        for bit in range(8):
            corrupted = bytearray(frame)
            corrupted[i] ^= 1 << bit
            reader = FrameReader()
            out = reader.feed(bytes(corrupted)) + reader.feed(encode_frame(good))
            assert out[-1] == good  # the next good frame always gets through
            assert all(m == good for m in out)  # a corrupted frame never yields a wrong message


def test_resync_after_garbage_before_and_between_frames() -> None:
    rng = random.Random(1)
    a, b = Message("hello", 1, {}), Message("hello.ok", 1, {"state": "unprovisioned"})
    junk = bytes(rng.randrange(256) for _ in range(500))
    reader = FrameReader()
    # garbage without delimiters directly before a frame: the frame's leading 0x00 resyncs
    out = reader.feed(junk + encode_frame(a) + junk + encode_frame(b) + junk)
    assert out == [a, b]
    assert reader.stats.rejected >= 1
    assert reader.stats.dropped_bytes > 0


def test_undecodable_cbor_and_non_messages_are_counted() -> None:
    reader = FrameReader()
    for payload in [b"\xff\xff", cbor2.dumps([1, 2]), cbor2.dumps({"t": 1, "id": 2})]:
        assert reader.feed(_frame_with_crc(payload, zlib.crc32(payload))) == []
    assert reader.stats.bad_cbor == 1
    assert reader.stats.not_a_message == 2


def test_oversize_frame_is_dropped_and_reader_recovers() -> None:
    reader = FrameReader(max_frame=1024)
    assert reader.feed(b"\x01" * 5000) == []
    assert reader.feed(b"\x01" * 5000 + b"\x00") == []
    assert reader.stats.oversize == 1
    good = Message("hello", 3, {})
    assert reader.feed(encode_frame(good)) == [good]


def test_encode_refuses_oversize_message() -> None:
    with pytest.raises(ValueError, match="frame cap"):
        encode_frame(Message("bundle", 1, {"x": b"\x01" * MAX_FRAME}))


@given(st.binary(max_size=3000))
def test_reader_never_raises_on_garbage(data: bytes) -> None:
    reader = FrameReader(max_frame=512)
    reader.feed(data)
    reader.feed(b"\x00")


def _echo_server(link: MemoryLink, stop: threading.Event, answer_after: int) -> None:
    channel = Channel(link)
    seen = 0
    while not stop.is_set():
        msg = channel.receive(0.05)
        if msg is None:
            continue
        seen += 1
        if seen < answer_after:
            continue  # "lost": force the client to retry
        if msg.t == "refuse":
            channel.send(error_reply(msg, "nope", "refused on purpose"))
        else:
            channel.send(Message("old.ok", msg.id + 1, {}))  # stale: the client must skip it
            channel.send(reply_to(msg, msg.t + ".ok", {"n": seen}))


@pytest.fixture
def served() -> Iterator[tuple[Channel, threading.Event]]:
    a, b = MemoryLink.pair()
    stop = threading.Event()
    thread = threading.Thread(target=_echo_server, args=(b, stop, 3), daemon=True)
    thread.start()
    yield Channel(a), stop
    stop.set()
    thread.join()


def test_request_retries_same_id_until_answered(served: tuple[Channel, threading.Event]) -> None:
    channel, _ = served
    reply = channel.request("ping", {}, timeout=0.1, attempts=5)
    assert reply.t == "ping.ok"
    assert reply.b == {"n": 3}
    assert channel.retries == 2
    assert channel.stale_replies == 1  # the late answer to another id was skipped


def test_request_raises_refused(served: tuple[Channel, threading.Event]) -> None:
    channel, _ = served
    with pytest.raises(RefusedError) as info:
        channel.request("refuse", {}, timeout=0.1, attempts=5)
    assert info.value.code == "nope"


def test_request_skips_its_own_echo_and_late_answers() -> None:
    a, b = MemoryLink.pair()
    channel = Channel(a)
    peer = Channel(b)

    def answer() -> None:
        request = peer.receive(1.0)
        assert request is not None
        b.write(encode_frame(request))  # an echo of the request itself
        peer.send(Message("hello.ok", request.id ^ 1, {}))  # someone else's answer
        peer.send(reply_to(request, "hello.ok", {"state": "unprovisioned"}))

    thread = threading.Thread(target=answer)
    thread.start()
    reply = channel.request("hello", {}, timeout=1.0, attempts=1)
    thread.join()
    assert reply.b == {"state": "unprovisioned"}
    assert channel.stale_replies == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",  # array of 2^32 items, no items
        b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00",  # map of 2^32 pairs
        b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",  # 4 GiB byte string, no bytes
        b"\x81" * 5000,  # nesting far deeper than any message
    ],
)
def test_hostile_cbor_is_counted_not_fatal(payload: bytes) -> None:
    reader = FrameReader()
    assert reader.feed(_frame_with_crc(payload, zlib.crc32(payload))) == []
    assert reader.stats.bad_cbor == 1


def test_request_times_out_with_hint() -> None:
    a, _b = MemoryLink.pair()
    with pytest.raises(LinkTimeoutError, match="provision-listen"):
        Channel(a).request("hello", {}, timeout=0.02, attempts=2)
