"""What the daemon reports about itself: the health event every interval (fps, drops, outbox,
CPU temperature, uptime, versions, model hashes, config hashes, the TLS certificate's serial and
expiry) and the summary of a run."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.commands import CommandProcessor
from agent.config import AgentConfig
from agent.events import CertHealth
from agent.outbox import Outbox
from agent.publisher import Emitter, Publisher
from agent.stats import PipelineStats
from agent.vision.factory import DetectorConfig
from contract.confighash import ConfigDigest
from contract.errors import CamveilError
from contract.ranges import seq_ranges
from hw.board import BoardInfo
from provisioning.unit_renewal import CertInfo


def model_hashes(config: DetectorConfig) -> dict[str, str]:
    """Model name -> sha256 from the manifest (the factory refuses a file that differs), for the
    detector and its ``partner`` if one runs beside it: both decide what gets redacted."""
    from models import MODELS_DIR, load_manifest

    try:
        manifest = load_manifest((config.models_dir or MODELS_DIR) / "manifest.json")
    except CamveilError:
        return {}
    names = [config.model] + ([config.partner] if config.partner else [])
    return {name: manifest[name].sha256 for name in names if name in manifest}


class HealthReporter:
    """Health events: the frame rate since the previous one, and the state of everything else
    at the time. Constructor only stores (and notes the start for the uptime). Thread-safe: the
    command thread may send one out of turn (after a config change) while the loop runs."""

    def __init__(
        self,
        stats: PipelineStats,
        board: BoardInfo,
        cert: Callable[[], CertInfo | None] = lambda: None,
    ) -> None:
        self._stats = stats
        self._board = board
        self._cert = cert
        self._started_mono = time.monotonic()
        self._frames0, self._t0 = 0, time.monotonic()
        self._lock = threading.Lock()

    def _fps(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self._stats.frames_out - self._frames0) / elapsed if elapsed > 0 else 0.0

    def _restart_window(self) -> None:
        self._frames0, self._t0 = self._stats.frames_out, time.monotonic()

    def emit(
        self,
        emitter: Emitter,
        outbox: Outbox,
        config: AgentConfig,
        digest: ConfigDigest | None = None,
    ) -> None:
        """One health event, its fps counted since the previous one (or the loop's start);
        ``digest``: the hashes of ``config`` and its remote overlay."""
        with self._lock:
            self._emit(emitter, outbox, config, digest)
            self._restart_window()

    def _emit(
        self, emitter: Emitter, outbox: Outbox, config: AgentConfig, digest: ConfigDigest | None
    ) -> None:
        fps = self._fps()
        outbox_stats = outbox.stats()
        uptime = time.monotonic() - self._started_mono
        versions = {"camveil": __version__, "python": platform.python_version()}
        models = model_hashes(config.detector)
        temp = self._board.cpu_temp_c()
        stats = self._stats
        info = self._cert()
        cert = None if info is None else CertHealth(info.serial, info.not_after)
        emitter.emit(
            lambda b: b.health(
                fps=fps,
                pipeline=stats,
                outbox=outbox_stats,
                cpu_temp_c=temp,
                uptime_s=uptime,
                versions=versions,
                models=models,
                config=digest,
                cert=cert,
            )
        )

    def loop(
        self,
        stop: threading.Event,
        emitter: Emitter,
        outbox: Outbox,
        config: Callable[[], AgentConfig],
        digest: Callable[[], ConfigDigest | None] = lambda: None,
    ) -> None:
        """A health event every ``[events] health_interval_s`` of the current config, until
        ``stop``."""
        with self._lock:
            self._restart_window()
        while not stop.wait(config().events.health_interval_s):
            self.emit(emitter, outbox, config(), digest())


@dataclass(frozen=True)
class DaemonSummary:
    frames_in: int
    frames_out: int
    events: Mapping[str, int]
    enqueued: int
    published: int
    acked: int
    outbox_depth: int
    commands_accepted: int
    commands_rejected: Mapping[str, int]
    dropped: Mapping[str, int]
    enqueued_seqs: list[list[int]] = field(default_factory=list)
    """Inclusive ranges of the seqs of every enqueued envelope (the last will is not one)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "events": dict(self.events),
            "enqueued": self.enqueued,
            "published": self.published,
            "acked": self.acked,
            "outbox_depth": self.outbox_depth,
            "commands_accepted": self.commands_accepted,
            "commands_rejected": dict(self.commands_rejected),
            "dropped": dict(self.dropped),
            "enqueued_seqs": self.enqueued_seqs,
        }


def summarize(
    stats: PipelineStats,
    emitter: Emitter,
    publisher: Publisher,
    processor: CommandProcessor,
    outbox: Outbox,
) -> DaemonSummary:
    """What a run did, at its end."""
    snap = stats.snapshot()
    dropped: Any = snap["dropped"]
    return DaemonSummary(
        frames_in=stats.frames_in,
        frames_out=stats.frames_out,
        events=dict(emitter.by_type),
        enqueued=len(emitter.enqueued),
        published=publisher.published,
        acked=publisher.acked,
        outbox_depth=outbox.stats().depth,
        commands_accepted=processor.accepted,
        commands_rejected=dict(processor.rejected),
        dropped=dict(dropped),
        enqueued_seqs=seq_ranges(seq for _, seq in emitter.enqueued),
    )
