"""`camveil chaos`: sealed events over a real broker while the broker restarts and the unit is
killed; count what was sent, received, lost and duplicated.

Three parts, all real code:

- the **unit** (:func:`run_unit`, a process of its own: ``python -m tools.chaos unit ...``) is
  the daemon's publishing path without the camera: :class:`~agent.events.EventBuilder` with the
  persisted :class:`~agent.sequence.SequenceStore` -> :class:`agent.publisher.Emitter` (seal,
  durable :class:`~agent.outbox.Outbox`) -> :class:`~agent.publisher.Publisher` ->
  :class:`~agent.transport.Transport`, with the daemon's "online" status on every connect and
  a freshly sealed "offline" last will. A synthetic source emits presence events at a fixed
  rate. After each durable enqueue the unit appends ``<seq> <kind>`` to its log (``kind``:
  ``event``, ``status``, or ``will`` for a sealed last will); a restarted unit counts the
  events in the log and emits only the rest. When all are emitted it waits for the outbox to
  drain, disconnects (the broker publishes its will) and exits 0.
- the **listener**: :class:`dashboard.listener.Listener` (verify, decrypt, replay window,
  :class:`~dashboard.listener.SqliteDedupe`) with a persistent session and a plain subscription
  (mosquitto forgets shared subscriptions across restarts, see ListenerConfig.shared).
- the **orchestrator** (:func:`run_chaos`): starts mosquitto with a throw-away dev PKI
  (:func:`tools.devpki.make_dev_pki`, :class:`provisioning.devbroker.BrokerProcess`) or
  uses an existing broker and PKI, starts the listener and the unit, and at random points of
  the unit's progress (event counts drawn with ``seed``) restarts the broker (SIGTERM, start)
  or SIGKILLs the unit and starts it again on the same state directory.

Counting: ``sent`` = the seqs the unit logged as enqueued (events and "online" statuses), plus
the rare seq received but not logged (the unit was killed between the enqueue and the log
line); ``lost`` = sent but never delivered to the application; ``duplicated`` = extra
deliveries to the application after the listener's de-duplication (must be 0);
``raw_duplicates`` = redeliveries the listener saw and dropped. Last wills are counted apart:
the broker publishes them only when a connection ends, so most sealed wills are never sent.

Faults: broker restarts are clean (SIGTERM: mosquitto saves its sessions and queues).
``broker_kills`` SIGKILL the broker: mosquitto persists only every ``autosave_interval`` seconds,
so it loses messages it had already acknowledged. ``broker_wipes`` SIGKILL it and delete its
persistence file (a broker host that lost its disk). ``backend_kills`` stop the listener and
start a new one after a pause. With receipts (``delivery = "receipt"``, the default, as on a
unit) the unit keeps every envelope until the listener's receipt names it and publishes again
after ``receipt_timeout_s`` without one, so none of these faults may lose an event; with
``delivery = "puback"`` the unit forgets on the broker's PUBACK and broker crashes lose events.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from agent.config import MqttConfig
from agent.events import Event, EventBuilder
from agent.outbox import DEFAULT_RECEIPT_TIMEOUT_S
from agent.transport import TransportConfig
from agent.unitstate import UnitState, parse_broker_url
from contract.certclaim import claim_client_cert, key_for
from contract.envelope.keys import load_identity, load_peers
from contract.errors import CamveilError, ConfigError
from dashboard.listener import Listener, ListenerConfig, Opener, Received, SqliteDedupe
from dashboard.receipts import Receipter

logger = logging.getLogger(__name__)

DEVICE: Final = "cv-chaos-0001"
ZONE: Final = "entrance"


# --- the unit process ---------------------------------------------------------------------------


def read_log(path: Path) -> list[tuple[int, str]]:
    """``(seq, kind)`` of every complete line of a unit log (a torn last line is ignored)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    out: list[tuple[int, str]] = []
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1]))
    return out


# Chaos restarts the broker every few seconds; the shipped 60 s reconnect ceiling would only make
# the run slower, not test anything else. Every other setting is the daemon's default.
CHAOS_RECONNECT_MIN_S: Final = 0.25
CHAOS_RECONNECT_MAX_S: Final = 2.0


