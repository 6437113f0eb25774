"""Every mutation by name (:data:`MUTATIONS`): the blind ones (:mod:`tools.fuzz.blind`) and the
forged ones (:mod:`tools.fuzz.forged`)."""

from __future__ import annotations

from typing import Final

from tools.fuzz.blind import (
    m_bitflip,
    m_bytes,
    m_random_bytes,
    m_random_cbor,
    m_splice,
    m_truncate,
)
from tools.fuzz.forge import Mutator
from tools.fuzz.forged import (
    m_bad_header,
    m_expired,
    m_not_a_command,
    m_other_device_command,
    m_resigned_garbage,
    m_wrong_signer,
)

MUTATIONS: Final[dict[str, Mutator]] = {
    "truncate": m_truncate,
    "bitflip": m_bitflip,
    "bytes": m_bytes,
    "splice": m_splice,
    "random_cbor": m_random_cbor,
    "random_bytes": m_random_bytes,
    "resigned_garbage": m_resigned_garbage,
    "bad_header": m_bad_header,
    "wrong_signer": m_wrong_signer,
    "expired": m_expired,
    "not_a_command_or_wrong_topic": m_not_a_command,
    "other_device_or_topic": m_other_device_command,
}
