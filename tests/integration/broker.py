"""A real mosquitto for integration tests: certificates, config, start/stop/restart/kill.

Not a test module: :mod:`conftest` builds fixtures from it, and later tests (outbox chaos,
dashboard) use :class:`Mosquitto` directly. The broker runs from ``/usr/sbin/mosquitto`` (or
``$PATH``) with the config :mod:`provisioning.broker` renders, on a free loopback port, with all
state in a temporary directory.
"""

from __future__ import annotations

import os
import pwd
import queue
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from contract import errors
from contract.errors import CamveilError
from provisioning import broker as broker_config
from provisioning import devbroker, pki
from provisioning.devbroker import HOST, INSTALL_HINT, free_port

__all__ = ["HOST", "INSTALL_HINT", "free_port"]


def mosquitto_binary() -> str:
    """Path of the mosquitto executable; AssertionError with the install hint when missing (the
    integration tests fail, never skip, without a broker)."""
    try:
        return devbroker.mosquitto_binary()
    except CamveilError:
        raise AssertionError(INSTALL_HINT) from None


@dataclass(frozen=True)
class ClientFiles:
    """PEM files a client connects with."""

    name: str  # certificate CN = MQTT username
    ca: Path
    cert: Path | None  # None: connect without a client certificate
    key: Path | None


