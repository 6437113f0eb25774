"""Sealed envelopes: round trips, interop with python-cwt and pycose, known answers, rejections."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import importlib
import os
import stat
from collections.abc import Mapping
from decimal import Decimal
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from contract.envelope import (
    Identity,
    PeerKeys,
    ReplayGuard,
    SealedEnvelope,
    external_aad,
    load_identity,
    open_envelope,
    parse_topic,
    restore_sealed,
    save_identity,
    seal,
)
from contract.envelope.cose import hkdf_sha256, kdf_context
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    EnvelopeError,
    ExpiredError,
    KeyFileError,
    MalformedEnvelopeError,
    ReplayError,
    UnknownKeyError,
)
from tools.bench_seal import bench_envelope

DEVICE = "cv-0001"
EVENT_TOPIC = f"camveil/v1/{DEVICE}/event/person"
CMD_TOPIC = f"camveil/v1/{DEVICE}/cmd"
NOW = 1_764_115_200
EVENT = {"boot": 3, "ts": NOW, "type": "person", "body": {"count": 1}}
REPO = Path(__file__).resolve().parents[2]
# the module, not the function of the same name that contract.envelope re-exports
seal_module = importlib.import_module("contract.envelope.seal")


@pytest.fixture(scope="module")
def device() -> Identity:
    return Identity.generate(DEVICE)


@pytest.fixture(scope="module")
def backend() -> Identity:
    return Identity.generate("backend-1")


@pytest.fixture(scope="module")
def operator() -> Identity:
    return Identity.generate("operator-1")


def open_event(data: bytes, device: Identity, backend: Identity, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "topic": EVENT_TOPIC,
        "trusted_senders": PeerKeys([device.public()]),
        "recipient": backend,
        "replay_guard": ReplayGuard(),
    }
    args.update(kw)
    return open_envelope(data, **args)


# --- an independent, hand-built envelope: cbor2 + PyNaCl + stdlib only ---------------------------


def _hkdf(ikm: bytes, info: bytes, n: int) -> bytes:
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:n]


def hand_seal(
    plaintext: Mapping[str, Any] | bytes,
    *,
    signer: SigningKey,
    kid: str,
    recipient_public: bytes,
    recipient_kid: str,
    topic: str,
    aad_device: str,
    seq: int,
    exp: int | None = None,
    ephemeral: bytes = b"\x11" * 32,
    epk: bytes | None = None,
    iv: bytes = b"\x22" * 12,
    iv_header: bytes | None = None,
) -> bytes:
    """Build an envelope from the wire spec in docs/PROTOCOL.md, with knobs to break it.

    Everything is CBOR in deterministic encoding (``canonical=True``), as the spec requires."""
    dumps = partial(cbor2.dumps, canonical=True)
    aad = dumps(["camveil/v1", aad_device, topic, seq])
    r_prot = bytes.fromhex("a1013818")  # {1: -25}
    c_prot = bytes.fromhex("a1011818")  # {1: 24}
    shared = crypto_scalarmult(ephemeral, recipient_public)
    context = dumps([24, [None, None, None], [None, None, None], [256, r_prot]])
    cek = _hkdf(shared, context, 32)
    pt = plaintext if isinstance(plaintext, bytes) else dumps(dict(plaintext))
    ct = crypto_aead_chacha20poly1305_ietf_encrypt(pt, dumps(["Encrypt", c_prot, aad]), iv, cek)
    epk = crypto_scalarmult_base(ephemeral) if epk is None else epk
    recipient = [r_prot, {-1: {1: 1, -1: 4, -2: epk}, 4: recipient_kid.encode()}, b""]
    iv_header = iv if iv_header is None else iv_header
    encrypt = dumps(cbor2.CBORTag(96, [c_prot, {5: iv_header}, ct, [recipient]]))
    header: dict[int, Any] = {1: -8, 3: 96, 4: kid.encode(), -65537: seq}
    if exp is not None:
        header[-65538] = exp
    prot = dumps(header)
    sig = signer.sign(dumps(["Signature1", prot, aad, encrypt])).signature
    return dumps(cbor2.CBORTag(18, [prot, {}, encrypt, sig]))


def hand_event(device: Identity, backend: Identity, **kw: Any) -> bytes:
    seq = kw.pop("seq", 7)
    plaintext = kw.pop(
        "plaintext", {**EVENT, "v": 1, "device": DEVICE, "topic": EVENT_TOPIC, "seq": seq}
    )
    args: dict[str, Any] = {
        "signer": device.signing_key,
        "kid": device.kid,
        "recipient_public": bytes(backend.encryption_key.public_key),
        "recipient_kid": backend.kid,
        "topic": EVENT_TOPIC,
        "aad_device": DEVICE,
        "seq": seq,
    }
    args.update(kw)
    return hand_seal(plaintext, **args)


def thaw(value: Any) -> Any:
    """cbor2 >= 6 decodes arrays/maps inside tags as tuples/frozendicts; cwt 3.3 and pycose 1.1
    expect lists/dicts (they were written against cbor2 5). Undo that representation only."""
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, thaw(value.value))
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


# --- round trips ---------------------------------------------------------------------------------


def test_event_round_trip(device: Identity, backend: Identity) -> None:
    env = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=7, device=DEVICE
    )
    assert (env.topic, env.device, env.sender_kid, env.seq) == (EVENT_TOPIC, DEVICE, DEVICE, 7)
    opened = open_event(env.data, device, backend)
    assert opened.sender_kid == DEVICE and opened.device == DEVICE and opened.seq == 7
    assert opened.kind == "event" and opened.expires_at is None
    assert dict(opened.message) == {
        **EVENT,
        "v": 1,
        "device": DEVICE,
        "topic": EVENT_TOPIC,
        "seq": 7,
    }


def test_command_round_trip(device: Identity, operator: Identity) -> None:
    env = seal(
        {"cmd": "reboot"},
        sender=operator,
        recipient=device.public(),
        topic=CMD_TOPIC,
        seq=1,
        device=DEVICE,
        expires_at=NOW + 60,
    )
    opened = open_envelope(
        env.data,
        topic=CMD_TOPIC,
        trusted_senders=PeerKeys([operator.public()]),
        recipient=device,
        replay_guard=ReplayGuard(),
        clock=lambda: NOW,
    )
    assert opened.kind == "cmd" and opened.sender_kid == "operator-1"
    assert opened.expires_at == NOW + 60 and opened.message["cmd"] == "reboot"


def test_opens_an_independently_hand_built_envelope(device: Identity, backend: Identity) -> None:
    opened = open_event(hand_event(device, backend), device, backend)
    assert opened.message["body"] == {"count": 1}


def test_golden_vector_matches_hand_built_and_protocol_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = Identity(DEVICE, SigningKey(bytes(range(32))), PrivateKey(bytes(range(32, 64))))
    be = Identity("backend-1", SigningKey(bytes(range(1, 33))), PrivateKey(bytes(range(64, 96))))
    ephemeral, iv = bytes(range(96, 128)), bytes(range(128, 140))
    queue = [ephemeral, iv]
    monkeypatch.setattr(seal_module, "secrets", SimpleNamespace(token_bytes=lambda n: queue.pop(0)))
    env = seal(EVENT, sender=dev, recipient=be.public(), topic=EVENT_TOPIC, seq=42, device=DEVICE)
    expected = hand_event(dev, be, seq=42, ephemeral=ephemeral, iv=iv)
    assert env.data == expected
    doc = (REPO / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    assert "".join(doc.split()).find(env.data.hex()) >= 0, "PROTOCOL.md example is stale"


def test_sealed_envelope_is_made_only_by_seal(device: Identity, backend: Identity) -> None:
    with pytest.raises(TypeError):
        SealedEnvelope(data=b"\xd2", topic=EVENT_TOPIC, device=DEVICE, sender_kid=DEVICE, seq=0)
    env = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=1, device=DEVICE
    )
    for change in ({"data": b"\xff\xd8 raw jpeg"}, {"topic": EVENT_TOPIC + "x"}, {"seq": 2}):
        with pytest.raises(TypeError):
            dataclasses.replace(env, **change)
    assert dataclasses.replace(env) == env


def test_restore_sealed(device: Identity, backend: Identity, operator: Identity) -> None:
    env = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=3, device=DEVICE
    )
    again = restore_sealed(env.data, topic=EVENT_TOPIC, signer=device.public())
    assert again == env
    with pytest.raises(UnknownKeyError):
        restore_sealed(env.data, topic=EVENT_TOPIC, signer=operator.public())
    with pytest.raises(BadSignatureError):
        restore_sealed(env.data, topic=f"camveil/v1/{DEVICE}/status", signer=device.public())
    with pytest.raises(MalformedEnvelopeError):
        restore_sealed(b"\xff\xd8\xff\xe0 a jpeg", topic=EVENT_TOPIC, signer=device.public())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topic": "camveil/v1/other/event/person"}, "not about device"),
        ({"topic": "camveil/v2/cv-0001/status"}, "cannot seal"),
        ({"seq": -1}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"topic": CMD_TOPIC}, "expires_at"),
    ],
)
def test_seal_refuses_programming_errors(
    device: Identity, backend: Identity, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {
        "sender": device,
        "recipient": backend.public(),
        "topic": EVENT_TOPIC,
        "seq": 1,
        "device": DEVICE,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        seal(EVENT, **args)


def test_seal_refuses_conflicting_binding_and_foreign_signer(
    device: Identity, backend: Identity, operator: Identity
) -> None:
    with pytest.raises(ValueError, match="binding"):
        seal(
            {**EVENT, "seq": 9},
            sender=device,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=1,
            device=DEVICE,
        )
    with pytest.raises(ValueError, match="signed by that device"):
        seal(
            EVENT,
            sender=operator,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=1,
            device=DEVICE,
        )
    with pytest.raises(ValueError, match="CBOR"):
        seal(
            {"x": object()},
            sender=device,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=1,
            device=DEVICE,
        )


# --- interoperability with independent COSE implementations ------------------------------------


def test_python_cwt_decrypts_our_cose_encrypt(device: Identity, backend: Identity) -> None:
    import cwt  # a dev dependency: missing, this test fails (never skips)

    env = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=11, device=DEVICE
    )
    encrypt = cbor2.loads(env.data).value[2]

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    key = cwt.COSEKey.from_jwk(
        {
            "kty": "OKP",
            "crv": "X25519",
            "kid": "backend-1",
            "alg": "ECDH-ES+HKDF-256",
            "d": b64(bytes(backend.encryption_key)),
            "x": b64(bytes(backend.encryption_key.public_key)),
        }
    )
    plaintext = cwt.COSE.new().decode(
        thaw(cbor2.loads(encrypt)),
        keys=[key],
        context={"alg": "ChaCha20/Poly1305"},
        external_aad=external_aad(DEVICE, EVENT_TOPIC, 11),
    )
    assert cbor2.loads(plaintext)["body"] == {"count": 1}
    with pytest.raises(Exception):  # noqa: B017 - cwt's own error type: the AAD is bound
        cwt.COSE.new().decode(
            thaw(cbor2.loads(encrypt)),
            keys=[key],
            context={"alg": "ChaCha20/Poly1305"},
            external_aad=external_aad(DEVICE, EVENT_TOPIC, 12),
        )


def test_pycose_verifies_our_sign1(device: Identity, backend: Identity) -> None:
    from pycose.headers import KID, Algorithm
    from pycose.keys import OKPKey
    from pycose.keys.curves import Ed25519
    from pycose.messages import Sign1Message

    env = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=12, device=DEVICE
    )
    msg = Sign1Message.from_cose_obj(thaw(cbor2.loads(env.data)).value, True)
    msg.key = OKPKey(crv=Ed25519, x=bytes(device.signing_key.verify_key))
    msg.external_aad = external_aad(DEVICE, EVENT_TOPIC, 12)
    assert msg.phdr[KID] == DEVICE.encode() and msg.phdr[Algorithm].identifier == -8
    assert msg.verify_signature()
    msg.external_aad = external_aad(DEVICE, f"camveil/v1/{DEVICE}/event/car", 12)
    assert not msg.verify_signature()


# --- known answers -------------------------------------------------------------------------------


def test_hkdf_sha256_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_sha256_rfc5869_test_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_kdf_context_encoding_for_chacha20_poly1305() -> None:
    # [24, [nil, nil, nil], [nil, nil, nil], [256, << {1: -25} >>]], encoded by hand:
    expected = "8418188" + "3f6f6f6" + "83f6f6f6" + "82190100" + "44a1013818"
    assert kdf_context(24, 256, bytes.fromhex("a1013818")).hex() == expected


def test_hkdf_against_cose_wg_example_p256_hkdf_256_01() -> None:
    # cose-wg/Examples ecdh-direct-examples/p256-hkdf-256-01.json intermediates: ECDH secret and
    # COSE_KDF_Context (that file predates RFC 9053 and encodes PartyInfo as [] rather than
    # [nil, nil, nil], so only the HKDF step is compared) -> CEK.
    secret = bytes.fromhex("4B31712E096E5F20B4ECF9790FD8CC7C8B7E2C8AD90BDA81CB224F62C0E7B9A6")
    context = bytes.fromhex("8401808082188044A1013818")
    cek = hkdf_sha256(secret, info=context, length=16)
    assert cek.hex().upper() == "8A3A29805BDB8F0F9B8E820A695261FE"


def test_external_aad_encoding() -> None:
    aad = external_aad("cv-0001", "camveil/v1/cv-0001/status", 1)
    assert aad == cbor2.dumps(["camveil/v1", "cv-0001", "camveil/v1/cv-0001/status", 1])
    assert aad[:12].hex() == "846a63616d7665696c2f7631"


# --- rejections, each with its own error ---------------------------------------------------------


def test_rejects_wrong_signer_key(device: Identity, backend: Identity) -> None:
    impostor = Identity.generate(DEVICE)  # same kid, another key
    data = seal(
        EVENT, sender=impostor, recipient=backend.public(), topic=EVENT_TOPIC, seq=1, device=DEVICE
    ).data
    with pytest.raises(BadSignatureError):
        open_event(data, device, backend)


def test_rejects_unknown_kid(device: Identity, backend: Identity) -> None:
    other = Identity.generate("cv-0002")
    data = seal(
        EVENT,
        sender=other,
        recipient=backend.public(),
        topic="camveil/v1/cv-0002/event/person",
        seq=1,
        device="cv-0002",
    ).data
    with pytest.raises(UnknownKeyError):
        open_event(data, device, backend, topic="camveil/v1/cv-0002/event/person")


def test_rejects_wrong_recipient_key(device: Identity, backend: Identity) -> None:
    data = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=1, device=DEVICE
    ).data
    with pytest.raises(DecryptError):
        open_event(data, device, Identity.generate("backend-1"))
    with pytest.raises(UnknownKeyError):
        open_event(data, device, Identity.generate("backend-2"))


def test_rejects_swapped_topic(device: Identity, backend: Identity) -> None:
    data = seal(
        EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=1, device=DEVICE
    ).data
    with pytest.raises(BadSignatureError):  # the topic is in the signed AAD
        open_event(data, device, backend, topic=f"camveil/v1/{DEVICE}/event/car")
    with pytest.raises(BindingMismatchError):  # another device's topic: signer is not that device
        open_event(data, device, backend, topic="camveil/v1/cv-0002/event/person")
    with pytest.raises(BindingMismatchError):
        open_event(data, device, backend, topic="not/a/camveil/topic")


def test_rejects_plaintext_that_disagrees_with_the_signed_binding(
    device: Identity, backend: Identity
) -> None:
    bound = {**EVENT, "v": 1, "device": DEVICE, "topic": EVENT_TOPIC, "seq": 7}
    for key, wrong in [
        ("seq", 8),
        ("device", "cv-0002"),
        ("topic", EVENT_TOPIC + "x"),
        ("seq", True),
        ("exp", NOW),
    ]:
        data = hand_event(device, backend, seq=7, plaintext={**bound, key: wrong})
        with pytest.raises(BindingMismatchError):
            open_event(data, device, backend)
    with pytest.raises(BadSignatureError):  # seq in the AAD differs from the signed header
        open_event(
            hand_event(device, backend, seq=7),
            device,
            backend,
            topic=EVENT_TOPIC.replace("person", "car"),
        )


def test_rejects_replay_and_accepts_out_of_order_within_window(
    device: Identity, backend: Identity
) -> None:
    guard = ReplayGuard(window=4)
    envs = {
        s: seal(
            EVENT,
            sender=device,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=s,
            device=DEVICE,
        ).data
        for s in range(10)
    }
    for s in (5, 3, 4, 9):
        open_event(envs[s], device, backend, replay_guard=guard)
    for s in (5, 3, 9):
        with pytest.raises(ReplayError):
            open_event(envs[s], device, backend, replay_guard=guard)
    open_event(envs[6], device, backend, replay_guard=guard)  # inside the window (9-3 < 6 <= 9)
    with pytest.raises(ReplayError, match="older than the replay window"):
        open_event(envs[5], device, backend, replay_guard=guard)


def test_rejects_expired_command_and_implausible_expiry(
    device: Identity, operator: Identity
) -> None:
    trusted = PeerKeys([operator.public()])

    def command(seq: int, exp: int) -> bytes:
        return seal(
            {"cmd": "snapshot"},
            sender=operator,
            recipient=device.public(),
            topic=CMD_TOPIC,
            seq=seq,
            device=DEVICE,
            expires_at=exp,
        ).data

    with pytest.raises(ExpiredError, match="expired"):
        open_envelope(
            command(1, NOW - 1),
            topic=CMD_TOPIC,
            trusted_senders=trusted,
            recipient=device,
            replay_guard=ReplayGuard(),
            clock=lambda: NOW,
        )
    with pytest.raises(ExpiredError, match="ahead"):
        open_envelope(
            command(2, NOW + 2 * 86400),
            topic=CMD_TOPIC,
            trusted_senders=trusted,
            recipient=device,
            replay_guard=ReplayGuard(),
            clock=lambda: NOW,
        )


def test_rejects_command_without_expiry_and_from_untrusted(
    device: Identity, operator: Identity
) -> None:
    plaintext = {"cmd": "x", "v": 1, "device": DEVICE, "topic": CMD_TOPIC, "seq": 1}
    data = hand_seal(
        plaintext,
        signer=operator.signing_key,
        kid=operator.kid,
        recipient_public=bytes(device.encryption_key.public_key),
        recipient_kid=DEVICE,
        topic=CMD_TOPIC,
        aad_device=DEVICE,
        seq=1,
    )
    with pytest.raises(MalformedEnvelopeError, match="expiry"):
        open_envelope(
            data,
            topic=CMD_TOPIC,
            trusted_senders=PeerKeys([operator.public()]),
            recipient=device,
            replay_guard=ReplayGuard(),
        )
    # a device cannot command itself (or another): only operator keys are trusted on a unit
    forged = seal(
        {"cmd": "x"},
        sender=device,
        recipient=device.public(),
        topic=CMD_TOPIC,
        seq=1,
        device=DEVICE,
        expires_at=NOW + 5,
    ).data
    with pytest.raises(UnknownKeyError):
        open_envelope(
            forged,
            topic=CMD_TOPIC,
            trusted_senders=PeerKeys([operator.public()]),
            recipient=device,
            replay_guard=ReplayGuard(),
            clock=lambda: NOW,
        )


def test_rejects_low_order_ephemeral_key(device: Identity, backend: Identity) -> None:
    data = hand_event(device, backend, epk=bytes(32))
    with pytest.raises(DecryptError):
        open_event(data, device, backend)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xd2",
        b"not cbor at all",
        cbor2.dumps(cbor2.CBORTag(18, [])),
        cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", []])),
        cbor2.dumps([1, 2, 3, 4]),
    ],
)
def test_rejects_garbage(device: Identity, backend: Identity, data: bytes) -> None:
    with pytest.raises(MalformedEnvelopeError):
        open_event(data, device, backend)


def test_rejects_oversized_and_non_bytes(device: Identity, backend: Identity) -> None:
    with pytest.raises(MalformedEnvelopeError, match="exceeds"):
        open_event(b"\0" * 101, device, backend, max_size=100)
    with pytest.raises(MalformedEnvelopeError):
        open_event("text", device, backend)  # type: ignore[arg-type]


def test_rejects_signed_but_malformed_inner_layers(device: Identity, backend: Identity) -> None:
    bound = {"v": 1, "device": DEVICE, "topic": EVENT_TOPIC, "seq": 7}
    cases = [
        hand_event(device, backend, plaintext=b"\xff\xff"),  # plaintext not CBOR
        hand_event(device, backend, plaintext=cbor2.dumps([1, 2])),  # not a map
        hand_event(device, backend, plaintext=cbor2.dumps({**bound, "v": 2})),  # version
        hand_event(device, backend, plaintext=cbor2.dumps(bound) + b"\x00"),  # trailing
        hand_event(device, backend, iv_header=b"\x22" * 8),  # short iv
    ]
    for data in cases:
        with pytest.raises(MalformedEnvelopeError):
            open_event(data, device, backend)


# --- replay guard, topics, keys ------------------------------------------------------------------


def test_replay_guard_window_snapshot_restore() -> None:
    guard = ReplayGuard(window=8)
    stream = (DEVICE, DEVICE)
    for s in (0, 2, 1, 10):
        guard.accept(stream, s)
    assert guard.highest(stream) == 10
    guard.check(stream, 3)
    with pytest.raises(ReplayError):
        guard.check(stream, 2)  # 2 <= 10 - 8: out of the window
    with pytest.raises(ReplayError):
        guard.accept(stream, 10)
    guard.accept((DEVICE, "other"), 10)  # streams are independent
    restored = ReplayGuard(window=8)
    restored.restore(guard.snapshot())
    with pytest.raises(ReplayError):
        restored.accept(stream, 10)
    restored.accept(stream, 9)
    with pytest.raises(ReplayError):
        guard.accept(stream, -1)
    with pytest.raises(ValueError):
        ReplayGuard(window=0)


def test_parse_topic() -> None:
    assert parse_topic(EVENT_TOPIC).event_type == "person"
    assert parse_topic(f"camveil/v1/{DEVICE}/cmd/ack").kind == "cmd/ack"
    assert parse_topic(f"camveil/v1/{DEVICE}/status").kind == "status"
    for bad in [
        "camveil/v1/+/status",
        "camveil/v1/cv/event/",
        "camveil/v1/cv/event/A",
        "camveil/v1//status",
        "camveil/v1/cv/unknown",
        "camveil/v1/cv",
    ]:
        with pytest.raises(ValueError):
            parse_topic(bad)


def test_identity_file_round_trip_mode_and_refusals(tmp_path: Path) -> None:
    ident = Identity.generate(DEVICE)
    path = tmp_path / "device.key"
    save_identity(path, ident)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert bytes(loaded.signing_key) == bytes(ident.signing_key)
    assert bytes(loaded.encryption_key) == bytes(ident.encryption_key)
    assert loaded.public() == ident.public()
    save_identity(path, Identity.generate(DEVICE))  # atomic replace of an existing file
    assert [p.name for p in tmp_path.iterdir()] == ["device.key"]
    secret_hex = bytes(ident.signing_key).hex()
    assert secret_hex not in repr(ident) and "SigningKey" not in repr(ident)

    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_identity(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"\x00garbage")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a camveil identity"):
        load_identity(bad)
    link = tmp_path / "link.key"
    link.symlink_to(bad)
    with pytest.raises(KeyFileError, match="symlink"):
        load_identity(link)


def test_public_identity_cbor_and_peer_keys() -> None:
    pub = Identity.generate("operator-1").public()
    assert type(pub).from_cbor(pub.to_cbor()) == pub
    peers = PeerKeys([pub])
    assert peers.require("operator-1") is pub and len(peers) == 1 and list(peers) == ["operator-1"]
    with pytest.raises(UnknownKeyError):
        peers.require("nobody")
    with pytest.raises(ValueError, match="duplicate"):
        PeerKeys([pub, pub])
    with pytest.raises(ValueError):
        Identity.generate("bad/kid")


def test_every_envelope_error_is_an_envelope_error() -> None:
    for cls in (
        MalformedEnvelopeError,
        UnknownKeyError,
        BadSignatureError,
        DecryptError,
        BindingMismatchError,
        ReplayError,
        ExpiredError,
        KeyFileError,
    ):
        assert issubclass(cls, EnvelopeError)


def test_bench_envelope_reports_rates() -> None:
    result = bench_envelope(0.1)
    assert result["seal_per_s"] > 0 and result["open_per_s"] > 0
    assert 250 <= result["plaintext_bytes"] <= 400


# --- hostile CBOR never reaches a semantic decoder --------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes.fromhex("9f01ff"), "indefinite"),
        (bytes.fromhex("1c"), "reserved"),
        (bytes.fromhex("0100"), "trailing"),
        (bytes.fromhex("5b00000000ffffffff00"), "truncated"),
        (bytes.fromhex("81" * 20 + "00"), "deeply"),
        (bytes.fromhex("c11a69264300"), "tag 1"),
        (bytes.fromhex("f800"), "simple"),
        (b"", "truncated"),
    ],
)
def test_check_wellformed_refusals(data: bytes, match: str) -> None:
    from contract.envelope.cose import StrictCBORError, check_wellformed

    with pytest.raises(StrictCBORError, match=match):
        check_wellformed(data)


def test_semantic_tag_bombs_are_refused_before_decoding(
    device: Identity, backend: Identity
) -> None:
    big = (1 << 2_000_000) - 1
    env = cbor2.loads(
        seal(
            EVENT,
            sender=device,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=1,
            device=DEVICE,
        ).data
    )
    prot, _, payload, sig = env.value
    for bomb in (cbor2.CBORTag(30, [big, big - 2]), cbor2.CBORTag(35, "(a+)+$"), big):
        data = cbor2.dumps(cbor2.CBORTag(18, [prot, {1: bomb}, payload, sig]))
        with pytest.raises(MalformedEnvelopeError, match=r"tag|unprotected"):
            open_event(data, device, backend)


def test_rejects_duplicate_labels_in_the_signed_protected_header(
    device: Identity, backend: Identity
) -> None:
    aad = external_aad(DEVICE, EVENT_TOPIC, 42)
    inner = cbor2.loads(hand_event(device, backend, seq=42)).value[2]
    # {1: -8, 3: 96, 4: kid, -65537: 1, -65537: 42}: a second seq label, validly signed
    prot = (
        bytes.fromhex("a501270318600447")
        + DEVICE.encode()
        + bytes.fromhex("3a00010000013a00010000182a")
    )
    sig = device.signing_key.sign(cbor2.dumps(["Signature1", prot, aad, inner])).signature
    data = cbor2.dumps(cbor2.CBORTag(18, [prot, {}, inner, sig]))
    with pytest.raises(MalformedEnvelopeError, match="duplicate"):
        open_event(data, device, backend)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [2**64, Decimal("1.5"), {1, 2}, _nested(20)])
def test_seal_refuses_plaintext_that_would_need_tags_or_deep_nesting(
    device: Identity, backend: Identity, value: Any
) -> None:
    with pytest.raises(ValueError, match="tag-free"):
        seal(
            {"x": value},
            sender=device,
            recipient=backend.public(),
            topic=EVENT_TOPIC,
            seq=1,
            device=DEVICE,
        )


def _resign(device: Identity, header: Any, inner: bytes, seq: int = 42) -> bytes:
    prot = cbor2.dumps(header)
    aad = external_aad(DEVICE, EVENT_TOPIC, seq)
    sig = device.signing_key.sign(cbor2.dumps(["Signature1", prot, aad, inner])).signature
    return cbor2.dumps(cbor2.CBORTag(18, [prot, {}, inner, sig]))


@pytest.mark.parametrize(
    "header",
    [
        {1: -8.0, 3: 96, 4: DEVICE.encode(), -65537: 42},  # alg as a float
        {1: -8, 3: "96", 4: DEVICE.encode(), -65537: 42},  # content type as text
        {1: -8, 3: 96, 4: DEVICE, -65537: 42},  # kid as text
        {1: -8, 3: 96, 4: DEVICE.encode(), -65537: 42, "x": 1},  # text label
        {1: -8, 3: 96, 4: DEVICE.encode(), -65537: 42, 99: 1},  # unknown label
        {1: -8, 3: 96, 4: DEVICE.encode(), -65537: 42.0},  # seq as a float
        {1: -8, 3: 96, 4: DEVICE.encode()},  # no seq
        {1: -8, 3: 96, 4: DEVICE.encode(), -65537: 42, -65538: -1},  # negative exp
        {1: -7, 3: 96, 4: DEVICE.encode(), -65537: 42},  # ES256
        [1, -8],  # not a map
    ],
)
def test_rejects_signed_but_wrong_protected_headers(
    device: Identity, backend: Identity, header: Any
) -> None:
    inner = cbor2.loads(hand_event(device, backend, seq=42)).value[2]
    with pytest.raises(MalformedEnvelopeError):
        open_event(_resign(device, header, inner), device, backend)
    good = {1: -8, 3: 96, 4: DEVICE.encode(), -65537: 42}
    assert open_event(_resign(device, good, inner), device, backend).seq == 42


def test_last_will_sealed_at_connect_is_fresh_when_published_much_later(
    device: Identity, backend: Identity
) -> None:
    status = f"camveil/v1/{DEVICE}/status"
    guard = ReplayGuard(window=4)

    def sealed(topic: str, seq: int) -> bytes:
        return seal(
            {"state": "x"},
            sender=device,
            recipient=backend.public(),
            topic=topic,
            seq=seq,
            device=DEVICE,
        ).data

    online, will = sealed(status, 1), sealed(status, 2)  # the will is sealed at connect
    open_event(online, device, backend, topic=status, replay_guard=guard)
    for seq in range(3, 20):  # many events later ...
        open_event(sealed(EVENT_TOPIC, seq), device, backend, replay_guard=guard)
    assert open_event(will, device, backend, topic=status, replay_guard=guard).seq == 2
    with pytest.raises(ReplayError):
        open_event(will, device, backend, topic=status, replay_guard=guard)


def test_peer_key_file_round_trip_and_refusals(tmp_path: Path) -> None:
    from contract.envelope import load_peers, save_peers

    pubs = [Identity.generate("operator-1").public(), Identity.generate("backend-1").public()]
    path = tmp_path / "peers.cbor"
    save_peers(path, pubs)
    peers = load_peers(path)
    assert sorted(peers) == ["backend-1", "operator-1"] and peers["operator-1"] == pubs[0]
    with pytest.raises(KeyFileError, match="cannot be read"):
        load_peers(tmp_path / "missing.cbor")
    for bad in (b"\xff", cbor2.dumps({"v": 1}), cbor2.dumps({"v": 1, "peers": [{"v": 1}]})):
        path.write_bytes(bad)
        with pytest.raises(KeyFileError, match="not a camveil peer list"):
            load_peers(path)


# --- the constant-time pre-check of the outer frame (issue 14, item 5) ------------------------


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any call into the CBOR walk or decoder: the pre-check must refuse before both."""
    cose_module = importlib.import_module("contract.envelope.cose")
    calls: list[str] = []

    def walk(*args: Any, **kw: Any) -> Any:
        calls.append("check_wellformed")
        raise AssertionError("the CBOR walk ran on a message the pre-check should refuse")

    def decode(*args: Any, **kw: Any) -> Any:
        calls.append("cbor2.loads")
        raise AssertionError("cbor2 decoded a message the pre-check should refuse")

    monkeypatch.setattr(cose_module, "check_wellformed", walk)
    monkeypatch.setattr(cose_module.cbor2, "loads", decode)
    return calls


