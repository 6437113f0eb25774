"""The dashboard in a real browser (Debian's /usr/bin/chromium through Playwright), fed by a real
Ingest on a real mosquitto: units seal and publish events with their own certificates and keys,
the web app runs on uvicorn, and the page is driven like an operator would.

- log in; the units are shown online;
- a unit dies without disconnecting: the broker publishes its pre-sealed last will, and the
  open fleet page (live by server-sent events) shows it offline within 5 s;
- the unit page shows the latest snapshot (a real photo, faces found by the real detector and
  overwritten): the served image is the one the unit sealed, its face regions are the solid
  fill, and the view is in the audit log;
- without a session every route is refused, a POST without the CSRF token too;
- config drift: a unit running what was set for it is "in force", one that lost it is marked
  "drift" (and found by the filter), one that reports no hashes "unknown"; the fleet's
  charts of the last hour are drawn from an hour of health; with the real agent, a change set
  on the page is shown in force once the agent's next health reports its hashes.

``CAMVEIL_SCREENSHOTS=1`` saves the fleet and unit views to ``docs/img/``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from argon2 import PasswordHasher
from broker import HOST, Mosquitto, TestClient, TestPki, free_port
from harness import DEVICE, Harness
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from sealing_unit import BOOT, Unit

from agent.events import LinkState, seal_event
from agent.privacy.redact import RedactionConfig, pixel_rect, redact
from agent.vision.factory import DetectorConfig, build_detector
from camveil.cli.dashboard import _validate_config
from contract.confighash import digest, key_hashes, keys_hash
from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.seal import SealedEnvelope
from dashboard import audit
from dashboard.command_client import OperatorKeys
from dashboard.drift import record_set
from dashboard.ingest import Ingest
from dashboard.listener import ListenerConfig
from dashboard.store import Store
from dashboard.web import WebConfig, create_app
from dashboard.web.auth import Passwords
from dashboard.web.commands import StationSender
from hw.frame import Frame
from tests.photos import photo

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
FAST = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
DEVICES = ("cv-web-01", "cv-web-02", "cv-web-03")
PRESENCE = (0, 1, 3, 2, 4, 6, 5, 3, 2, 2, 1, 0)


def _wait(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@dataclass
class Dashboard:
    url: str
    store: Store
    units: dict[str, Unit]
    port: int
    snapshot: bytes
    faces: list[tuple[int, int, int, int]]


def _snapshot(unit: Unit) -> tuple[SealedEnvelope, list[tuple[int, int, int, int]]]:
    """A snapshot of a real photo, redacted as on a unit; the overwritten rectangles."""
    pixels = photo("astronaut")
    detector = build_detector(DetectorConfig(model="centerface_int8"))
    boxes = tuple(d.box for d in detector.detect(pixels) if d.kind == "face")
    assert boxes, "the detector found no face in the astronaut photo"
    config = RedactionConfig()
    frame = redact(Frame(pixels, index=0, ts=time.time(), mono=0.0, source="test"), boxes, config)
    h, w = pixels.shape[:2]
    rects = [r for r in (pixel_rect(b, config.margin, w, h) for b in boxes) if r is not None]
    event = unit.builder.snapshot(frame, trigger="tamper")
    return seal_event(event, sender=unit.identity, recipient=unit.backend), rects


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """The app on uvicorn on a free loopback port (its lifespan too); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def dashboard(fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path) -> Iterator[Dashboard]:
    backend = Identity.generate("backend")
    units = {d: Unit(mqtt_pki.device(d), backend.public()) for d in DEVICES}
    files = mqtt_pki.backend("dashboard")
    assert files.cert is not None and files.key is not None
    listener = ListenerConfig(HOST, fresh_mosquitto.port, files.ca, files.cert, files.key)
    store = Store(tmp_path / "dash.sqlite").open()
    Passwords(store, FAST).set("alice", PASSWORD)
    for n, device in enumerate(DEVICES):
        store.set_site(device, "north" if n < 2 else "south")
    ingest = Ingest(
        listener, backend, PeerKeys([u.identity.public() for u in units.values()]), store
    )
    app = create_app(store, config=WebConfig(tick_s=2.0), hasher=FAST)
    # config: the first unit runs what was set for it from the dashboard (in force), the second
    # lost it (drift), the third reports no config hashes (a unit from before them: unknown)
    overlay = {"detector": {"threads": 2}}
    with store.transaction() as conn:
        for device in DEVICES[:2]:
            conn.execute(
                "INSERT INTO commands (id, device, name, args, operator, sent_at, status, reason, "
                "done_at) VALUES (?, ?, 'set_config', ?, 'alice', ?, 'accepted', 'ok', ?)",
                (f"op-1-{device}", device, json.dumps({"config": overlay}), store.now(),
                 store.now()),
            )  # fmt: skip
            record_set(
                conn, device, overlay, command_id=f"op-1-{device}", operator="alice",
                now=store.now(), ack={"boot": BOOT, "seq": 0, "ts": 0},
            )  # fmt: skip
    reports = [digest(overlay, overlay), digest({}, {}), None]
    try:
        with ingest, _serve(app) as url:
            assert ingest.listener.subscribed.wait(10)
            snapshot, faces = _snapshot(units[DEVICES[0]])
            for n, unit in enumerate(units.values()):
                unit.event()  # a seq after the ack of the change (seq 0)
                with TestClient(unit.files, fresh_mosquitto.port) as client:
                    for minutes in range(55, 0, -5) if n == 0 else ():  # an hour of health
                        unit.behind_s = minutes * 60.0
                        earlier = unit.health(
                            9.0 + minutes % 3,
                            reports[n],
                            depth=minutes % 4,
                            temp=45.0 + minutes / 10,
                        )
                        client.publish(earlier.topic, earlier.data)
                    unit.behind_s = 0.0
                    latest = unit.health(10.0 + n, reports[n])
                    for envelope in (unit.status(), latest, unit.event()):
                        client.publish(envelope.topic, envelope.data)
                    if n == 0:
                        client.publish(snapshot.topic, snapshot.data)
                        for people in PRESENCE:  # a chart worth looking at
                            counts = {"all": (people, max(0, people - 1))}
                            window = seal_event(
                                unit.builder.presence(0.0, 60.0, counts),
                                sender=unit.identity,
                                recipient=unit.backend,
                            )
                            client.publish(window.topic, window.data)
            _wait(lambda: store.event_count() == 3 * len(DEVICES) + 1 + len(PRESENCE) + 11)
            jpeg = next(e for e in store.events(DEVICES[0]) if e.type == "snapshot").body["jpeg"]
            yield Dashboard(url, store, units, fresh_mosquitto.port, jpeg, faces)
    finally:
        store.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


