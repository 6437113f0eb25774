"""The unit page shows enrolled verification's match and audit events and sends ``gallery_remove``
(real SQLite store, the real app through Starlette's TestClient; fixtures from
test_dashboard_web)."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from dashboard.store import Store
from tests.unit.test_dashboard_web import (
    FakeSender,
    add,
    audit_entries,
    client,
    clock,
    csrf,
    login,
    sender,
    store,
)

__all__ = ["client", "clock", "sender", "store"]  # the fixtures used here


def test_unit_page_shows_matches_and_the_audit_trail(client: TestClient, store: Store) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "audit", {"action": "enrol", "subject": "staff-0017", "cmd": "op-9",
        "operator": "operator-1", "consent": "form 2026-114", "subjects": 1})  # fmt: skip
    add(store, "cv-1", 3, "match", {"subject": "staff-0017", "score": 0.7412})
    add(store, "cv-1", 4, "audit", {"action": "match", "subject": "staff-0017", "score": 0.7412})
    add(store, "cv-1", 5, "audit", {"action": "refuse", "cmd": "op-10", "reason": "gallery full"})
    add(store, "cv-2", 1, "match", {"subject": "staff-0099", "score": 0.8})
    login(client)
    page = client.get("/unit/cv-1").text
    table = re.search(r'<table id="enrolment">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r'<tr data-type="(\w+)" data-action="(\w+)"', table.group(1))
    assert rows == [("audit", "refuse"), ("audit", "match"), ("match", "match"), ("audit", "enrol")]
    assert "0.741" in table.group(1) and "consent form 2026-114" in table.group(1)
    assert "reason gallery full" in table.group(1)
    assert "staff-0099" not in page  # another unit's match
    assert "MATCH enrolled subject staff-0017" in page  # the timeline too
    other = client.get("/unit/cv-2").text
    assert 'id="enrolment"' in other and "staff-0017" not in other
    add(store, "cv-3", 1, "status", {"state": "online"})
    assert 'id="enrolment"' not in client.get("/unit/cv-3").text  # no section without events


def test_gallery_remove_is_checked_recorded_audited_and_sent(
    client: TestClient, store: Store, sender: FakeSender
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    login(client)
    page = client.get("/unit/cv-1").text
    assert 'id="cmd-gallery-remove"' in page
    token = csrf(client, "/unit/cv-1")
    url = "/unit/cv-1/command"
    for bad in ("", "Jane Doe", "x" * 65, "-leading-dash"):
        refused = client.post(
            url, data={"csrf": token, "command": "gallery_remove", "subject": bad}
        )
        assert refused.status_code == 400 and "not sent: a subject id is" in refused.text, bad
    no_csrf = client.post(url, data={"command": "gallery_remove", "subject": "staff-0017"})
    assert no_csrf.status_code == 403
    assert not store.read("SELECT 1 FROM commands")
    sent = client.post(
        url, data={"csrf": token, "command": "gallery_remove", "subject": "staff-0017"}
    )
    assert sent.status_code == 303
    client.app.state.web.desk.stop()  # type: ignore[attr-defined]  # drains the queue
    assert sender.sent == [("cv-1", "gallery_remove", {"subject": "staff-0017"})]
    row = client.get("/unit/cv-1").text
    assert re.search(r'data-status="accepted"><td>[^<]*</td><td>gallery_remove', row)
    assert "staff-0017" in row
    (entry,) = [e for e in audit_entries(client) if e.action == "command"]
    assert entry.operator == "alice" and "cv-1 gallery_remove" in entry.target
    assert '"subject": "staff-0017"' in entry.target
