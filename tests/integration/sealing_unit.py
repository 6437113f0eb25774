"""A unit that seals events by hand (no camera, no outbox): for tests of what backends do with
what units publish (listener, ingest, dashboard)."""

from __future__ import annotations

import time

from broker import ClientFiles

from agent.events import EventBuilder, LinkState, seal_event
from agent.outbox import OutboxStats
from agent.sequence import CountingSequence
from agent.stats import PipelineStats
from contract.confighash import ConfigDigest
from contract.envelope.keys import Identity, PublicIdentity
from contract.envelope.seal import SealedEnvelope

BOOT = "0123456789abcdef"


class Unit:
    """A device that seals events by hand (no camera) and publishes them with its certificate."""

    def __init__(
        self, files: ClientFiles, backend: PublicIdentity, identity: Identity | None = None
    ) -> None:
        self.identity = identity or Identity.generate(files.name)
        self.behind_s = 0.0
        """How far its clock runs behind now (to seal events with a past ``ts``)."""
        self.builder = EventBuilder(
            files.name, BOOT, CountingSequence(), clock=lambda: time.time() - self.behind_s
        )
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

    def health(
        self,
        fps: float = 10.0,
        config: ConfigDigest | None = None,
        depth: int = 2,
        temp: float = 48.5,
    ) -> SealedEnvelope:
        """A health event (``config``: the config hashes it reports; None: none, as a unit from
        before them)."""
        stats = PipelineStats(frames_in=100, frames_out=98)
        stats.drop("overload")
        stats.drop("overload")
        outbox = OutboxStats(
            depth=depth,
            bytes=900,
            in_flight=0,
            oldest_age_s=1.5,
            evicted_total={},
            rejected_total={},
            corrupt_recovered=0,
        )
        event = self.builder.health(
            fps=fps,
            pipeline=stats,
            outbox=outbox,
            cpu_temp_c=temp,
            uptime_s=120.0,
            versions={"camveil": "0.1.0"},
            models={"centerface_int8": "9f" * 32},
            config=config,
        )
        return seal_event(event, sender=self.identity, recipient=self.backend)
