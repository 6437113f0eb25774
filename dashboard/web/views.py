"""What the pages show, read from the store: fleet rows, a unit's timeline, presence series,
sequence gaps per boot, rejections and commands. Pure data shaping; no HTTP here.

A unit's **status**: ``offline`` when its last status message said so (its own clean stop, or
the last will the broker published for it), ``online`` when it said online and was heard from
within ``offline_after_s``, ``silent`` when it said online but has not been heard from since
(a dead link the broker has not noticed yet), ``unknown`` before any status, and ``revoked``
whatever it last said once the station has revoked it (dashboard.revocations). Its health values
are **stale** once its last health message is older than ``stale_after_s``, or when it is not
online: they are then shown greyed and marked, never as current.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from dashboard import drift, history
from dashboard.revocations import Revoked
from dashboard.store import Store, StoredEvent, UnitView

STATUSES: Final = ("online", "silent", "offline", "unknown", "revoked")
SORT_KEYS: Final = (
    "device",
    "site",
    "status",
    "fps",
    "drops",
    "outbox",
    "temp",
    "last_seen",
    "rejected",
    "drift",
    "cert",
)


@dataclass(frozen=True)
class Thresholds:
    stale_after_s: float = 180.0
    """Health older than this is stale (three default health intervals)."""
    offline_after_s: float = 300.0
    """A unit that said online but was not heard from for this long is ``silent`` (and
    raises an offline alert)."""
    cert_alert_days: float = 30.0
    """A unit whose TLS certificate expires within this many days is marked and raises a
    ``cert`` alert (renew it: `camveil station renew`)."""


def status_of(unit: UnitView, now: float, limits: Thresholds) -> str:
    if unit.state == "offline":
        return "offline"
    if unit.state == "online":
        heard = unit.last_seen or unit.state_at or 0.0
        return "online" if now - heard <= limits.offline_after_s else "silent"
    return "unknown"


@dataclass(frozen=True)
class FleetRow:
    unit: UnitView
    status: str
    stale: bool
    age_s: float | None
    rejected: int
    open_alerts: int
    revoked: Revoked | None = None
    cert_days: float | None = None
    """Days left on the unit's TLS certificate (its last health), None if not reported."""
    cert_expiring: bool = False
    """``cert_days`` is below the alert threshold."""
    config: drift.ConfigState = field(default_factory=drift.ConfigState.unknown)
    trend: history.Series | None = None
    """The last hour of its health (the fleet page's chart; None: none stored)."""

    @property
    def device(self) -> str:
        return self.unit.device

    def sort_value(self, key: str) -> Any:
        value = _SORT[key](self)
        # missing values sort last, whatever the direction
        return (value is None, value if value is not None else 0, self.unit.device)


_SORT: Final[Mapping[str, Callable[[FleetRow], Any]]] = {
    "device": lambda r: r.unit.device,
    "site": lambda r: r.unit.site,
    "status": lambda r: STATUSES.index(r.status),
    "fps": lambda r: r.unit.fps,
    "drops": lambda r: r.unit.drops,
    "outbox": lambda r: r.unit.outbox_depth,
    "temp": lambda r: r.unit.temperature,
    "last_seen": lambda r: -(r.unit.last_seen or 0.0),
    "rejected": lambda r: r.rejected,
    "drift": lambda r: drift.STATES.index(r.config.state),
    "cert": lambda r: r.cert_days,
}
"""What each sort key sorts by (only the one asked for is computed)."""


_FLEET_SQL: Final = """
SELECT u.device, u.site, u.state, u.state_at, u.last_seen, u.health, u.health_at,
       COALESCE(r.n, 0), COALESCE(a.n, 0),
       u.health_boot, u.health_seq, u.health_ts, COALESCE(p.n, 0),
       c.keys, c.hash, c.command_id, c.operator, c.set_at, c.ack_boot, c.ack_seq, c.ack_ts
FROM units u
LEFT JOIN (SELECT device, SUM(count) AS n FROM rejections
           WHERE reason != 'duplicate' GROUP BY device) r ON r.device = u.device
LEFT JOIN (SELECT device, COUNT(*) AS n FROM alerts
           WHERE acked_at IS NULL GROUP BY device) a ON a.device = u.device
LEFT JOIN (SELECT device, COUNT(*) AS n FROM commands
           WHERE name = 'set_config' AND status = 'sent' AND sent_at > ?
           GROUP BY device) p ON p.device = u.device
LEFT JOIN config_set c ON c.device = u.device
"""


