"""`camveil dashboard` as a user runs it: a subprocess on a dev-pki folder and its mosquitto; a
unit's sealed status shows on the page; SIGTERM stops it cleanly; bad folders are one-line
errors; `add-operator` stores an Argon2id hash."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from broker import ClientFiles, TestClient, free_port

from agent.events import EventBuilder, LinkState, seal_event
from agent.sequence import CountingSequence
from agent.unitstate import IDENTITY_FILE, PROVISIONED, TLS_CERT_FILE, TLS_KEY_FILE
from contract.envelope.keys import load_identity
from dashboard.store import Store
from provisioning.devbroker import BrokerProcess, ProbeClient
from tools.devpki import make_dev_pki

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cv-cli-dash"


def _camveil(*argv: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "camveil", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def _run(*argv: str) -> tuple[int, str, str]:
    proc = _camveil(*argv)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_missing_or_wrong_folder_is_one_line(tmp_path: Path) -> None:
    code, _, err = _run("dashboard", "--station", str(tmp_path / "nope"))
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err
    code, _, err = _run("dashboard", "--station", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "not a station directory" in err
    code, _, err = _run("dashboard")
    assert code == 2 and "needs --station" in err


def test_add_operator_from_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("a long passphrase\n")
    store_path = tmp_path / "d.sqlite"
    code, _, err = _run(
        "dashboard", "add-operator", "bob", "--password-file", str(secret), "--store",
        str(store_path),
    )  # fmt: skip
    assert code == 0, err
    assert store_path.stat().st_mode & 0o777 == 0o600
    with Store(store_path) as store:
        stored = store.operator_hash("bob")
    assert stored is not None and stored.startswith("$argon2id$")
    secret.write_text("short\n")
    code, _, err = _run(
        "dashboard", "add-operator", "bob", "--password-file", str(secret), "--store",
        str(store_path),
    )  # fmt: skip
    assert code == 2 and "at least 10" in err


def test_dashboard_runs_shows_a_unit_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    dev = make_dev_pki(tmp_path / "pki", port=port, device_id=DEVICE)
    probe = ProbeClient(dev.backend.ca, dev.backend.cert, dev.backend.key)
    web_port = free_port()
    with BrokerProcess(dev.broker.config, port=port, probe=probe, log_path=tmp_path / "m.log"):
        proc = _camveil("dashboard", "--dev-pki", str(dev.root), "--port", str(web_port))
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert f"http://127.0.0.1:{web_port}" in first, first
            found = re.search(r"operator admin, password (\S+)", proc.stdout.readline())
            assert found, "no one-time password on the first start"
            password = found.group(1)

            unit_dir = dev.unit_dir / PROVISIONED
            identity = load_identity(unit_dir / IDENTITY_FILE)
            backend = load_identity(dev.backend.identity).public()
            files = ClientFiles(
                DEVICE, dev.backend.ca, unit_dir / TLS_CERT_FILE, unit_dir / TLS_KEY_FILE
            )
            builder = EventBuilder(DEVICE, "00000000000000aa", CountingSequence())
            online = seal_event(
                builder.status(LinkState.ONLINE), sender=identity, recipient=backend
            )

            with TestClient(files, port) as unit:
                unit.publish(online.topic, online.data, retain=True)  # as a unit's status is
            base = f"http://127.0.0.1:{web_port}"
            with httpx.Client(base_url=base, follow_redirects=False) as web:
                assert web.get("/").status_code == 303  # no session
                web.get("/login")
                token = web.cookies.get("camveil_login")
                login = {"name": "admin", "password": password, "csrf": token}
                assert web.post("/login", data=login).status_code == 303
                deadline = time.monotonic() + 15
                while f'data-device="{DEVICE}" data-status="online"' not in web.get("/").text:
                    assert time.monotonic() < deadline, "the unit never showed online"
                    time.sleep(0.3)
                assert web.get("/metrics").status_code == 200
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err  # stopped cleanly: web server, ingest, store
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        # a second start: admin exists, no password is printed again
        proc = _camveil("dashboard", "--dev-pki", str(dev.root), "--port", str(web_port))
        try:
            assert proc.stdout is not None
            assert "camveil dashboard:" in proc.stdout.readline()
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0 and "password" not in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    store = dev.root / "backend" / "dashboard.sqlite"
    assert store.stat().st_mode & 0o777 == 0o600
