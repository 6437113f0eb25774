"""The unit's publishing path, built once: sequence store -> event builder -> :class:`Emitter`
(seal, durable :class:`~agent.outbox.Outbox`) -> :class:`Publisher` thread ->
:class:`~agent.transport.Transport` -> broker, and receipts back (:class:`ReceiptProcessor`).

:class:`PublishingPath` owns those parts, the publisher thread and their order. The daemon, the
chaos tool's unit process and the envelope benchmark all go through it, so what they test and
measure is what ships::

    with PublishingPath(unit, transport_config, ...) as path:   # opens the stores (no network)
        path.start()                   # connects, then starts the publisher thread
        path.emit(make_event)          # build, seal, enqueue durably; wakes the publisher
        ...
        path.drain(timeout_s)          # wait for the outbox to empty (receipted or PUBACKed)
        path.stop()                    # disconnect (the broker publishes the will), then
                                       # stop and join the publisher thread
    # leaving the block: stop() if not done yet, close the outbox, then the sequence store

``drain`` and ``stop`` are separate so that a caller can stop what still emits in between (the
daemon stops its command thread there: a late ack is still enqueued, and goes out after the next
start). What is left in the outbox stays on disk for the next start.

**Delivery** (when the outbox forgets an envelope, :attr:`PublishingPath.delivery`): ``[outbox]
delete_on``, except that a unit whose bundle predates receipts (no backend verify key) cannot check
them and falls back to the PUBACK, with a warning. In receipt mode the transport subscribes to the
unit's receipt topic and each receipt that opens deletes the envelopes it names.

**Status** (``status=True``, docs/PROTOCOL.md "Last will and status"): an "offline" last will is
sealed afresh before every connection attempt and published by the broker when the connection
ends, a clean :meth:`PublishingPath.stop` included; on every connection the unit enqueues a
retained "online" status naming the delivery mode.

**Connection events** go first to the publisher (wake up, requeue after a stop), then to the
caller's ``on_state`` (the daemon's link report and status LED), then the "online" status is
enqueued. Callbacks run on the transport's dispatcher thread (agent.transport).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

from agent.config import OutboxConfig
from agent.events import Event, EventBuilder, LinkState, new_boot_id
from agent.outbox import Outbox
from agent.publisher import Emitter, Publisher
from agent.receipts import ReceiptProcessor
from agent.sequence import SequenceStore
from agent.stats import PipelineStats
from agent.transport import (
    CommandCallback,
    ConnectionEvent,
    ConnectionState,
    StateCallback,
    Transport,
    TransportConfig,
)
from agent.unitstate import UnitState
from contract.envelope.seal import SealedEnvelope

logger = logging.getLogger(__name__)

Delivery = Literal["receipt", "puback"]

JOIN_TIMEOUT_S = 10.0
"""How long :meth:`PublishingPath.stop` waits for the publisher thread."""


def delivery_mode(outbox: OutboxConfig, unit: UnitState) -> Delivery:
    """``[outbox] delete_on``, or ``puback`` for a unit that cannot check receipts (its
    bundle has no backend verify key: provisioned before receipts). Logs that fallback."""
    if outbox.delete_on == "puback":
        return "puback"
    if not unit.receipts:
        logger.warning(
            'delete_on = "receipt" but this unit\'s bundle has no backend verify key '
            "(provisioned before receipts): envelopes are forgotten on the PUBACK; "
            "re-provision the unit to get end-to-end receipts"
        )
        return "puback"
    return "receipt"


def default_builder(unit: UnitState) -> Callable[[SequenceStore], EventBuilder]:
    """A plain event builder for ``unit`` with a fresh boot id (tools; the daemon passes its
    own, with the snapshot policy and count privacy of its config)."""
    boot = new_boot_id()
    return lambda seqs: EventBuilder(unit.device_id, boot, seqs)


class PublishingPath:
    """The publishing path of one unit (module docstring). Constructor only stores; the stores
    open in ``__enter__``, the network and the thread start in :meth:`start`.

    ``outbox``: the ``[outbox]`` section (limits, delete_on, receipt timeout); ``outbox_path``
    overrides where the database is (default: ``outbox.path`` or the unit's state directory).
    ``builder`` makes the event builder over the opened sequence store (default
    :func:`default_builder`). ``on_enqueued(type, seq)`` is told of every durable enqueue and
    ``on_will(envelope)`` of every sealed last will (the chaos unit logs both).
    """

    def __init__(
        self,
        unit: UnitState,
        transport: TransportConfig,
        *,
        outbox: OutboxConfig | None = None,
        outbox_path: Path | None = None,
        builder: Callable[[SequenceStore], EventBuilder] | None = None,
        stats: PipelineStats | None = None,
        status: bool = True,
        on_state: StateCallback | None = None,
        on_command: CommandCallback | None = None,
        on_enqueued: Callable[[str, int], None] | None = None,
        on_will: Callable[[SealedEnvelope], None] | None = None,
    ) -> None:
        self._unit = unit
        self.transport_config = transport
        self._outbox_config = outbox or OutboxConfig()
        self._outbox_path = outbox_path or self._outbox_config.path or unit.outbox_path
        self._make_builder = builder or default_builder(unit)
        self.stats = stats or PipelineStats()
        self._status = status
        self._on_state = on_state
        self._on_command = on_command
        self._on_enqueued = on_enqueued
        self._on_will = on_will
        self._seqs: SequenceStore | None = None
        self._outbox: Outbox | None = None
        self._emitter: Emitter | None = None
        self._publisher: Publisher | None = None
        self._receipts: ReceiptProcessor | None = None
        self._transport: Transport | None = None
        self._delivery: Delivery | None = None
        self._thread: threading.Thread | None = None
        self._thread_stop = threading.Event()

    # --- the parts (available inside the ``with`` block) --------------------------------------

    @property
    def seqs(self) -> SequenceStore:
        assert self._seqs is not None, "PublishingPath is not open"
        return self._seqs

    @property
    def outbox(self) -> Outbox:
        assert self._outbox is not None, "PublishingPath is not open"
        return self._outbox

    @property
    def emitter(self) -> Emitter:
        assert self._emitter is not None, "PublishingPath is not open"
        return self._emitter

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None, "PublishingPath is not open"
        return self._publisher

    @property
    def receipts(self) -> ReceiptProcessor:
        assert self._receipts is not None, "PublishingPath is not open"
        return self._receipts

    @property
    def transport(self) -> Transport:
        assert self._transport is not None, "PublishingPath is not open"
        return self._transport

    @property
    def delivery(self) -> Delivery:
        """When the outbox forgets an envelope (module docstring), fixed for the path's life."""
        assert self._delivery is not None, "PublishingPath is not open"
        return self._delivery

    @property
    def broker(self) -> str:
        """``host:port`` of the broker, for log lines."""
        return f"{self.transport_config.host}:{self.transport_config.port}"

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> PublishingPath:
        """Open the sequence store, then the outbox; build the emitter, publisher, receipt
        processor and transport (nothing connects yet)."""
        unit, config = self._unit, self._outbox_config
        delivery = delivery_mode(config, unit)
        with contextlib.ExitStack() as opened:  # closes both if anything below fails
            seqs = opened.enter_context(SequenceStore(unit.seq_path))
            outbox = opened.enter_context(
                Outbox(
                    self._outbox_path,
                    signer=unit.identity.public(),
                    max_bytes=config.max_bytes,
                    max_age_s=config.max_age_s,
                    max_db_bytes=config.max_db_bytes,
                    recover_corrupt=config.recover_corrupt,
                    reserve_bytes=config.reserve_bytes,
                    delete_on=delivery,
                    receipt_timeout_s=config.receipt_timeout_s,
                )
            )
            emitter = Emitter(
                unit,
                self._make_builder(seqs),
                outbox,
                lambda: None,
                self.stats,
                on_enqueued=self._on_enqueued,
            )
            publisher = Publisher(outbox, stats=self.stats, on_delivered=emitter.delivered)
            emitter.wake = publisher.wake
            receipts = ReceiptProcessor(
                unit.identity,
                unit.backend,
                outbox,
                on_receipted=emitter.receipted,
                on_rejected=self._receipt_rejected,
            )
            transport = Transport(
                self.transport_config,
                on_acked=publisher.on_acked,
                on_rejected=publisher.on_rejected,
                on_state=self._state,
                on_command=self._on_command,
                on_receipt=receipts.handle if delivery == "receipt" else None,
                will=self._seal_will if self._status else None,
            )
            publisher.bind(transport)
            opened.pop_all()
        self._seqs, self._outbox, self._delivery = seqs, outbox, delivery
        self._emitter, self._publisher, self._receipts = emitter, publisher, receipts
        self._transport = transport
        return self

    def start(self) -> None:
        """Connect in the background (agent.transport), then start the publisher thread.
        Raises :class:`~contract.errors.ConfigError` naming a TLS file that cannot be loaded
        (nothing is started then)."""
        self.transport.start()
        self._thread_stop.clear()
        self._thread = threading.Thread(
            target=self.publisher.run, args=(self._thread_stop,), name="publisher"
        )
        self._thread.start()

    def drain(self, timeout_s: float | None) -> int:
        """Wait until the outbox is empty (every envelope receipted, or PUBACKed in puback
        mode), at most ``timeout_s`` (None: as long as it takes), waking the publisher while
        connected. Returns the envelopes left; a timeout with some left logs a warning."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        outbox, publisher, transport = self.outbox, self.publisher, self.transport
        while deadline is None or time.monotonic() < deadline:
            if outbox.stats().depth == 0:
                return 0
            if not transport.connected:
                time.sleep(0.1)
                continue
            publisher.wake()
            time.sleep(0.02)
        left = outbox.stats().depth
        if left:
            logger.warning("stopping with %d envelope(s) in the outbox", left)
        return left

    def stop(self) -> None:
        """Disconnect (with ``status`` the broker publishes the "offline" will), then stop and
        join the publisher thread. Idempotent; in-flight rows are requeued for the next start."""
        if self._transport is not None:
            self._transport.stop(publish_will=self._status)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._thread_stop.set()
            self.publisher.wake()
            thread.join(JOIN_TIMEOUT_S)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`stop` if still running, then close the outbox and the sequence store."""
        try:
            self.stop()
        finally:
            outbox, seqs, self._outbox, self._seqs = self._outbox, self._seqs, None, None
            try:
                if outbox is not None:
                    outbox.close()
            finally:
                if seqs is not None:
                    seqs.close()

    # --- emitting -------------------------------------------------------------------------------

    def emit(self, make: Callable[[EventBuilder], Event], captured_at: float | None = None) -> None:
        """Build an event, seal it, enqueue it durably (:meth:`Emitter.emit`)."""
        self.emitter.emit(make, captured_at)

    # --- transport callbacks (dispatcher thread) ------------------------------------------------

    def _state(self, event: ConnectionEvent) -> None:
        self.publisher.on_state(event)
        if self._on_state is not None:
            self._on_state(event)
        if self._status and event.state is ConnectionState.CONNECTED:
            delivery = self.delivery
            self.emitter.emit(lambda b: b.status(LinkState.ONLINE, delivery=delivery))

    def _seal_will(self) -> SealedEnvelope:
        emitter = self.emitter
        envelope = emitter.seal(emitter.builder.status(LinkState.OFFLINE))
        if self._on_will is not None:
            self._on_will(envelope)
        return envelope

    def _receipt_rejected(self, reason: str) -> None:
        if reason != "ReplayError":  # a QoS 1 redelivery of a receipt already applied
            self.stats.drop(f"receipt_rejected.{reason}")
