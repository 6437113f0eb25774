"""Seal and open camveil envelopes: COSE_Sign1 (EdDSA) over COSE_Encrypt (ChaCha20/Poly1305,
ECDH-ES + HKDF-256 on X25519). The wire format is specified in docs/PROTOCOL.md, "Envelope".

``seal`` is the only way to make a :class:`SealedEnvelope` from a message, and a
:class:`SealedEnvelope` is the only thing the outbox accepts. ``open_envelope`` checks, in order:
size and exact structure, the signer's kid is trusted and allowed on this topic, the Ed25519
signature (over the protected header, the external AAD binding device, topic and seq, and the
ciphertext), expiry, decryption, that the plaintext repeats the same device / topic / seq / exp,
and finally the replay window. Each failure raises its own :class:`~agent.errors.EnvelopeError`
subclass; nothing else escapes for any input bytes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeGuard

import cbor2
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import BadSignatureError as NaclBadSignatureError
from nacl.exceptions import CryptoError

from agent.envelope import cose
from agent.envelope.keys import Identity, PeerKeys, PublicIdentity, check_kid
from agent.envelope.replay import ReplayGuard
from agent.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    ExpiredError,
    MalformedEnvelopeError,
    UnknownKeyError,
)

ENVELOPE_VERSION: Final = 1
AAD_CONTEXT: Final = "camveil/v1"
TOPIC_PREFIX: Final = "camveil/v1/"
# Private-use COSE header labels (RFC 9052 §11.1: integers below -65536), in the Sign1 protected
# header, so that seq and expiry are readable (and signed) before anything is decrypted.
HDR_SEQ: Final = -65537
HDR_EXP: Final = -65538
MAX_SEQ: Final = 2**63 - 1
MAX_ENVELOPE_BYTES: Final = 4 * 1024 * 1024
MAX_COMMAND_LIFETIME_S: Final = 24 * 3600
MAX_CBOR_DEPTH: Final = 16
# Plaintext keys that seal() writes itself and open_envelope() checks against the headers.
BOUND_KEYS: Final = frozenset({"v", "device", "topic", "seq", "exp"})

KIND_EVENT: Final = "event"
KIND_STATUS: Final = "status"
KIND_CMD: Final = "cmd"
KIND_CMD_ACK: Final = "cmd/ack"

_EVENT_TYPE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SIGN1_PROTECTED_LABELS: Final = frozenset(
    {cose.HDR_ALG, cose.HDR_CONTENT_TYPE, cose.HDR_KID, HDR_SEQ, HDR_EXP}
)
_CONTENT_PROTECTED: Final = cose.dumps({cose.HDR_ALG: cose.ALG_CHACHA20_POLY1305})
_RECIPIENT_PROTECTED: Final = cose.dumps({cose.HDR_ALG: cose.ALG_ECDH_ES_HKDF_256})
_SEAL_TOKEN: Final = object()
_SIGN1_TAGS: Final = frozenset({cose.TAG_COSE_SIGN1})
_ENCRYPT_TAGS: Final = frozenset({cose.TAG_COSE_ENCRYPT})


# --- topics and AAD ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """A parsed camveil topic: ``camveil/v1/<device>/{event/<type>|status|cmd|cmd/ack}``."""

    device: str
    kind: str
    event_type: str | None = None


def parse_topic(topic: str) -> Topic:
    """Parse a camveil MQTT topic (DESIGN §4); ValueError when it is not one."""
    if not isinstance(topic, str) or not topic.startswith(TOPIC_PREFIX):
        raise ValueError(f"topic {topic!r} does not start with {TOPIC_PREFIX!r}")
    device, _, rest = topic[len(TOPIC_PREFIX) :].partition("/")
    check_kid(device)
    if rest in (KIND_STATUS, KIND_CMD, KIND_CMD_ACK):
        return Topic(device=device, kind=rest)
    kind, _, event_type = rest.partition("/")
    if kind == KIND_EVENT and _EVENT_TYPE.fullmatch(event_type):
        return Topic(device=device, kind=KIND_EVENT, event_type=event_type)
    raise ValueError(f"topic {topic!r} is not event/<type>, status, cmd or cmd/ack")


def external_aad(device: str, topic: str, seq: int) -> bytes:
    """External AAD of both COSE layers: ``cbor(["camveil/v1", device, topic, seq])``."""
    return cose.dumps([AAD_CONTEXT, device, topic, seq])


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
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _SEAL_TOKEN:
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
    if parsed.kind != KIND_CMD and sender.kid != device:
        raise ValueError(f"{parsed.kind} messages of {device!r} must be signed by that device")
    if parsed.kind == KIND_CMD and expires_at is None:
        raise ValueError("commands need expires_at")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be an int in 0..2**63-1, got {seq!r}")
    if expires_at is not None and (
        not isinstance(expires_at, int) or isinstance(expires_at, bool) or expires_at < 0
    ):
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
        data=data, topic=topic, device=device, sender_kid=sender.kid, seq=seq, _token=_SEAL_TOKEN
    )


def _encrypt(plaintext: bytes, aad: bytes, recipient: PublicIdentity) -> bytes:
    """Tagged COSE_Encrypt of ``plaintext`` with one ECDH-ES + HKDF-256 recipient."""
    ephemeral = secrets.token_bytes(cose.X25519_KEY_LEN)
    ephemeral_public = crypto_scalarmult_base(ephemeral)
    shared = crypto_scalarmult(ephemeral, bytes(recipient.encryption_key))
    cek = _derive_cek(shared, _RECIPIENT_PROTECTED)
    iv = secrets.token_bytes(cose.CHACHA20_POLY1305_IV_LEN)
    ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, cose.enc_structure(_CONTENT_PROTECTED, aad), iv, cek
    )
    recipient_entry = [
        _RECIPIENT_PROTECTED,
        {
            cose.HDR_EPHEMERAL_KEY: cose.x25519_cose_key(ephemeral_public),
            cose.HDR_KID: recipient.kid.encode(),
        },
        b"",
    ]
    return cose.dumps(
        cbor2.CBORTag(
            cose.TAG_COSE_ENCRYPT,
            [_CONTENT_PROTECTED, {cose.HDR_IV: iv}, ciphertext, [recipient_entry]],
        )
    )


def _derive_cek(shared: bytes, recipient_protected: bytes) -> bytes:
    info = cose.kdf_context(
        cose.ALG_CHACHA20_POLY1305, cose.CHACHA20_POLY1305_KEY_BITS, recipient_protected
    )
    return cose.hkdf_sha256(shared, info=info, length=cose.CHACHA20_POLY1305_KEY_BITS // 8)


# --- open --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sign1:
    protected: bytes
    payload: bytes
    signature: bytes
    kid: str
    seq: int
    exp: int | None


def open_envelope(
    data: bytes,
    *,
    topic: str,
    trusted_senders: PeerKeys,
    recipient: Identity,
    replay_guard: ReplayGuard,
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
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelopeError(f"envelope must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise MalformedEnvelopeError(f"envelope of {len(data)} bytes exceeds {max_size}")

    outer = _parse_sign1(data)
    signer = trusted_senders.require(outer.kid)
    if parsed.kind != KIND_CMD and outer.kid != parsed.device:
        raise BindingMismatchError(
            f"{parsed.kind} topic of device {parsed.device!r} signed by key {outer.kid!r}"
        )
    if parsed.kind == KIND_CMD and outer.exp is None:
        raise MalformedEnvelopeError("command without expiry")

    aad = external_aad(parsed.device, topic, outer.seq)
    try:
        signer.verify_key.verify(
            cose.sig_structure1(outer.protected, aad, outer.payload), outer.signature
        )
    except NaclBadSignatureError:
        raise BadSignatureError(
            f"signature of key {outer.kid!r} does not verify for topic {topic!r} seq {outer.seq}"
        ) from None

    if outer.exp is not None:
        now = clock()
        if now > outer.exp:
            raise ExpiredError(f"message expired at {outer.exp}, now {int(now)}")
        if parsed.kind == KIND_CMD and outer.exp > now + max_command_lifetime_s:
            raise ExpiredError(
                f"command expiry {outer.exp} is more than {max_command_lifetime_s:.0f} s ahead"
            )

    plaintext = _decrypt(outer.payload, aad, recipient)
    message = _check_plaintext(plaintext, parsed.device, topic, outer.seq, outer.exp)

    replay_guard.accept((outer.kid, parsed.device), outer.seq)
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
    outer = _parse_sign1(bytes(data))
    if outer.kid != signer.kid:
        raise UnknownKeyError(f"envelope signed by {outer.kid!r}, expected {signer.kid!r}")
    aad = external_aad(parsed.device, topic, outer.seq)
    try:
        signer.verify_key.verify(
            cose.sig_structure1(outer.protected, aad, outer.payload), outer.signature
        )
    except NaclBadSignatureError:
        raise BadSignatureError(f"stored envelope for {topic!r} does not verify") from None
    return SealedEnvelope(
        data=bytes(data),
        topic=topic,
        device=parsed.device,
        sender_kid=outer.kid,
        seq=outer.seq,
        _token=_SEAL_TOKEN,
    )


def _parse_sign1(data: bytes) -> _Sign1:
    try:
        msg = cose.strict_loads(data, allowed_tags=_SIGN1_TAGS)
    except cose.StrictCBORError as exc:
        raise MalformedEnvelopeError(f"envelope: {exc}") from None
    if not (isinstance(msg, cbor2.CBORTag) and msg.tag == cose.TAG_COSE_SIGN1):
        raise MalformedEnvelopeError("envelope is not a tagged COSE_Sign1 (tag 18)")
    body = msg.value
    if not (_is_array(body) and len(body) == 4):
        raise MalformedEnvelopeError("COSE_Sign1 is not an array of 4")
    protected, unprotected, payload, signature = body
    if not (isinstance(protected, bytes) and isinstance(payload, bytes)):
        raise MalformedEnvelopeError("COSE_Sign1 protected header or payload is not a bstr")
    if not (isinstance(unprotected, Mapping) and len(unprotected) == 0):
        raise MalformedEnvelopeError("COSE_Sign1 unprotected header must be empty")
    if not (isinstance(signature, bytes) and len(signature) == cose.ED25519_SIG_LEN):
        raise MalformedEnvelopeError("COSE_Sign1 signature is not 64 bytes")
    header = _loads_map(protected, "COSE_Sign1 protected header")
    if set(header) - _SIGN1_PROTECTED_LABELS:
        raise MalformedEnvelopeError("COSE_Sign1 protected header has unknown labels")
    if header.get(cose.HDR_ALG) != cose.ALG_EDDSA:
        raise MalformedEnvelopeError("COSE_Sign1 alg is not EdDSA (-8)")
    if header.get(cose.HDR_CONTENT_TYPE) != cose.CONTENT_FORMAT_COSE_ENCRYPT:
        raise MalformedEnvelopeError("COSE_Sign1 content type is not COSE_Encrypt (96)")
    kid_bytes = header.get(cose.HDR_KID)
    try:
        if not isinstance(kid_bytes, bytes):
            raise ValueError("kid is not a bstr")
        kid = check_kid(kid_bytes.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise MalformedEnvelopeError("COSE_Sign1 kid is missing or not a valid key id") from None
    seq = header.get(HDR_SEQ)
    if not _is_uint(seq, MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 seq header is missing or out of range")
    exp = header.get(HDR_EXP)
    if exp is not None and not _is_uint(exp, MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 exp header is out of range")
    return _Sign1(protected, payload, signature, kid, seq, exp)


def _decrypt(encrypt_bytes: bytes, aad: bytes, recipient: Identity) -> bytes:
    """Decrypt our COSE_Encrypt (already authenticated by the signature, but checked anyway)."""
    msg = _loads(encrypt_bytes, "COSE_Encrypt", allowed_tags=_ENCRYPT_TAGS)
    if not (isinstance(msg, cbor2.CBORTag) and msg.tag == cose.TAG_COSE_ENCRYPT):
        raise MalformedEnvelopeError("payload is not a tagged COSE_Encrypt (tag 96)")
    body = msg.value
    if not (_is_array(body) and len(body) == 4):
        raise MalformedEnvelopeError("COSE_Encrypt is not an array of 4")
    protected, unprotected, ciphertext, recipients = body
    if not isinstance(protected, bytes) or not isinstance(ciphertext, bytes):
        raise MalformedEnvelopeError("COSE_Encrypt protected header or ciphertext is not a bstr")
    if _loads_map(protected, "COSE_Encrypt protected header") != {
        cose.HDR_ALG: cose.ALG_CHACHA20_POLY1305
    }:
        raise MalformedEnvelopeError("COSE_Encrypt protected header is not {1: 24}")
    if not isinstance(unprotected, Mapping) or set(unprotected) != {cose.HDR_IV}:
        raise MalformedEnvelopeError("COSE_Encrypt unprotected header is not {5: iv}")
    iv = unprotected[cose.HDR_IV]
    if not (isinstance(iv, bytes) and len(iv) == cose.CHACHA20_POLY1305_IV_LEN):
        raise MalformedEnvelopeError("COSE_Encrypt iv is not 12 bytes")
    if not (_is_array(recipients) and len(recipients) == 1):
        raise MalformedEnvelopeError("COSE_Encrypt must have exactly one recipient")
    entry = recipients[0]
    if not (_is_array(entry) and len(entry) == 3):
        raise MalformedEnvelopeError("COSE_recipient is not an array of 3")
    r_protected, r_unprotected, r_ciphertext = entry
    if not isinstance(r_protected, bytes) or r_ciphertext != b"":
        raise MalformedEnvelopeError("COSE_recipient protected is not a bstr or has a key")
    if _loads_map(r_protected, "COSE_recipient protected header") != {
        cose.HDR_ALG: cose.ALG_ECDH_ES_HKDF_256
    }:
        raise MalformedEnvelopeError("COSE_recipient protected header is not {1: -25}")
    if not isinstance(r_unprotected, Mapping) or set(r_unprotected) != {
        cose.HDR_EPHEMERAL_KEY,
        cose.HDR_KID,
    }:
        raise MalformedEnvelopeError("COSE_recipient unprotected header is not {-1: key, 4: kid}")
    try:
        ephemeral_public = cose.parse_x25519_cose_key(r_unprotected[cose.HDR_EPHEMERAL_KEY])
    except ValueError as exc:
        raise MalformedEnvelopeError(f"COSE_recipient: {exc}") from None
    if r_unprotected[cose.HDR_KID] != recipient.kid.encode():
        raise UnknownKeyError("message is encrypted to a key id we do not hold")

    try:
        shared = crypto_scalarmult(bytes(recipient.encryption_key), ephemeral_public)
    except CryptoError:  # libsodium refuses low-order points (all-zero shared secret)
        raise DecryptError("ephemeral key is a low-order point") from None
    cek = _derive_cek(shared, r_protected)
    try:
        return crypto_aead_chacha20poly1305_ietf_decrypt(
            ciphertext, cose.enc_structure(protected, aad), iv, cek
        )
    except CryptoError:
        raise DecryptError(
            "authenticated decryption failed (wrong recipient key or tampered)"
        ) from None


def _check_plaintext(
    plaintext: bytes, device: str, topic: str, seq: int, exp: int | None
) -> dict[str, Any]:
    message = _loads(plaintext, "plaintext")
    if not isinstance(message, Mapping) or not all(isinstance(k, str) for k in message):
        raise MalformedEnvelopeError("plaintext is not a map with text keys")
    message = dict(message)
    if message.get("v") != ENVELOPE_VERSION:
        raise MalformedEnvelopeError(f"plaintext version is not {ENVELOPE_VERSION}")
    expected: dict[str, Any] = {"device": device, "topic": topic, "seq": seq}
    if exp is not None:
        expected["exp"] = exp
    for key, want in expected.items():
        got = message.get(key)
        if type(got) is not type(want) or got != want:
            raise BindingMismatchError(f"plaintext {key!r} does not match the envelope binding")
    if exp is None and "exp" in message:
        raise BindingMismatchError("plaintext 'exp' is not in the signed header")
    return message


def _loads(data: bytes, what: str, allowed_tags: frozenset[int] = frozenset()) -> Any:
    """Decode exactly one well-formed, tag-free (but for ``allowed_tags``) CBOR item."""
    try:
        return cose.loads(data, allowed_tags=allowed_tags, max_depth=MAX_CBOR_DEPTH)
    except cose.StrictCBORError as exc:
        raise MalformedEnvelopeError(f"{what}: {exc}") from None


def _loads_map(data: bytes, what: str) -> dict[Any, Any]:
    value = _loads(data, what)
    if not isinstance(value, Mapping):
        raise MalformedEnvelopeError(f"{what} is not a map")
    return dict(value)


def _is_array(value: Any) -> bool:
    # cbor2 >= 6 decodes arrays inside tags as tuples, older versions as lists
    return isinstance(value, list | tuple)


def _is_uint(value: object, maximum: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