def unit_transport_config(unit: UnitState, broker_url: str | None) -> TransportConfig:
    """The unit's transport exactly as the daemon builds it from a default ``[mqtt]`` section
    (in particular ``require_subscriber``), but for shorter reconnect delays: chaos must test
    what ships."""
    mqtt = MqttConfig()
    return unit.transport_config(
        broker_url or mqtt.broker,
        keepalive_s=mqtt.keepalive_s,
        reconnect_min_s=CHAOS_RECONNECT_MIN_S,
        reconnect_max_s=CHAOS_RECONNECT_MAX_S,
        max_outstanding=mqtt.max_outstanding,
        require_subscriber=mqtt.require_subscriber,
    )


def run_unit(
    state_dir: Path,
    log_path: Path,
    *,
    events: int,
    rate: float,
    broker_url: str | None,
    delivery: str = "receipt",
    receipt_timeout_s: float = DEFAULT_RECEIPT_TIMEOUT_S,
) -> int:
    """The unit side (see the module docstring). Returns 0 once everything is acknowledged."""
    from agent.events import LinkState, new_boot_id
    from agent.outbox import Outbox
    from agent.publisher import Emitter, Publisher
    from agent.receipts import ReceiptProcessor
    from agent.sequence import SequenceStore
    from agent.stats import PipelineStats
    from agent.transport import ConnectionEvent, ConnectionState, Transport

    unit = UnitState.load(state_dir)
    done = sum(1 for _, kind in read_log(log_path) if kind == "event")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    log_lock = threading.Lock()
    stats = PipelineStats()
    with (
        SequenceStore(unit.seq_path) as seqs,
        Outbox(
            unit.outbox_path,
            signer=unit.identity.public(),
            delete_on="puback" if delivery == "puback" else "receipt",
            receipt_timeout_s=receipt_timeout_s,
        ) as outbox,
    ):
        publisher = Publisher(outbox, stats=stats)
        builder = EventBuilder(unit.device_id, new_boot_id(), seqs)
        emitter = Emitter(unit, builder, outbox, publisher.wake, stats)

        def emit(make: Callable[[EventBuilder], Any], kind: str) -> None:
            with log_lock:  # one writer: the lines added are this call's
                n = len(emitter.enqueued)
                emitter.emit(make, time.time())
                for _, seq in emitter.enqueued[n:]:
                    os.write(fd, f"{seq} {kind}\n".encode())

        def seal_will() -> Any:
            with log_lock:
                envelope = emitter.seal(emitter.builder.status(LinkState.OFFLINE))
                os.write(fd, f"{envelope.seq} will\n".encode())
            return envelope

        def on_state(event: ConnectionEvent) -> None:
            publisher.on_state(event)
            if event.state is ConnectionState.CONNECTED:
                emit(lambda b: b.status(LinkState.ONLINE), "status")

        receipts = ReceiptProcessor(unit.identity, unit.backend, outbox)
        transport = Transport(
            unit_transport_config(unit, broker_url),
            on_acked=publisher.on_acked,
            on_rejected=publisher.on_rejected,
            on_state=on_state,
            on_receipt=receipts.handle if delivery == "receipt" else None,
            will=seal_will,
        )
        publisher.bind(transport)
        stop = threading.Event()
        pub_thread = threading.Thread(target=publisher.run, args=(stop,), name="publisher")
        pub_thread.start()
        transport.start()
        try:
            t0 = time.monotonic()
            for i in range(events - done):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                emit(_presence(time.time()), "event")
            while outbox.stats().depth > 0:
                publisher.wake()
                time.sleep(0.05)
        finally:
            transport.stop(publish_will=True)
            stop.set()
            publisher.wake()
            pub_thread.join(10.0)
            os.close(fd)
    return 0


