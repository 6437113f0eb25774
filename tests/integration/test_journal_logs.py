"""Under systemd: log lines carry their syslog priority and a unit without its USB gadget does
not log the same warning every second. ``camveil provision-listen`` runs as a subprocess whose
stderr is a file named by ``JOURNAL_STREAM``, as systemd sets it for a service logging to the
journal (journald's stream is a socket; the device:inode check is the same)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WARNING = "<4>provisioning.unit: serial port failed"


def test_provision_listen_without_a_gadget_logs_one_prefixed_warning(tmp_path: Path) -> None:
    log = tmp_path / "journal"
    with log.open("w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {
            **os.environ,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "camveil", "provision-listen",
             "--port", str(tmp_path / "ttyGS0"), "--state", str(tmp_path / "state")],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while WARNING not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            time.sleep(3.5)  # the port is retried every second: three more failures at least
            assert proc.poll() is None, log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    lines = log.read_text().splitlines()
    assert [line for line in lines if line.startswith(WARNING)] == [lines[0]], lines
    assert "ttyGS0" in lines[0]
    assert all(line[:3] in {"<3>", "<4>", "<5>", "<6>"} for line in lines), lines
    assert "Traceback" not in log.read_text()
