"""Config drift: is the configuration the operators set from this dashboard what each unit runs?

A unit reports in every health event (``config``, docs/PROTOCOL.md "Config hashes") the hash of
its whole effective config and, key by key, the hashes of its ``remote.toml`` overlay: the keys
that signed ``set_config`` commands changed. When the unit acknowledges a ``set_config`` from
this dashboard as accepted, :func:`record_set` folds the keys of that change, as hashes computed
with the same function (:mod:`contract.confighash`), into ``config_set``: every key ever set from
here, with its last value. :func:`judge` then says, for the unit's latest health:

``unset``    nothing was set from this dashboard: nothing to compare (keys set another way,
             with ``camveil cmd`` or before this dashboard, are not drift);
``unknown``  the unit reports no config hashes (a unit from before them): never drift;
``pending``  a ``set_config`` is on its way (no ack yet, for up to :data:`IN_FLIGHT_S`), or
             the latest health was sent before the ack of the last accepted one (same boot: a
             lower seq; another boot: an earlier unit time): the unit has not reported the
             change yet;
``ok``       every key set from here has, on the unit, the hash of the value set;
``drift``    some key set from here is missing on the unit or has another value: the overlay
             was set aside at a start (``remote.toml.rejected``), replaced on the unit, factory
             reset, or changed by someone else since.

Only the keys set from here count, so keys the unit has in its overlay from elsewhere never make
drift, and drift can always be resolved from the page by setting the keys again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from contract.confighash import key_hashes, keys_hash, merge_key_hashes

STATES: Final = ("drift", "pending", "ok", "unknown", "unset")
"""In the order the fleet sorts them (the ones to look at first)."""
IN_FLIGHT_S: Final = 300.0
"""A ``set_config`` still ``sent`` after this long is no longer waited for (its ack is lost, or
the dashboard stopped before the worker recorded it): the unit is judged again."""


@dataclass(frozen=True)
class ConfigSet:
    """The keys set from this dashboard for one unit (a ``config_set`` row)."""

    keys: Mapping[str, str]
    hash: str
    command_id: str
    operator: str
    set_at: float
    ack_boot: str | None
    ack_seq: int | None
    ack_ts: int | None


@dataclass(frozen=True)
class HealthMark:
    """Where a unit's latest health sits: its boot, seq, unit time (ms), time received."""

    boot: str | None
    seq: int | None
    ts: int | None
    at: float | None


@dataclass(frozen=True)
class ConfigState:
    state: str
    """One of :data:`STATES`."""
    running: str | None
    """The unit's effective config hash (None: not reported)."""
    remote: str | None
    """The unit's overlay hash (None: not reported)."""
    expected: str | None
    """Hash of the keys set from here (None: nothing set)."""
    theirs: Mapping[str, str] | None
    """The unit's hashes of those keys (the ones it has)."""
    differs: tuple[str, ...] = ()
    """Keys set from here that the unit runs otherwise (``ok``: none)."""
    missing: tuple[str, ...] = ()
    """Keys set from here that are not in the unit's overlay at all."""
    set: ConfigSet | None = None

    @classmethod
    def unknown(cls) -> ConfigState:
        return cls("unknown", None, None, None, None)

    @property
    def on_unit(self) -> str | None:
        """Hash of the unit's hashes of the keys set from here (equal to ``expected`` when
        ``ok``); computed when asked (the unit page, an alert), not for every fleet row."""
        return None if self.theirs is None else keys_hash(self.theirs)

    @property
    def detail(self) -> str:
        parts = []
        if self.differs:
            parts.append("other value: " + ", ".join(self.differs))
        if self.missing:
            parts.append("not set on the unit: " + ", ".join(self.missing))
        return "; ".join(parts)


def reported(health: Mapping[str, Any] | None) -> tuple[str | None, str | None, dict[str, str]]:
    """The unit's (effective hash, overlay hash, per-key hashes) from a health body."""
    config = (health or {}).get("config")
    if not isinstance(config, Mapping):
        return None, None, {}
    keys = config.get("remote_keys")
    effective, remote = config.get("effective"), config.get("remote")
    return (
        effective if isinstance(effective, str) else None,
        remote if isinstance(remote, str) else None,
        {str(k): str(v) for k, v in keys.items()} if isinstance(keys, Mapping) else {},
    )


def _after_ack(mark: HealthMark, done: ConfigSet) -> bool:
    if (
        mark.boot is not None
        and mark.boot == done.ack_boot
        and None not in (mark.seq, done.ack_seq)
    ):
        return mark.seq > done.ack_seq  # type: ignore[operator]
    if mark.ts is not None and done.ack_ts is not None:
        return mark.ts > done.ack_ts
    return mark.at is not None and mark.at > done.set_at


def judge(
    health: Mapping[str, Any] | None,
    mark: HealthMark,
    done: ConfigSet | None,
    in_flight: int = 0,
) -> ConfigState:
    """The drift state of one unit (see the module docstring); ``in_flight``: its
    ``set_config`` commands sent and not answered yet."""
    running, remote, keys = reported(health)
    if done is None:
        state = "pending" if in_flight else ("unknown" if running is None else "unset")
        return ConfigState(state, running, remote, None, None)
    if running is None:
        return ConfigState("unknown", None, None, done.hash, None, set=done)
    theirs = {k: keys[k] for k in done.keys if k in keys}
    if in_flight or not _after_ack(mark, done):
        return ConfigState("pending", running, remote, done.hash, theirs, set=done)
    differs = tuple(sorted(k for k in theirs if theirs[k] != done.keys[k]))
    missing = tuple(sorted(k for k in done.keys if k not in keys))
    state = "drift" if differs or missing else "ok"
    return ConfigState(state, running, remote, done.hash, theirs, differs, missing, done)


def config_set_of(row: Sequence[Any]) -> ConfigSet | None:
    """A ``config_set`` row's columns (keys, hash, command_id, operator, set_at, ack_boot,
    ack_seq, ack_ts), None when the unit has none (a LEFT JOIN's nulls)."""
    if row[0] is None:
        return None
    keys, digest, command_id, operator, set_at, ack_boot, ack_seq, ack_ts = row
    return ConfigSet(
        json.loads(keys), digest, command_id, operator, float(set_at), ack_boot, ack_seq, ack_ts
    )


def record_set(
    conn: sqlite3.Connection,
    device: str,
    patch: Mapping[str, Any],
    *,
    command_id: str,
    operator: str,
    now: float,
    ack: Mapping[str, Any],
) -> None:
    """Fold an accepted ``set_config`` patch into the unit's ``config_set`` (inside the
    caller's transaction); ``ack``: the ack's plaintext (its boot, seq and ts, when given)."""
    row = conn.execute("SELECT keys FROM config_set WHERE device = ?", (device,)).fetchone()
    keys = merge_key_hashes(json.loads(row[0]) if row else {}, key_hashes(patch))
    boot, seq, ts = ack.get("boot"), ack.get("seq"), ack.get("ts")
    conn.execute(
        "INSERT INTO config_set (device, keys, hash, command_id, operator, set_at, ack_boot, "
        "ack_seq, ack_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
        "keys = excluded.keys, hash = excluded.hash, command_id = excluded.command_id, "
        "operator = excluded.operator, set_at = excluded.set_at, ack_boot = excluded.ack_boot, "
        "ack_seq = excluded.ack_seq, ack_ts = excluded.ack_ts",
        (
            device,
            json.dumps(keys, sort_keys=True),
            keys_hash(keys),
            command_id,
            operator,
            now,
            boot if isinstance(boot, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            ts if isinstance(ts, int) and not isinstance(ts, bool) else None,
        ),
    )
