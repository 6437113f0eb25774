"""The daemon: builds the unit's parts, runs their threads and stops them in order (the thread
map is in :mod:`agent.daemon`); signed commands that change the frame path; the transport's
callbacks; the probes the systemd watchdog asks."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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
from agent.events import EventBuilder, LinkState, SnapshotPolicy, new_boot_id
from agent.frame_sink import snapshot_event
from agent.linkreport import LinkReport
from agent.outbox import Outbox
from agent.pipeline import CameraFactory, DetectorFactory
from agent.privacy.counts import CountPrivacy, budget_path
from agent.publisher import Emitter, Publisher
from agent.receipts import ReceiptProcessor
from agent.sequence import SequenceStore
from agent.stats import PipelineStats
from agent.transport import ConnectionEvent, ConnectionState, Transport
from agent.unitstate import UnitState
from agent.vision.factory import build_detector
from contract.commands import Ack
from contract.confighash import ConfigDigest
from contract.envelope.seal import SealedEnvelope
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
        self.emitter: Emitter | None = None
        self.publisher: Publisher | None = None
        self.processor: CommandProcessor | None = None
        self.transport: Transport | None = None
        self.receipts: ReceiptProcessor | None = None
        self._warned_no_receipts = False
        self.link_report: LinkReport | None = None
        self.status_light: StatusLight | None = None
        self.enrolment: Enrolment | None = None
        self.ready = threading.Event()
        """Set once everything is started (the first connection may still be pending)."""

    @property
    def config(self) -> AgentConfig:
        return self._config

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
        emitter = self.emitter
        assert emitter is not None
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
        emitter.builder = self._builder(config, self._seqs)
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
        publisher, emitter = self.publisher, self.emitter
        if publisher is not None:
            publisher.on_state(event)
        if self.link_report is not None:
            self.link_report.on_event(event)
        if event.state is ConnectionState.CONNECTED and emitter is not None:
            delivery = self._delivery(self._config)
            emitter.emit(lambda b: b.status(LinkState.ONLINE, delivery=delivery))

    def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            self._commands.put_nowait((topic, payload))
        except queue.Full:
            self.stats.drop("cmd_dropped.overload")
            logger.warning("command queue full: command dropped")

    def _delivery(self, config: AgentConfig) -> Literal["receipt", "puback"]:
        """When envelopes are forgotten: ``[outbox] delete_on``, except that a unit whose bundle
        predates receipts (no backend verify key) cannot check them and uses the PUBACK."""
        if config.outbox.delete_on == "puback":
            return "puback"
        if not self._unit.receipts:
            if not self._warned_no_receipts:
                logger.warning(
                    'delete_on = "receipt" but this unit\'s bundle has no backend verify key '
                    "(provisioned before receipts): envelopes are forgotten on the PUBACK; "
                    "re-provision the unit to get end-to-end receipts"
                )
                self._warned_no_receipts = True
            return "puback"
        return "receipt"

    def _receipt_rejected(self, reason: str) -> None:
        if reason != "ReplayError":  # a QoS 1 redelivery of a receipt already applied
            self.stats.drop(f"receipt_rejected.{reason}")

    def _seal_will(self) -> SealedEnvelope:
        emitter = self.emitter
        assert emitter is not None
        return emitter.seal(emitter.builder.status(LinkState.OFFLINE))

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
                assert self.emitter is not None
                self._health.emit(self.emitter, self._outbox, self._config, self._digest)
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
            self._seqs = stack.enter_context(SequenceStore(unit.seq_path))
            self._outbox = stack.enter_context(
                Outbox(
                    config.outbox_path,
                    signer=unit.identity.public(),
                    max_bytes=config.outbox.max_bytes,
                    max_age_s=config.outbox.max_age_s,
                    max_db_bytes=config.outbox.max_db_bytes,
                    recover_corrupt=config.outbox.recover_corrupt,
                    reserve_bytes=config.outbox.reserve_bytes,
                    delete_on=self._delivery(config),
                    receipt_timeout_s=config.outbox.receipt_timeout_s,
                )
            )
            emitter = Emitter(
                unit, self._builder(config, self._seqs), self._outbox, lambda: None, self.stats
            )
            publisher = Publisher(self._outbox, stats=self.stats, on_delivered=emitter.delivered)
            emitter.wake = publisher.wake
            self.emitter, self.publisher = emitter, publisher
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
            receipts = ReceiptProcessor(
                unit.identity,
                unit.backend,
                self._outbox,
                on_receipted=emitter.receipted,
                on_rejected=self._receipt_rejected,
            )
            self.receipts = receipts
            slot = self._slot
            slot.current = self._build_parts(config, emitter)
            stack.callback(lambda: slot.current.close() if slot.current is not None else None)

            transport_config = unit.transport_config(
                config.mqtt.broker,
                keepalive_s=config.mqtt.keepalive_s,
                reconnect_min_s=config.mqtt.reconnect_min_s,
                reconnect_max_s=config.mqtt.reconnect_max_s,
                max_outstanding=config.mqtt.max_outstanding,
                require_subscriber=config.mqtt.require_subscriber,
            )
            outbox = self._outbox
            light = open_status_light(config.status_led)
            stack.callback(light.close)
            light.show("starting")
            self.status_light = light
            self.link_report = LinkReport(
                f"{transport_config.host}:{transport_config.port}",
                lambda: outbox.stats().depth,
                show=light.show,
            )
            transport = Transport(
                transport_config,
                on_acked=publisher.on_acked,
                on_rejected=publisher.on_rejected,
                on_state=self._on_state,
                on_command=self._on_command,
                on_receipt=receipts.handle if self._delivery(config) == "receipt" else None,
                will=self._seal_will,
            )
            publisher.bind(transport)
            self.transport = transport
            publisher_stop = threading.Event()
            threads = [
                threading.Thread(target=publisher.run, args=(publisher_stop,), name="publisher"),
                threading.Thread(target=self._command_loop, name="commands"),
                threading.Thread(
                    target=slot.run, args=(self._stop, self._max_frames), name="pipeline"
                ),
            ]
            transport.start()
            try:
                for t in threads:
                    t.start()
                self.ready.set()
                self._health.loop(
                    self._stop,
                    emitter,
                    self._outbox,
                    lambda: self._config,
                    lambda: self._digest,
                )
            finally:
                self._stop.set()
                parts = slot.current
                if parts is not None:
                    parts.pipeline.stop()
                _join(threads[2], None)
                if slot.current is not None:
                    slot.current.sink.flush()
                self._health.emit(emitter, self._outbox, self._config, self._digest)
                self._drain(transport)
                self._commands.put(None)
                _join(threads[1], 10.0)
                transport.stop(publish_will=True)
                publisher_stop.set()
                publisher.wake()
                _join(threads[0], 10.0)
            return self._summary()

    def _drain(self, transport: Transport) -> None:
        """Give the outbox a little time to empty before disconnecting (what is left stays on
        disk and goes out after the next start)."""
        deadline = time.monotonic() + self._drain_timeout_s
        publisher = self.publisher
        assert publisher is not None
        while time.monotonic() < deadline:
            if self._outbox.stats().depth == 0:
                return
            if not transport.connected:
                time.sleep(0.1)
                continue
            publisher.wake()
            time.sleep(0.02)
        logger.warning("stopping with %d envelope(s) in the outbox", self._outbox.stats().depth)

    def _summary(self) -> DaemonSummary:
        emitter, publisher, processor = self.emitter, self.publisher, self.processor
        assert emitter is not None and publisher is not None and processor is not None
        return summarize(self.stats, emitter, publisher, processor, self._outbox)


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
