"""The dashboard's web app through Starlette's TestClient, over a real SQLite store: sessions,
CSRF, the login rate limit, Argon2id, and what the pages show."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from PIL import Image
from starlette.testclient import TestClient

from camveil.cli.dashboard import _validate_config
from dashboard import audit
from dashboard.revocations import RevocationFile
from dashboard.store import Store
from dashboard.web import WebConfig, create_app, first_operator_password
from dashboard.web.alerts import AlertScanner
from dashboard.web.auth import Passwords
from dashboard.web.views import Thresholds
from provisioning.inventory import Revocation
from provisioning.station import write_revocations_file

FAST = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeSender:
    """Records commands and answers like a unit that accepts everything: the ack's plaintext,
    sealed by the unit in boot ``b1`` with seq ``ack_seq`` (then the next)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.ack_seq = 100

    def send(
        self, device: str, name: str, args: Mapping[str, Any] | None, command_id: str
    ) -> Mapping[str, Any]:
        self.sent.append((device, name, args))
        self.ack_seq += 1
        body = {"id": command_id, "cmd_seq": 1, "status": "accepted", "reason": "ok"}
        return {"type": "cmd_ack", "boot": "b1", "seq": self.ack_seq, "ts": 0, "body": body}


class CountingStore(Store):
    queries = 0

    def _rows(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        self.queries += 1
        return super()._rows(sql, args)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(out, "JPEG")
    return out.getvalue()


def add(store: Store, device: str, seq: int, kind: str, body: Any, boot: str = "b1") -> None:
    message = {"v": 1, "type": kind, "boot": boot, "ts": int(store.now() * 1000), "body": body}
    assert store.add_event(device, seq, f"camveil/v1/{device}/event/{kind}", message)


def health(fps: float = 9.5, evicted: int = 0, model: str = "ab" * 32) -> dict[str, Any]:
    return {
        "fps": fps,
        "dropped": {"overload": 2},
        "outbox": {"depth": 3, "evicted": {"bytes": evicted}},
        "temp_c": 51.5,
        "versions": {"camveil": "0.1.0"},
        "models": {"centerface": model},
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[CountingStore]:
    with CountingStore(tmp_path / "dash.sqlite", clock) as s:
        yield s


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


def make_app(store: Store, clock: Clock, sender: FakeSender | None = None, **cfg: Any) -> Any:
    config = WebConfig(scan_interval_s=None, tick_s=3600, **cfg)
    return create_app(
        store,
        config=config,
        sender=sender,
        validate_config=_validate_config,
        clock=clock,
        hasher=FAST,
    )


@pytest.fixture
def client(store: Store, clock: Clock, sender: FakeSender) -> Iterator[TestClient]:
    app = make_app(store, clock, sender, metrics_token="t" * 32)
    Passwords(store, FAST).set("alice", PASSWORD)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def login(c: TestClient, name: str = "alice", password: str = PASSWORD) -> Any:
    c.get("/login")
    token = c.cookies.get("camveil_login")
    return c.post("/login", data={"name": name, "password": password, "csrf": token or ""})


def csrf(c: TestClient, path: str = "/") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', c.get(path).text)
    assert found
    return found.group(1)


# --- refused without a session ----------------------------------------------------------------

PAGES = ["/", "/unit/cv-1", "/alerts", "/audit", "/?sort=fps&desc=1"]
APIS = ["/unit/cv-1/snapshot/1.jpg", "/audit/export.json", "/events", "/metrics"]
POSTS = ["/logout", "/unit/cv-1/command", "/alerts/1/ack"]


def test_every_route_is_refused_without_a_session(client: TestClient, store: Store) -> None:
    add(store, "cv-1", 1, "snapshot", {"jpeg": _jpeg(), "w": 32, "h": 24, "q": 80, "trigger": "t"})
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    for path in APIS:
        assert client.get(path).status_code == 401, path
    for path in POSTS:
        assert client.post(path, data={"command": "snapshot"}).status_code == 401, path
    client.cookies.set("camveil_session", "forged-token")
    assert client.get("/").status_code == 303
    assert client.get("/metrics").status_code == 401
    assert audit.entries(store) == []  # nothing was viewed


def test_every_state_change_needs_the_csrf_token(
    client: TestClient, store: Store, sender: FakeSender
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    assert login(client).status_code == 303
    for path in POSTS:
        assert client.post(path, data={"command": "snapshot"}).status_code == 403, path
        r = client.post(path, data={"command": "snapshot", "csrf": "wrong"})
        assert r.status_code == 403, path
    assert sender.sent == []
    assert client.get("/").status_code == 200  # still logged in: logout was refused too


def test_login_needs_its_own_csrf_token(client: TestClient) -> None:
    r = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": "x"})
    assert r.status_code == 403
    assert "camveil_session" not in client.cookies


def test_session_cookie_flags_and_logout(client: TestClient) -> None:
    r = login(client)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain HTTP on loopback
    page = client.get("/")
    assert "nonce-" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert client.post("/logout", data={"csrf": csrf(client)}).status_code == 303
    assert client.get("/").status_code == 303
    assert [e.action for e in audit_entries(client)] == ["login", "logout"]


def audit_entries(c: TestClient) -> list[audit.AuditEntry]:
    return audit.entries(c.app.state.web.store)  # type: ignore[attr-defined]


def test_cookie_is_secure_over_tls(store: Store, clock: Clock) -> None:
    Passwords(store, FAST).set("alice", PASSWORD)
    with TestClient(
        make_app(store, clock), base_url="https://dash.test", follow_redirects=False
    ) as c:
        r = login(c)
        assert r.status_code == 303
        assert "Secure" in r.headers["set-cookie"]


def test_login_rate_limit(client: TestClient, clock: Clock) -> None:
    for _ in range(5):
        assert login(client, password="wrong password").status_code == 401
    blocked = login(client)  # the right password, but too late
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert login(client, name="bob", password="x" * 12).status_code == 401  # other name: counted
    clock.now += 301
    assert login(client).status_code == 303


def test_login_rate_limit_per_client_across_names(client: TestClient) -> None:
    for n in range(20):
        assert login(client, name=f"user{n}", password="wrong password").status_code == 401
    assert login(client).status_code == 429


def test_passwords_are_argon2id(store: Store) -> None:
    passwords = Passwords(store, FAST)
    passwords.set("carol", "a long passphrase")
    stored = store.operator_hash("carol")
    assert stored is not None and stored.startswith("$argon2id$")
    assert "a long passphrase" not in stored
    assert passwords.verify("carol", "a long passphrase")
    assert not passwords.verify("carol", "a long passphrasE")
    assert not passwords.verify("nobody", "a long passphrase")
    with pytest.raises(Exception, match="at least 10"):
        passwords.set("carol", "short")
    with pytest.raises(Exception, match="operator name"):
        passwords.set("bad name", "a long passphrase")


def test_first_start_creates_admin_once(store: Store, clock: Clock) -> None:
    app = make_app(store, clock)
    password = first_operator_password(app)
    assert password and len(password) >= 16
    assert first_operator_password(app) is None
    assert Passwords(store, FAST).verify("admin", password)


def test_next_after_login_is_local_only(client: TestClient) -> None:
    client.get("/login")
    token = client.cookies.get("camveil_login")
    data = {"name": "alice", "password": PASSWORD, "csrf": token, "next": "//evil.example/x"}
    r = client.post("/login", data=data)
    assert r.headers["location"] == "/"


# --- pages ------------------------------------------------------------------------------------


def test_fleet_marks_offline_and_stale(client: TestClient, store: Store, clock: Clock) -> None:
    for n in (1, 2, 3):
        add(store, f"cv-{n}", 1, "status", {"state": "online"})
        add(store, f"cv-{n}", 2, "health", health(fps=float(n)))
    store.set_site("cv-1", "north")
    store.set_site("cv-2", "south")
    store.set_site("cv-3", "north")
    add(store, "cv-2", 3, "status", {"state": "offline"})
    clock.now += 400
    add(store, "cv-3", 3, "presence", {"start": 0, "end": 1, "zones": []})  # heard, no health
    login(client)
    page = client.get("/").text
    rows = dict(re.findall(r'data-device="([^"]+)" data-status="([^"]+)"', page))
    assert rows == {"cv-1": "silent", "cv-2": "offline", "cv-3": "online"}
    assert page.count('class="stale"') == 3  # health older than 180 s everywhere
    filtered = client.get("/?site=north&sort=fps&desc=1").text
    assert re.findall(r'data-device="([^"]+)"', filtered) == ["cv-3", "cv-1"]
    assert re.findall(r'data-device="([^"]+)"', client.get("/?status=offline").text) == ["cv-2"]
    assert re.findall(r'data-device="([^"]+)"', client.get("/?q=cv-3").text) == ["cv-3"]


def test_a_unit_the_station_revoked_is_shown_revoked_with_when_and_why(
    store: Store, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revocations.json"
    for n in (1, 2):
        add(store, f"cv-{n}", 1, "status", {"state": "online"})
    app = make_app(store, clock, revocations=RevocationFile(path))
    Passwords(store, FAST).set("alice", PASSWORD)
    with TestClient(app, follow_redirects=False) as c:
        login(c)

        def statuses() -> dict[str, str]:
            page = c.get("/").text
            return dict(re.findall(r'data-device="([^"]+)" data-status="([^"]+)"', page))

        assert statuses() == {"cv-1": "online", "cv-2": "online"}  # no file yet: none revoked
        # written by the station's own code, in its own format
        stolen = Revocation("0a1b", "cv-2", b"k" * 32, 1_790_000_000.0, "stolen from site")
        write_revocations_file(path, [stolen])
        assert statuses() == {"cv-1": "online", "cv-2": "revoked"}
        assert re.findall(r'data-device="([^"]+)"', c.get("/?status=revoked").text) == ["cv-2"]
        unit = c.get("/unit/cv-2").text
        assert 'id="revoked"' in unit and "stolen from site" in unit and "0a1b" in unit
        assert 'id="revoked"' not in c.get("/unit/cv-1").text
        path.write_text("{ not json")  # a half-copied file: the last good list stays
        with caplog.at_level("WARNING", logger="dashboard.revocations"):
            assert statuses() == {"cv-1": "online", "cv-2": "revoked"}
            assert statuses() == {"cv-1": "online", "cv-2": "revoked"}
        assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
        write_revocations_file(path, [])
        assert statuses() == {"cv-1": "online", "cv-2": "online"}


def test_fleet_page_reads_a_fixed_number_of_queries(
    client: TestClient, store: CountingStore
) -> None:
    login(client)

    def queries_for(units: int) -> int:
        for n in range(units):
            add(store, f"cv-{units}-{n}", 1, "health", health())
        before = store.queries
        assert client.get("/").status_code == 200
        return store.queries - before

    assert queries_for(5) == queries_for(50)  # no query per unit


def test_unit_page_snapshot_is_audited(client: TestClient, store: Store) -> None:
    jpeg = _jpeg()
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "presence", {"start": 0, "end": 1, "zones": [
        {"zone": "all", "people": 3, "faces": 2}], "dp": {"eps": 0.5, "min": 0}})  # fmt: skip
    add(store, "cv-1", 5, "snapshot", {"jpeg": jpeg, "w": 32, "h": 24, "q": 80, "cmd": "op-1"})
    add(store, "cv-2", 1, "status", {"state": "online"})
    store.add_rejection("cv-1", "bad_signature")
    login(client)
    page = client.get("/unit/cv-1").text
    assert "<svg" in page and "epsilon 0.5" in page
    assert "bad_signature" in page
    assert re.search(r'<td class="num">1\.\.5</td>\s*<td class="num">2</td>', page)  # gaps
    src = re.search(r'id="latest-snapshot"[^>]*src="([^"]+)"', page)
    assert src and src.group(1) == "/unit/cv-1/snapshot/3.jpg"
    assert audit_entries(client)[-1].action == "login"  # rendering the page is no view
    r = client.get(src.group(1))
    assert r.status_code == 200 and r.content == jpeg and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "no-store"
    last = audit_entries(client)[-1]
    assert (last.operator, last.action) == ("alice", "view_snapshot")
    assert "cv-1 event 3" in last.target
    assert client.get("/unit/cv-2/snapshot/3.jpg").status_code == 404  # another unit's id
    assert client.get("/unit/cv-1/snapshot/2.jpg").status_code == 404  # not a snapshot
    assert client.get("/unit/nope").status_code == 404


def test_commands_validated_before_sending(
    client: TestClient, store: Store, sender: FakeSender
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    login(client)
    token = csrf(client, "/unit/cv-1")
    typo = client.post(
        "/unit/cv-1/command",
        data={"csrf": token, "command": "set_config", "config": "detector.thread=2"},
    )
    assert typo.status_code == 400 and "did you mean" in typo.text
    bad_section = client.post(
        "/unit/cv-1/command",
        data={"csrf": token, "command": "set_config", "config": "mqtt.broker=x"},
    )
    assert bad_section.status_code == 400 and "cannot be changed remotely" in bad_section.text
    r = client.post(
        "/unit/cv-1/command",
        data={"csrf": token, "command": "set_config", "config": "detector.threads=2"},
    )
    assert r.status_code == 303
    snap = client.post("/unit/cv-1/command", data={"csrf": token, "command": "snapshot"})
    assert snap.status_code == 303
    web = client.app.state.web  # type: ignore[attr-defined]
    web.desk.stop()  # drains the queue
    assert sender.sent == [
        ("cv-1", "set_config", {"config": {"detector": {"threads": 2}}}),
        ("cv-1", "snapshot", None),
    ]
    page = client.get("/unit/cv-1").text
    assert page.count('data-status="accepted"') == 2
    actions = [(e.action, e.target.split()[1]) for e in audit_entries(client)[1:]]
    assert actions == [("command", "set_config"), ("command", "snapshot")]


def test_alerts_raised_and_acknowledged(client: TestClient, store: Store, clock: Clock) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "health", health())
    add(store, "cv-1", 3, "tamper", {"kind": "covered", "score": 0.9})
    add(store, "cv-1", 4, "health", health(evicted=7, model="cd" * 32))
    add(store, "cv-1", 1, "status", {"state": "online"}, boot="b2")
    store.add_rejection("cv-1", "bad_signature")
    store.add_rejection("cv-1", "duplicate")  # a redelivery is no alert
    add(store, "cv-2", 1, "status", {"state": "offline"})
    clock.now += 200
    scanner = AlertScanner(store, Thresholds(), offline_alert_after_s=120)
    assert scanner.scan() == 6
    assert scanner.scan() == 0  # idempotent
    login(client)
    page = client.get("/alerts").text
    kinds = re.findall(r'data-kind="([^"]+)"', page)
    assert sorted(kinds) == ["eviction", "model", "offline", "rejected", "restart", "tamper"]
    alert_id = re.search(r'data-alert="(\d+)" data-kind="tamper"', page)
    assert alert_id
    r = client.post(f"/alerts/{alert_id.group(1)}/ack", data={"csrf": csrf(client, "/alerts")})
    assert r.status_code == 303
    assert (
        client.post(f"/alerts/{alert_id.group(1)}/ack", data={"csrf": csrf(client)}).status_code
        == 404
    )
    last = audit_entries(client)[-1]
    assert last.action == "ack_alert" and "tamper cv-1" in last.target


def test_audit_page_verifies_and_exports(client: TestClient, store: Store) -> None:
    login(client)
    assert "Chain verified" in client.get("/audit").text
    export = client.get("/audit/export.json")
    assert export.headers["content-disposition"].startswith("attachment")
    data = json.loads(export.content)
    assert data["verified"] is True
    assert [e["action"] for e in data["entries"]] == ["login", "export_audit"]
    with store.transaction() as conn:  # someone edits the database file
        conn.execute("UPDATE audit SET operator = 'mallory' WHERE id = 1")
    page = client.get("/audit").text
    assert "Chain BROKEN at entry 1" in page


def test_metrics_with_session_or_token(client: TestClient, store: Store) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "health", health())
    store.add_rejection("cv-1", "replayed")
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer " + "t" * 32})
    assert r.status_code == 200
    text = r.text
    assert 'camveil_unit_up{device="cv-1",site=""} 1.0' in text
    assert 'camveil_unit_fps{device="cv-1",site=""} 9.5' in text
    assert 'camveil_unit_outbox_depth{device="cv-1",site=""} 3.0' in text
    assert 'camveil_unit_temperature_celsius{device="cv-1",site=""} 51.5' in text
    assert 'camveil_rejected_messages_total{device="cv-1",reason="replayed"} 1.0' in text
    login(client)
    assert client.get("/metrics").status_code == 200


def test_certificate_days_left_shown_and_alerted_below_the_threshold(
    client: TestClient, store: Store, clock: Clock
) -> None:
    day = 86400
    now = int(clock.now)
    for device, days in (("cv-fresh", 400), ("cv-soon", 12), ("cv-gone", -1)):
        add(store, device, 1, "status", {"state": "online"})
        cert = {"serial": f"{device[3:]}0a", "not_after": now + days * day + 60}
        add(store, device, 2, "health", {**health(), "cert": cert})
    add(store, "cv-old", 1, "health", health())  # a unit from before: no cert reported
    scanner = AlertScanner(store, Thresholds(cert_alert_days=30), offline_alert_after_s=120)
    assert scanner.scan() == 2  # the one expiring soon and the expired one
    later = {"serial": "soon0a", "not_after": now + 11 * day}
    add(store, "cv-soon", 3, "health", {**health(), "cert": later})
    assert scanner.scan() == 0  # one alert per certificate, not per health message
    login(client)
    page = client.get("/alerts").text
    assert page.count('data-kind="cert"') == 2
    assert "expires" in page and "camveil station renew STATION cv-soon" in page
    assert "expired" in page and "re-provision" in page
    fleet = client.get("/?sort=cert").text
    # sorted by days left, the unit without a certificate last
    assert re.findall(r'data-device="([^"]+)"', fleet) == ["cv-gone", "cv-soon", "cv-fresh",
                                                          "cv-old"]  # fmt: skip
    cells = re.findall(
        r'<td class="num cert( expiring)?" title="certificate (\w+)">(-?\d+)<', fleet
    )
    assert cells == [(" expiring", "gone0a", "-1"), (" expiring", "soon0a", "11"),
                     ("", "fresh0a", "400")]  # fmt: skip
    unit = client.get("/unit/cv-soon").text
    assert 'id="cert-expiry" class="error"' in unit and "11 days left" in unit
    assert 'id="cert-expiry" class="muted"' in client.get("/unit/cv-fresh").text


def test_a_password_in_a_set_config_reaches_the_unit_but_not_the_dashboards_records(
    client: TestClient, store: Store, sender: FakeSender
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    login(client)
    token = csrf(client, "/unit/cv-1")
    url = "rtsp://viewer:hunter2-secret@10.0.0.7:554/stream1"
    r = client.post(
        "/unit/cv-1/command",
        data={
            "csrf": token,
            "command": "set_config",
            "config": f'camera.kind="rtsp"\ncamera.source="{url}"',
        },
    )
    assert r.status_code == 303, r.text
    web = client.app.state.web  # type: ignore[attr-defined]
    web.desk.stop()
    assert sender.sent == [
        ("cv-1", "set_config", {"config": {"camera": {"kind": "rtsp", "source": url}}})
    ]
    stored = [row[0] for row in store._rows("SELECT args FROM commands")]  # type: ignore[attr-defined]
    assert len(stored) == 1 and "viewer:<secret>@10.0.0.7" in stored[0]
    assert all("hunter2" not in e.target for e in audit_entries(client))
    assert "hunter2" not in client.get("/unit/cv-1").text
