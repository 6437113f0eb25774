"""The fast paths of the envelope parsers (issue 9: ingest throughput) give the same verdicts as
the strict code they stand in for, on random and mutated inputs.

The oracles below are the code as it was before the fast paths, verbatim: the item-by-item CBOR
walk, ``strict_loads`` (decode, re-encode canonically, compare) under ``parse_sign1``, the
general ``COSE_Encrypt`` parser, and ``cose.dumps`` for the structures now written by hand.
"Same verdict" means the same value, or the same exception class with the same message.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from unittest import mock

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contract import errors
from contract.envelope import Identity, PeerKeys, ReplayGuard, cose, open_envelope, seal, wire
from contract.errors import EnvelopeError, MalformedEnvelopeError
from contract.ids import check_kid
from contract.topics import event_topic

DEVICE = "cv-0042"
TOPIC = event_topic(DEVICE, "presence")
NOW = 1_764_115_200
DEV = Identity.generate(DEVICE)
BACKEND = Identity.generate("backend-1")
TRUSTED = PeerKeys([DEV.public()])
seal_module = importlib.import_module("contract.envelope.seal")
EVENT = {"boot": "b1", "ts": 1_764_115_200_000, "type": "presence", "body": {"n": [1, 2.5, "x"]}}

CHECKS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


# --- the oracles: the strict code before the fast paths, verbatim ------------------------------


def old_check_wellformed(
    data: bytes, *, allowed_tags: frozenset[int] = frozenset(), max_depth: int = 16
) -> int:
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
            raise cose.StrictCBORError("truncated CBOR")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > n:
                raise cose.StrictCBORError("truncated CBOR")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            raise cose.StrictCBORError("indefinite-length or reserved CBOR encoding")
        if top is None:
            top = arg
        if major in (2, 3):
            if arg > n - pos:
                raise cose.StrictCBORError("truncated CBOR string")
            pos += arg
        elif major in (4, 5, 6):
            if major == 6 and arg not in allowed_tags:
                raise cose.StrictCBORError(f"CBOR tag {arg} is not allowed here")
            if len(todo) > max_depth:
                raise cose.StrictCBORError("CBOR nested too deeply")
            todo.append(arg * 2 if major == 5 else 1 if major == 6 else arg)
        elif major == 7 and info == 24 and arg < 32:
            raise cose.StrictCBORError("badly encoded CBOR simple value")
    if pos != n:
        raise cose.StrictCBORError("trailing bytes after the CBOR item")
    if top is None:  # unreachable: the loop reads at least one item
        raise cose.StrictCBORError("empty CBOR")
    return top


@contextlib.contextmanager
def strict_only() -> Iterator[None]:
    """Every fast path off: the plain CBOR walk, the decode-and-compare Sign1 parser, the
    general header and COSE_Encrypt parsers."""
    with (
        mock.patch.object(cose, "check_wellformed", old_check_wellformed),
        mock.patch.object(wire, "_sign1_header", lambda protected: None),
        mock.patch.object(wire, "_encrypt_as_sealed", lambda data: None),
        mock.patch.object(seal_module, "parse_sign1", old_parse_sign1),
    ):
        yield


def old_parse_sign1(data: bytes, max_size: int = wire.MAX_ENVELOPE_BYTES) -> wire.Sign1:
    wire.check_sign1_frame(data, max_size)
    with mock.patch.object(cose, "check_wellformed", old_check_wellformed):
        try:
            msg = cose.strict_loads(data, allowed_tags=frozenset({cose.TAG_COSE_SIGN1}))
        except cose.StrictCBORError as exc:
            raise MalformedEnvelopeError(f"envelope: {exc}") from None
        if not (isinstance(msg, cbor2.CBORTag) and msg.tag == cose.TAG_COSE_SIGN1):
            raise MalformedEnvelopeError("envelope is not a tagged COSE_Sign1 (tag 18)")
        body = msg.value
        if not (isinstance(body, list | tuple) and len(body) == 4):
            raise MalformedEnvelopeError("COSE_Sign1 is not an array of 4")
        protected, unprotected, payload, signature = body
        if not (isinstance(protected, bytes) and isinstance(payload, bytes)):
            raise MalformedEnvelopeError("COSE_Sign1 protected header or payload is not a bstr")
        if not (isinstance(unprotected, Mapping) and len(unprotected) == 0):
            raise MalformedEnvelopeError("COSE_Sign1 unprotected header must be empty")
        if not (isinstance(signature, bytes) and len(signature) == cose.ED25519_SIG_LEN):
            raise MalformedEnvelopeError("COSE_Sign1 signature is not 64 bytes")
        header = wire._header(protected, "COSE_Sign1 protected header")
    if set(header) - {1, 3, 4, wire.HDR_SEQ, wire.HDR_EXP}:
        raise MalformedEnvelopeError("COSE_Sign1 protected header has unknown labels")
    if not wire._is_int(header.get(cose.HDR_ALG), cose.ALG_EDDSA):
        raise MalformedEnvelopeError("COSE_Sign1 alg is not EdDSA (-8)")
    if not wire._is_int(header.get(cose.HDR_CONTENT_TYPE), cose.CONTENT_FORMAT_COSE_ENCRYPT):
        raise MalformedEnvelopeError("COSE_Sign1 content type is not COSE_Encrypt (96)")
    kid_bytes = header.get(cose.HDR_KID)
    try:
        if not isinstance(kid_bytes, bytes):
            raise ValueError("kid is not a bstr")
        kid = check_kid(kid_bytes.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise MalformedEnvelopeError("COSE_Sign1 kid is missing or not a valid key id") from None
    seq = header.get(wire.HDR_SEQ)
    if not wire.is_uint(seq, wire.MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 seq header is missing or out of range")
    exp = header.get(wire.HDR_EXP)
    if exp is not None and not wire.is_uint(exp, wire.MAX_SEQ):
        raise MalformedEnvelopeError("COSE_Sign1 exp header is out of range")
    return wire.Sign1(protected, payload, signature, kid, seq, exp)


def old_parse_encrypt(data: bytes) -> wire.Encrypt:
    with mock.patch.object(cose, "check_wellformed", old_check_wellformed):
        return wire._parse_encrypt(data)


def verdict(f: Callable[[], Any]) -> tuple[str, Any]:
    """What ``f()`` returns, or the class and message of what it raises."""
    try:
        return "value", f()
    except Exception as exc:  # every exception class is part of the verdict
        return type(exc).__name__, str(exc)


# --- inputs ------------------------------------------------------------------------------------

cbor_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
hostile_cbor = st.recursive(
    cbor_leaf | st.integers(min_value=2**64, max_value=2**100),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-70_000, 70_000) | st.text(max_size=6), inner, max_size=4)
        | st.builds(cbor2.CBORTag, st.sampled_from([2, 18, 30, 96, 258, 55799]), inner)
    ),
    max_leaves=16,
)
kids = st.sampled_from([DEVICE, "a", "backend-1", "x" * 64, "cv-\u00e9"])
seqs = st.integers(min_value=0, max_value=2**64 - 1)
exps = st.none() | st.integers(min_value=0, max_value=2**64 - 1)


def sealed(kid: str, seq: int, exp: int | None, body: Any) -> bytes:
    """An envelope as seal() makes it, or (for values seal() refuses) encoded the same way."""
    protected: dict[int, Any] = {1: -8, 3: 96, 4: kid.encode(), wire.HDR_SEQ: seq}
    if exp is not None:
        protected[wire.HDR_EXP] = exp
    inner = seal(EVENT, sender=DEV, recipient=BACKEND.public(), topic=TOPIC, seq=1, device=DEVICE)
    payload = wire.parse_sign1(inner.data).payload if body is None else cbor2.dumps(body)
    return cose.dumps(cbor2.CBORTag(18, [cose.dumps(protected), {}, payload, bytes(64)]))


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, cut, insert in edits:
        pos %= max(len(out), 1)
        out[pos : pos + cut] = insert
    return bytes(out)


edit_lists = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.binary(max_size=3)), max_size=4
)


def non_shortest(data: bytes, at: int) -> bytes:
    """``data`` with the bstr head at ``at`` re-encoded one size longer (still well-formed)."""
    found = cose.read_head(data, at, 2)
    assert found is not None
    end, n = found
    longer = bytes([0x58, n]) if n < 24 else bytes([0x59]) + n.to_bytes(2, "big")
    return data[:at] + longer + data[end:]


# --- the CBOR walk -----------------------------------------------------------------------------


@CHECKS
@given(
    st.one_of(
        st.binary(max_size=64),
        hostile_cbor.map(cbor2.dumps),
        st.tuples(hostile_cbor.map(cbor2.dumps), edit_lists).map(lambda t: mutate(*t)),
    ),
    st.frozensets(st.sampled_from([2, 18, 30, 96, 258, 55799])),
    st.integers(0, 6),
)
def test_the_cbor_walk_gives_the_old_walks_verdicts(
    data: bytes, tags: frozenset[int], depth: int
) -> None:
    assert verdict(lambda: cose.check_wellformed(data, allowed_tags=tags, max_depth=depth)) == (
        verdict(lambda: old_check_wellformed(data, allowed_tags=tags, max_depth=depth))
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x18",
        b"\x19\x01",
        b"\x5f",
        b"\x9f\x00\xff",
        b"\xf8\x1f",
        b"\xf8\x20",
        b"\x81\x81\x81\x80",
        b"\xc2\x41\x01",
        b"\x62a",
        b"\x00\x00",
        b"\xa1\x00",
        b"\xbb" + bytes(8),
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
    ],
)
def test_the_cbor_walk_gives_the_old_verdicts_on_edge_cases(data: bytes) -> None:
    for depth in (0, 1, 2, 3, 16):
        got = verdict(lambda: cose.check_wellformed(data, max_depth=depth))  # noqa: B023
        assert got == verdict(lambda: old_check_wellformed(data, max_depth=depth))  # noqa: B023


# --- the Sign1 parser --------------------------------------------------------------------------


@CHECKS
@given(kids, seqs, exps, edit_lists)
def test_parse_sign1_gives_the_strict_parsers_verdicts(
    kid: str, seq: int, exp: int | None, edits: list[tuple[int, int, bytes]]
) -> None:
    data = mutate(sealed(kid, seq, exp, None), edits)
    assert verdict(lambda: wire.parse_sign1(data)) == verdict(lambda: old_parse_sign1(data))


@CHECKS
@given(kids, seqs, exps, st.sampled_from(["protected", "payload"]))
def test_a_non_shortest_bstr_head_is_refused_as_before(
    kid: str, seq: int, exp: int | None, which: str
) -> None:
    data = sealed(kid, seq, exp, None)
    protected_len = len(cbor2.loads(data).value[0])
    at = 2 if which == "protected" else 2 + cose.head_size(protected_len) + protected_len + 1
    longer = non_shortest(data, at)
    got = verdict(lambda: wire.parse_sign1(longer))
    assert got == verdict(lambda: old_parse_sign1(longer))
    assert got == (
        "MalformedEnvelopeError",
        "envelope: not the deterministic encoding of a single CBOR item",
    )


@CHECKS
@given(st.dictionaries(st.integers(-70_000, 70_000) | st.text(max_size=3), hostile_cbor,
                       max_size=6), st.booleans())  # fmt: skip
def test_random_protected_headers_get_the_strict_parsers_verdicts(
    header: dict[Any, Any], canonical: bool
) -> None:
    protected = cbor2.dumps(header, canonical=canonical)
    assume(0 < len(protected) <= wire.MAX_PROTECTED_BYTES)
    data = cose.dumps(cbor2.CBORTag(18, [protected, {}, b"\x01\x02", bytes(64)]))
    assert verdict(lambda: wire.parse_sign1(data)) == verdict(lambda: old_parse_sign1(data))


@CHECKS
@given(kids, seqs, exps)
def test_the_header_fast_path_returns_what_the_general_parser_does(
    kid: str, seq: int, exp: int | None
) -> None:
    header: dict[int, Any] = {1: -8, 3: 96, 4: kid.encode(), wire.HDR_SEQ: seq}
    if exp is not None:
        header[wire.HDR_EXP] = exp
    for protected in (cose.dumps(header), cbor2.dumps(header)):
        fast = wire._sign1_header(protected)
        assert fast is None or fast == wire._header(protected, "h")
    assert wire._sign1_header(cose.dumps(header)) == header


def test_a_bytearray_envelope_parses_to_bytes_as_before() -> None:
    """Typed bytes, but a caller may pass a bytearray at run time: the values are bytes still."""
    data: Any = bytearray(sealed(DEVICE, 3, None, None))
    got = wire.parse_sign1(data)
    assert got == old_parse_sign1(data)
    assert type(got.protected) is bytes and type(got.payload) is bytes


# --- the COSE_Encrypt parser -------------------------------------------------------------------


def _inner(kid: str = "backend-1") -> bytes:
    recipient = Identity.generate(kid)
    env = seal(EVENT, sender=DEV, recipient=recipient.public(), topic=TOPIC, seq=1, device=DEVICE)
    return wire.parse_sign1(env.data).payload


INNERS = [_inner(), _inner("x" * 64), _inner("b")]


@CHECKS
@given(st.sampled_from(INNERS), edit_lists)
def test_parse_encrypt_gives_the_general_parsers_verdicts(
    inner: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    data = mutate(inner, edits)
    assert verdict(lambda: wire.parse_encrypt(data)) == verdict(lambda: old_parse_encrypt(data))


@CHECKS
@given(st.lists(hostile_cbor, min_size=4, max_size=4), st.booleans())
def test_random_cose_encrypts_get_the_general_parsers_verdicts(
    items: list[Any], canonical: bool
) -> None:
    data = cbor2.dumps(cbor2.CBORTag(96, items), canonical=canonical)
    assert verdict(lambda: wire.parse_encrypt(data)) == verdict(lambda: old_parse_encrypt(data))


def test_the_encrypt_fast_path_takes_what_seal_makes() -> None:
    for inner in INNERS:
        fast = wire._encrypt_as_sealed(inner)
        assert fast is not None and fast == old_parse_encrypt(inner)
        # not bytes: the general parser (whose values are bytes)
        not_bytes: Any = bytearray(inner)
        assert wire._encrypt_as_sealed(not_bytes) is None


# --- open_envelope end to end ------------------------------------------------------------------


def _open(data: bytes) -> Any:
    opened = open_envelope(
        data,
        topic=TOPIC,
        trusted_senders=TRUSTED,
        recipient=BACKEND,
        replay_guard=ReplayGuard(),
        clock=lambda: NOW,
    )
    return (opened.sender_kid, opened.seq, opened.expires_at, dict(opened.message))


def _real(seq: int) -> bytes:
    return seal(
        EVENT, sender=DEV, recipient=BACKEND.public(), topic=TOPIC, seq=seq, device=DEVICE
    ).data


REAL = [_real(0), _real(23), _real(2**40)]


@CHECKS
@given(st.sampled_from(REAL), edit_lists)
def test_open_envelope_gives_the_strict_verdicts_on_mutated_envelopes(
    data: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    mutated = mutate(data, edits)
    fast = verdict(lambda: _open(mutated))
    with strict_only():
        strict = verdict(lambda: _open(mutated))
    assert fast == strict


def test_the_real_envelopes_open_the_same_both_ways() -> None:
    for data in REAL:
        fast = _open(data)
        with strict_only():
            assert _open(data) == fast


@CHECKS
@given(st.one_of(st.binary(max_size=300), hostile_cbor.map(cbor2.dumps)))
def test_random_input_gets_the_strict_verdicts(data: bytes) -> None:
    fast = verdict(lambda: _open(data))
    with strict_only():
        assert verdict(lambda: _open(data)) == fast
    assert fast[0] != "value" and issubclass(getattr(errors, fast[0]), EnvelopeError)


# --- the structures written by hand ------------------------------------------------------------


@CHECKS
@given(st.text(max_size=80), st.text(max_size=200), seqs | st.integers(-5, -1))
def test_external_aad_is_what_cose_dumps_makes(device: str, topic: str, seq: int) -> None:
    assert verdict(lambda: wire.external_aad(device, topic, seq)) == verdict(
        lambda: cose.dumps([wire.AAD_CONTEXT, device, topic, seq])
    )


@CHECKS
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=70_000))
def test_sig_and_enc_structures_are_what_cose_dumps_makes(
    protected: bytes, aad: bytes, payload: bytes
) -> None:
    assert cose.sig_structure1(protected, aad, payload) == cose.dumps(
        ["Signature1", protected, aad, payload]
    )
    assert cose.enc_structure(protected, aad) == cose.dumps(["Encrypt", protected, aad])


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_heads_are_the_shortest(n: int) -> None:
    assert cose.head(0, n) == cose.dumps(n)
    assert cose.head_size(n) == len(cose.dumps(n))
