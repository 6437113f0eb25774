"""The daemon: builds the unit's parts, runs their threads and stops them in order (the thread
map is in :mod:`agent.daemon`); signed commands that change the frame path; the transport's
callbacks; the probes the systemd watchdog asks."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.certrenewal import CertRenewal
from agent.commands import Command, CommandProcessor, CommandRejectedError
from agent.config import (
    AgentConfig,
    config_digest,
    dump_toml,
    remote_config_path,
    write_config_atomic,
)
from agent.daemon.health import DaemonSummary, HealthReporter, summarize
from agent.daemon.parts import Parts, PartsSlot, build_parts
from agent.daemon.remote import remote_change
from agent.enrolment import Enrolment
from agent.events import EventBuilder, SnapshotPolicy, new_boot_id
from agent.frame_sink import snapshot_event
from agent.linkreport import LinkReport
from agent.pipeline import CameraFactory, DetectorFactory
from agent.privacy.counts import CountPrivacy, budget_path
from agent.publisher import Emitter, Publisher
from agent.publishing import PublishingPath
from agent.receipts import ReceiptProcessor
from agent.sequence import SequenceStore
from agent.stats import PipelineStats
from agent.transport import ConnectionEvent, Transport
from agent.unitstate import UnitState
from agent.vision.factory import build_detector
from contract.commands import Ack
from contract.confighash import ConfigDigest
from contract.errors import CamveilError, ConfigError
from hw.board import BoardInfo, LinuxBoard
from hw.camera import open_camera
from hw.led import LedConfig, NullLed, StatusLight, open_led
from provisioning.unit_renewal import ClientCertFiles

logger = logging.getLogger(__name__)

COMMAND_QUEUE_SIZE = 32
PUBLISH_FAILING_S = 60.0
"""How long every publishing round may fail before the watchdog is withheld."""


class Daemon:
    """The agent with MQTT. Constructor only stores; :meth:`run` does everything until
    :meth:`stop`, the end of a finite camera, or ``max_frames`` frames."""

    def __init__(
        self,
        config: AgentConfig,
        unit: UnitState,
        *,
        config_path: Path | None = None,
        remote_overlay: Mapping[str, Any] | None = None,
        board: BoardInfo | None = None,
        max_frames: int | None = None,
        drain_timeout_s: float = 10.0,
        detector_factory: DetectorFactory = build_detector,
        camera_factory: CameraFactory = open_camera,
    ) -> None:
        self._config = config
        self._unit = unit
        self._config_path = config_path
        self._overlay: dict[str, Any] = dict(remote_overlay or {})
        """The ``remote.toml`` mapping merged into ``config`` (what set_config changed)."""
        self._digest: ConfigDigest | None = None
        self._report_config = False
        self._board = board or LinuxBoard()
        self._max_frames = max_frames
        self._drain_timeout_s = drain_timeout_s
        self._detector_factory = detector_factory
        self._camera_factory = camera_factory
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._slot = PartsSlot()
        self._commands: queue.Queue[tuple[str, bytes] | None] = queue.Queue(COMMAND_QUEUE_SIZE)
        self.renewal = CertRenewal(
            unit.device_id,
            ClientCertFiles(unit.tls_cert.parent),
            self._reconnect_with,
            self._use_client_files,
        )
        self._health = HealthReporter(self.stats, self._board, self.renewal.current)
        self._boot = new_boot_id()
        self.publishing: PublishingPath | None = None
        """Sequence store, outbox, publisher, transport, receipts (agent.publishing)."""
        self.processor: CommandProcessor | None = None
        self.link_report: LinkReport | None = None
        self.status_light: StatusLight | None = None
        self.enrolment: Enrolment | None = None
        self.ready = threading.Event()
        """Set once everything is started (the first connection may still be pending)."""

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def emitter(self) -> Emitter | None:
        return None if self.publishing is None else self.publishing.emitter

    @property
    def publisher(self) -> Publisher | None:
        return None if self.publishing is None else self.publishing.publisher

    @property
    def transport(self) -> Transport | None:
        return None if self.publishing is None else self.publishing.transport

    @property
    def receipts(self) -> ReceiptProcessor | None:
        return None if self.publishing is None else self.publishing.receipts

    def last_frame_at(self) -> float | None:
        """Monotonic time of the last redacted frame (for the systemd watchdog)."""
        parts = self._slot.current
        return None if parts is None else parts.pipeline.last_output_mono

    def outbox_writable(self) -> bool:
        """False before start and while enqueueing fails (for the systemd watchdog)."""
        emitter = self.emitter
        return emitter is not None and not emitter.store_failing

    def publishing_ok(self) -> bool:
        """False once every publishing round has failed for ``PUBLISH_FAILING_S`` (for the
        systemd watchdog: a wedged publisher gets the unit restarted). A full disk does not make
        it fail: the outbox evicts and keeps going (agent.outbox)."""
        publisher = self.publisher
        return publisher is None or publisher.failing_for() < PUBLISH_FAILING_S

    def stop(self) -> None:
        """Ask :meth:`run` to finish (signal-handler safe: only sets flags)."""
        self._stop.set()
        parts = self._slot.current
        if parts is not None:
            parts.pipeline.stop()
            interrupt = getattr(parts.camera, "interrupt", None)
            if interrupt is not None:
                interrupt()

    # --- building blocks ----------------------------------------------------------------------

    def _builder(self, config: AgentConfig, seqs: SequenceStore) -> EventBuilder:
        events = config.events
        return EventBuilder(
            self._unit.device_id,
            self._boot,
            seqs,
            snapshot_policy=SnapshotPolicy(max_bytes=events.snapshot_max_bytes),
            count_privacy=CountPrivacy(
                events.dp_epsilon, events.suppress_below, events.dp_epsilon_per_day
            ),
            budget_path=budget_path(config.mqtt.state_dir) if events.dp_epsilon else None,
        )

    def _build_parts(self, config: AgentConfig, emitter: Emitter) -> Parts:
        return build_parts(
            config,
            emitter,
            self.stats,
            camera_factory=self._camera_factory,
            detector_factory=self._detector_factory,
            verifier=self.enrolment.verifier(self.stats) if self.enrolment is not None else None,
        )

    # --- commands -----------------------------------------------------------------------------

    def _cmd_snapshot(self, command: Command) -> str:
        emitter, parts = self.emitter, self._slot.current
        assert emitter is not None and parts is not None
        frame = parts.sink.latest
        if frame is None:
            raise CommandRejectedError("no redacted frame yet")
        emitter.emit(snapshot_event(frame, command=command.id), frame.ts)
        return "ok"

    def _cmd_restart_pipeline(self, command: Command) -> str:
        self._replace_parts(self._config, persist=None)
        return "ok"

    def _cmd_set_config(self, command: Command) -> str:
        new_config, overlay = remote_change(
            command.args.get("config"), self._config_path, self._config
        )
        self._replace_parts(new_config, persist=overlay)
        self._report_config = True  # a health with the new hashes right after the ack
        return "ok"

    def _replace_parts(self, config: AgentConfig, persist: dict[str, Any] | None) -> None:
        """Build first, swap, persist; put the old parts back if persisting fails."""
        path = self.publishing
        assert path is not None
        emitter = path.emitter
        try:
            new = self._build_parts(config, emitter)
        except CamveilError as exc:
            raise CommandRejectedError(f"new configuration does not start: {exc}") from None
        except OSError as exc:
            raise CommandRejectedError(f"new configuration does not start: {exc}") from None
        old = self._slot.swap(new)
        try:
            if persist is not None:
                write_config_atomic(remote_config_path(config), dump_toml(persist))
        except ConfigError as exc:
            self._slot.swap(old)
            new.close()
            raise CommandRejectedError(f"rolled back: {exc}") from None
        old.sink.flush()
        old.close()
        if persist is not None:
            self._overlay = persist
        self._digest = config_digest(config, self._overlay)
        self._config = config
        emitter.builder = self._builder(config, path.seqs)
        logger.info(
            "pipeline replaced (camera %s, detector %s)", config.camera.kind, config.detector.model
        )

    def _reconnect_with(self, cert: Path, key: Path, wait_s: float) -> bool:
        transport = self.transport
        assert transport is not None
        return transport.reconnect_with(cert, key, wait_s=wait_s)

    def _use_client_files(self, cert: Path, key: Path) -> None:
        transport = self.transport
        assert transport is not None
        transport.use_files(cert, key)

    # --- transport callbacks --------------------------------------------------------------------

    def _on_state(self, event: ConnectionEvent) -> None:
        """After the publisher has seen ``event`` and before the "online" status is enqueued
        (agent.publishing): the journal's link report and the status LED."""
        if self.link_report is not None:
            self.link_report.on_event(event)

    def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            self._commands.put_nowait((topic, payload))
        except queue.Full:
            self.stats.drop("cmd_dropped.overload")
            logger.warning("command queue full: command dropped")

    def _command_loop(self) -> None:
        processor = self.processor
        assert processor is not None
        while True:
            item = self._commands.get()
            if item is None:
                return
            suppressed = processor.acks_suppressed
            ack = processor.handle(*item)
            if self._report_config:
                self._report_config = False
                path = self.publishing
                assert path is not None
                self._health.emit(path.emitter, path.outbox, self._config, self._digest)
            if not ack.accepted:
                self.stats.drop(f"cmd_rejected.{ack.reason.split(':', 1)[0]}")
            if processor.acks_suppressed != suppressed:
                self.stats.drop("cmd_ack_suppressed")

    def _send_ack(self, ack: Ack) -> None:
        emitter = self.emitter
        assert emitter is not None
        emitter.emit_ack(ack)

    # --- the threads ----------------------------------------------------------------------------

    def run(self) -> DaemonSummary:
        """Run until stopped; returns what happened. Raises CamveilError on a start failure."""
        unit, config = self._unit, self._config
        self._digest = config_digest(config, self._overlay)
        threads: list[threading.Thread] = []
        with contextlib.ExitStack() as stack:
            path = stack.enter_context(
                PublishingPath(
                    unit,
                    unit.transport_config(
                        config.mqtt.broker,
                        keepalive_s=config.mqtt.keepalive_s,
                        reconnect_min_s=config.mqtt.reconnect_min_s,
                        reconnect_max_s=config.mqtt.reconnect_max_s,
                        max_outstanding=config.mqtt.max_outstanding,
                        require_subscriber=config.mqtt.require_subscriber,
                    ),
                    outbox=config.outbox,
                    outbox_path=config.outbox_path,
                    builder=lambda seqs: self._builder(config, seqs),
                    stats=self.stats,
                    on_state=self._on_state,
                    on_command=self._on_command,
                )
            )
            self.publishing = path
            emitter = path.emitter
            self.enrolment = Enrolment(
                config.enrolment, unit.identity, unit.state_dir, emitter
            ).open()
            stack.callback(self.enrolment.close)
            self.processor = CommandProcessor(
                device=unit.identity,
                operators=unit.operators,
                replay_path=unit.replay_path,
                handlers={
                    "snapshot": self._cmd_snapshot,
                    "set_config": self._cmd_set_config,
                    "restart_pipeline": self._cmd_restart_pipeline,
                    **self.enrolment.handlers(),
                    **self.renewal.handlers(),
                },
                send_ack=self._send_ack,
            )
            self.processor.load()
            slot = self._slot
            slot.current = self._build_parts(config, emitter)
            stack.callback(lambda: slot.current.close() if slot.current is not None else None)

            outbox = path.outbox
            light = open_status_light(config.status_led)
            stack.callback(light.close)
            light.show("starting")
            self.status_light = light
            self.link_report = LinkReport(
                path.broker, lambda: outbox.stats().depth, show=light.show
            )
            threads = [
                threading.Thread(target=self._command_loop, name="commands"),
                threading.Thread(
                    target=slot.run, args=(self._stop, self._max_frames), name="pipeline"
                ),
            ]
            path.start()  # the transport, then the publisher thread
            try:
                for t in threads:
                    t.start()
                self.ready.set()
                self._health.loop(
                    self._stop,
                    emitter,
                    outbox,
                    lambda: self._config,
                    lambda: self._digest,
                )
            finally:
                self._stop.set()
                parts = slot.current
                if parts is not None:
                    parts.pipeline.stop()
                _join(threads[1], None)
                if slot.current is not None:
                    slot.current.sink.flush()
                self._health.emit(emitter, outbox, self._config, self._digest)
                path.drain(self._drain_timeout_s)
                self._commands.put(None)
                _join(threads[0], 10.0)
                path.stop()  # disconnect with the will, then the publisher thread
            return self._summary()

    def _summary(self) -> DaemonSummary:
        path, processor = self.publishing, self.processor
        assert path is not None and processor is not None
        return summarize(self.stats, path.emitter, path.publisher, processor, path.outbox)


def _join(thread: threading.Thread, timeout: float | None) -> None:
    if thread.ident is not None:  # started
        thread.join(timeout)


def open_status_light(config: LedConfig) -> StatusLight:
    """The status LED's light; an LED that cannot be opened is logged and the unit goes on
    without one (the LED is advisory, never a reason not to run)."""
    try:
        driver = open_led(config)
    except ConfigError as exc:
        logger.warning("status LED: %s; carrying on without it", exc)
        return StatusLight(NullLed())
    if not isinstance(driver, NullLed):
        logger.info("status LED: %s shows the link state", driver.name)
    return StatusLight(driver)
