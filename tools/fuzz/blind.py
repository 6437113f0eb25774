"""Blind mutations: the envelope's bytes truncated, bit-flipped, edited, spliced with another,
or replaced by random CBOR or random bytes. No key is involved: these test the parsers in front
of every signature check.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2

from tools.fuzz.forge import Fuzzer
from tools.fuzz.parties import Original


def random_cbor(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return rng.randint(-(2**64) + 1, 2**64 - 1)
    if choice == 1:
        return rng.randbytes(rng.randrange(80))
    if choice == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if choice == 3:
        return rng.choice([None, True, False, 1.5, float("nan"), -0.0])
    if choice == 4:
        return rng.randint(-30, 30)
    if choice == 5:
        return cbor2.CBORSimpleValue(rng.choice([0, 19, 23, 32, 255]))
    if choice == 6:
        return [random_cbor(rng, depth + 1) for _ in range(rng.randrange(6))]
    if choice == 7:
        return {
            rng.randint(-70000, 10): random_cbor(rng, depth + 1) for _ in range(rng.randrange(5))
        }
    return cbor2.CBORTag(rng.choice([18, 96, 98, 1, 24, 55799]), random_cbor(rng, depth + 1))


def flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    buf = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(buf) * 8)
        buf[i // 8] ^= 1 << (i % 8)
    return bytes(buf)


def m_truncate(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    data = o.envelope.data
    return o.envelope.topic, data[: f.rng.randrange(len(data))]


def m_bitflip(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    return o.envelope.topic, flip(o.envelope.data, f.rng, f.rng.choice([1, 1, 2, 3, 8]))


def m_bytes(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    buf = bytearray(o.envelope.data)
    for _ in range(f.rng.randint(1, 4)):
        i = f.rng.randrange(len(buf))
        op = f.rng.randrange(4)
        if op == 0:
            buf[i] = f.rng.randrange(256)
        elif op == 1:
            buf.insert(i, f.rng.randrange(256))
        elif op == 2 and len(buf) > 1:
            del buf[i]
        else:
            buf[i:i] = buf[i : i + f.rng.randint(1, 16)]
    return o.envelope.topic, bytes(buf)


def m_splice(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    other = f.rng.choice(f.pool or [o]).envelope.data
    a, b = o.envelope.data, other
    cut_a, cut_b = f.rng.randrange(len(a) + 1), f.rng.randrange(len(b) + 1)
    joined = a[:cut_a] + b[cut_b:] if f.rng.random() < 0.8 else a + b
    return o.envelope.topic, joined


def m_random_cbor(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    rng = f.rng
    if rng.random() < 0.5:
        value: Any = random_cbor(rng)
    else:  # the right shape, random contents
        value = cbor2.CBORTag(18, [random_cbor(rng) for _ in range(rng.choice([3, 4, 4, 5]))])
    try:
        data = cbor2.dumps(value)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        data = rng.randbytes(rng.randrange(200))
    return o.envelope.topic, data


def m_random_bytes(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    rng = f.rng
    if rng.random() < 0.01:
        return o.envelope.topic, bytes([0xD2]) + bytes(4 * 1024 * 1024)  # over the size limit
    return o.envelope.topic, rng.randbytes(rng.randrange(300))
