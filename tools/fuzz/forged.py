"""Forged mutations: correctly signed by the right key around corrupt inner parts (random or
tampered ciphertext, ciphertext for another seq or recipient, plaintext that disagrees with the
binding, bad protected or unprotected headers, wrong tags), or genuine-looking messages from the
wrong signer, expired, not a command, for another device, or on another topic. These test what
the targets check after the signature.
"""

from __future__ import annotations

import time
from typing import Any, Final

import cbor2

from contract.commands import seal_command
from contract.envelope import cose
from contract.envelope.seal import _encrypt, seal
from contract.envelope.wire import HDR_EXP, HDR_SEQ, parse_sign1
from contract.topics import ack_topic, command_topic, event_topic, receipt_topic, status_topic
from tools.fuzz.blind import flip, random_cbor
from tools.fuzz.forge import Fuzzer, protected, sign1
from tools.fuzz.parties import DEVICE, OTHER_DEVICE, Original, sealed_receipt

WRONG_EVENT_TOPICS: Final = (
    command_topic(DEVICE),
    ack_topic(DEVICE),
    status_topic(DEVICE),
    event_topic(DEVICE, "Bad"),
    event_topic("+", "x"),
    "camveil/v2/x/event/y",
    "",
)


def m_resigned_garbage(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Right key, right header, inner COSE_Encrypt corrupt in one of many ways."""
    rng = f.rng
    inner = parse_sign1(o.envelope.data).payload
    variant = rng.randrange(6)
    if variant == 0:
        payload = rng.randbytes(rng.randrange(200))
    elif variant == 1:
        payload = flip(inner, rng, rng.choice([1, 2, 5]))
    elif variant == 2:  # ciphertext made for another seq (external AAD differs)
        payload = f.encrypt(o, cose.dumps(f.bound(o)), seq=o.envelope.seq + rng.randint(1, 9))
    elif variant == 3:  # encrypted to the right kid but the wrong key
        aad = f.aad(o)
        wrong = f.p.wrong_backend if o.target == "event" else f.p.impostor_device
        payload = _encrypt(cose.dumps(f.bound(o)), aad, wrong.public())
    elif variant == 4:  # random CBOR inside a valid encryption
        try:
            plain = cbor2.dumps(random_cbor(rng))
        except (ValueError, TypeError, cbor2.CBOREncodeError):
            plain = b"\xff"
        payload = f.encrypt(o, plain)
    else:  # a well-encrypted plaintext that disagrees with the signed binding
        m = f.bound(o)
        key = rng.choice(["v", "device", "topic", "seq", "exp", "drop"])
        if key == "drop":
            m.pop(rng.choice(["v", "device", "topic", "seq"]))
        elif key == "exp":
            m["exp"] = int(time.time()) + 60 if o.exp is None else o.exp + 1
        else:
            m[key] = rng.choice([2, "x", None, -1, o.envelope.seq + 1, 1.0, b"", [1]])
            if m[key] == f.bound(o)[key] and type(m[key]) is type(f.bound(o)[key]):
                m[key] = "different"
        payload = f.encrypt(o, cose.dumps(m))
    return f.resign(o, payload)


def m_bad_header(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Right key and a valid inner part, but a protected/unprotected header or structure that
    the profile forbids (signed correctly over it)."""
    rng, env = f.rng, o.envelope
    inner = parse_sign1(env.data).payload
    header = protected(env.sender_kid, env.seq, o.exp)
    variant = rng.randrange(11)
    if variant == 0:
        header[cose.HDR_ALG] = rng.choice([-7, -35, 24, "EdDSA"])
    elif variant == 1:
        header[cose.HDR_CONTENT_TYPE] = rng.choice([0, 97, "application/cose"])
    elif variant == 2:
        header[rng.choice([2, 6, 99, -65539])] = 1
    elif variant == 3:
        del header[HDR_SEQ]
    elif variant == 4:
        header[HDR_SEQ] = rng.choice([-1, 2**63, b"\x01", 1.0])
    elif variant == 5:
        header[cose.HDR_KID] = env.sender_kid  # tstr instead of bstr
    elif variant == 6:
        header[HDR_EXP] = rng.choice([-5, "soon", 2**64 - 1])
    elif variant == 7:
        return f.resign(o, inner, unprotected={cose.HDR_KID: env.sender_kid.encode()})
    elif variant == 8:
        return f.resign(o, inner, tag=rng.choice([None, 98, 96, 17]))
    elif variant == 9:
        return f.resign(o, inner, extra=(b"",))
    else:  # the same header, encoded non-deterministically (indefinite-length map)
        pb = bytearray(cose.dumps(header))
        pb[0] = 0xBF
        pb.append(0xFF)
        return env.topic, sign1(f.signer_of(o), bytes(pb), inner, f.aad(o))
    return env.topic, sign1(f.signer_of(o), header, inner, f.aad(o))


def m_wrong_signer(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Genuine-looking messages from a key that is not trusted for this topic."""
    p, rng, env = f.p, f.rng, o.envelope
    seq = env.seq
    if o.target == "receipt":  # everyone but the backend, the backend's kid with another key
        signer = rng.choice([p.operator, p.device, p.stranger, p.wrong_backend])
        return env.topic, sealed_receipt(p, signer, o.plaintext, DEVICE).data
    if o.target == "command":
        signer = rng.choice([p.impostor_operator, p.stranger, p.device])
        sealed = seal(o.plaintext, sender=signer, recipient=p.device.public(),
                      topic=env.topic, seq=seq, device=DEVICE, expires_at=o.exp)  # fmt: skip
        return env.topic, sealed.data
    variant = rng.randrange(3)
    if variant == 0:  # the device's kid, another key
        sealed = seal(o.plaintext, sender=p.impostor_device, recipient=p.backend.public(),
                      topic=env.topic, seq=seq, device=DEVICE)  # fmt: skip
        return env.topic, sealed.data
    if variant == 1:  # another device, unknown to the backend, on our topic
        other_topic = env.topic.replace(DEVICE, OTHER_DEVICE)
        sealed = seal({**o.plaintext, "device": OTHER_DEVICE}, sender=p.other_device,
                      recipient=p.backend.public(), topic=other_topic, seq=seq,
                      device=OTHER_DEVICE)  # fmt: skip
        return rng.choice([env.topic, other_topic]), sealed.data
    # the operator (trusted on the unit, not at the backend) signing a device topic
    header = protected(p.operator.kid, seq, None)
    return env.topic, sign1(p.operator, header, parse_sign1(env.data).payload, f.aad(o))


def m_expired(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Correctly signed and fresh seq, but expired (or, for commands, too far ahead)."""
    p, rng = f.p, f.rng
    now = int(time.time())
    if o.target == "command":
        exp = rng.choice([now - rng.randint(2, 10**6), now + 2 * 24 * 3600, 0])
        sealed = seal_command(str(o.plaintext["cmd"]), command_id="expired",
                              device=p.device.public(), operator=p.operator,
                              seq=p.next_operator_seq(), expires_at=exp)  # fmt: skip
        return sealed.topic, sealed.data
    header = p.builder.header()
    topic = o.envelope.topic
    sealed = seal({"type": "tamper", "ts": header.ts, "boot": header.boot, "body": {}},
                  sender=p.device, recipient=p.backend.public(), topic=topic, seq=header.seq,
                  device=DEVICE, expires_at=now - rng.randint(2, 10**6))  # fmt: skip
    return topic, sealed.data


def m_not_a_command(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Commands: opens (right key, fresh seq) but is no valid command. Events: the original
    on a topic of another kind."""
    p, rng = f.p, f.rng
    if o.target == "event":
        topic = rng.choice(WRONG_EVENT_TOPICS)
        return topic, o.envelope.data
    if o.target == "receipt":  # the backend's key and a fresh seq, but not a valid receipt
        bad: list[Any] = [[], [[2, 1]], [[-1, 5]], "x", [[1, 2], [2, 3]], [[5, 6], [1, 2]],
                          [[0, 1]] * 4097, [[True, 3]], [[1, 2, 3]], None]  # fmt: skip
        body = rng.choice(
            [
                {"type": "receipt", "ranges": rng.choice(bad)},
                {"type": "cmd_ack", "ranges": [[0, 2**62]]},
                {"ranges": [[0, 9]]},
            ]
        )
        return receipt_topic(DEVICE), sealed_receipt(p, p.backend, body, DEVICE).data
    bodies: list[dict[str, Any]] = [
        {"cmd": "snapshot"},
        {"id": "", "cmd": "snapshot"},
        {"id": "has space", "cmd": "snapshot"},
        {"id": "x" * 65, "cmd": "snapshot"},
        {"id": 7, "cmd": "snapshot"},
        {"id": "ok-1", "cmd": "format_disk"},
        {"id": "ok-2", "cmd": 1},
        {"id": "ok-3"},
        {"id": "ok-4", "cmd": "snapshot", "args": [1, 2]},
        {"id": "ok-5", "cmd": "snapshot", "args": "x"},
    ]
    body = rng.choice(bodies)
    sealed = seal(body, sender=p.operator, recipient=p.device.public(), topic=command_topic(DEVICE),
                  seq=p.next_operator_seq(), device=DEVICE,
                  expires_at=int(time.time()) + 600)  # fmt: skip
    return sealed.topic, sealed.data


def m_other_device_command(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Commands: a genuine command for another unit, on its topic or ours. Events: the
    original moved to another event type's topic."""
    p, rng = f.p, f.rng
    if o.target == "event":
        return event_topic(DEVICE, rng.choice(["presence", "tamper", "x"]) + "x"), o.envelope.data
    if o.target == "receipt":  # a genuine receipt for another unit, on its topic or ours
        other = sealed_receipt(p, p.backend, o.plaintext, OTHER_DEVICE)
        return rng.choice([other.topic, receipt_topic(DEVICE)]), other.data
    sealed = seal_command("snapshot", command_id="other", device=p.other_device.public(),
                          operator=p.operator, seq=p.next_operator_seq(),
                          expires_at=int(time.time()) + 600)  # fmt: skip
    return rng.choice([sealed.topic, command_topic(DEVICE)]), sealed.data
