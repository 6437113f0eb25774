"""`camveil chaos`: a real mosquitto restarted and a real unit process SIGKILLed while sealed
events flow; nothing may be lost and nothing delivered twice to the application."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.unitstate import parse_broker_url
from camveil.__main__ import main
from contract.errors import ConfigError
from provisioning.devbroker import BrokerProcess, ProbeClient, free_port, mosquitto_binary
from tools.chaos import ChaosPlan, External, read_log, run_chaos
from tools.devpki import make_dev_pki


def test_ci_sized_run_loses_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mosquitto_binary()
    status = main(["chaos", "--events", "1000", "--broker-restarts", "5", "--agent-kills", "3",
                   "--rate", "150", "--seed", "20261126", "--json",
                   "--work-dir", str(tmp_path)])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["lost"] == 0, report["lost_seqs"]
    assert report["duplicated"] == 0
    assert status == 0 and report["ok"] is True
    assert report["broker_restarts"] == 5 and report["agent_kills"] == 3
    assert report["events"] == 1000
    assert report["sent"] == report["received"] >= 1000 + report["statuses"]
    assert not report["bad"] and report["broker_drop_notices"] == 0
    # the unit's log is the ground truth of "sent": one line per enqueued envelope
    logged = read_log(tmp_path / "unit.log")
    assert sum(1 for _, kind in logged if kind == "event") == 1000
    seqs = [s for s, _ in logged]
    assert len(seqs) == len(set(seqs)), "a seq was handed out twice"


def test_against_an_existing_broker_and_pki(tmp_path: Path) -> None:
    """What an installer runs: --broker URL --pki DIR, our process does not own the broker."""
    port = free_port()
    dev = make_dev_pki(tmp_path / "pki", port=port, device_id="cv-chaos-ext")
    probe = ProbeClient(dev.backend.ca, dev.backend.cert, dev.backend.key)
    broker = BrokerProcess(dev.broker.config, port=port, probe=probe, log_path=tmp_path / "m.log")
    with broker:
        external = External(dev.broker_url, dev.root)
        with pytest.raises(ConfigError, match="restart-cmd"):
            run_chaos(ChaosPlan(events=10, broker_restarts=1, agent_kills=0), external=external)
        with pytest.raises(ConfigError, match="broker-kills"):
            plan = ChaosPlan(events=10, broker_restarts=0, agent_kills=0, broker_kills=1)
            run_chaos(plan, external=external)
        report = run_chaos(
            ChaosPlan(events=200, broker_restarts=0, agent_kills=1, rate=200, seed=3),
            work_dir=tmp_path / "work",
            external=external,
        )
    assert report.ok and report.lost == 0 and report.duplicated == 0
    assert report.agent_kills == 1 and report.events == 200


def test_the_chaos_unit_uses_the_shipped_transport_settings(tmp_path: Path) -> None:
    """Chaos must test what ships: the daemon keeps an event nobody subscribed to
    (require_subscriber, on by default), so the chaos unit must too."""
    from agent.config import MqttConfig
    from agent.unitstate import UnitState
    from tools.chaos import CHAOS_RECONNECT_MAX_S, unit_transport_config

    dev = make_dev_pki(tmp_path / "pki", port=free_port(), device_id="cv-chaos-cfg")
    unit = UnitState.load(dev.unit_dir)
    config = unit_transport_config(unit, None)
    shipped = MqttConfig()
    assert shipped.require_subscriber is True
    assert config.require_subscriber is True
    assert config.max_outstanding == shipped.max_outstanding
    assert config.keepalive_s == shipped.keepalive_s
    assert config.reconnect_max_s == CHAOS_RECONNECT_MAX_S
    assert (config.host, config.port) == (
        parse_broker_url(unit.broker_url).host,
        parse_broker_url(unit.broker_url).port,
    )
