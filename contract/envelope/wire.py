"""What a camveil envelope looks like on the wire: external AAD and strict parsers.

The parsers only check shape (docs/PROTOCOL.md, "Envelope"); keys, signatures and decryption
are :mod:`contract.envelope.seal`'s business. Every failure is a
:class:`~contract.errors.MalformedEnvelopeError` (or, for the plaintext binding,
:class:`~contract.errors.BindingMismatchError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import cbor2

from contract.envelope import cose
from contract.errors import BindingMismatchError, MalformedEnvelopeError
from contract.ids import check_kid
from contract.topics import ROOT

ENVELOPE_VERSION: Final = 1
AAD_CONTEXT: Final = ROOT
# Private-use COSE header labels (RFC 9052 §11.1: integers below -65536), in the Sign1 protected
# header, so that seq and expiry are readable (and signed) before anything is decrypted.
HDR_SEQ: Final = -65537
HDR_EXP: Final = -65538
MAX_SEQ: Final = 2**63 - 1
MAX_CBOR_DEPTH: Final = 16

# --- sizes: every bound the pre-check (check_sign1_frame) applies before any CBOR decoding
MAX_SNAPSHOT_BYTES: Final = 4 * 1024 * 1024 - 4096
"""The largest snapshot JPEG a unit may send: the ceiling of ``[events] snapshot_max_bytes``
(agent.config), which caps the JPEG the snapshot builder (agent.events) makes."""
MAX_PLAINTEXT_BYTES: Final = MAX_SNAPSHOT_BYTES + 4096
"""A snapshot event's plaintext: the JPEG plus at most 4 KiB of header and body fields."""
MAX_PROTECTED_BYTES: Final = 128
"""Our Sign1 protected header: alg, content type, kid (at most 64 bytes), seq and exp; 105
bytes at most, so its bstr length always fits one byte."""
ENVELOPE_OVERHEAD: Final = 512
"""Sign1 framing (tag, array, protected header, empty map, bstr head, 66-byte signature: at
most 204 bytes) plus COSE_Encrypt framing (headers, iv, recipient with ephemeral key and
kid, 16-byte tag: at most 230 bytes), rounded up."""
MAX_ENVELOPE_BYTES: Final = MAX_PLAINTEXT_BYTES + ENVELOPE_OVERHEAD
MAX_COMMAND_BYTES: Final = 64 * 1024
"""A command envelope (set_config carries a few settings): everything above is refused."""
_SIGNATURE_TAIL: Final = b"\x58\x40"  # bstr of 64 bytes: the Ed25519 signature
_SIGN1_HEAD: Final = b"\xd2\x84"  # tag 18, array of 4
# Plaintext keys that seal() writes itself and open_envelope() checks against the headers.
BOUND_KEYS: Final = frozenset({"v", "device", "topic", "seq", "exp"})

CONTENT_PROTECTED: Final = cose.dumps({cose.HDR_ALG: cose.ALG_CHACHA20_POLY1305})
RECIPIENT_PROTECTED: Final = cose.dumps({cose.HDR_ALG: cose.ALG_ECDH_ES_HKDF_256})

_SIGN1_LABELS: Final = frozenset(
    {cose.HDR_ALG, cose.HDR_CONTENT_TYPE, cose.HDR_KID, HDR_SEQ, HDR_EXP}
)
_SIGN1_TAGS: Final = frozenset({cose.TAG_COSE_SIGN1})
_ENCRYPT_TAGS: Final = frozenset({cose.TAG_COSE_ENCRYPT})
_AAD_HEAD: Final = b"\x84" + cose.dumps(AAD_CONTEXT)


# --- AAD (the topic scheme and its parser live in contract.topics) ---------------------------