def fleet(
    store: Store,
    now: float,
    limits: Thresholds,
    *,
    q: str = "",
    status: str = "",
    site: str = "",
    config: str = "",
    sort: str = "device",
    descending: bool = False,
    revoked: Mapping[str, Revoked] | None = None,
    with_history: bool = False,
) -> list[FleetRow]:
    """Every unit (one query; with ``with_history`` a second one for the last hour of every
    unit's health), filtered and sorted. ``q`` matches device or site; ``config`` is a drift
    state (:data:`dashboard.drift.STATES`)."""
    rows: list[FleetRow] = []
    needle = q.strip().lower()
    series: dict[str, history.Series] = {}
    if with_history:
        found = store.read(history.SERIES_SQL, (history.first_bucket(now),))
        series = history.series(found, now)
    for r in store.read(_FLEET_SQL, (now - drift.IN_FLIGHT_S,)):
        row = _row(r, now, limits, revoked or {}, series)
        if status and row.status != status:
            continue
        if config and row.config.state != config:
            continue
        if site and row.unit.site != site:
            continue
        if needle and needle not in row.device.lower() and needle not in row.unit.site.lower():
            continue
        rows.append(row)
    key = sort if sort in SORT_KEYS else "device"
    keyed = [(row.sort_value(key), row) for row in rows]
    present = [(k, row) for k, row in keyed if k[0] is False]
    missing = [row for k, row in keyed if k[0] is True]
    present.sort(key=lambda kr: kr[0], reverse=descending)
    missing.sort(key=lambda row: row.device)
    return [row for _, row in present] + missing


def fleet_row(
    store: Store,
    device: str,
    now: float,
    limits: Thresholds,
    revoked: Mapping[str, Revoked] | None = None,
) -> FleetRow | None:
    found = store.read(_FLEET_SQL + " WHERE u.device = ?", (now - drift.IN_FLIGHT_S, device))
    return _row(found[0], now, limits, revoked or {}) if found else None


def _row(
    r: Sequence[Any],
    now: float,
    limits: Thresholds,
    revoked: Mapping[str, Revoked],
    series: Mapping[str, history.Series] | None = None,
) -> FleetRow:
    unit = UnitView(
        device=r[0],
        site=r[1],
        state=r[2],
        state_at=r[3],
        last_seen=r[4],
        health=json.loads(r[5]) if r[5] else None,
        health_at=r[6],
    )
    revocation = revoked.get(unit.device)
    status = "revoked" if revocation is not None else status_of(unit, now, limits)
    stale = (
        status != "online" or unit.health_at is None or now - unit.health_at > limits.stale_after_s
    )
    age = now - unit.last_seen if unit.last_seen is not None else None
    days = unit.cert_days_left(now)
    expiring = days is not None and days < limits.cert_alert_days
    mark = drift.HealthMark(r[9], r[10], r[11], unit.health_at)
    config = drift.judge(unit.health, mark, drift.config_set_of(r[13:21]), int(r[12]))
    return FleetRow(
        unit, status, stale, age, int(r[7]), int(r[8]), revocation, days, expiring, config,
        (series or {}).get(unit.device),
    )  # fmt: skip


def sites(store: Store) -> list[str]:
    return [r[0] for r in store.read("SELECT DISTINCT site FROM units ORDER BY site")]


# --- one unit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootSummary:
    """What the stored sequence numbers of one boot say."""

    boot: str
    events: int
    first_seq: int
    last_seq: int
    first_at: float
    last_at: float
    min_delay_ms: float | None
    max_delay_ms: float | None

    @property
    def missing(self) -> int:
        """Seqs between the first and last stored that are not stored: lost or evicted at
        the source, still in its outbox, or spent on command acks (sealed to the operator,
        not ingested)."""
        return (self.last_seq - self.first_seq + 1) - self.events


def boots(store: Store, device: str) -> list[BootSummary]:
    """Per boot (newest first): counts, seq range, and receive delay (received - unit ts);
    a negative minimum delay means the unit's clock runs ahead."""
    rows = store.read(
        "SELECT boot, COUNT(*), MIN(seq), MAX(seq), MIN(received_at), MAX(received_at), "
        "MIN(received_at * 1000 - ts), MAX(received_at * 1000 - ts) FROM events "
        "WHERE device = ? GROUP BY boot ORDER BY MAX(received_at) DESC LIMIT 20",
        (device,),
    )
    return [BootSummary(*r) for r in rows]


@dataclass(frozen=True)
class PresencePoint:
    end_ms: int
    people: int | None
    faces: int | None
    eps: float | None
    noised: bool


