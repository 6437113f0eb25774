"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999): remove every 0x00 from a payload.

The encoded form contains no zero byte, so 0x00 can delimit frames on a byte stream and a receiver
resynchronises at the next 0x00 after any corruption. Overhead: one byte per 254 bytes, plus one.

We keep our own ~30 lines rather than depend on the ``cobs`` package: the algorithm is small and
fixed, a property test checks it, and one fewer native wheel has to be built for the units.
The decoder accepts both spellings of a trailing 254-byte run (with or without a final 0x01 block).
"""

from __future__ import annotations

from typing import Final

MAX_RUN: Final = 254


class CobsDecodeError(ValueError):
    """The input is not a valid COBS encoding (contains 0x00 or a block runs past the end)."""


def encode(data: bytes) -> bytes:
    """COBS-encode ``data``; the result contains no 0x00 byte and is at most len/254 + 1 longer."""
    out = bytearray()
    for segment in bytes(data).split(b"\x00"):
        while len(segment) >= MAX_RUN:
            out.append(0xFF)
            out += segment[:MAX_RUN]
            segment = segment[MAX_RUN:]
        out.append(len(segment) + 1)
        out += segment
    return bytes(out)


def decode(encoded: bytes) -> bytes:
    """Invert :func:`encode`; :class:`CobsDecodeError` if ``encoded`` is not COBS."""
    out = bytearray()
    i, n = 0, len(encoded)
    while i < n:
        code = encoded[i]
        end = i + code
        if code == 0 or end > n:
            raise CobsDecodeError(f"bad COBS block code {code} at offset {i} of {n}")
        block = encoded[i + 1 : end]
        if 0 in block:
            raise CobsDecodeError("zero byte inside a COBS block")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
