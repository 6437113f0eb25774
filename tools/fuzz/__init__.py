"""`camveil fuzz`: mutated envelopes and commands against the real openers; count crashes and
acceptances.

The package, by job:

- :mod:`tools.fuzz.parties`: the keys, the three targets under test (the unit's command and
  receipt paths, the backend's event path; unchanged production code) and the genuine
  originals;
- :mod:`tools.fuzz.blind`: mutations of the bytes (truncations, bit flips, byte edits, splices,
  random CBOR, random bytes);
- :mod:`tools.fuzz.forged`: mutations signed with the right key around corrupt inner parts, or
  from the wrong signer, expired, not a command, for another device or topic;
  :mod:`tools.fuzz.forge` holds what they sign and encrypt with;
- :mod:`tools.fuzz.mutations`: every mutation by name (:data:`MUTATIONS`);
- :mod:`tools.fuzz.run`: the rounds (mutations, controls, replays) and the :class:`FuzzReport`.

A **crash** is any exception escaping a target (both turn every
:class:`~contract.errors.EnvelopeError` into a counted rejection, so anything else escaping is a
bug); an **acceptance** is a mutated input reaching a command handler, coming out of the
listener as a message, or being taken as a receipt (or deleting anything from the outbox).
Both must stay at zero.
"""

from tools.fuzz.forge import Fuzzer, Mutator, sign1
from tools.fuzz.mutations import MUTATIONS
from tools.fuzz.parties import (
    COMMAND_NAMES,
    DEVICE,
    OTHER_DEVICE,
    Case,
    Original,
    Parties,
    make_command,
    make_event,
    make_receipt,
)
from tools.fuzz.run import MUTATIONS_PER_ROUND, FuzzReport, run_fuzz

__all__ = [
    "COMMAND_NAMES",
    "DEVICE",
    "MUTATIONS",
    "MUTATIONS_PER_ROUND",
    "OTHER_DEVICE",
    "Case",
    "FuzzReport",
    "Fuzzer",
    "Mutator",
    "Original",
    "Parties",
    "make_command",
    "make_event",
    "make_receipt",
    "run_fuzz",
    "sign1",
]
