"""The wire contract both sides share: the exception tree (:mod:`contract.errors`) and the COSE
envelope with its keys, strict CBOR and replay windows (:mod:`contract.envelope`).

The bottom layer (docs/ARCHITECTURE.md): it imports nothing of camveil's, and every other package
(`hw`, `models`, `provisioning`, `agent`, `dashboard`, `tools`, `camveil`) may import it.
"""
