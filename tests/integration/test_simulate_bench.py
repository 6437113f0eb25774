"""`camveil simulate` against a station's broker, and `camveil bench --suite ingest` end to end
(small: the numbers themselves are measured by the benchmark, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stationbroker import StationBroker

from camveil.__main__ import main
from provisioning.inventory import Inventory


def test_simulate_cli_provisions_connects_publishes_and_says_goodbye(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StationBroker(tmp_path) as sb:
        argv = ["simulate", "--units", "3", "--station", str(sb.station.root)]
        argv += ["--duration", "3", "--rate", "4", "--snapshot-every", "3"]
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out)["simulate_summary"]
        assert summary["units"] == 3 and summary["refused"] == {}
        assert summary["published"] >= 3 + 3 and summary["acked"] == summary["published"]
        with Inventory(sb.station.inventory) as inventory:
            units = inventory.units("provisioned")
        assert [u.device for u in units] == ["cv-sim-0001", "cv-sim-0002", "cv-sim-0003"]
        state = sb.station.root.with_name("station-sim")
        assert sorted(p.name for p in state.iterdir()) == [u.device for u in units]
        # a second run reuses the units (no new provisioning), sequence numbers go on
        assert main(argv) == 0
        with Inventory(sb.station.inventory) as inventory:
            assert len(inventory.units()) == 3


def test_simulate_cli_refuses_bad_arguments_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--units", "0", "--station", str(tmp_path)]) == 2
    assert "--units must be" in capsys.readouterr().err
    assert main(["simulate", "--units", "2", "--station", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "not a station directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_ingest_cli_reports_nothing_lost_or_duplicated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "--suite", "ingest", "--units", "4", "--events-per-unit", "5", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)["ingest"]
    assert report["events_per_s"] > 0 and report["lost"] == 0 and report["duplicated"] == 0
    one, two = report["one_process"], report["2_processes"]
    assert one["events"] == two["events"] == 20
    assert [p["stored"] for p in one["per_process"]] == [20]
    assert len(two["per_process"]) == 2 and sum(p["stored"] for p in two["per_process"]) == 20
    assert two["lost"] == 0 and two["duplicated"] == 0
