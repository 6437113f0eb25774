"""``camveil station broker-bundle``: a real mosquitto started from exactly its output (the
drop-in included from a main config like Debian's, the files put in place by its install.sh)
accepts a provisioned unit dialling a name from ``--broker-name`` on a non-default port, and
refuses it after ``camveil station revoke`` and the documented reload; nothing in the broker's
config points into the station folder."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from broker import ClientFiles, mosquitto_binary
from station_rig import (
    CONNACK_OK,
    host_broker,
    install_bundle,
    mqtt_connect,
    provision_unit,
    settings,
    wait_for_log,
)

from agent.unitstate import UnitState
from provisioning.devbroker import free_port
from provisioning.station import init_station


def test_mosquitto_runs_from_the_broker_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import camveil.__main__ as cli

    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station",
        broker_url=f"mqtts://localhost:{port}",
        broker_names=("cam-broker.test",),
        broker_settings=settings(),
    )
    station = paths.root
    device = provision_unit(paths, tmp_path / "unit")
    state = UnitState.load(tmp_path / "unit")
    unit = ClientFiles(device, state.ca_cert, state.tls_cert, state.tls_key)

    host = tmp_path / "broker-host"  # stands for / on the broker host
    target = host / "etc-mosquitto-camveil"
    (host / "conf.d").mkdir(parents=True)
    bundle = tmp_path / "bundle"
    argv = ["station", "broker-bundle", str(station), str(bundle), "--target-dir", str(target)]
    assert cli.main(argv) == 0
    assert "install.sh" in capsys.readouterr().out

    # the bundle: private, the key 0600, no path into the station folder
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    assert stat.S_IMODE((bundle / "files" / "server.key").stat().st_mode) == 0o600
    dropin = (bundle / "conf.d" / "camveil.conf").read_text()
    assert str(station) not in dropin and str(target / "crl.pem") in dropin
    assert f"\nlistener {port} 127.0.0.1\n" in dropin
    for option in ("user", "persistence", "persistence_location", "log_dest"):
        assert not any(line.split(" ")[0] == option for line in dropin.splitlines()), option

    install_bundle(bundle, host, reload="true")
    assert stat.S_IMODE((target / "server.key").stat().st_mode) == 0o600
    assert (target / "server.key").read_bytes() == (station / "broker" / "server.key").read_bytes()
    # the host's main config, as Debian's: user, persistence and logging, then conf.d
    process = host_broker(paths, host, port, tmp_path / "mosquitto.log")
    with process:
        for name in ("cam-broker.test", "localhost"):  # the unit's name is in the certificate
            assert mqtt_connect(unit, port, name) == CONNACK_OK, process.log_tail()

        # revoke; a new bundle; install.sh with the reload documented for revocations
        assert cli.main(["station", "revoke", str(station), device]) == 0
        bundle2 = tmp_path / "bundle-2"
        argv = ["station", "broker-bundle", str(station), str(bundle2), "--target-dir", str(target)]
        assert cli.main(argv) == 0
        assert process.pid is not None
        install_bundle(bundle2, host, reload=f"kill -HUP {process.pid}")
        wait_for_log(process, "Reloading config")
        refusals = process.log().count("certificate verify failed")
        with pytest.raises(OSError):  # the "certificate revoked" alert, or the close after it
            mqtt_connect(unit, port, "cam-broker.test")
        wait_for_log(process, "certificate verify failed", after=refusals)
        assert process.running