@dataclass
class TestPki:
    """A CA and the certificates made from it, written under ``directory``."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    ca: pki.Issued
    server: pki.Issued
    ca_file: Path
    _clients: dict[str, ClientFiles] = field(default_factory=dict)

    @classmethod
    def create(
        cls, directory: Path, server_names: tuple[str, ...] = (), loopback: bool = True
    ) -> TestPki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca("camveil test CA")
        ca_file = directory / "ca.crt"
        pki.write_cert(ca_file, ca.cert)
        server = pki.make_server_cert(ca, server_names, loopback=loopback)
        return cls(directory, ca, server, ca_file)

    def with_server(self, server_names: tuple[str, ...], loopback: bool = False) -> TestPki:
        """The same CA and client certificates, another broker certificate."""
        server = pki.make_server_cert(self.ca, server_names, loopback=loopback)
        return TestPki(self.directory, self.ca, server, self.ca_file, self._clients)

    def _write(self, stem: str, issued: pki.Issued) -> ClientFiles:
        files = pki.write_issued(self.directory, stem, issued)
        client = ClientFiles(issued.common_name, self.ca_file, files.cert, files.key)
        self._clients[stem] = client
        return client

    def device(self, device_id: str) -> ClientFiles:
        """Certificate for ``device_id``, made the way a unit gets one (key, CSR, signature)."""
        stem = f"device-{device_id}"
        if stem not in self._clients:
            key = pki.make_device_key()
            cert = pki.sign_device_csr(self.ca, pki.make_csr(key, device_id))
            self._write(stem, pki.Issued(key, cert))
        return self._clients[stem]

    def backend(self, name: str) -> ClientFiles:
        stem = pki.backend_identity(name)
        if stem not in self._clients:
            self._write(stem, pki.make_backend_cert(self.ca, name))
        return self._clients[stem]

    def operator(self, name: str) -> ClientFiles:
        stem = pki.operator_identity(name)
        if stem not in self._clients:
            self._write(stem, pki.make_operator_cert(self.ca, name))
        return self._clients[stem]


#: backend and operator names the test brokers' ACL lists. The broker takes a client's id from its
#: certificate CN (``use_username_as_clientid``), so clients connected at the same time need
#: certificates of different names, or they disconnect each other.
BACKENDS = ("dashboard", "ingest", "ingest-2", "watcher")
OPERATORS = ("console", "console-2", "console-3")


class BrokerStartError(AssertionError):
    """mosquitto did not come up; the message holds the end of its log."""


class Mosquitto:
    """One mosquitto process on a fixed port with its state directory
    (:class:`provisioning.devbroker.BrokerProcess` with the config rendered from ``test_pki``).

    ``start()`` / ``stop()`` (SIGTERM, waits, saves persistence) / ``kill()`` (SIGKILL) /
    ``restart()`` may be called any number of times; port, certificates and persistence
    directory stay the same, so clients reconnect to the "same" broker. Also a context manager.
    """

    def __init__(
        self,
        state_dir: Path,
        test_pki: TestPki,
        *,
        port: int | None = None,
        backends: tuple[str, ...] = BACKENDS,
        operators: tuple[str, ...] = OPERATORS,
        persistence: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.pki = test_pki
        self.port = port if port is not None else free_port()
        self.backends = backends
        self.operators = operators
        self.persistence = persistence
        self.log_path = state_dir / "mosquitto.log"
        self.files: broker_config.BrokerFiles | None = None
        self._process: devbroker.BrokerProcess | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def configure(self) -> broker_config.BrokerFiles:
        settings = broker_config.BrokerSettings(
            port=self.port,
            bind_address=HOST,
            persistence=self.persistence,
            # as root, mosquitto would drop to user "mosquitto", which cannot read our 0600 key
            user=pwd.getpwuid(os.geteuid()).pw_name,
            autosave_interval=1,
        )
        self.files = broker_config.write_broker_state(
            self.state_dir,
            settings,
            ca_cert=self.pki.ca.cert,
            server=self.pki.server,
            backends=self.backends,
            operators=self.operators,
        )
        return self.files

    @property
    def process(self) -> devbroker.BrokerProcess:
        if self._process is None:
            files = self.files or self.configure()
            client = self.pki.backend(self.backends[0])
            assert client.cert is not None and client.key is not None
            self._process = devbroker.BrokerProcess(
                files.config,
                port=self.port,
                probe=devbroker.ProbeClient(client.ca, client.cert, client.key),
                log_path=self.log_path,
                cwd=self.state_dir,
            )
        return self._process

    def start(self, timeout: float = 10.0) -> None:
        mosquitto_binary()
        try:
            self.process.start(timeout)
        except errors.BrokerStartError as exc:
            raise BrokerStartError(str(exc)) from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown that writes the persistence file."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is saved since the last autosave."""
        if self._process is not None:
            self._process.kill()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def starts(self) -> int:
        return 0 if self._process is None else self._process.starts

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def log(self) -> str:
        return self.process.log()

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 5.0) -> None:
        """Until ``text`` occurs more than ``after`` times in the log (mosquitto writes it
        asynchronously); AssertionError with the log tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) <= after:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the mosquitto log:\n{self.log_tail()}")
            time.sleep(0.02)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a plain paho client for tests ---------------------------------------------------------------


class TestClient:
    """A synchronous-looking paho MQTT v5 client for tests: connect, subscribe and publish wait
    for CONNACK/SUBACK/PUBACK and return the reason codes; received messages queue up."""

    __test__ = False

    def __init__(
        self, files: ClientFiles, port: int, client_id: str | None = None, host: str = HOST
    ) -> None:
        # the broker replaces ``client_id`` by the certificate CN (use_username_as_clientid)
        self.files = files
        self.port = port
        self.host = host
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acks: dict[int, queue.Queue[Any]] = {}
        self._connack: queue.Queue[Any] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{files.name}-{os.getpid()}-{id(self):x}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(files.ca)
        if files.cert is not None:
            context.load_cert_chain(files.cert, files.key)
        self.client.tls_set_context(context)
        # a test client never reconnects by itself; paho's default 1 s wait would slow stop()
        self.client.reconnect_delay_set(0.02, 0.02)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, u, f, rc, p: self._connack.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self._connack.put(("disconnect", rc))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ack(mid).put(rcs)
        self.client.on_publish = lambda c, u, mid, rc, p: self._ack(mid).put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)

    def _ack(self, mid: int) -> queue.Queue[Any]:
        # both sides use setdefault, so whoever comes first (ack or waiter) makes the queue
        return self._acks.setdefault(mid, queue.Queue())

    def connect(self, timeout: float = 5.0) -> Any:
        """Connect; returns the CONNACK reason code (raises OSError if the connection is
        refused before or by the CONNACK)."""
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        try:
            result = self._connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no CONNACK") from None
        if isinstance(result, tuple) or result.is_failure:
            self.close()
            if isinstance(result, tuple):
                raise ConnectionResetError(f"disconnected before CONNACK: {result[1]}")
            raise ConnectionRefusedError(f"CONNACK {result}")
        return result

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> Any:
        """Subscribe; returns the SUBACK reason code."""
        _, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        return self._ack(mid).get(timeout=timeout)[0]

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> Any:
        """Publish with QoS 1; returns the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return self._ack(info.mid).get(timeout=timeout)

    def expect(self, timeout: float = 5.0) -> Any:
        """The next received message, or None after ``timeout``."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> TestClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