def external_aad(device: str, topic: str, seq: int) -> bytes:
    """External AAD of both COSE layers: ``cbor(["camveil/v1", device, topic, seq])``."""
    if type(device) is str and type(topic) is str and type(seq) is int and 0 <= seq <= MAX_SEQ:
        try:  # by hand, byte for byte what cose.dumps makes of it (and 5x faster)
            d, t = device.encode(), topic.encode()
        except UnicodeEncodeError:  # a lone surrogate: let cbor2 say what it says about it
            pass
        else:
            parts = (_AAD_HEAD, cose.head(3, len(d)), d, cose.head(3, len(t)), t, cose.head(0, seq))
            return b"".join(parts)
    return cose.dumps([AAD_CONTEXT, device, topic, seq])


# --- COSE_Sign1 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sign1:
    """The parts of our COSE_Sign1, with the protected header already interpreted."""

    protected: bytes
    payload: bytes
    signature: bytes
    kid: str
    seq: int
    exp: int | None


def check_sign1_frame(data: bytes, max_size: int = MAX_ENVELOPE_BYTES) -> None:
    """Pre-check, in constant time and before any decoding, that ``data`` is framed like our
    COSE_Sign1: at most ``max_size`` bytes, ``d2 84`` (tag 18, array of 4), a bstr protected
    header of at most :data:`MAX_PROTECTED_BYTES`, ``a0`` (empty unprotected map), one bstr
    payload that runs exactly up to the last 66 bytes, which are ``58 40`` + 64 signature bytes.

    So a hostile message costs the same handful of byte reads whatever it holds (a 4 MiB CBOR
    array used to cost the listener over a second of CPU in the well-formedness walk); what
    passes has four items at the top, and the payload is only decoded after the signature
    verified. Raises :class:`~contract.errors.MalformedEnvelopeError`.
    """
    _sign1_frame(data, max_size)


def _sign1_frame(data: bytes, max_size: int) -> tuple[int, int, int]:
    """:func:`check_sign1_frame`, returning where the protected header starts and ends and
    where the payload starts (it ends 66 bytes before the end)."""
    n = len(data)
    if n > max_size:
        raise MalformedEnvelopeError(f"envelope of {n} bytes exceeds {max_size}")
    if n < 8 + len(_SIGNATURE_TAIL) + 64 or data[:2] != _SIGN1_HEAD:
        raise MalformedEnvelopeError("envelope does not start like a COSE_Sign1 (d2 84)")
    protected_at, protected_len = _bstr_head(data, 2)
    if protected_len is None or not 0 < protected_len <= MAX_PROTECTED_BYTES:
        raise MalformedEnvelopeError(
            f"COSE_Sign1 protected header is not a bstr of 1..{MAX_PROTECTED_BYTES} bytes"
        )
    pos = protected_at + protected_len
    if pos >= n or data[pos] != 0xA0:
        raise MalformedEnvelopeError("COSE_Sign1 unprotected header is not an empty map")
    payload_at, payload_len = _bstr_head(data, pos + 1)
    tail = n - len(_SIGNATURE_TAIL) - 64
    if (
        payload_len is None
        or payload_at + payload_len != tail
        or data[tail : tail + 2] != _SIGNATURE_TAIL
    ):
        raise MalformedEnvelopeError(
            "COSE_Sign1 is not a bstr payload followed by exactly a 64-byte signature"
        )
    return protected_at, pos, payload_at


def _bstr_head(data: bytes, pos: int) -> tuple[int, int | None]:
    """Position after the head of a definite bstr at ``pos`` and its length (None: no bstr)."""
    if pos >= len(data) or data[pos] >> 5 != 2:
        return pos, None
    info = data[pos] & 0x1F
    if info < 24:
        return pos + 1, info
    if info > 26:  # 8-byte lengths (and indefinite ones) never frame a message of ours
        return pos, None
    size = 1 << (info - 24)
    end = pos + 1 + size
    if end > len(data):
        return pos, None
    return end, int.from_bytes(data[pos + 1 : end], "big")