def _presence(now: float) -> Callable[[EventBuilder], Event]:
    """A synthetic one-second presence window ending ``now``: one person, no face."""
    return lambda b: b.presence(now - 1.0, now, {ZONE: (1, 0)})


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosPlan:
    events: int = 1000
    broker_restarts: int = 5
    agent_kills: int = 3
    rate: float = 100.0
    """Events per second emitted by the unit (while it runs)."""
    seed: int | None = None
    settle_s: float = 30.0
    """After the unit is done: how long to wait for the last deliveries."""
    broker_kills: int = 0
    """SIGKILLs of our own broker (a crash: it loses what it took since its last autosave),
    each followed by a start."""
    broker_wipes: int = 0
    """SIGKILLs of our own broker with its persistence file deleted, then a start."""
    backend_kills: int = 0
    """Stops of the listener (the backend), a new one started after ``backend_down_s``."""
    backend_down_s: float = 2.0
    delivery: str = "receipt"
    """The unit's ``[outbox] delete_on``: ``receipt`` or ``puback``."""
    receipt_timeout_s: float = 10.0
    """The unit's ``[outbox] receipt_timeout_s`` (60 on a unit; shorter here, for short runs)."""

    def __post_init__(self) -> None:
        faults = (
            self.broker_restarts,
            self.agent_kills,
            self.broker_kills,
            self.broker_wipes,
            self.backend_kills,
        )
        if self.delivery not in ("receipt", "puback"):
            raise ConfigError(f"chaos --delivery {self.delivery!r}: use receipt or puback")
        if not 0 <= self.backend_down_s <= 86400:
            raise ConfigError("chaos --backend-down: seconds in [0, 86400]")
        if min(faults) < 0 or self.events < 1:
            raise ConfigError("chaos: need --events >= 1, --broker-restarts/--agent-kills >= 0")
        if not 0 < self.rate <= 10_000:
            raise ConfigError(f"chaos --rate {self.rate}: use a value in (0, 10000]")


@dataclass(frozen=True)
class External:
    """An existing broker and PKI (a `camveil dev-pki` folder layout) instead of our own."""

    broker_url: str | None
    pki: Path
    unit_state: Path | None = None
    restart_cmd: str | None = None
    """Shell-free command that restarts the broker (e.g. ``systemctl restart mosquitto``)."""


