"""Low-level COSE building blocks (RFC 9052 / RFC 9053) on cbor2, PyNaCl and stdlib HKDF.

Only what the camveil envelope needs: the Sig_structure of a COSE_Sign1, the Enc_structure of a
COSE_Encrypt, the COSE_KDF_Context of ECDH-ES + HKDF-256, HKDF-SHA256 itself, the X25519 COSE_Key
of an ephemeral sender key, and a strict (canonical-only) CBOR decoder for untrusted bytes.

Nothing here knows about devices, topics or replay; that lives in :mod:`contract.envelope.seal`.
"""

from __future__ import annotations

import hashlib
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
    """
    n = len(data)
    pos = 0
    top: int | None = None
    todo = [1]  # items still to read in each open container
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        todo[-1] -= 1
        if pos >= n:
            raise StrictCBORError("truncated CBOR")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > n:
                raise StrictCBORError("truncated CBOR")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            raise StrictCBORError("indefinite-length or reserved CBOR encoding")
        if top is None:
            top = arg
        if major in (2, 3):
            if arg > n - pos:
                raise StrictCBORError("truncated CBOR string")
            pos += arg
        elif major in (4, 5, 6):
            if major == 6 and arg not in allowed_tags:
                raise StrictCBORError(f"CBOR tag {arg} is not allowed here")
            if len(todo) > max_depth:
                raise StrictCBORError("CBOR nested too deeply")
            todo.append(arg * 2 if major == 5 else 1 if major == 6 else arg)
        elif major == 7 and info == 24 and arg < 32:
            raise StrictCBORError("badly encoded CBOR simple value")
    if pos != n:
        raise StrictCBORError("trailing bytes after the CBOR item")
    if top is None:  # unreachable: the loop reads at least one item
        raise StrictCBORError("empty CBOR")
    return top


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
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
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


def sig_structure1(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """Sig_structure for a COSE_Sign1 (RFC 9052 §4.4)."""
    return dumps(["Signature1", protected, external_aad, payload])


def enc_structure(protected: bytes, external_aad: bytes) -> bytes:
    """Enc_structure for the content layer of a COSE_Encrypt (RFC 9052 §5.3)."""
    return dumps(["Encrypt", protected, external_aad])


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
