"""Alerts: raised by scanning what the store holds, acknowledged by an operator.

:meth:`AlertScanner.scan` runs every few seconds (and in tests, on demand). It reads the events
stored since its cursor (``alert_cursor``) and each unit's last known boot, model hashes and
eviction total (``alert_watch``), and raises:

==============  ==================================================================
``offline``     a unit offline (last will, clean stop) or silent for longer than
                ``offline_alert_after_s``; one alert per outage
``tamper``      every tamper event (covered, moved, defocused)
``rejected``    messages refused for a unit (forged, replayed, unknown key, ...);
                one open alert per unit, its count kept current until acknowledged
``eviction``    the unit's outbox evicted envelopes (lost at the source)
``restart``     a new boot id: the agent restarted (a watchdog reset, a crash, or
                an intended restart)
``model``       the model hashes a unit reports changed
``drift``       the config a unit reports differs from the keys set from this dashboard
                (:mod:`dashboard.drift`); one alert per (set, reported) pair of hashes
``cert``        the TLS certificate a unit reports expires within ``cert_alert_days``
                (one alert per certificate; renew it: `camveil station renew`)
==============  ==================================================================

Raising is idempotent (each alert has a unique key), so a crash between a scan's writes and its
cursor update cannot raise one twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from dashboard import drift
from dashboard.store import Store
from dashboard.web.views import Thresholds

KINDS: Final = ("offline", "tamper", "rejected", "eviction", "restart", "model", "drift", "cert")
_BATCH: Final = 5000


@dataclass(frozen=True)
class Alert:
    id: int
    device: str
    kind: str
    detail: str
    at: float
    acked_by: str | None
    acked_at: float | None


class AlertScanner:
    def __init__(self, store: Store, limits: Thresholds, offline_alert_after_s: float) -> None:
        self._store = store
        self._limits = limits
        self._offline_after = offline_alert_after_s

    def scan(self) -> int:
        """Raise what is new; returns how many alerts were raised or updated."""
        raised = 0
        while True:
            n, more = self._scan_events()
            raised += n
            if not more:
                break
        raised += self._scan_rejections()
        raised += self._scan_offline()
        raised += self._scan_drift()
        return raised

    def _scan_events(self) -> tuple[int, bool]:
        store = self._store
        now = store.now()
        raised = 0
        with store.transaction() as conn:
            row = conn.execute("SELECT value FROM alert_cursor WHERE name = 'events'").fetchone()
            cursor = int(row[0]) if row else 0
            rows = conn.execute(
                "SELECT id, device, boot, type, body FROM events WHERE id > ? "
                "AND type IN ('tamper', 'health', 'status') ORDER BY id LIMIT ?",
                (cursor, _BATCH),
            ).fetchall()
            watch: dict[str, list[Any]] = {}
            for event_id, device, boot, kind, blob in rows:
                if device not in watch:
                    found = conn.execute(
                        "SELECT boot, models, evicted FROM alert_watch WHERE device = ?",
                        (device,),
                    ).fetchone()
                    watch[device] = list(found) if found else [None, None, None]
                    if watch[device][2] is not None and watch[device][2] < 0:
                        watch[device][2] = None  # no health seen yet
                w = watch[device]
                if w[0] is not None and boot != w[0]:
                    raised += _raise(
                        conn, f"restart:{device}:{boot}", device, "restart",
                        f"new boot {boot} (was {w[0]})", now,
                    )  # fmt: skip
                w[0] = boot
                body = cbor2.loads(blob)
                if not isinstance(body, Mapping):
                    continue
                if kind == "tamper":
                    raised += _raise(
                        conn, f"tamper:{event_id}", device, "tamper",
                        f"{body.get('kind')} (score {body.get('score')})", now,
                    )  # fmt: skip
                elif kind == "health":
                    raised += self._health(conn, event_id, device, body, w, now)
            for device, (boot, models, evicted) in watch.items():
                conn.execute(
                    "INSERT INTO alert_watch (device, boot, models, evicted) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (device) DO UPDATE SET boot = excluded.boot, "
                    "models = excluded.models, evicted = excluded.evicted",
                    (device, boot, models, -1 if evicted is None else evicted),
                )
            if rows:
                conn.execute(
                    "INSERT INTO alert_cursor (name, value) VALUES ('events', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (int(rows[-1][0]),),
                )
        return raised, len(rows) == _BATCH

    def _health(
        self,
        conn: Any,
        event_id: int,
        device: str,
        body: Mapping[str, Any],
        w: list[Any],
        now: float,
    ) -> int:
        raised = self._cert(conn, device, body.get("cert"), now)
        models = body.get("models")
        if isinstance(models, Mapping):
            text = json.dumps({str(k): str(v) for k, v in models.items()}, sort_keys=True)
            if w[1] is not None and text != w[1]:
                old = json.loads(w[1])
                changed = sorted(k for k in set(old) | set(models) if old.get(k) != models.get(k))
                detail = ", ".join(
                    f"{k}: {str(old.get(k, '-'))[:12]} -> {str(models.get(k, '-'))[:12]}"
                    for k in changed
                )
                raised += _raise(conn, f"model:{event_id}", device, "model", detail, now)
            w[1] = text
        outbox = body.get("outbox")
        evicted_map = outbox.get("evicted") if isinstance(outbox, Mapping) else None
        if isinstance(evicted_map, Mapping):
            total = sum(int(v) for v in evicted_map.values() if isinstance(v, int))
            before = w[2]
            if before is not None and total > before:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(evicted_map.items()) if v)
                raised += _raise(
                    conn, f"eviction:{event_id}", device, "eviction",
                    f"{total - before} envelope(s) evicted at the source ({reasons})", now,
                )  # fmt: skip
            w[2] = total
        return raised

    def _cert(self, conn: Any, device: str, cert: object, now: float) -> int:
        if not isinstance(cert, Mapping):
            return 0
        serial, not_after = cert.get("serial"), cert.get("not_after")
        if not isinstance(serial, str) or not isinstance(not_after, int):
            return 0
        days = (not_after - now) / 86400.0
        if days >= self._limits.cert_alert_days:
            return 0
        until = dt.datetime.fromtimestamp(not_after, dt.timezone.utc).date().isoformat()
        detail = (
            f"TLS certificate {serial[:16]} expires {until} ({days:.0f} days left): renew it "
            f"with `camveil station renew STATION {device}`"
            if days > 0
            else f"TLS certificate {serial[:16]} expired {until}: the broker refuses the unit; "
            "re-provision it over USB"
        )
        return _raise(conn, f"cert:{device}:{serial}", device, "cert", detail, now)

    def _scan_rejections(self) -> int:
        store = self._store
        now = store.now()
        raised = 0
        with store.transaction() as conn:
            totals = conn.execute(
                "SELECT device, SUM(count), GROUP_CONCAT(reason || ' ' || count, ', ') "
                "FROM rejections WHERE reason != 'duplicate' GROUP BY device"
            ).fetchall()
            for device, total, reasons in totals:
                row = conn.execute(
                    "SELECT rejected FROM alert_watch WHERE device = ?", (device,)
                ).fetchone()
                before = int(row[0]) if row else 0
                if total <= before:
                    continue
                detail = f"{total} rejected in all ({reasons})"
                open_alert = conn.execute(
                    "SELECT id FROM alerts WHERE device = ? AND kind = 'rejected' "
                    "AND acked_at IS NULL",
                    (device,),
                ).fetchone()
                if open_alert:
                    conn.execute(
                        "UPDATE alerts SET detail = ?, at = ? WHERE id = ?",
                        (detail, now, open_alert[0]),
                    )
                    raised += 1
                else:
                    raised += _raise(
                        conn, f"rejected:{device}:{total}", device, "rejected", detail, now
                    )
                conn.execute(
                    "INSERT INTO alert_watch (device, rejected, evicted) VALUES (?, ?, -1) "
                    "ON CONFLICT (device) DO UPDATE SET rejected = excluded.rejected",
                    (device, total),
                )
        return raised

    def _scan_drift(self) -> int:
        store = self._store
        with store.transaction() as conn:
            return _drift_alerts(conn, store.now())

    def _scan_offline(self) -> int:
        store = self._store
        now = store.now()
        raised = 0
        limit = self._offline_after
        with store.transaction() as conn:
            rows = conn.execute("SELECT device, state, state_at, last_seen FROM units").fetchall()
            for device, state, state_at, last_seen in rows:
                if state == "offline" and state_at is not None and now - state_at > limit:
                    key, since = f"offline:{device}:{state_at!r}", state_at
                    why = "it said offline (its last will, or a clean stop)"
                elif (
                    state == "online"
                    and last_seen is not None
                    and now - last_seen > max(limit, self._limits.offline_after_s)
                ):
                    key, since = f"silent:{device}:{last_seen!r}", last_seen
                    why = "it said online but has been silent"
                else:
                    continue
                open_alert = conn.execute(
                    "SELECT 1 FROM alerts WHERE device = ? AND kind = 'offline' "
                    "AND acked_at IS NULL",
                    (device,),
                ).fetchone()
                if open_alert:
                    continue
                detail = f"offline for {int(now - since)} s: {why}"
                raised += _raise(conn, key, device, "offline", detail, now)
        return raised


_DRIFT_SQL: Final = """
SELECT u.device, u.health, u.health_at, u.health_boot, u.health_seq, u.health_ts,
       (SELECT COUNT(*) FROM commands m WHERE m.device = u.device AND m.name = 'set_config'
        AND m.status = 'sent' AND m.sent_at > ?),
       c.keys, c.hash, c.command_id, c.operator, c.set_at, c.ack_boot, c.ack_seq, c.ack_ts