def parse_sign1(data: bytes, max_size: int = MAX_ENVELOPE_BYTES) -> Sign1:
    """Parse the outer layer. ``data`` must be the deterministic encoding of a tagged COSE_Sign1
    with an empty unprotected header; it is pre-checked (:func:`check_sign1_frame`) before
    anything is decoded, and nothing but tag 18 reaches the CBOR decoder.

    What passes the pre-check is a tag 18 around an array of a bstr, an empty map, a bstr and a
    64-byte bstr, up to the last byte. All it may still lack to be the deterministic encoding is
    the shortest form of its two bstr heads, checked here; its items are then slices of ``data``
    (no decoding and re-encoding of the whole envelope: ``cose.strict_loads`` gives the same
    verdicts, see tests/unit/test_envelope_fastpath.py).
    """
    if isinstance(data, bytearray | memoryview):  # slices must be bytes, as decoded ones are
        data = bytes(data)
    protected_at, protected_end, payload_at = _sign1_frame(data, max_size)
    payload_end = len(data) - len(_SIGNATURE_TAIL) - cose.ED25519_SIG_LEN
    if protected_at - 2 != cose.head_size(protected_end - protected_at) or payload_at - (
        protected_end + 1
    ) != cose.head_size(payload_end - payload_at):
        raise MalformedEnvelopeError(
            "envelope: not the deterministic encoding of a single CBOR item"
        )
    protected = data[protected_at:protected_end]
    payload = data[payload_at:payload_end]
    signature = data[-cose.ED25519_SIG_LEN :]
    header = _sign1_header(protected)
    if header is None:
        header = _header(protected, "COSE_Sign1 protected header")
    if set(header) - _SIGN1_LABELS:
        raise MalformedEnvelopeError("COSE_Sign1 protected header has unknown labels")
    if not _is_int(header.get(cose.HDR_ALG), cose.ALG_EDDSA):
        raise MalformedEnvelopeError("COSE_Sign1 alg is not EdDSA (-8)")
    if not _is_int(header.get(cose.HDR_CONTENT_TYPE), cose.CONTENT_FORMAT_COSE_ENCRYPT):
        raise MalformedEnvelopeError("COSE_Sign1 content type is not COSE_Encrypt (96)")
    kid_bytes = header.get(cose.HDR_KID)
    try:
        if not isinstance(kid_bytes, bytes):
            raise ValueError("kid is not a bstr")
        kid = check_kid(kid_bytes.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise MalformedEnvelopeError("COSE_Sign1 kid is missing or not a valid key id") from None
    seq = header.get(HDR_SEQ)
    if not is_uint(seq, MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 seq header is missing or out of range")
    exp = header.get(HDR_EXP)
    if exp is not None and not is_uint(exp, MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 exp header is out of range")
    return Sign1(protected, payload, signature, kid, seq, exp)


# The fast paths below read the exact bytes seal() writes (a template: fixed bytes around a few
# variable items) and return exactly what the general parser returns for them; for anything else
# they return None and the general parser decides (tests/unit/test_envelope_fastpath.py holds
# them to that on random and mutated inputs). They accept nothing the general parser refuses.

_SIGN1_HEADER_FIXED: Final = b"\x01\x27\x03\x18\x60\x04"  # 1: -8, 3: 96, then label 4 (kid)
_HDR_SEQ_LABEL: Final = cose.dumps(HDR_SEQ)
_HDR_EXP_LABEL: Final = cose.dumps(HDR_EXP)


def _sign1_header(protected: bytes) -> dict[int, Any] | None:
    """``{1: -8, 3: 96, 4: kid, -65537: seq[, -65538: exp]}`` as seal() encodes it, or None."""
    if type(protected) is not bytes or len(protected) < 8 or protected[0] not in (0xA4, 0xA5):
        return None
    if protected[1:7] != _SIGN1_HEADER_FIXED:
        return None
    kid_head = cose.read_head(protected, 7, 2)
    if kid_head is None:
        return None
    pos, kid_len = kid_head
    end = pos + kid_len
    if end > len(protected) or protected[end : end + 5] != _HDR_SEQ_LABEL:
        return None
    header: dict[int, Any] = {
        cose.HDR_ALG: cose.ALG_EDDSA,
        cose.HDR_CONTENT_TYPE: cose.CONTENT_FORMAT_COSE_ENCRYPT,
        cose.HDR_KID: protected[pos:end],
    }
    seq = cose.read_head(protected, end + 5, 0)
    if seq is None:
        return None
    pos, header[HDR_SEQ] = seq
    if protected[0] == 0xA5:
        if protected[pos : pos + 5] != _HDR_EXP_LABEL:
            return None
        exp = cose.read_head(protected, pos + 5, 0)
        if exp is None:
            return None
        pos, header[HDR_EXP] = exp
    return header if pos == len(protected) else None


# --- COSE_Encrypt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encrypt:
    """The parts of our COSE_Encrypt needed to decrypt it."""

    protected: bytes
    iv: bytes
    ciphertext: bytes
    recipient_protected: bytes
    recipient_kid: bytes
    ephemeral_public: bytes


def parse_encrypt(data: bytes) -> Encrypt:
    """Parse the inner layer: a tagged COSE_Encrypt with exactly one ECDH-ES recipient."""
    fast = _encrypt_as_sealed(data)
    return fast if fast is not None else _parse_encrypt(data)


def _parse_encrypt(data: bytes) -> Encrypt:
    """:func:`parse_encrypt` of any encoding: decoded, then checked item by item."""
    msg = loads(data, "COSE_Encrypt", allowed_tags=_ENCRYPT_TAGS)
    if not (isinstance(msg, cbor2.CBORTag) and msg.tag == cose.TAG_COSE_ENCRYPT):
        raise MalformedEnvelopeError("payload is not a tagged COSE_Encrypt (tag 96)")
    body = msg.value
    if not (_is_array(body) and len(body) == 4):
        raise MalformedEnvelopeError("COSE_Encrypt is not an array of 4")
    protected, unprotected, ciphertext, recipients = body
    if not isinstance(protected, bytes) or not isinstance(ciphertext, bytes):
        raise MalformedEnvelopeError("COSE_Encrypt protected header or ciphertext is not a bstr")
    header = _header(protected, "COSE_Encrypt protected header")
    if set(header) != {cose.HDR_ALG} or not _is_int(
        header[cose.HDR_ALG], cose.ALG_CHACHA20_POLY1305
    ):
        raise MalformedEnvelopeError("COSE_Encrypt protected header is not {1: 24}")
    if not (isinstance(unprotected, Mapping) and _int_keys(unprotected) == {cose.HDR_IV}):
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
    r_header = _header(r_protected, "COSE_recipient protected header")
    if set(r_header) != {cose.HDR_ALG} or not _is_int(
        r_header[cose.HDR_ALG], cose.ALG_ECDH_ES_HKDF_256
    ):
        raise MalformedEnvelopeError("COSE_recipient protected header is not {1: -25}")
    if not (
        isinstance(r_unprotected, Mapping)
        and _int_keys(r_unprotected) == {cose.HDR_EPHEMERAL_KEY, cose.HDR_KID}
    ):
        raise MalformedEnvelopeError("COSE_recipient unprotected header is not {-1: key, 4: kid}")
    recipient_kid = r_unprotected[cose.HDR_KID]
    if not isinstance(recipient_kid, bytes):
        raise MalformedEnvelopeError("COSE_recipient kid is not a bstr")
    try:
        ephemeral_public = cose.parse_x25519_cose_key(r_unprotected[cose.HDR_EPHEMERAL_KEY])
    except ValueError as exc:
        raise MalformedEnvelopeError(f"COSE_recipient: {exc}") from None
    return Encrypt(protected, iv, ciphertext, r_protected, recipient_kid, ephemeral_public)


_ENCRYPT_START: Final = (
    b"\xd8\x60\x84"  # tag 96, array of 4
    + cose.dumps(CONTENT_PROTECTED)  # bstr {1: 24}
    + b"\xa1\x05\x4c"  # {5: 12-byte bstr (the iv)}
)
_RECIPIENT_START: Final = (
    b"\x81\x83"  # one recipient, an array of 3
    + cose.dumps(RECIPIENT_PROTECTED)  # bstr {1: -25}
    + b"\xa2\x04"  # {4: kid, ...
)
_EPHEMERAL_KEY_START: Final = b"\x20\xa3\x01\x01\x20\x04\x21\x58\x20"  # -1: {1: 1, -1: 4, -2: x
_EMPTY_BSTR: Final = b"\x40"


def _encrypt_as_sealed(data: bytes) -> Encrypt | None:
    """Our COSE_Encrypt exactly as seal() encodes it, or None."""
    if type(data) is not bytes or not data.startswith(_ENCRYPT_START):
        return None
    pos = len(_ENCRYPT_START)
    iv = data[pos : pos + cose.CHACHA20_POLY1305_IV_LEN]
    ciphertext_head = cose.read_head(data, pos + cose.CHACHA20_POLY1305_IV_LEN, 2)
    if ciphertext_head is None:
        return None
    pos, size = ciphertext_head
    ciphertext = data[pos : pos + size]
    pos += size
    if data[pos : pos + len(_RECIPIENT_START)] != _RECIPIENT_START:
        return None
    kid_head = cose.read_head(data, pos + len(_RECIPIENT_START), 2)
    if kid_head is None:
        return None
    pos, size = kid_head
    kid = data[pos : pos + size]
    pos += size
    if data[pos : pos + len(_EPHEMERAL_KEY_START)] != _EPHEMERAL_KEY_START:
        return None
    pos += len(_EPHEMERAL_KEY_START)
    ephemeral = data[pos : pos + cose.X25519_KEY_LEN]
    pos += cose.X25519_KEY_LEN
    if data[pos:] != _EMPTY_BSTR or len(ephemeral) != cose.X25519_KEY_LEN:
        return None
    return Encrypt(CONTENT_PROTECTED, iv, ciphertext, RECIPIENT_PROTECTED, kid, ephemeral)


# --- plaintext ---------------------------------------------------------------------------------


def check_plaintext(
    plaintext: bytes, device: str, topic: str, seq: int, exp: int | None
) -> dict[str, Any]:
    """Decode the plaintext map and check that it repeats the authenticated binding."""
    message = loads(plaintext, "plaintext")
    if not isinstance(message, Mapping) or not all(type(k) is str for k in message):
        raise MalformedEnvelopeError("plaintext is not a map with text keys")
    message = dict(message)
    if not _is_int(message.get("v"), ENVELOPE_VERSION):
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


# --- helpers -----------------------------------------------------------------------------------


def loads(data: bytes, what: str, allowed_tags: frozenset[int] = frozenset()) -> Any:
    """Decode exactly one well-formed CBOR item, tag-free but for ``allowed_tags``."""
    try:
        return cose.loads(data, allowed_tags=allowed_tags, max_depth=MAX_CBOR_DEPTH)
    except cose.StrictCBORError as exc:
        raise MalformedEnvelopeError(f"{what}: {exc}") from None


def is_uint(value: object, maximum: int) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= maximum


def _header(data: bytes, what: str) -> dict[int, Any]:
    """A COSE header map: integer labels only (no text labels in our format), unique."""
    value = loads(data, what)
    if not isinstance(value, Mapping):
        raise MalformedEnvelopeError(f"{what} is not a map")
    _int_keys(value, what)
    return dict(value)


def _int_keys(value: Mapping[Any, Any], what: str = "header") -> set[int]:
    keys = set(value)
    if not all(type(k) is int for k in keys):
        raise MalformedEnvelopeError(f"{what} has a label that is not an integer")
    return keys


def _is_int(value: object, want: int) -> bool:
    return type(value) is int and value == want


def _is_array(value: object) -> bool:
    # cbor2 >= 6 decodes arrays inside tags as tuples, older versions as lists
    return isinstance(value, list | tuple)
