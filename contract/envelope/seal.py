"""Seal and open camveil envelopes: COSE_Sign1 (EdDSA) over COSE_Encrypt (ChaCha20/Poly1305,
ECDH-ES + HKDF-256 on X25519). The wire format is specified in docs/PROTOCOL.md, "Envelope".

``seal`` is the only way to make a :class:`SealedEnvelope` from a message, and a
:class:`SealedEnvelope` is the only thing the outbox accepts. ``open_envelope`` checks, in order:
size and exact structure, the signer's kid is trusted and allowed on this topic, the Ed25519
signature (over the protected header, the external AAD binding device, topic and seq, and the
ciphertext), expiry, decryption, that the plaintext repeats the same device / topic / seq / exp,
and finally the replay window. Each failure raises its own :class:`~contract.errors.EnvelopeError`
subclass; nothing else escapes for any input bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import cbor2
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.exceptions import CryptoError

from contract.envelope import cose
from contract.envelope.keys import Identity, PeerKeys, PublicIdentity
from contract.envelope.replay import ReplayCheck
from contract.envelope.wire import (
    BOUND_KEYS,
    CONTENT_PROTECTED,
    ENVELOPE_VERSION,
    HDR_EXP,
    HDR_SEQ,
    MAX_CBOR_DEPTH,
    MAX_ENVELOPE_BYTES,
    MAX_PLAINTEXT_BYTES,
    MAX_SEQ,
    RECIPIENT_PROTECTED,
    Sign1,
    check_plaintext,
    external_aad,
    is_uint,
    parse_encrypt,
    parse_sign1,
)
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    ExpiredError,
    MalformedEnvelopeError,
    UnknownKeyError,
)
from contract.topics import FOREIGN_SIGNED, parse_topic

MAX_COMMAND_LIFETIME_S: Final = 24 * 3600
_MINT_KEY: Final = secrets.token_bytes(32)


def _mint(data: bytes, topic: str, device: str, sender_kid: str, seq: int) -> bytes:
    fields = cose.dumps([data, topic, device, sender_kid, seq])
    return hmac.new(_MINT_KEY, fields, hashlib.sha256).digest()


# --- sealed and opened values ------------------------------------------------------------------


@dataclass(frozen=True)
class SealedEnvelope:
    """Bytes of a sealed envelope plus where they go. Made only by :func:`seal` and
    :func:`restore_sealed`; the outbox and the transport accept nothing else."""

    data: bytes = field(repr=False)
    topic: str
    device: str
    sender_kid: str
    seq: int
    _mint: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        # _mint is a MAC under a per-process secret over every field, so neither the
        # constructor nor dataclasses.replace() can wrap other bytes or move them elsewhere.
        if not hmac.compare_digest(
            self._mint, _mint(self.data, self.topic, self.device, self.sender_kid, self.seq)
        ):
            raise TypeError("SealedEnvelope is made only by seal() or restore_sealed()")


@dataclass(frozen=True)
class OpenedMessage:
    """A verified, decrypted, fresh message. ``message`` is the whole plaintext map."""

    sender_kid: str
    device: str
    topic: str
    kind: str
    seq: int
    expires_at: int | None
    message: Mapping[str, Any] = field(repr=False)


# --- seal --------------------------------------------------------------------------------------


def seal(
    plaintext_map: Mapping[str, Any],
    *,
    sender: Identity,
    recipient: PublicIdentity,
    topic: str,
    seq: int,
    device: str,
    expires_at: int | None = None,
) -> SealedEnvelope:
    """Encrypt ``plaintext_map`` to ``recipient`` and sign it as ``sender`` for ``topic``.

    The plaintext is ``plaintext_map`` plus ``v``, ``device``, ``topic``, ``seq`` (and ``exp``
    when ``expires_at`` is given); a map that already holds one of those with another value is
    a programming error (ValueError). Events, status and acks must be signed by the device they
    are about (``sender.kid == device``); commands (``.../cmd``) need ``expires_at`` (Unix
    seconds). ``seq`` must be fresh for (sender, device), e.g. persisted before sealing.
    """
    try:
        parsed = parse_topic(topic)
    except ValueError as exc:
        raise ValueError(f"cannot seal: {exc}") from None
    if parsed.device != device:
        raise ValueError(f"topic {topic!r} is not about device {device!r}")
    if parsed.kind not in FOREIGN_SIGNED and sender.kid != device:
        raise ValueError(f"{parsed.kind} messages of {device!r} must be signed by that device")
    if parsed.kind in FOREIGN_SIGNED and expires_at is None:
        raise ValueError(f"{parsed.kind} messages need expires_at")
    if not is_uint(seq, MAX_SEQ):
        raise ValueError(f"seq must be an int in 0..2**63-1, got {seq!r}")
    if expires_at is not None and not is_uint(expires_at, MAX_SEQ):
        raise ValueError("expires_at must be a non-negative int (Unix seconds)")

    bound: dict[str, Any] = {"v": ENVELOPE_VERSION, "device": device, "topic": topic, "seq": seq}
    if expires_at is not None:
        bound["exp"] = expires_at
    for key in BOUND_KEYS & set(plaintext_map):
        if bound.get(key, object()) != plaintext_map[key]:
            raise ValueError(f"plaintext key {key!r} disagrees with the envelope binding")
    try:
        plaintext = cose.dumps({**plaintext_map, **bound})
        cose.check_wellformed(plaintext, max_depth=MAX_CBOR_DEPTH)
    except Exception as exc:  # cbor2 raises CBOREncodeError/TypeError for unencodable values
        raise ValueError(
            f"plaintext is not tag-free CBOR nested at most {MAX_CBOR_DEPTH} deep (use ints "
            f"below 2**64, floats, text, bytes, bools, None, lists, maps): {exc}"
        ) from None
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise ValueError(
            f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT_BYTES}: no backend "
            "would open it (a snapshot over [events] snapshot_max_bytes?)"
        )

    aad = external_aad(device, topic, seq)
    encrypt = _encrypt(plaintext, aad, recipient)

    protected: dict[int, Any] = {
        cose.HDR_ALG: cose.ALG_EDDSA,
        cose.HDR_CONTENT_TYPE: cose.CONTENT_FORMAT_COSE_ENCRYPT,
        cose.HDR_KID: sender.kid.encode(),
        HDR_SEQ: seq,
    }
    if expires_at is not None:
        protected[HDR_EXP] = expires_at
    protected_bytes = cose.dumps(protected)
    signature = sender.signing_key.sign(
        cose.sig_structure1(protected_bytes, aad, encrypt)
    ).signature
    data = cose.dumps(cbor2.CBORTag(cose.TAG_COSE_SIGN1, [protected_bytes, {}, encrypt, signature]))
    return SealedEnvelope(
        data=data,
        topic=topic,
        device=device,
        sender_kid=sender.kid,
        seq=seq,
        _mint=_mint(data, topic, device, sender.kid, seq),
    )


def _encrypt(plaintext: bytes, aad: bytes, recipient: PublicIdentity) -> bytes:
    """Tagged COSE_Encrypt of ``plaintext`` with one ECDH-ES + HKDF-256 recipient."""
    ephemeral = secrets.token_bytes(cose.X25519_KEY_LEN)
    ephemeral_public = crypto_scalarmult_base(ephemeral)
    shared = crypto_scalarmult(ephemeral, bytes(recipient.encryption_key))
    cek = _derive_cek(shared, RECIPIENT_PROTECTED)
    iv = secrets.token_bytes(cose.CHACHA20_POLY1305_IV_LEN)
    ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, cose.enc_structure(CONTENT_PROTECTED, aad), iv, cek
    )
    recipient_entry = [
        RECIPIENT_PROTECTED,
        {
            cose.HDR_EPHEMERAL_KEY: cose.x25519_cose_key(ephemeral_public),
            cose.HDR_KID: recipient.kid.encode(),
        },
        b"",
    ]
    return cose.dumps(
        cbor2.CBORTag(
            cose.TAG_COSE_ENCRYPT,
            [CONTENT_PROTECTED, {cose.HDR_IV: iv}, ciphertext, [recipient_entry]],
        )
    )


def _kdf_context(recipient_protected: bytes) -> bytes:
    return cose.kdf_context(
        cose.ALG_CHACHA20_POLY1305, cose.CHACHA20_POLY1305_KEY_BITS, recipient_protected
    )


_KDF_CONTEXT: Final = _kdf_context(RECIPIENT_PROTECTED)  # the one every envelope of ours has


def _derive_cek(shared: bytes, recipient_protected: bytes) -> bytes:
    if recipient_protected == RECIPIENT_PROTECTED:
        info = _KDF_CONTEXT
    else:
        info = _kdf_context(recipient_protected)
    return cose.hkdf_sha256(shared, info=info, length=cose.CHACHA20_POLY1305_KEY_BITS // 8)


# --- open --------------------------------------------------------------------------------------


def open_envelope(
    data: bytes,
    *,
    topic: str,
    trusted_senders: PeerKeys,
    recipient: Identity,
    replay_guard: ReplayCheck,
    clock: Callable[[], float] = time.time,
    max_size: int = MAX_ENVELOPE_BYTES,
    max_command_lifetime_s: float = MAX_COMMAND_LIFETIME_S,
) -> OpenedMessage:
    """Verify, decrypt and replay-check ``data`` received on ``topic``.

    ``trusted_senders`` are the public identities whose signatures we accept (devices at the
    backend, operator keys on a unit); ``recipient`` is our own identity whose X25519 key the
    message must be encrypted to. Messages on event/status/ack topics must be signed by the
    device named in the topic; commands must carry an expiry no later than
    ``max_command_lifetime_s`` ahead. The (signer, device, seq) is recorded in ``replay_guard``
    only when every other check has passed.
    """
    try:
        parsed = parse_topic(topic)
    except ValueError as exc:
        raise BindingMismatchError(f"not a camveil topic: {exc}") from None
    outer = parse_sign1(_as_bytes(data, max_size), max_size)
    signer = trusted_senders.require(outer.kid)
    if parsed.kind not in FOREIGN_SIGNED and outer.kid != parsed.device:
        raise BindingMismatchError(
            f"{parsed.kind} topic of device {parsed.device!r} signed by key {outer.kid!r}"
        )
    if parsed.kind in FOREIGN_SIGNED and outer.exp is None:
        raise MalformedEnvelopeError(f"{parsed.kind} message without expiry")

    aad = external_aad(parsed.device, topic, outer.seq)
    _verify(signer, outer, aad, topic)

    if outer.exp is not None:
        now = clock()
        if now > outer.exp:
            raise ExpiredError(f"message expired at {outer.exp}, now {int(now)}")
        if parsed.kind in FOREIGN_SIGNED and outer.exp > now + max_command_lifetime_s:
            raise ExpiredError(
                f"{parsed.kind} expiry {outer.exp} is more than {max_command_lifetime_s:.0f} s "
                "ahead"
            )

    stream = (outer.kid, topic)  # one window per signer and topic (see docs/PROTOCOL.md)
    replay_guard.check(stream, outer.seq, outer.exp)  # cheap early refusal of redeliveries
    plaintext = _decrypt(outer.payload, aad, recipient)
    message = check_plaintext(plaintext, parsed.device, topic, outer.seq, outer.exp)

    replay_guard.accept(stream, outer.seq, outer.exp)
    return OpenedMessage(
        sender_kid=outer.kid,
        device=parsed.device,
        topic=topic,
        kind=parsed.kind,
        seq=outer.seq,
        expires_at=outer.exp,
        message=MappingProxyType(message),
    )


def restore_sealed(data: bytes, *, topic: str, signer: PublicIdentity) -> SealedEnvelope:
    """Re-wrap stored envelope bytes (e.g. an outbox row after a restart) as a SealedEnvelope.

    Checks the structure, that ``signer`` made it for ``topic`` and that its signature verifies;
    does not decrypt (the unit cannot) and does not touch any replay state.
    """
    try:
        parsed = parse_topic(topic)
    except ValueError as exc:
        raise BindingMismatchError(f"not a camveil topic: {exc}") from None
    data = _as_bytes(data, MAX_ENVELOPE_BYTES)
    outer = parse_sign1(data)
    if outer.kid != signer.kid:
        raise UnknownKeyError(f"envelope signed by {outer.kid!r}, expected {signer.kid!r}")
    aad = external_aad(parsed.device, topic, outer.seq)
    _verify(signer, outer, aad, topic)
    return SealedEnvelope(
        data=data,
        topic=topic,
        device=parsed.device,
        sender_kid=outer.kid,
        seq=outer.seq,
        _mint=_mint(data, topic, parsed.device, outer.kid, outer.seq),
    )


def _verify(signer: PublicIdentity, outer: Sign1, aad: bytes, topic: str) -> None:
    try:
        signer.verify_key.verify(
            cose.sig_structure1(outer.protected, aad, outer.payload), outer.signature
        )
    except NaclBadSignatureError:
        raise BadSignatureError(
            f"signature of key {outer.kid!r} does not verify for topic {topic!r} seq {outer.seq}"
        ) from None


def _decrypt(encrypt_bytes: bytes, aad: bytes, recipient: Identity) -> bytes:
    """Decrypt our COSE_Encrypt (already authenticated by the signature, but checked anyway)."""
    enc = parse_encrypt(encrypt_bytes)
    if enc.recipient_kid != recipient.kid.encode():
        raise UnknownKeyError("message is encrypted to a key id we do not hold")
    try:
        shared = crypto_scalarmult(bytes(recipient.encryption_key), enc.ephemeral_public)
    except CryptoError:  # libsodium refuses low-order points (all-zero shared secret)
        raise DecryptError("ephemeral key is a low-order point") from None
    cek = _derive_cek(shared, enc.recipient_protected)
    try:
        return crypto_aead_chacha20poly1305_ietf_decrypt(
            enc.ciphertext, cose.enc_structure(enc.protected, aad), enc.iv, cek
        )
    except CryptoError:
        raise DecryptError(
            "authenticated decryption failed (wrong recipient key or tampered)"
        ) from None


def _as_bytes(data: object, max_size: int) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelopeError(f"envelope must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise MalformedEnvelopeError(f"envelope of {len(raw)} bytes exceeds {max_size}")
    return raw