def _login(page: Page, url: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("table#fleet")


def _screenshot(page: Page, name: str) -> None:
    if os.environ.get("CAMVEIL_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / name), full_page=True)


def test_operator_sees_units_offline_and_snapshot(dashboard: Dashboard, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 800})
    _login(page, dashboard.url)
    for device in DEVICES:
        assert page.get_attribute(f'tr[data-device="{device}"]', "data-status") == "online"
    assert "10.0" in page.inner_text(f'tr[data-device="{DEVICES[0]}"]')
    configs = {d: page.get_attribute(f'tr[data-device="{d}"]', "data-config") for d in DEVICES}
    assert configs == {DEVICES[0]: "ok", DEVICES[1]: "drift", DEVICES[2]: "unknown"}
    marker = page.locator(f'tr[data-device="{DEVICES[1]}"] .cfg-drift')
    assert marker.inner_text() == "drift" and marker.is_visible()
    assert "detector.threads" in (marker.get_attribute("title") or "")
    # the last hour: fps, outbox and temperature side by side in one small chart, drawn
    chart = page.locator(f'tr[data-device="{DEVICES[0]}"] svg.trend')
    box = chart.bounding_box()
    assert box is not None and box["width"] == 200 and box["height"] == 16
    d = chart.locator("path").get_attribute("d") or ""
    assert d.count("M") == 3 and len(d) > 60  # three series of 12 points
    title = page.get_attribute(f'tr[data-device="{DEVICES[0]}"] td.trend', "title") or ""
    assert title.startswith("last hour: fps 9 to 11; outbox 0 to 3; °C 45.5 to 50.5"), title
    assert page.locator(f'tr[data-device="{DEVICES[2]}"] svg.trend').count() == 1  # one health
    page.select_option("select[name=config]", "drift")
    page.click(".filters button")
    page.wait_for_selector("#fleet-count")
    assert page.locator("#fleet tbody tr").count() == 1
    assert page.get_attribute("#fleet tbody tr", "data-device") == DEVICES[1]
    page.goto(dashboard.url + "/")
    page.wait_for_function("() => document.body.dataset.live === '1'")  # the SSE stream is open

    # the third unit dies without a DISCONNECT: the broker publishes its pre-sealed last will
    dying = dashboard.units[DEVICES[2]]
    will = seal_event(
        dying.builder.status(LinkState.OFFLINE), sender=dying.identity, recipient=dying.backend
    )
    client = TestClient(dying.files, dashboard.port)
    client.client.will_set(will.topic, will.data, qos=1, retain=True)
    client.connect()
    client.client.loop_stop()
    died = time.monotonic()
    sock = client.client.socket()
    assert sock is not None
    sock.close()
    page.wait_for_selector(f'tr[data-device="{DEVICES[2]}"][data-status="offline"]', timeout=5000)
    shown_after = time.monotonic() - died
    assert shown_after < 5.0
    _screenshot(page, "dashboard-fleet.png")

    # the unit page: the latest snapshot, as sealed by the unit, faces overwritten
    before = len(audit.entries(dashboard.store))
    page.goto(f"{dashboard.url}/unit/{DEVICES[0]}")
    page.wait_for_function(
        "() => document.getElementById('latest-snapshot').complete && "
        "document.getElementById('latest-snapshot').naturalWidth > 0"
    )
    src = page.get_attribute("#latest-snapshot", "src")
    assert src is not None
    served = page.request.get(dashboard.url + src)
    assert served.status == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.body() == dashboard.snapshot
    image = np.asarray(Image.open(io.BytesIO(served.body())).convert("RGB")).astype(int)
    assert image.shape == photo("astronaut").shape  # not scaled: the rectangles apply as they are
    for x0, y0, x1, y1 in dashboard.faces:
        inner = image[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4]  # JPEG ringing at the edges
        assert inner.size and np.abs(inner).max() < 40, "a face region is not overwritten"
    views = [e for e in audit.entries(dashboard.store)[before:] if e.action == "view_snapshot"]
    assert len(views) == 2 and all(e.operator == "alice" for e in views)  # <img> and request
    assert page.locator("#timeline tr[data-type=snapshot]").count() == 1
    assert "people" in page.inner_text("#timeline")
    assert page.locator("svg.chart polyline").count() == 2  # people and faces
    assert page.get_attribute("#config-state", "data-state") == "ok"
    assert page.inner_text("#config-expected").startswith(page.inner_text("#config-on-unit"))
    _screenshot(page, "dashboard-unit.png")
    page.goto(f"{dashboard.url}/unit/{DEVICES[1]}")
    assert page.get_attribute("#config-state", "data-state") == "drift"
    assert "not set on the unit: detector.threads" in page.inner_text("#config")


def test_refused_without_session_and_without_csrf(dashboard: Dashboard, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    for path in ("/", f"/unit/{DEVICES[0]}", "/alerts", "/audit"):
        page.goto(dashboard.url + path)
        assert "/login" in page.url, path
    for path in ("/events", "/metrics", "/audit/export.json", f"/unit/{DEVICES[0]}/snapshot/1.jpg"):
        assert context.request.get(dashboard.url + path).status == 401, path
    assert context.request.post(dashboard.url + "/alerts/1/ack").status == 401
    _login(page, dashboard.url)
    # logged in, but a POST without the token (as a forged form from another site would be)
    r = context.request.post(dashboard.url + "/logout", form={"x": "1"})
    assert r.status == 403
    page.goto(dashboard.url + "/")
    assert page.locator("table#fleet").count() == 1  # still logged in
    context.close()


def test_commands_from_the_page_reach_the_real_agent(harness: Harness, browser: Browser) -> None:
    """The real agent (replay camera, real detector) on the broker; the dashboard's own ingest
    (its own backend certificate and group) and the operator's keys: request a snapshot and see
    it arrive; a config typo is refused before anything is sent; a good change is acked."""
    agent = harness
    agent.start_agent()
    ingest_files = agent.pki.backend("ingest")
    operator_files = agent.pki.operator("console-3")  # the harness holds console(-2)
    assert ingest_files.cert and ingest_files.key and operator_files.cert and operator_files.key
    devices = PeerKeys([agent.device.public()])
    keys = OperatorKeys(
        operator=agent.operator,
        devices=devices,
        ca=operator_files.ca,
        cert=operator_files.cert,
        key=operator_files.key,
        broker_url=None,
    )
    listener = ListenerConfig(
        HOST, agent.broker.port, ingest_files.ca, ingest_files.cert, ingest_files.key, group="web"
    )
    store = Store(agent.tmp / "dash.sqlite").open()
    Passwords(store, FAST).set("alice", PASSWORD)
    app = create_app(
        store,
        config=WebConfig(tick_s=2.0),
        sender=StationSender(keys, HOST, agent.broker.port, timeout_s=20),
        validate_config=_validate_config,
        hasher=FAST,
    )
    try:
        with Ingest(listener, agent.backend, devices, store) as ingest, _serve(app) as url:
            assert ingest.listener.subscribed.wait(10)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            _login(page, url)
            page.goto(f"{url}/unit/{DEVICE}")
            page.wait_for_function("() => document.body.dataset.live === '1'")

            page.fill("#cmd-config textarea", "detector.thread=2")
            page.click("#cmd-config button")
            assert "did you mean 'threads'" in page.inner_text("#command-error")
            assert not store.read("SELECT 1 FROM commands WHERE name = 'set_config'")

            page.click("#cmd-snapshot button")
            page.wait_for_selector("#command-notice")
            page.wait_for_selector('#commands tr[data-status="accepted"]', timeout=30_000)
            command_id = store.read("SELECT id FROM commands WHERE name = 'snapshot'")[0][0]
            caption = f'#latest-snapshot + p:has-text("requested by command {command_id}")'
            page.wait_for_selector(caption, timeout=30_000)  # the live page shows it arrive
            page.wait_for_function(
                "() => document.getElementById('latest-snapshot').naturalWidth > 0"
            )

            assert page.get_attribute("#config-state", "data-state") == "unset"
            page.fill("#cmd-config textarea", "detector.threads=2")
            page.click("#cmd-config button")
            accepted = '#commands tr[data-status="accepted"]'
            page.wait_for_selector(f"{accepted} >> nth=1", timeout=30_000)  # the second one
            actions = [e.action for e in audit.entries(store)]
            assert actions.count("command") == 2  # the refused typo never left
            # the real agent's next health reports the hashes of what the page set, computed
            # on the unit from its remote.toml: in force, shown live on the open page
            page.wait_for_selector('#config-state[data-state="ok"]', timeout=30_000)
            expected = page.inner_text("#config-expected").split()[0]
            assert expected == keys_hash(key_hashes({"detector": {"threads": 2}}))
            assert page.inner_text("#config-on-unit") == expected
    finally:
        store.close()