@dataclass
class ChaosReport:
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    raw_duplicates: int = 0
    events: int = 0
    statuses: int = 0
    sent_unlogged: int = 0
    wills_sealed: int = 0
    wills_received: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    broker_restarts: int = 0
    broker_kills: int = 0
    broker_wipes: int = 0
    backend_kills: int = 0
    agent_kills: int = 0
    delivery: str = "receipt"
    receipts_sent: int = 0
    lost_by_fault: dict[str, int] = field(default_factory=dict)
    """Lost seqs attributed to the last fault before them (by kind), to see which fault loses."""
    lost_seqs: list[int] = field(default_factory=list)
    broker_drop_notices: int | None = None
    """Our mosquitto's "Outgoing messages are being dropped" log lines: it dropped messages
    for a subscriber whose queue was full (``max_queued_messages``), after PUBACKing them to
    the unit. None when the broker is not ours."""
    timings: dict[str, float | None] = field(default_factory=dict)
    seed: int = 0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _Collector:
    """The application behind the listener: counts deliveries per (device, seq)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.deliveries: Counter[int] = Counter()
        self.kinds: dict[int, str] = {}
        self.changed = threading.Event()

    def __call__(self, received: Received) -> None:
        state = received.message.get("body", {})
        offline = received.type == "status" and isinstance(state, dict)
        offline = offline and state.get("state") == "offline"
        with self._lock:
            self.deliveries[received.seq] += 1
            self.kinds[received.seq] = "will" if offline else received.type
        self.changed.set()

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self.deliveries)


@dataclass(frozen=True)
class _Setup:
    broker_url: str
    ca: Path
    cert: Path
    key: Path
    identity: Path
    devices: Path
    unit_state: Path


def _setup(work: Path, external: External | None) -> tuple[_Setup, Any]:
    """Keys and broker: ours (dev PKI + mosquitto, returned started) or the given ones."""
    if external is None:
        from provisioning.devbroker import BrokerProcess, ProbeClient, free_port
        from tools.devpki import make_dev_pki

        dev = make_dev_pki(work / "pki", device_id=DEVICE, port=free_port())
        backend = dev.backend
        broker = BrokerProcess(
            dev.broker.config,
            port=parse_broker_url(dev.broker_url).port,
            probe=ProbeClient(backend.ca, backend.cert, backend.key),
            log_path=work / "mosquitto.log",
        )
        broker.start()
        return _Setup(
            dev.broker_url,
            backend.ca,
            backend.cert,
            backend.key,
            backend.identity,
            dev.devices,
            dev.unit_dir,
        ), broker
    root = external.pki
    certs = sorted((root / "backend").glob("backend-*.crt"))
    if not certs:
        raise ConfigError(f"chaos --pki {root}: no backend/backend-*.crt (a dev-pki folder)")
    # a certificate no other process (camveil listen) holds: the broker takes the client id
    # from it, and two connections with one certificate disconnect each other
    claimed = claim_client_cert(
        [(c, key_for(c)) for c in certs],
        hint=f"make more with `camveil dev-pki --clients N {root} --force`",
    )
    unit_state = external.unit_state or root / "unit"
    url = external.broker_url or UnitState.load(unit_state).broker_url
    return _Setup(
        url,
        root / "ca.crt",
        claimed.cert,
        claimed.key,
        root / "backend" / "identity.cbor",
        root / "backend" / "devices.cbor",
        unit_state,
    ), None


def _thresholds(rng: random.Random, count: int, events: int) -> list[int]:
    """``count`` random points of progress (events logged) in [1, events - 1]."""
    return sorted(rng.randint(1, max(1, events - 1)) for _ in range(count))


def run_chaos(
    plan: ChaosPlan,
    *,
    work_dir: Path | None = None,
    external: External | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Run the experiment (module docstring) and return the counts and timings."""
    seed = plan.seed if plan.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not cryptography
    if external is not None and plan.broker_restarts and not external.restart_cmd:
        raise ConfigError("chaos with --broker needs --broker-restart-cmd for broker restarts")
    if external is not None and plan.broker_kills:
        raise ConfigError("chaos --broker-kills needs our own broker (no --broker/--pki)")
    say = progress or (lambda _msg: None)
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="camveil-chaos-")))
        else:
            work = work_dir
            work.mkdir(parents=True, exist_ok=True)
        t_start = time.monotonic()
        setup, broker = _setup(work, external)
        if broker is not None:
            stack.callback(broker.stop)

        def restart_broker() -> None:
            if broker is not None:
                broker.restart()
            else:
                assert external is not None and external.restart_cmd is not None
                subprocess.run(shlex.split(external.restart_cmd), check=True)  # noqa: S603

        address = parse_broker_url(setup.broker_url)
        collector = _Collector()
        dedupe = SqliteDedupe(work / "dedupe.db")
        stack.callback(dedupe.close)
        identity, peers = load_identity(setup.identity), load_peers(setup.devices)
        opener = Opener(identity, peers, dedupe)
        receipts_sent = [0]

        def start_backend() -> tuple[Listener, Receipter | None]:
            receipter: Receipter | None = None
            if plan.delivery == "receipt":
                receipter = Receipter(
                    identity, lambda: peers, lambda e: listener.publish_receipt(e)
                )
            listener = Listener(
                ListenerConfig(
                    address.host,
                    address.port,
                    setup.ca,
                    setup.cert,
                    setup.key,
                    client_id=f"camveil-chaos-{os.getpid()}",
                    shared=False,
                ),
                opener,
                collector,
                receipter=receipter,
            )
            listener.start()
            if receipter is not None:
                receipter.start()
            if not listener.subscribed.wait(15.0):
                raise CamveilError(f"chaos: the listener could not subscribe at {setup.broker_url}")
            return listener, receipter

        def stop_backend() -> None:
            listener, receipter = backend
            if receipter is not None:
                receipter.stop()
                receipts_sent[0] += receipter.stats.sent
            listener.stop()

        backend = start_backend()
        stack.callback(lambda: stop_backend())
        t_ready = time.monotonic()

        log_path = work / "unit.log"
        unit_out = stack.enter_context((work / "unit.out").open("ab"))
        argv = [sys.executable, "-m", "tools.chaos", "unit", "--state", str(setup.unit_state),
                "--log", str(log_path), "--events", str(plan.events), "--rate", repr(plan.rate),
                "--broker", setup.broker_url, "--delivery", plan.delivery,
                "--receipt-timeout", repr(plan.receipt_timeout_s)]  # fmt: skip

        unit = _UnitProcess(argv, unit_out)
        unit.start()
        stack.callback(unit.kill)
        actions = sorted(
            [(n, "restart") for n in _thresholds(rng, plan.broker_restarts, plan.events)]
            + [(n, "kill") for n in _thresholds(rng, plan.agent_kills, plan.events)]
            + [(n, "crash") for n in _thresholds(rng, plan.broker_kills, plan.events)]
            + [(n, "wipe") for n in _thresholds(rng, plan.broker_wipes, plan.events)]
            + [(n, "backend") for n in _thresholds(rng, plan.backend_kills, plan.events)]
        )
        fault_marks: list[tuple[int, str]] = []  # (events logged, fault) in order
        report = ChaosReport(seed=seed)
        restart_times: list[float] = []
        first_event: float | None = None
        for logged in _progress(log_path, unit.running):
            if first_event is None and logged > 0:
                first_event = time.monotonic()
            while actions and logged >= actions[0][0]:
                _, action = actions.pop(0)
                fault_marks.append((logged, action))
                if action == "kill":
                    unit.kill()
                    unit.start()
                    report.agent_kills += 1
                    say(f"killed the unit at {logged} events")
                elif action == "crash":
                    assert broker is not None
                    broker.kill()
                    broker.start()
                    report.broker_kills += 1
                    say(f"killed (SIGKILL) and started the broker at {logged} events")
                elif action == "wipe":
                    assert broker is not None
                    broker.kill()
                    wiped = _wipe_store(broker.config)
                    broker.start()
                    report.broker_wipes += 1
                    say(f"killed the broker, deleted its store ({wiped}) at {logged} events")
                elif action == "backend":
                    stop_backend()
                    time.sleep(plan.backend_down_s)
                    backend = start_backend()
                    report.backend_kills += 1
                    say(f"stopped the backend for {plan.backend_down_s:.0f} s at {logged} events")
                else:
                    t = time.monotonic()
                    restart_broker()
                    restart_times.append(time.monotonic() - t)
                    report.broker_restarts += 1
                    say(f"restarted the broker at {logged} events")
            if logged >= plan.events and not actions:
                break
        t_emitted = time.monotonic()
        deadline = time.monotonic() + plan.settle_s + plan.events / plan.rate
        while unit.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if unit.running() or unit.returncode != 0:
            tail = (work / "unit.out").read_text(errors="replace").splitlines()[-15:]
            raise CamveilError("chaos: the unit did not finish cleanly:\n" + "\n".join(tail))
        t_drained = time.monotonic()
        logged_seqs = read_log(log_path)
        sent = {s for s, kind in logged_seqs if kind in ("event", "status")}
        wills = {s for s, kind in logged_seqs if kind == "will"}
        first_seq = min(s for s, _ in logged_seqs)
        settle = time.monotonic() + plan.settle_s
        while not sent <= collector.seqs() and time.monotonic() < settle:
            collector.changed.wait(0.2)
            collector.changed.clear()
        time.sleep(0.5)  # late redeliveries still count as duplicates
        t_end = time.monotonic()

        got = collector.seqs()
        # enqueued (the commit reached the WAL) but killed before the log line was written
        unlogged = {
            s for s in got - sent - wills if s >= first_seq and collector.kinds.get(s) != "will"
        }
        sent |= unlogged
        lost = sorted(sent - got)
        report.sent = len(sent)
        report.events = sum(1 for _, kind in logged_seqs if kind == "event")
        report.statuses = sum(1 for _, kind in logged_seqs if kind == "status")
        report.sent_unlogged = len(unlogged)
        report.received = len(sent & got)
        report.lost = len(lost)
        report.lost_seqs = lost[:50]
        report.delivery = plan.delivery
        report.lost_by_fault = _attribute(lost, logged_seqs, fault_marks)
        report.duplicated = sum(n - 1 for n in collector.deliveries.values() if n > 1)
        report.raw_duplicates = opener.stats.duplicates
        _, receipter = backend
        report.receipts_sent = receipts_sent[0] + (receipter.stats.sent if receipter else 0)
        report.bad = dict(opener.stats.bad)
        report.wills_sealed = len(wills)
        report.wills_received = len(got & wills)
        if broker is not None:
            report.broker_drop_notices = broker.log().count("Outgoing messages are being dropped")
        report.timings = {
            "setup_s": round(t_ready - t_start, 2),
            "flow_s": round(t_emitted - (first_event or t_emitted), 2),
            "drain_s": round(t_drained - t_emitted, 2),
            "settle_s": round(t_end - t_drained, 2),
            "total_s": round(t_end - t_start, 2),
            "broker_restart_max_s": round(max(restart_times), 2) if restart_times else None,
        }
        return report


