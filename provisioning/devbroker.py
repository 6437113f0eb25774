"""A local mosquitto process for development, benchmarks and chaos runs: start, stop, restart,
kill, wait until it answers TLS.

The configuration is the repo's own (:mod:`provisioning.broker`, e.g. as written by ``camveil
dev-pki``); this module only runs ``mosquitto -c <config>`` and watches it. "Ready" means a TLS
handshake with a client certificate of the camveil CA succeeds on the listener port, which is
later than the port being open. Used by ``camveil chaos``, ``camveil bench --suite envelope``
and the integration tests' broker fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from contract.errors import BrokerStartError, ConfigError

HOST: Final = "127.0.0.1"
INSTALL_HINT: Final = (
    "mosquitto is not installed: run `make setup` (it installs the Debian packages mosquitto and "
    "mosquitto-clients) or `apt-get install mosquitto mosquitto-clients`"
)


def mosquitto_binary() -> str:
    """Path of the mosquitto executable; ConfigError with the install hint when missing."""
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(INSTALL_HINT)


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ProbeClient:
    """A client certificate of the broker's CA: readiness is a completed TLS handshake."""

    ca: Path
    cert: Path
    key: Path


class BrokerProcess:
    """One mosquitto process for one config file (port and persistence stay the same across
    :meth:`start` / :meth:`stop` / :meth:`kill` / :meth:`restart`, so clients reconnect to the
    "same" broker). Constructor only stores; a context manager (start ... stop)."""

    def __init__(
        self,
        config: Path,
        *,
        port: int,
        probe: ProbeClient,
        log_path: Path,
        host: str = HOST,
        cwd: Path | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.host = host
        self.probe = probe
        self.log_path = log_path
        self.cwd = cwd or config.parent
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it completes a TLS handshake (BrokerStartError)."""
        if self.running:
            raise BrokerStartError("mosquitto is already running")
        binary = mosquitto_binary()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our broker binary and config
                [binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        self.starts += 1
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # a broker certificate for other names is still "up"
        context.load_verify_locations(self.probe.ca)
        context.load_cert_chain(self.probe.cert, self.probe.key)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._proc = None
                raise BrokerStartError(f"mosquitto exited at start:\n{self.log_tail()}")
            try:
                with (
                    socket.create_connection((self.host, self.port), timeout=1.0) as raw,
                    context.wrap_socket(raw, server_hostname=self.host),
                ):
                    return
            except OSError as exc:
                last = exc
                time.sleep(0.02)
        self.kill()
        raise BrokerStartError(f"mosquitto not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown that writes the persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is saved since the last autosave."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise BrokerStartError(f"mosquitto ignored {sig.name} for {timeout}s") from None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no log)"

    def __enter__(self) -> BrokerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
