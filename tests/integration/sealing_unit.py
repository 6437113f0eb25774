"""A unit that seals events by hand (no camera, no outbox): for tests of what backends do with
what units publish (listener, ingest, dashboard)."""

from __future__ import annotations

from broker import ClientFiles

from agent.events import EventBuilder, LinkState, seal_event
from agent.sequence import CountingSequence
from contract.envelope.keys import Identity, PublicIdentity
from contract.envelope.seal import SealedEnvelope


class Unit:
    """A device that seals events by hand (no camera) and publishes them with its certificate."""

    def __init__(
        self, files: ClientFiles, backend: PublicIdentity, identity: Identity | None = None
    ) -> None:
        self.identity = identity or Identity.generate(files.name)
        self.builder = EventBuilder(files.name, "0123456789abcdef", CountingSequence())
        self.backend = backend
        self.files = files

    def event(self) -> SealedEnvelope:
        return seal_event(
            self.builder.presence(0.0, 1.0, {"all": (1, 1)}),
            sender=self.identity,
            recipient=self.backend,
        )

    def status(self) -> SealedEnvelope:
        return seal_event(
            self.builder.status(LinkState.ONLINE),
            sender=self.identity,
            recipient=self.backend,
        )