def _wipe_store(config: Path) -> str:
    """Delete the persistence file named by a mosquitto config (the broker is not running)."""
    text = config.read_text()
    location = next(
        (line.split(None, 1)[1].strip() for line in text.splitlines()
         if line.startswith("persistence_location ")),
        str(config.parent) + "/",
    )  # fmt: skip
    store = Path(location) / "mosquitto.db"
    existed = store.exists()
    store.unlink(missing_ok=True)
    return f"{store.name} {'deleted' if existed else 'not yet written'}"


def _attribute(
    lost: list[int], logged: list[tuple[int, str]], marks: list[tuple[int, str]]
) -> dict[str, int]:
    """Each lost seq, counted under the last fault before its event was logged ("none" if it
    came before every fault)."""
    events_before: dict[int, int] = {}
    n = 0
    for seq, kind in logged:
        if kind == "event":
            n += 1
        events_before[seq] = n
    out: dict[str, int] = {}
    for seq in lost:
        at = events_before.get(seq, 0)
        fault = "none"
        for mark, kind in marks:
            if mark <= at:
                fault = kind
        out[fault] = out.get(fault, 0) + 1
    return out


class _UnitProcess:
    """The unit subprocess: started, SIGKILLed, started again on the same state."""

    def __init__(self, argv: list[str], out: IO[bytes]) -> None:
        self._argv = argv
        self._out = out
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._argv, stdout=self._out, stderr=subprocess.STDOUT)  # noqa: S603

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _progress(log_path: Path, running: Callable[[], bool]) -> Iterator[int]:
    """Events logged so far, polled every 10 ms, until the unit exits on its own."""
    offset, events, tail = 0, 0, b""
    while True:
        try:
            with log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        data = tail + chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        events += sum(1 for line in lines if line.endswith(b" event"))
        yield events
        if not running():
            return
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.chaos unit ...``: the unit process of a chaos run."""
    parser = argparse.ArgumentParser(prog="python -m tools.chaos")
    sub = parser.add_subparsers(dest="role", required=True)
    unit = sub.add_parser("unit", help="the unit process (started by camveil chaos)")
    unit.add_argument("--state", type=Path, required=True)
    unit.add_argument("--log", type=Path, required=True)
    unit.add_argument("--events", type=int, required=True)
    unit.add_argument("--rate", type=float, required=True)
    unit.add_argument("--broker")
    unit.add_argument("--delivery", choices=("receipt", "puback"), default="receipt")
    unit.add_argument("--receipt-timeout", type=float, default=DEFAULT_RECEIPT_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_unit(
        args.state,
        args.log,
        events=args.events,
        rate=args.rate,
        broker_url=args.broker,
        delivery=args.delivery,
        receipt_timeout_s=args.receipt_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
