"""The running agent: camera -> privacy pipeline -> sealed events -> outbox -> MQTT, and signed
commands back.

Threads and queues (everything else is owned by exactly one of them)::

    pipeline thread   camera.read -> detect (GuardedDetector: its own worker thread, timeout)
                      -> track -> redact -> FrameSink: presence windows, tamper every N frames,
                      latest RedactedFrame; events are sealed and enqueued right there
    publisher thread  Outbox rows (SQLite, durable) -> Transport.publish, oldest first;
                      woken by enqueue, PUBACK and connection events (agent.publisher)
    paho network + transport dispatcher threads (agent.transport): PUBACK -> Outbox.ack,
                      receipts -> Outbox.receipt, CONNECTED -> link report and status LED,
                      then status "online"; commands -> the command queue
    command thread    bounded queue of (topic, payload) -> CommandProcessor (open, replay
                      state saved, run, sealed ack)
    caller's thread   Daemon.run: start, health event every interval, stop

The sequence store, outbox, publisher thread, transport and receipts are one
:class:`~agent.publishing.PublishingPath` (also used by the chaos tool and the envelope bench).
Start: the path's stores, enrolment, command processor, frame path, status LED, then the path's
transport and publisher thread, the command thread, the pipeline thread. Stop, in order: the
pipeline thread (its sink flushed), a last health event, the path drains (``drain_timeout_s``),
the command thread, the path disconnects with the "offline" will and joins its publisher thread;
then the LED, the frame path, enrolment, the outbox and the sequence store close.

Only :class:`~agent.privacy.redact.RedactedFrame` reaches the sink, only events built from it
are sealed (agent.events), and only :class:`~contract.envelope.SealedEnvelope` enters the outbox and
the transport; each of those refuses anything else. A ``set_config`` or ``restart_pipeline``
builds the new camera/detector/pipeline first, swaps it in between two frames, and puts the old
one back if anything after the swap fails (agent.commands for the wire format).

The package, by job:

- :mod:`agent.daemon.daemon`: :class:`Daemon`, the wiring, the threads and their shutdown
  order, the command handlers, the transport callbacks (link report, status LED), the watchdog
  probes;
- :mod:`agent.daemon.parts`: one generation of the frame path and its swap between two frames;
- :mod:`agent.daemon.remote`: the configuration a ``set_config`` asks for, checked;
- :mod:`agent.daemon.health`: the health event and the summary of a run.
"""

from agent.daemon.daemon import COMMAND_QUEUE_SIZE, PUBLISH_FAILING_S, Daemon
from agent.daemon.health import DaemonSummary, HealthReporter, model_hashes
from agent.daemon.parts import Parts, PartsSlot

__all__ = [
    "COMMAND_QUEUE_SIZE",
    "PUBLISH_FAILING_S",
    "Daemon",
    "DaemonSummary",
    "HealthReporter",
    "Parts",
    "PartsSlot",
    "model_hashes",
]
