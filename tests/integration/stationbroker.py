"""A station directory (``camveil station init``) and a mosquitto running its broker config, for
tests of the dashboard ingest and the fleet simulator. Not a test module."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from broker import ClientFiles, mosquitto_binary

from agent.unitstate import BrokerAddress
from contract.certclaim import key_for
from dashboard.listener import ListenerConfig
from provisioning import broker as broker_config
from provisioning import devbroker
from provisioning.station import StationPaths, init_station
from tools.simulate import SimUnit

HOST = "127.0.0.1"


@dataclass
class StationBroker:
    """``with StationBroker(tmp_path) as sb:`` a station with backends dashboard, ingest-2 and
    its mosquitto on a free port (stopped on exit)."""

    root: Path

    def __post_init__(self) -> None:
        self.port = devbroker.free_port()
        self.paths: StationPaths | None = None
        self.process: devbroker.BrokerProcess | None = None

    @property
    def station(self) -> StationPaths:
        assert self.paths is not None
        return self.paths

    def __enter__(self) -> StationBroker:
        mosquitto_binary()
        self.paths = init_station(
            self.root / "station",
            broker_url=f"mqtts://{HOST}:{self.port}",
            broker_names=(HOST,),
            broker_settings=broker_config.BrokerSettings(
                port=self.port, bind_address=HOST, user=getpass.getuser(), autosave_interval=1
            ),
            backends=("dashboard", "ingest-2"),
        )
        cert = self.paths.backend_cert("dashboard")
        self.process = devbroker.BrokerProcess(
            self.paths.broker_dir / "mosquitto.conf",
            port=self.port,
            probe=devbroker.ProbeClient(self.paths.ca_dir / "ca.crt", cert, key_for(cert)),
            log_path=self.root / "mosquitto.log",
        )
        self.process.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress(HOST, self.port)

    def listener_config(self, backend: str = "dashboard", **kwargs: object) -> ListenerConfig:
        cert = self.station.backend_cert(backend)
        return ListenerConfig(
            HOST,
            self.port,
            self.station.ca_dir / "ca.crt",
            cert,
            key_for(cert),
            group=self.station.share_group.read_text().strip(),
            **kwargs,  # type: ignore[arg-type]
        )


def client_files(unit: SimUnit) -> ClientFiles:
    """The TLS files a simulated unit connects with (for broker.TestClient)."""
    state = unit.state
    return ClientFiles(unit.device, state.ca_cert, state.tls_cert, state.tls_key)
