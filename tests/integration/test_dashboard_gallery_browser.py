"""Erasing an enrolled subject from the unit page, in a real browser (Debian's /usr/bin/chromium
through Playwright): the real agent with ``[enrolment]`` on (real CenterFace and FaceNet, real
gallery sealed on disk), a subject enrolled from a real photo by `camveil enrol`'s own template
code, the dashboard on uvicorn with its own ingest and the operator's keys, on a real mosquitto.

The operator types the subject id into the page's ``gallery_remove`` form: a malformed id is
refused before anything is sent; a good one is sealed with the operator key (CSRF-checked,
recorded and in the dashboard's audit log), the unit's ack ("accepted", with the gallery's new
size) is shown, and the unit's own ``audit`` event of the removal arrives in the page's
enrolment table; removing the same subject again is rejected by the unit, and the page says why.
"""

from __future__ import annotations

from pathlib import Path

from broker import HOST
from harness import DEVICE, Harness
from PIL import Image
from playwright.sync_api import Browser
from test_dashboard_browser import FAST, PASSWORD, _login, _serve, browser

from camveil.cli.dashboard import _validate_config
from camveil.cli.enrol import compute_templates, gallery_add_args
from contract.envelope.keys import PeerKeys
from dashboard import audit
from dashboard.command_client import OperatorKeys
from dashboard.ingest import Ingest
from dashboard.listener import ListenerConfig
from dashboard.store import Store
from dashboard.web import WebConfig, create_app
from dashboard.web.auth import Passwords
from dashboard.web.commands import StationSender
from tests.photos import photo

__all__ = ["browser"]  # the fixture used here

SUBJECT = "crew-0007"


def test_an_operator_erases_an_enrolled_subject_from_the_unit_page(
    harness: Harness, browser: Browser
) -> None:
    agent = harness
    agent.config_path.write_text(
        agent.config_path.read_text()
        + '\n[enrolment]\nenabled = true\npurpose = "integration test: staff door"\n'
        'legal_basis = "explicit consent of the test subject"\n'
    )
    agent.start_agent()
    picture = agent.tmp / "astronaut.png"
    Image.fromarray(photo("astronaut")).save(picture)
    templates, model = compute_templates([Path(picture)])
    add = agent.command(
        "gallery_add",
        gallery_add_args(SUBJECT, "consent-0007", templates, model),
        command_id="enrol-7",
    )
    agent.publish(add)
    assert agent.ack_for(add)["status"] == "accepted"

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
    app = create_app(
        store,
        config=WebConfig(tick_s=2.0),
        sender=StationSender(keys, HOST, agent.broker.port, timeout_s=20),
        validate_config=_validate_config,
        hasher=FAST,
    )
    Passwords(store, FAST).set("alice", PASSWORD)
    try:
        with Ingest(listener, agent.backend, devices, store) as ingest, _serve(app) as url:
            assert ingest.listener.subscribed.wait(10)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            _login(page, url)
            page.goto(f"{url}/unit/{DEVICE}")
            page.wait_for_function("() => document.body.dataset.live === '1'")
            form = "#cmd-gallery-remove"

            page.fill(f"{form} input[name=subject]", "Jane Doe")  # a name, not an opaque id
            page.click(f"{form} button")
            assert "not sent: a subject id is" in page.inner_text("#command-error")
            assert not store.read("SELECT 1 FROM commands")

            page.fill(f"{form} input[name=subject]", SUBJECT)
            page.click(f"{form} button")
            page.wait_for_selector("#command-notice")
            accepted = page.wait_for_selector(
                '#commands tr[data-status="accepted"]', timeout=30_000
            )
            assert accepted is not None
            row = accepted.inner_text()
            assert "gallery_remove" in row and SUBJECT in row and "ok: 0 subject(s)" in row
            # the unit's own audit event of the removal, through the dashboard's ingest
            removed = page.wait_for_selector('#enrolment tr[data-action="remove"]', timeout=30_000)
            assert removed is not None and SUBJECT in removed.inner_text()

            page.fill(f"{form} input[name=subject]", SUBJECT)  # again: nothing left to erase
            page.click(f"{form} button")
            rejected = page.wait_for_selector(
                '#commands tr[data-status="rejected"]', timeout=30_000
            )
            assert rejected is not None
            assert f"subject {SUBJECT} is not enrolled" in rejected.inner_text()
            page.wait_for_selector('#enrolment tr[data-action="refuse"]', timeout=30_000)

            sent = [e for e in audit.entries(store) if e.action == "command"]
            assert len(sent) == 2 and all("gallery_remove" in e.target for e in sent)
            assert all(e.operator == "alice" for e in sent)
    finally:
        store.close()
