"""The orchestrator of a chaos run (:func:`run_chaos`): starts mosquitto with a throw-away dev
PKI (:func:`tools.devpki.make_dev_pki`, :class:`provisioning.devbroker.BrokerProcess`) or uses an
existing broker and PKI, starts the listener (the backend) and the unit process
(:mod:`tools.chaos.unit`), applies the faults of :func:`tools.chaos.faults.schedule` as the
unit's log shows progress, waits for the last deliveries and counts
(:func:`tools.chaos.report.tally`).

The **listener** is :class:`dashboard.listener.Listener` (verify, decrypt, replay window,
:class:`~dashboard.listener.SqliteDedupe`) with a persistent session and a plain subscription
(mosquitto forgets shared subscriptions across restarts, see ListenerConfig.shared), and with
receipts a :class:`dashboard.receipts.Receipter`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from agent.unitstate import UnitState, parse_broker_url
from contract.certclaim import claim_client_cert, key_for
from contract.envelope.keys import load_identity, load_peers
from contract.errors import CamveilError, ConfigError
from dashboard.listener import Listener, ListenerConfig, Opener, SqliteDedupe
from dashboard.receipts import Receipter
from tools.chaos.faults import ChaosPlan, External, schedule, wipe_store
from tools.chaos.report import ChaosReport, Collector, tally
from tools.chaos.unit import read_log

DEVICE: Final = "cv-chaos-0001"


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
        collector = Collector()
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
        actions = schedule(plan, rng)
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
                    wiped = wipe_store(broker.config)
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
        settle = time.monotonic() + plan.settle_s
        while not sent <= collector.seqs() and time.monotonic() < settle:
            collector.changed.wait(0.2)
            collector.changed.clear()
        time.sleep(0.5)  # late redeliveries still count as duplicates
        t_end = time.monotonic()

        tally(report, logged_seqs, collector, fault_marks)
        report.delivery = plan.delivery
        report.raw_duplicates = opener.stats.duplicates
        _, receipter = backend
        report.receipts_sent = receipts_sent[0] + (receipter.stats.sent if receipter else 0)
        report.bad = dict(opener.stats.bad)
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
