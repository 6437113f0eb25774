"""Forging with the right keys: COSE_Sign1 signed by a given key over whatever it is given
(:func:`sign1`, :func:`protected`), and :class:`Fuzzer`, the state the mutations share (the
parties, the rng, recent originals) with helpers that sign, encrypt and bind as the original's
sender would. Used by :mod:`tools.fuzz.forged`; the blind mutations need none of it but the rng.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cbor2

from contract.envelope import cose
from contract.envelope.keys import Identity
from contract.envelope.seal import _encrypt
from contract.envelope.wire import HDR_EXP, HDR_SEQ, external_aad
from tools.fuzz.parties import Original, Parties


def protected(kid: str, seq: int, exp: int | None) -> dict[int, Any]:
    header: dict[int, Any] = {
        cose.HDR_ALG: cose.ALG_EDDSA,
        cose.HDR_CONTENT_TYPE: cose.CONTENT_FORMAT_COSE_ENCRYPT,
        cose.HDR_KID: kid.encode(),
        HDR_SEQ: seq,
    }
    if exp is not None:
        header[HDR_EXP] = exp
    return header


def sign1(
    signer: Identity,
    protected: dict[int, Any] | bytes,
    payload: bytes,
    aad: bytes,
    *,
    unprotected: dict[int, Any] | None = None,
    tag: int | None = cose.TAG_COSE_SIGN1,
    extra: tuple[Any, ...] = (),
) -> bytes:
    """A COSE_Sign1 correctly signed by ``signer`` over whatever it is given."""
    pb = protected if isinstance(protected, bytes) else cose.dumps(protected)
    signature = signer.signing_key.sign(cose.sig_structure1(pb, aad, payload)).signature
    body = [pb, unprotected or {}, payload, signature, *extra]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body, canonical=True)


Mutator = Callable[["Fuzzer", Original], tuple[str, bytes]]
"""A mutation: ``(topic, bytes)`` made from an original."""


class Fuzzer:
    """What the mutations share: the parties, the rng and a pool of recent originals (for
    splices and replays), and how the original's sender would sign, encrypt and bind."""

    def __init__(self, parties: Parties, rng: random.Random) -> None:
        self.p = parties
        self.rng = rng
        self.pool: list[Original] = []

    def signer_of(self, o: Original) -> Identity:
        if o.target == "receipt":
            return self.p.backend
        return self.p.device if o.target == "event" else self.p.operator

    def recipient_of(self, o: Original) -> Identity:
        return self.p.backend if o.target == "event" else self.p.device

    def aad(self, o: Original, seq: int | None = None) -> bytes:
        env = o.envelope
        return external_aad(env.device, env.topic, env.seq if seq is None else seq)

    def resign(self, o: Original, payload: bytes, **kwargs: Any) -> tuple[str, bytes]:
        """The original's header and seq, signed by the right key, around ``payload``."""
        env = o.envelope
        header = protected(env.sender_kid, env.seq, o.exp)
        return env.topic, sign1(self.signer_of(o), header, payload, self.aad(o), **kwargs)

    def encrypt(self, o: Original, plaintext: bytes, seq: int | None = None) -> bytes:
        return _encrypt(plaintext, self.aad(o, seq), self.recipient_of(o).public())

    def bound(self, o: Original) -> dict[str, Any]:
        env = o.envelope
        m = {**o.plaintext, "v": 1, "device": env.device, "topic": env.topic, "seq": env.seq}
        if o.exp is not None:
            m["exp"] = o.exp
        return m
