"""What an eavesdropper on the broker sees: every payload captured with mosquitto_sub (a backend
certificate on ``#``) while the agent runs, and the command bytes as the operator published them
(the broker forwards payloads unchanged; only the unit may read its command topic, and a second
connection with the unit's certificate would take over its session).
No payload may hold our plaintext: CBOR text strings of event keys or values, JPEG markers, or
any text the listener decrypted out of the messages."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from broker import ClientFiles
from harness import DEVICE, HOST, Harness

pytestmark = pytest.mark.usefixtures("harness")

EVENT_WORDS = (
    "presence", "faces", "people", "zones", "device", "body", "boot", "jpeg", "state", "online",
    "offline", "snapshot", "health", "cmd_ack", "accepted", "status", "latency", "centerface_int8",
)  # fmt: skip


def _tstr(text: str) -> bytes:
    return cbor2.dumps(text)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts(v)


def _sub(files: ClientFiles, port: int, topic: str, out: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto_sub")
    assert binary, "mosquitto_sub is missing: apt-get install mosquitto-clients (make setup)"
    assert files.cert is not None and files.key is not None
    cmd = [
        binary, "-h", HOST, "-p", str(port), "-V", "mqttv5", "-q", "1",
        "--cafile", str(files.ca), "--cert", str(files.cert), "--key", str(files.key),
        "-t", topic, "-F", "%t %x",
    ]  # fmt: skip
    with out.open("wb") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def test_no_plaintext_on_the_wire(harness: Harness) -> None:
    port = harness.broker.port
    backend_out = harness.tmp / "wire-backend.txt"
    subs = [_sub(harness.pki.backend("ingest"), port, "#", backend_out)]
    published = []
    try:
        time.sleep(1.0)  # let both subscriptions settle
        harness.start_agent()
        harness.wait_for(lambda r: r.type == "presence")
        harness.wait_for(lambda r: r.type == "health")
        cmd = harness.command("snapshot", command_id="wire-snap-7f3a")
        harness.publish(cmd)
        published.append((cmd.topic, cmd.data))
        harness.wait_for(lambda r: r.type == "snapshot")
        harness.ack_for(cmd)
        harness.stop_agent()
        harness.wait_for(lambda r: r.type == "status" and r.message["body"]["state"] == "offline")
        time.sleep(0.5)
    finally:
        for proc in subs:
            proc.terminate()
            proc.wait(10)

    captured: list[tuple[str, bytes]] = list(published)
    for line in backend_out.read_text().splitlines():
        topic, _, hexdata = line.partition(" ")
        captured.append((topic, bytes.fromhex(hexdata)))
    topics = {t for t, _ in captured}
    assert f"camveil/v1/{DEVICE}/cmd" in topics
    assert f"camveil/v1/{DEVICE}/event/snapshot" in topics
    assert f"camveil/v1/{DEVICE}/cmd/ack" in topics
    assert len(captured) >= len(harness.received)

    secrets = {w for w in EVENT_WORDS}
    secrets.add(DEVICE)  # as a CBOR text string (it is on the wire only as the kid, a bstr)
    secrets.add("wire-snap-7f3a")
    for r in harness.received:
        secrets.update(t for t in _texts(dict(r.message)) if len(t) >= 4 and "/" not in t)
    needles = {s: _tstr(s) for s in secrets}
    # the check would see the plaintext if it were there (no vacuous pass)
    plaintext = b"".join(cbor2.dumps(dict(r.message)) for r in harness.received)
    assert _tstr("presence") in plaintext and b"\xff\xd8\xff" in plaintext
    assert sum(needle in plaintext for needle in needles.values()) >= len(EVENT_WORDS) - 2
    for topic, payload in captured:
        assert payload[:2] == b"\xd2\x84", f"{topic}: not a tagged COSE_Sign1"
        assert b"\xff\xd8\xff" not in payload, f"{topic}: JPEG marker on the wire"
        for text, needle in needles.items():
            assert needle not in payload, f"{topic}: plaintext {text!r} on the wire"
