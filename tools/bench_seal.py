"""Envelope throughput: seals and opens per second of a ~300-byte event (``camveil bench``)."""

from __future__ import annotations

import time
from typing import Any

from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import SealedEnvelope, open_envelope, seal
from contract.topics import event_topic

DEVICE = "cv-bench-0001"
TOPIC = event_topic(DEVICE, "presence")


def sample_event(seq: int) -> dict[str, Any]:
    """A typical presence event (about 250 bytes of plaintext CBOR)."""
    return {
        "boot": 7,
        "ts": 1_764_000_000.25 + seq,
        "type": "presence",
        "body": {
            "window": [1_764_000_000.0 + seq, 1_764_000_010.0 + seq],
            "zones": {"entrance": {"faces": 2, "max": 3}, "counter": {"faces": 0, "max": 1}},
            "faces_redacted": 2,
            "frames": {"in": 100, "out": 100, "dropped": 0},
            "noise": {"epsilon": 1.0, "suppressed_below": 3},
            "frame": {"w": 1920, "h": 1080, "n": 123456 + seq},
        },
    }


def bench_envelope(seconds: float = 2.0) -> dict[str, float]:
    """Seal for ``seconds / 2``, then open what was sealed for up to ``seconds / 2``."""
    device = Identity.generate(DEVICE)
    backend = Identity.generate("backend-bench")
    half = max(seconds, 0.02) / 2
    sealed: list[SealedEnvelope] = []
    start = time.perf_counter()
    deadline = start + half
    while time.perf_counter() < deadline or not sealed:
        n = len(sealed)
        sealed.append(
            seal(
                sample_event(n),
                sender=device,
                recipient=backend.public(),
                topic=TOPIC,
                seq=n,
                device=DEVICE,
            )
        )
    seal_elapsed = time.perf_counter() - start

    trusted = PeerKeys([device.public()])
    guard = ReplayGuard()
    opened = 0
    start = time.perf_counter()
    deadline = start + half
    for env in sealed:
        open_envelope(
            env.data, topic=TOPIC, trusted_senders=trusted, recipient=backend, replay_guard=guard
        )
        opened += 1
        if time.perf_counter() >= deadline:
            break
    open_elapsed = time.perf_counter() - start
    return {
        "seal_per_s": len(sealed) / seal_elapsed,
        "open_per_s": opened / open_elapsed,
        "envelope_bytes": float(len(sealed[0].data)),
        "plaintext_bytes": float(len(_plaintext_size())),
    }


def _plaintext_size() -> bytes:
    from contract.envelope import cose

    return cose.dumps({**sample_event(0), "v": 1, "device": DEVICE, "topic": TOPIC, "seq": 0})
