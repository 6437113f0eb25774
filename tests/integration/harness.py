"""The integration harness of the agent: one unit (the real daemon on a replay camera), one
backend listener and one operator, on one broker (test_daemon, test_wire, test_cmd). The
``harness`` fixture is in conftest.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from broker import Mosquitto, TestClient, TestPki
from PIL import Image

from agent.config import load_with_remote
from agent.daemon import Daemon, DaemonSummary
from agent.unitstate import UnitState
from contract.commands import seal_command
from contract.envelope.keys import Identity, PeerKeys, ack_reader
from contract.envelope.seal import SealedEnvelope
from contract.topics import ack_topic
from dashboard.listener import (
    Listener,
    ListenerConfig,
    MemoryDedupe,
    Opener,
    Received,
    SqliteDedupe,
)
from dashboard.receipts import Receipter
from tools.devpki import write_unit_state

DEVICE = "cv-it-0001"
HOST = "127.0.0.1"


def astronaut(size: tuple[int, int] = (640, 480)) -> npt.NDArray[np.uint8]:
    from skimage import data

    photo = data.astronaut()  # type: ignore[no-untyped-call]
    return np.asarray(Image.fromarray(photo).convert("RGB").resize(size))


def config_text(photos: Path, unit_dir: Path, **events: Any) -> str:
    settings = {"presence_window_s": 1.0, "health_interval_s": 1.0, **events}
    lines = "\n".join(f"{k} = {v!r}" for k, v in settings.items())
    return (
        f'[camera]\nkind = "replay"\nsource = "{photos}"\nloop = true\nrealtime = true\n'
        f'fps = 4.0\n\n[mqtt]\nenabled = true\nstate_dir = "{unit_dir}"\n'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n\n[events]\n{lines}\n"
    )


@dataclass
class Harness:
    """One unit, one backend listener, one operator, on one broker."""

    tmp: Path
    broker: Mosquitto
    pki: TestPki
    backend: Identity = field(default_factory=lambda: Identity.generate("backend"))
    operator: Identity = field(default_factory=lambda: Identity.generate("operator"))
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    daemon: Daemon | None = None
    thread: threading.Thread | None = None
    summaries: list[DaemonSummary] = field(default_factory=list)
    _cmd_seq: int = field(default_factory=lambda: int(time.time() * 1000))

    def setup(self, shared: bool = True) -> None:
        self.unit_dir = self.tmp / "unit"
        url = f"mqtts://{HOST}:{self.broker.port}"
        self.device = write_unit_state(
            self.unit_dir,
            ca=self.pki.ca,
            device_id=DEVICE,
            broker_url=url,
            backend=self.backend.public(),
            operator=self.operator.public(),
        )
        photos = self.tmp / "photos"
        photos.mkdir()
        Image.fromarray(astronaut()).save(photos / "astronaut.png")
        self.config_path = self.tmp / "camveil.toml"
        self.config_path.write_text(config_text(photos, self.unit_dir))
        client = self.pki.backend("dashboard")
        assert client.cert is not None and client.key is not None
        self.opener = Opener(
            self.backend, PeerKeys([self.device.public()]), SqliteDedupe(self.tmp / "seen.db")
        )
        # the backend receipts what it stored, as `camveil listen` and the dashboard do: the unit
        # (delete_on = "receipt", the default) forgets an envelope only then
        devices = PeerKeys([self.device.public()])
        self.receipter = Receipter(
            self.backend, lambda: devices, lambda e: self.listener.publish_receipt(e)
        )
        self.listener = Listener(
            ListenerConfig(
                host=HOST,
                port=self.broker.port,
                ca_file=client.ca,
                cert_file=client.cert,
                key_file=client.key,
                group="it",
                client_id=f"it-listen-{self.tmp.name}",
                shared=shared,
            ),
            self.opener,
            self._on_received,
            receipter=self.receipter,
        )
        self.listener.start()
        self.receipter.start()
        assert self.listener.subscribed.wait(10), "listener not subscribed"
        # acks are sealed to the operator, not the backend: read them as `camveil cmd` does
        self.ack_opener = Opener(
            ack_reader(self.operator), PeerKeys([self.device.public()]), MemoryDedupe()
        )
        self.ack_client = TestClient(
            self.pki.operator("console"), self.broker.port, client_id=f"it-acks-{self.tmp.name}"
        )
        self.ack_client.connect()
        assert not self.ack_client.subscribe(ack_topic(DEVICE)).is_failure
        self._acks_stop = threading.Event()
        self._ack_thread = threading.Thread(target=self._read_acks, name="acks")
        self._ack_thread.start()

    def _read_acks(self) -> None:
        while not self._acks_stop.is_set():
            message = self.ack_client.expect(timeout=0.1)
            if message is None:
                continue
            received = self.ack_opener.open(message.topic, bytes(message.payload))
            if received is not None:
                self._on_received(received)

    def _on_received(self, received: Received) -> None:
        with self.cond:
            self.received.append(received)
            self.cond.notify_all()

    # --- the agent -------------------------------------------------------------------------

    def start_agent(self) -> Daemon:
        config, _, overlay = load_with_remote(self.config_path)
        daemon = Daemon(
            config,
            UnitState.load(self.unit_dir),
            config_path=self.config_path,
            remote_overlay=overlay,
        )
        self.daemon = daemon
        self.thread = threading.Thread(target=self._run, args=(daemon,), name="daemon")
        self.thread.start()
        assert daemon.ready.wait(30), "daemon did not start"
        transport = daemon.transport
        assert transport is not None
        assert transport.wait_subscribed(15), "daemon not subscribed to its commands"
        return daemon

    def _run(self, daemon: Daemon) -> None:
        self.summaries.append(daemon.run())

    def stop_agent(self) -> DaemonSummary:
        assert self.daemon is not None and self.thread is not None
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"
        self.daemon = None
        return self.summaries[-1]

    def close(self) -> None:
        if self.daemon is not None:
            self.stop_agent()
        self.receipter.stop()
        self.listener.stop()
        self._acks_stop.set()
        self._ack_thread.join(5)
        self.ack_client.close()

    # --- waiting and commanding --------------------------------------------------------------

    def wait_for(
        self, pred: Callable[[Received], bool], timeout: float = 20.0, after: int = 0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.received[after:]:
                    if pred(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [(r.type, r.seq) for r in self.received[-20:]]
                    raise AssertionError(f"no matching message in {timeout}s; last: {kinds}")
                self.cond.wait(left)

    def command(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        command_id: str = "c1",
        operator: Identity | None = None,
        expires_in: int = 60,
    ) -> SealedEnvelope:
        self._cmd_seq += 1
        return seal_command(
            name,
            command_id=command_id,
            device=self.device.public(),
            operator=operator or self.operator,
            seq=self._cmd_seq,
            expires_at=int(time.time()) + expires_in,
            args=args,
        )

    def publish(self, envelope: SealedEnvelope) -> None:
        with TestClient(self.pki.operator("console-2"), self.broker.port) as client:
            rc = client.publish(envelope.topic, envelope.data)
            assert not rc.is_failure, rc

    def ack_for(self, envelope: SealedEnvelope, timeout: float = 20.0) -> dict[str, Any]:
        r = self.wait_for(
            lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == envelope.seq,
            timeout,
        )
        return dict(r.message["body"])