def presence_series(store: Store, device: str, limit: int = 120) -> list[PresencePoint]:
    """The whole-view ("all") counts of the last ``limit`` presence windows, oldest first."""
    rows = store.read(
        "SELECT body FROM events WHERE device = ? AND type = 'presence' ORDER BY id DESC LIMIT ?",
        (device, limit),
    )
    points: list[PresencePoint] = []
    for (blob,) in reversed(rows):
        body = cbor2.loads(blob)
        if not isinstance(body, Mapping):
            continue
        zone = next(
            (z for z in body.get("zones", []) if isinstance(z, Mapping) and z.get("zone") == "all"),
            None,
        )
        if zone is None:
            continue
        dp = body.get("dp")
        eps = dp.get("eps") if isinstance(dp, Mapping) else None
        end = body.get("end")
        points.append(
            PresencePoint(
                end_ms=end if isinstance(end, int) else 0,
                people=_count(zone.get("people")),
                faces=_count(zone.get("faces")),
                eps=float(eps) if isinstance(eps, int | float) else None,
                noised=isinstance(dp, Mapping),
            )
        )
    return points


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class EnrolmentRow:
    """One ``match`` or ``audit`` event of a unit's enrolled verification (docs/PROTOCOL.md)."""

    received_at: float
    seq: int
    type: str
    action: str
    subject: str
    score: float | None
    detail: str


def enrolment_log(store: Store, device: str, limit: int = 50) -> list[EnrolmentRow]:
    """The unit's latest ``match`` and ``audit`` events, newest first."""
    rows = store.read(
        "SELECT received_at, seq, type, body FROM events WHERE device = ? "
        "AND type IN ('match', 'audit') ORDER BY id DESC LIMIT ?",
        (device, limit),
    )
    out: list[EnrolmentRow] = []
    for received_at, seq, kind, blob in rows:
        body = cbor2.loads(blob)
        if not isinstance(body, Mapping):
            continue
        score = body.get("score")
        details = [
            f"{label} {body[key]}"
            for key, label in (
                ("cmd", "command"),
                ("operator", "by"),
                ("consent", "consent"),
                ("reason", "reason"),
                ("subjects", "gallery size"),
            )
            if body.get(key) is not None
        ]
        out.append(
            EnrolmentRow(
                received_at=float(received_at),
                seq=int(seq),
                type=str(kind),
                action="match" if kind == "match" else str(body.get("action", "-")),
                subject=str(body.get("subject", "-")),
                score=float(score) if isinstance(score, int | float) else None,
                detail=", ".join(details),
            )
        )
    return out


@dataclass(frozen=True)
class TimelineItem:
    event: StoredEvent
    summary: str


def summarize(event: StoredEvent) -> str:
    """One line per event type; never the snapshot's bytes."""
    body = event.body if isinstance(event.body, Mapping) else {}
    if event.type == "presence":
        parts = [
            f"{z.get('zone')}: {_show(z.get('people'))} people, {_show(z.get('faces'))} faces"
            for z in body.get("zones", [])
            if isinstance(z, Mapping)
        ]
        dp = body.get("dp")
        if isinstance(dp, Mapping):
            parts.append(f"noised eps={dp.get('eps', '-')} min={dp.get('min', 0)}")
        return "; ".join(parts) or "no zones"
    if event.type == "tamper":
        return f"TAMPER {body.get('kind')} (score {_show(body.get('score'))})"
    if event.type == "health":
        outbox = body.get("outbox")
        depth = outbox.get("depth") if isinstance(outbox, Mapping) else None
        return (
            f"fps {_show(body.get('fps'))}, outbox {_show(depth)}, temp {_show(body.get('temp_c'))}"
        )
    if event.type == "status":
        return f"status {body.get('state')}"
    if event.type == "match":
        return f"MATCH enrolled subject {body.get('subject')} (score {_show(body.get('score'))})"
    if event.type == "audit":
        subject = body.get("subject")
        return f"audit {body.get('action')}" + (f" {subject}" if subject else "")
    if event.type == "snapshot":
        jpeg = body.get("jpeg")
        size = len(jpeg) if isinstance(jpeg, bytes) else 0
        why = f"command {body['cmd']}" if "cmd" in body else f"trigger {body.get('trigger', '-')}"
        return f"snapshot {body.get('w')}x{body.get('h')}, {size} bytes ({why})"
    return event.type


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def timeline(store: Store, device: str, limit: int = 100) -> list[TimelineItem]:
    return [TimelineItem(e, summarize(e)) for e in store.events(device, limit)]


@dataclass(frozen=True)
class CommandRow:
    id: str
    device: str
    name: str
    args: str
    operator: str
    sent_at: float
    status: str
    reason: str
    done_at: float | None


def commands(store: Store, device: str | None = None, limit: int = 20) -> list[CommandRow]:
    sql = "SELECT id, device, name, args, operator, sent_at, status, reason, done_at FROM commands"
    args: Sequence[Any] = ()
    if device is not None:
        sql += " WHERE device = ?"
        args = (device,)
    rows = store.read(sql + " ORDER BY sent_at DESC LIMIT ?", (*args, limit))
    return [CommandRow(*r) for r in rows]
