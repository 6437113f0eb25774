"""Low-level COSE building blocks (RFC 9052 / RFC 9053) on cbor2, PyNaCl and stdlib HKDF.

Only what the camveil envelope needs: the Sig_structure of a COSE_Sign1, the Enc_structure of a
COSE_Encrypt, the COSE_KDF_Context of ECDH-ES + HKDF-256, HKDF-SHA256 itself, the X25519 COSE_Key
of an ephemeral sender key, and a strict (canonical-only) CBOR decoder for untrusted bytes.

Nothing here knows about devices, topics or replay; that lives in :mod:`contract.envelope.seal`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Final

import cbor2

# --- registered COSE values (IANA "COSE Algorithms", "COSE Header Parameters", RFC 9053) -------
ALG_EDDSA: Final = -8
ALG_CHACHA20_POLY1305: Final = 24
ALG_ECDH_ES_HKDF_256: Final = -25

HDR_ALG: Final = 1
HDR_CONTENT_TYPE: Final = 3
HDR_KID: Final = 4
HDR_IV: Final = 5
HDR_EPHEMERAL_KEY: Final = -1

TAG_COSE_SIGN1: Final = 18
TAG_COSE_ENCRYPT: Final = 96
# CoAP Content-Format of 'application/cose; cose-type="cose-encrypt"' (RFC 9052 §9.4).
CONTENT_FORMAT_COSE_ENCRYPT: Final = 96

KEY_KTY: Final = 1
KEY_OKP_CRV: Final = -1
KEY_OKP_X: Final = -2
KTY_OKP: Final = 1
CRV_X25519: Final = 4

CHACHA20_POLY1305_KEY_BITS: Final = 256
CHACHA20_POLY1305_IV_LEN: Final = 12
X25519_KEY_LEN: Final = 32
ED25519_SIG_LEN: Final = 64


class StrictCBORError(ValueError):
    """Bytes are not exactly one canonically encoded CBOR data item."""


def dumps(obj: Any) -> bytes:
    """Deterministic CBOR encoding (RFC 8949 §4.2.1 core deterministic for our data model).

    Our structures only hold ints, text, bytes, None, arrays, maps with int/text keys and tags;
    for those, cbor2's canonical mode gives preferred (shortest) lengths and sorted map keys.
    """
    return cbor2.dumps(obj, canonical=True)


def check_wellformed(
    data: bytes, *, allowed_tags: frozenset[int] = frozenset(), max_depth: int = 16
) -> int:
    """Check that ``data`` is exactly one well-formed CBOR item, before any decoder sees it.

    Definite lengths only, no trailing bytes, no tags outside ``allowed_tags`` (so no semantic
    decoding of bignums, fractions, regexes, MIME, dates... of hostile input), nesting at most
    ``max_depth``. Linear in ``len(data)`` and allocates nothing but a small stack. Returns the
    argument of the top-level item (for a map: its number of entries). Raises
    :class:`StrictCBORError`.

    One pass over the item heads, written for speed (the ingest runs it on every plaintext):
    the first error met from the left is the one raised, with the same messages in the same
    order as the plain walk this replaced (kept as the oracle of
    ``tests/unit/test_envelope_fastpath.py``).
    """
    n = len(data)
    pos = 0
    left = 1  # items still to read at the current level
    stack: list[int] = []  # the same for each enclosing container (a tag counts as one)
    from_bytes = int.from_bytes
    while True:
        if not left:
            if not stack:
                break
            left = stack.pop()
            continue
        left -= 1
        if pos >= n:
            raise StrictCBORError("truncated CBOR")
        initial = data[pos]
        pos += 1
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info == 24:
            if pos >= n:
                raise StrictCBORError("truncated CBOR")
            arg = data[pos]
            pos += 1
        elif info <= 27:
            end = pos + (1 << (info - 24))
            if end > n:
                raise StrictCBORError("truncated CBOR")
            arg = from_bytes(data[pos:end], "big")
            pos = end
        else:
            raise StrictCBORError("indefinite-length or reserved CBOR encoding")
        major = initial >> 5
        if major < 2:
            continue
        if major < 4:
            if arg > n - pos:
                raise StrictCBORError("truncated CBOR string")
            pos += arg
        elif major < 7:
            if major == 6 and arg not in allowed_tags:
                raise StrictCBORError(f"CBOR tag {arg} is not allowed here")
            if len(stack) >= max_depth:
                raise StrictCBORError("CBOR nested too deeply")
            stack.append(left)
            left = arg * 2 if major == 5 else 1 if major == 6 else arg
        elif info == 24 and arg < 32:
            raise StrictCBORError("badly encoded CBOR simple value")
    if pos != n:
        raise StrictCBORError("trailing bytes after the CBOR item")
    info = data[0] & 0x1F  # the loop read at least one item: the top-level head is valid
    return info if info < 24 else from_bytes(data[1 : 1 + (1 << (info - 24))], "big")


def loads(data: bytes, *, allowed_tags: frozenset[int] = frozenset(), max_depth: int = 16) -> Any:
    """Decode exactly one well-formed CBOR item (see :func:`check_wellformed`).

    Maps must not repeat a key (RFC 9052 §3: labels are unique); this is checked for a map at
    the top level, which is where COSE headers live. Every failure is :class:`StrictCBORError`.
    """
    count = check_wellformed(data, allowed_tags=allowed_tags, max_depth=max_depth)
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input; all mean "malformed"
        raise StrictCBORError(f"not decodable CBOR ({type(exc).__name__})") from None
    if isinstance(value, Mapping) and len(value) != count:
        raise StrictCBORError("CBOR map with duplicate keys")
    return value


def strict_loads(data: bytes, *, allowed_tags: frozenset[int] = frozenset()) -> Any:
    """Like :func:`loads`, and ``data`` must be the deterministic encoding of its value.

    Re-encoding and comparing rejects non-shortest integer or length encodings, duplicate and
    unsorted map keys: any byte string we accept is the one and only encoding of its value, so
    a changed byte can never decode to the same message.
    """
    value = loads(data, allowed_tags=allowed_tags)
    try:
        again = dumps(value)
    except Exception as exc:  # e.g. an unencodable decoded value
        raise StrictCBORError(f"not re-encodable CBOR ({type(exc).__name__})") from None
    if again != data:
        raise StrictCBORError("not the deterministic encoding of a single CBOR item")
    return value


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` (empty = HashLen zero bytes), then expand."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length must be in 1..8160 bytes")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        okm += block
        counter += 1
    return okm[:length]


def kdf_context(algorithm_id: int, key_bits: int, recipient_protected: bytes) -> bytes:
    """COSE_KDF_Context (RFC 9053 §5.2) with nil PartyU/PartyV identities, nonces and others.

    ``[AlgorithmID, [nil, nil, nil], [nil, nil, nil], [keyDataLength, protected]]`` where
    ``protected`` is the recipient's serialized protected header (a bstr, as sent).
    """
    party = [None, None, None]
    return dumps([algorithm_id, party, list(party), [key_bits, recipient_protected]])


# The structures below are built on every message: written out by hand (an array head, a fixed
# text, then bstr items), byte for byte what dumps() makes of them (tests/unit/
# test_envelope_fastpath.py compares them), without the cost of cbor2's canonical encoder.
_SIG_STRUCTURE1_HEAD: Final = b"\x84\x6aSignature1"
_ENC_STRUCTURE_HEAD: Final = b"\x83\x67Encrypt"


def head(major: int, n: int) -> bytes:
    """The shortest head of a CBOR item of major type ``major`` with argument ``n`` (0..2**64-1),
    as the deterministic encoding has it (RFC 8949 §4.2.1)."""
    top = major << 5
    if n < 24:
        return bytes((top | n,))
    if n < 0x100:
        return bytes((top | 24, n))
    if n < 0x10000:
        return bytes((top | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((top | 26,)) + n.to_bytes(4, "big")
    return bytes((top | 27,)) + n.to_bytes(8, "big")


def head_size(n: int) -> int:
    """Bytes in the shortest head of an item whose argument is ``n`` (0..2**64-1)."""
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


def read_head(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """Position after, and argument of, a definite-length head of ``major`` at ``pos`` (any
    length of argument, as the plain decoder reads it), or None if there is none."""
    if pos >= len(data) or data[pos] >> 5 != major:
        return None
    info = data[pos] & 0x1F
    if info < 24:
        return pos + 1, info
    if info > 27:
        return None
    end = pos + 1 + (1 << (info - 24))
    if end > len(data):
        return None
    return end, int.from_bytes(data[pos + 1 : end], "big")


def bstr(data: bytes) -> bytes:
    """Deterministic encoding of the byte string ``data``."""
    return head(2, len(data)) + data


def sig_structure1(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """Sig_structure for a COSE_Sign1 (RFC 9052 §4.4)."""
    return b"".join(
        (
            _SIG_STRUCTURE1_HEAD,
            head(2, len(protected)),
            protected,
            head(2, len(external_aad)),
            external_aad,
            head(2, len(payload)),
            payload,
        )
    )


def enc_structure(protected: bytes, external_aad: bytes) -> bytes:
    """Enc_structure for the content layer of a COSE_Encrypt (RFC 9052 §5.3)."""
    return b"".join((_ENC_STRUCTURE_HEAD, bstr(protected), bstr(external_aad)))


def x25519_cose_key(public: bytes) -> dict[int, Any]:
    """COSE_Key (RFC 9053 §7.2) of an X25519 public key: ``{1: 1, -1: 4, -2: x}``."""
    return {KEY_KTY: KTY_OKP, KEY_OKP_CRV: CRV_X25519, KEY_OKP_X: public}


def parse_x25519_cose_key(key: object) -> bytes:
    """Return the 32-byte X25519 public key of a COSE_Key; ValueError if it is anything else."""
    if not isinstance(key, Mapping):
        raise ValueError("ephemeral key is not a COSE_Key map")
    if key.get(KEY_KTY) != KTY_OKP or key.get(KEY_OKP_CRV) != CRV_X25519:
        raise ValueError("ephemeral key is not an OKP X25519 key")
    x = key.get(KEY_OKP_X)
    if not isinstance(x, bytes) or len(x) != X25519_KEY_LEN:
        raise ValueError("ephemeral key x is not 32 bytes")
    if set(key) - {KEY_KTY, KEY_OKP_CRV, KEY_OKP_X}:
        raise ValueError("ephemeral key carries unexpected parameters")
    return x
