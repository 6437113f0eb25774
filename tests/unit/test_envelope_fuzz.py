"""Property tests: whatever is done to an envelope, opening it raises an EnvelopeError subclass,
never another exception type, and never accepts it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contract.envelope import (
    Identity,
    PeerKeys,
    ReplayGuard,
    cose,
    external_aad,
    open_envelope,
    seal,
)
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    EnvelopeError,
    ReplayError,
    UnknownKeyError,
)
from contract.topics import event_topic, status_topic

DEVICE = "cv-0042"
TOPIC = event_topic(DEVICE, "person")
NOW = 1_764_115_200
DEV = Identity.generate(DEVICE)
BACKEND = Identity.generate("backend-1")
TRUSTED = PeerKeys([DEV.public()])
IMPOSTOR = Identity.generate(DEVICE).public()  # same kid as the device, another key
STRANGER = Identity.generate("cv-9999").public()  # a trusted-looking key of another kid
BASE = seal(
    {"boot": 1, "ts": 1.5, "type": "person", "body": {"count": 2, "zone": "door"}},
    sender=DEV,
    recipient=BACKEND.public(),
    topic=TOPIC,
    seq=5,
    device=DEVICE,
).data
BIG = seal(
    {"type": "person", "body": {"jpeg": bytes(range(256)) * 8}},
    sender=DEV,
    recipient=BACKEND.public(),
    topic=TOPIC,
    seq=6,
    device=DEVICE,
).data

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

cbor_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=16)
    | st.binary(max_size=16)
)
cbor_value = st.recursive(
    cbor_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# anything CBOR can say, including tags that would make cbor2 build big or costly objects
hostile_cbor = st.recursive(
    cbor_leaf | st.integers(min_value=2**64, max_value=2**200),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.builds(
            cbor2.CBORTag, st.sampled_from([0, 1, 2, 4, 5, 18, 30, 35, 96, 258, 55799]), inner
        )
    ),
    max_leaves=12,
)
plaintext_maps = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in {"v", "device", "topic", "seq", "exp"}),
    cbor_value,
    max_size=6,
)
seqs = st.integers(min_value=0, max_value=2**63 - 1)


def attempt(data: bytes, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "topic": TOPIC,
        "trusted_senders": TRUSTED,
        "recipient": BACKEND,
        "replay_guard": ReplayGuard(),
        "clock": lambda: NOW,
    }
    args.update(kw)
    return open_envelope(data, **args)


def rejected(data: bytes, **kw: Any) -> EnvelopeError:
    """Open ``data``; it must fail with an EnvelopeError (any other exception fails the test)."""
    try:
        attempt(data, **kw)
    except EnvelopeError as exc:
        return exc
    pytest.fail("a tampered envelope was accepted")


def test_the_untouched_envelopes_open() -> None:
    assert attempt(BASE).seq == 5
    assert attempt(BIG).message["body"]["jpeg"][:3] == b"\x00\x01\x02"


def test_every_truncation_is_rejected() -> None:
    for n in range(len(BASE)):
        rejected(BASE[:n])


def test_every_single_bit_flip_is_rejected() -> None:
    for i in range(len(BASE) * 8):
        flipped = bytearray(BASE)
        flipped[i // 8] ^= 1 << (i % 8)
        rejected(bytes(flipped))


@FUZZ
@given(st.integers(min_value=0, max_value=len(BIG) * 8 - 1))
def test_sampled_bit_flips_in_a_large_envelope_are_rejected(bit: int) -> None:
    flipped = bytearray(BIG)
    flipped[bit // 8] ^= 1 << (bit % 8)
    rejected(bytes(flipped))


@FUZZ
@given(st.binary(min_size=1, max_size=64))
def test_appended_garbage_is_rejected(garbage: bytes) -> None:
    rejected(BASE + garbage)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_byte_overwrites_are_rejected(edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(BASE)
    for pos, value in edits:
        mutated[pos] = value
    assume(bytes(mutated) != BASE)
    rejected(bytes(mutated))


@FUZZ
@given(st.integers(0, len(BASE) - 1), st.integers(1, 16), st.binary(max_size=16))
def test_splices_are_rejected(pos: int, cut: int, insert: bytes) -> None:
    mutated = BASE[:pos] + insert + BASE[pos + cut :]
    assume(mutated != BASE)
    rejected(mutated)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_rejected(data: bytes) -> None:
    rejected(data)


@FUZZ
@given(st.one_of(hostile_cbor, st.lists(hostile_cbor, min_size=4, max_size=4)))
def test_random_cbor_in_a_cose_sign1_tag_is_rejected(value: Any) -> None:
    rejected(cbor2.dumps(cbor2.CBORTag(18, value)))
    rejected(cbor2.dumps(value))


def _signed(payload: bytes, seq: int = 9, exp: int | None = None) -> bytes:
    """A validly signed COSE_Sign1 from the trusted device around an arbitrary payload."""
    header: dict[int, Any] = {1: -8, 3: 96, 4: DEVICE.encode(), -65537: seq}
    if exp is not None:
        header[-65538] = exp
    protected = cose.dumps(header)
    aad = external_aad(DEVICE, TOPIC, seq)
    sig = DEV.signing_key.sign(cose.sig_structure1(protected, aad, payload)).signature
    return cose.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        hostile_cbor.map(cbor2.dumps),
        st.lists(hostile_cbor, min_size=4, max_size=4).map(
            lambda v: cbor2.dumps(cbor2.CBORTag(96, v))
        ),
    )
)
def test_signed_but_hostile_payloads_are_rejected(payload: bytes) -> None:
    # a trusted (e.g. compromised) signer must still not be able to crash the opener
    rejected(_signed(payload))


@FUZZ
@given(st.integers(0, len(BASE) - 1))
def test_hostile_bytes_inside_a_validly_signed_payload_are_rejected(pos: int) -> None:
    encrypt = bytearray(cbor2.loads(BASE).value[2])
    encrypt[pos % len(encrypt)] ^= 0xFF
    rejected(_signed(bytes(encrypt), seq=5))


@FUZZ
@given(plaintext_maps, seqs, st.sampled_from(["car", "person.1", "zone-enter", "status"]))
def test_wrong_key_kid_topic_and_replay_are_rejected(
    body: dict[str, Any], seq: int, other: str
) -> None:
    env = seal(body, sender=DEV, recipient=BACKEND.public(), topic=TOPIC, seq=seq, device=DEVICE)
    guard = ReplayGuard()
    opened = attempt(env.data, replay_guard=guard)
    assert dict(opened.message) == {**body, "v": 1, "device": DEVICE, "topic": TOPIC, "seq": seq}

    checks: list[tuple[type[EnvelopeError], Callable[[], Any]]] = [
        (ReplayError, lambda: attempt(env.data, replay_guard=guard)),
        (BadSignatureError, lambda: attempt(env.data, trusted_senders=PeerKeys([IMPOSTOR]))),
        (UnknownKeyError, lambda: attempt(env.data, trusted_senders=PeerKeys([STRANGER]))),
        (DecryptError, lambda: attempt(env.data, recipient=Identity.generate(BACKEND.kid))),
        (UnknownKeyError, lambda: attempt(env.data, recipient=Identity.generate("backend-2"))),
        (
            BadSignatureError,
            lambda: attempt(
                env.data,
                topic=status_topic(DEVICE) if other == "status" else event_topic(DEVICE, other),
            ),
        ),
        (
            BindingMismatchError,
            lambda: attempt(env.data, topic=event_topic("cv-0043", other)),
        ),
    ]
    for expected, call in checks:
        with pytest.raises(expected):
            call()


@FUZZ
@given(st.lists(st.integers(min_value=0, max_value=80), max_size=60), st.integers(1, 16))
def test_replay_guard_matches_a_reference_model(stream: list[int], window: int) -> None:
    guard = ReplayGuard(window=window)
    seen: set[int] = set()
    highest = -1
    for s in stream:
        fresh = s not in seen and (highest < 0 or s > highest - window)
        if fresh:
            guard.accept(("k", "d"), s)
            seen.add(s)
            highest = max(highest, s)
        else:
            with pytest.raises(ReplayError):
                guard.accept(("k", "d"), s)


@FUZZ
@given(st.one_of(st.binary(max_size=200), hostile_cbor.map(cbor2.dumps)))
def test_hostile_plaintext_inside_valid_encryption_and_signature_is_rejected(pt: bytes) -> None:
    seal_module = importlib.import_module("contract.envelope.seal")
    encrypt = seal_module._encrypt(pt, external_aad(DEVICE, TOPIC, 9), BACKEND.public())
    rejected(_signed(encrypt, seq=9))
