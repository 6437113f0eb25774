"""Measurement and test tools, kept out of the unit's runtime.

- :mod:`tools.bench` (pipeline fps, latency, memory), :mod:`tools.bench_frames` (its frames),
  :mod:`tools.bench_envelope` and :mod:`tools.bench_seal` (seal/open, outbox, capture-to-PUBACK);
- :mod:`tools.evaluate`: face protection on an annotated dataset (`camveil eval`);
- :mod:`tools.chaos`: lost/duplicated events under broker restarts and agent kills;
- :mod:`tools.fuzz`: mutated envelopes and commands against the real openers;
- :mod:`tools.devpki`: throw-away PKI for the demo and tests (`camveil dev-pki`).

Tools may import the unit (`agent`) and the backend (`dashboard`); neither imports tools.
"""