FROM config_set c JOIN units u ON u.device = c.device
"""


def _drift_alerts(conn: Any, now: float) -> int:
    raised = 0
    for r in conn.execute(_DRIFT_SQL, (now - drift.IN_FLIGHT_S,)).fetchall():
        device, health = r[0], json.loads(r[1]) if r[1] else None
        state = drift.judge(
            health, drift.HealthMark(r[3], r[4], r[5], r[2]), drift.config_set_of(r[7:15]), r[6]
        )
        if state.state != "drift" or state.set is None:
            continue
        detail = (
            f"runs another config than set here by {state.set.operator} "
            f"({str(state.expected)[:12]}; the unit: {str(state.on_unit)[:12]}): {state.detail}"
        )
        key = f"drift:{device}:{state.expected}:{state.remote}"
        raised += _raise(conn, key, device, "drift", detail, now)
    return raised


def _raise(conn: Any, key: str, device: str, kind: str, detail: str, at: float) -> int:
    cur = conn.execute(
        "INSERT OR IGNORE INTO alerts (key, device, kind, detail, at) VALUES (?, ?, ?, ?, ?)",
        (key, device, kind, detail, at),
    )
    return int(cur.rowcount)


def listing(store: Store, limit: int = 200) -> list[Alert]:
    """Open alerts (newest first), then acknowledged ones."""
    rows = store.read(
        "SELECT id, device, kind, detail, at, acked_by, acked_at FROM alerts "
        "ORDER BY acked_at IS NOT NULL, id DESC LIMIT ?",
        (limit,),
    )
    return [Alert(*r) for r in rows]


def open_count(store: Store) -> int:
    return int(store.read("SELECT COUNT(*) FROM alerts WHERE acked_at IS NULL")[0][0])


def acknowledge(store: Store, alert_id: int, operator: str) -> Alert | None:
    """Mark one open alert acknowledged; None when there is no such open alert."""
    with store.transaction() as conn:
        cur = conn.execute(
            "UPDATE alerts SET acked_by = ?, acked_at = ? WHERE id = ? AND acked_at IS NULL",
            (operator, store.now(), alert_id),
        )
        if cur.rowcount != 1:
            return None
        row = conn.execute(
            "SELECT id, device, kind, detail, at, acked_by, acked_at FROM alerts WHERE id = ?",
            (alert_id,),
        ).fetchone()
    return Alert(*row)