def _cbor_array_of_zeros(total: int) -> bytes:
    n = total - 5
    return b"\x9a" + n.to_bytes(4, "big") + b"\x00" * n  # a well-formed array of n zeros


def test_a_4mib_cbor_array_is_refused_before_any_decoding(
    device: Identity, backend: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A well-formed 4 MiB CBOR array cost the listener 1.1-1.4 s of CPU in the CBOR walk; it
    is now refused by the first two bytes (cost measured in the issue 14 report)."""
    hostile = _cbor_array_of_zeros(4 * 1024 * 1024)
    # the same array inside a tag 18, or framed like a Sign1 with a giant protected header
    tagged = b"\xd2" + hostile
    giant_header = b"\xd2\x84\x5a" + (4 * 1024 * 1024).to_bytes(4, "big") + bytes(4 * 1024 * 1024)
    calls = _no_decoding(monkeypatch)
    with pytest.raises(MalformedEnvelopeError, match=r"does not start like a COSE_Sign1"):
        open_event(hostile, device, backend)
    with pytest.raises(MalformedEnvelopeError, match=r"does not start like a COSE_Sign1"):
        open_event(tagged, device, backend)
    with pytest.raises(MalformedEnvelopeError, match=r"protected header is not a bstr of 1\.\.128"):
        open_event(giant_header, device, backend)
    assert calls == []


def test_a_too_large_payload_is_refused_before_any_decoding(
    device: Identity, backend: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = importlib.import_module("contract.envelope.wire")
    real = seal(EVENT, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=1,
                device=DEVICE).data  # fmt: skip
    too_large = bytes(wire.MAX_ENVELOPE_BYTES + 1)
    # a frame whose payload length does not land exactly on the signature
    protected_len = real[2] & 0x1F if real[2] < 0x58 else real[3]
    lying = bytearray(real)
    lying[-66] = 0x00  # the signature's bstr head
    calls = _no_decoding(monkeypatch)
    with pytest.raises(MalformedEnvelopeError, match="exceeds"):
        open_event(too_large, device, backend)
    with pytest.raises(MalformedEnvelopeError, match="exactly a 64-byte signature"):
        open_event(bytes(lying), device, backend)
    with pytest.raises(MalformedEnvelopeError, match="exactly a 64-byte signature"):
        open_event(real + b"\x00", device, backend)
    assert calls == [] and protected_len <= wire.MAX_PROTECTED_BYTES


def test_the_largest_allowed_snapshot_still_fits(device: Identity, backend: Identity) -> None:
    """The envelope bound is derived from the snapshot cap: a snapshot of the largest size the
    config allows ([events] snapshot_max_bytes) seals and opens; a larger plaintext is refused
    at seal time (the unit never makes what no backend would open)."""
    from agent.config import EventsConfig
    from contract.envelope.wire import MAX_PLAINTEXT_BYTES, MAX_SNAPSHOT_BYTES

    with pytest.raises(Exception, match="snapshot_max_bytes"):
        EventsConfig(snapshot_max_bytes=MAX_SNAPSHOT_BYTES + 1)
    EventsConfig(snapshot_max_bytes=MAX_SNAPSHOT_BYTES)
    jpeg = os.urandom(MAX_SNAPSHOT_BYTES)
    event = {"boot": 3, "ts": NOW, "type": "snapshot", "body": {"jpeg": jpeg, "w": 1920}}
    sealed = seal(event, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=2,
                  device=DEVICE)  # fmt: skip
    opened = open_event(sealed.data, device, backend)
    assert opened.message["body"]["jpeg"] == jpeg
    event["body"] = {"jpeg": os.urandom(MAX_PLAINTEXT_BYTES)}
    with pytest.raises(ValueError, match="exceeds"):
        seal(event, sender=device, recipient=backend.public(), topic=EVENT_TOPIC, seq=3,
             device=DEVICE)  # fmt: skip
