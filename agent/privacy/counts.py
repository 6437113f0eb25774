"""Differentially private presence counts: OpenDP's discrete Laplace under a daily ε budget.

A presence event carries, per zone, the most people and the most faces seen at once in a window.
One person changes each of those numbers by at most 1, so one window's vector of ``n`` counts has
L1 sensitivity ``n``. :class:`CountNoise` releases the whole vector with OpenDP's
``make_laplace`` on integers, which samples the *discrete* Laplace distribution exactly (no
floating-point sampler, so none of the least-significant-bit leaks of Mironov 2012), at the scale
for which OpenDP's own privacy map says the release costs at most ``epsilon``.

Repeated windows compose: a person present all day is in every window. :class:`DailyBudget`
therefore keeps, on disk, the ε spent in the current UTC day and refuses a release that would
exceed ``epsilon_per_day``; the counts of such a window are withheld (sent as null, marked
``exhausted``) until the next UTC day. The spend is written (atomically, fsynced) *before* the
noised counts exist, so a crash or a reboot can waste budget but never spend it twice, and a
clock stepped backwards does not refund it. docs/PROTOCOL.md ("Presence counts and differential
privacy") states the guarantee.

Visitor histograms (:mod:`agent.privacy.visitors`: each visitor in exactly one dwell bucket, so
L1 sensitivity 1) go through :meth:`CountProtector.protect_histogram` with the same ε per
release, the same suppression and the same daily budget.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.privacy.visitors import HISTOGRAM_SENSITIVITY
from contract.errors import ConfigError, EventError
from contract.files import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_EPSILON_PER_DAY: Final = 10.0
"""Budget per person per UTC day when ``[events] dp_epsilon`` is set and the day budget is not."""
BUDGET_FILE: Final = "dp-budget.json"


@dataclass(frozen=True)
class CountPrivacy:
    """How presence counts are protected before they leave the unit.

    ``epsilon``: the ε one presence window spends, for all its counts together (every zone,
    people and faces); ``None`` = exact counts. ``epsilon_per_day``: the most ε spent per UTC
    day (the guarantee per person per day); default :data:`DEFAULT_EPSILON_PER_DAY`.
    ``suppress_below``: a count (after noise, so suppression does not depend on the exact
    value) below this is sent as null; 0 = never.
    """

    epsilon: float | None = None
    suppress_below: int = 0
    epsilon_per_day: float | None = None

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon}")
        if self.suppress_below < 0:
            raise ValueError(f"suppress_below must be >= 0, got {self.suppress_below}")
        day = self.epsilon_per_day
        if day is not None and not (math.isfinite(day) and day > 0):
            raise ValueError(f"epsilon_per_day must be a positive number, got {day}")
        if self.epsilon is not None and self.epsilon > self.day_budget:
            raise ValueError(
                f"epsilon per window ({self.epsilon}) exceeds the budget per day "
                f"({self.day_budget}): no window could ever be released"
            )

    @property
    def active(self) -> bool:
        return self.epsilon is not None or self.suppress_below > 0

    @property
    def day_budget(self) -> float:
        return self.epsilon_per_day if self.epsilon_per_day is not None else DEFAULT_EPSILON_PER_DAY


@dataclass(frozen=True)
class Release:
    """What protection a presence event's counts got (the event's ``dp`` map)."""

    suppress_below: int
    epsilon: float | None = None
    """ε this window spent; None when counts are exact or withheld."""
    day_budget: float | None = None
    spent_today: float | None = None
    """ε spent in this UTC day, this window included."""
    exhausted: bool = False
    """The day's budget could not pay for this window: its counts are withheld (null)."""


def _opendp() -> Any:
    try:
        import opendp.prelude as dp
    except ImportError as exc:  # a dependency, but the message must say what to do
        raise ConfigError(
            "[events] dp_epsilon needs the opendp package (pip install opendp), which is missing"
        ) from exc
    dp.enable_features("contrib")  # make_laplace is in OpenDP's "contrib" (proof-documented) set
    return dp


class CountNoise:
    """Discrete Laplace noise from OpenDP on a vector of counts, ``epsilon`` per release."""

    def __init__(self, epsilon: float) -> None:
        self._dp = _opendp()
        self.epsilon = epsilon
        self._measurements: dict[tuple[int, int], Any] = {}

    def _measurement(self, n: int, sensitivity: int | None = None) -> Any:
        """The release of ``n`` counts whose L1 distance between neighbours is ``sensitivity``
        (default ``n``: one person changes each count by at most 1)."""
        d_in = n if sensitivity is None else sensitivity
        meas = self._measurements.get((n, d_in))
        if meas is None:
            dp = self._dp

            def make(scale: float) -> Any:
                domain = dp.vector_domain(dp.atom_domain(T=int), size=n)
                return dp.m.make_laplace(domain, dp.l1_distance(T=int), scale=scale)

            meas = make(d_in / self.epsilon)
            if meas.map(d_in) > self.epsilon:  # OpenDP rounds its map conservatively
                meas = make(dp.binary_search_param(make, d_in=d_in, d_out=self.epsilon))
            self._measurements[(n, d_in)] = meas
        return meas

    def cost(self, n: int, sensitivity: int | None = None) -> float:
        """The ε OpenDP's privacy map charges for releasing ``n`` counts at L1 ``sensitivity``
        (default ``n``: sensitivity 1 each)."""
        d_in = n if sensitivity is None else sensitivity
        return float(self._measurement(n, sensitivity).map(d_in)) if n else 0.0

    def release(self, counts: Sequence[int], sensitivity: int | None = None) -> list[int]:
        """Noised counts, clamped at 0 (post-processing: the guarantee holds)."""
        if not counts:
            return []
        noised = self._measurement(len(counts), sensitivity)([int(c) for c in counts])
        return [max(0, int(v)) for v in noised]


def utc_day(t: float) -> int:
    """Days since 1970-01-01 in UTC."""
    return math.floor(t / 86400)


class DailyBudget:
    """The ε spent per UTC day, kept in ``path`` (None: in memory only, for tools and tests)."""

    def __init__(
        self, per_day: float, path: Path | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.per_day = per_day
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._warned = False
        self._day, self._spent = self._load()

    def _load(self) -> tuple[int, float]:
        if self._path is None:
            return utc_day(self._clock()), 0.0
        try:
            data = json.loads(self._path.read_bytes())
            day, spent = int(data["day"]), float(data["spent"])
            if not (math.isfinite(spent) and spent >= 0):
                raise ValueError(spent)
        except FileNotFoundError:
            return utc_day(self._clock()), 0.0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Fail closed: an unreadable record could hide spent budget; count today as spent.
            logger.error(
                "privacy budget record %s unreadable (%s): presence counts withheld until the "
                "next UTC day",
                self._path,
                exc,
            )
            return utc_day(self._clock()), math.inf
        return day, spent

    @property
    def spent_today(self) -> float:
        with self._lock:
            self._roll()
            return self._spent

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today > self._day:  # a clock stepped back stays on the later day: no refund
            self._day, self._spent, self._warned = today, 0.0, False

    def try_spend(self, epsilon: float) -> float | None:
        """Record ``epsilon`` as spent today and return the day's total, or None (nothing
        recorded) when the budget cannot pay for it. EventError when the record cannot be
        written: then nothing may be released."""
        with self._lock:
            self._roll()
            total = self._spent + epsilon
            if total > self.per_day * (1 + 1e-9):
                if self._spent <= self.per_day and not self._warned:
                    logger.warning(
                        "privacy budget of the day spent (%.3g of %.3g): presence counts are "
                        "withheld until 00:00 UTC",
                        self._spent,
                        self.per_day,
                    )
                    self._warned = True
                return None
            if self._path is not None:
                record = json.dumps({"day": self._day, "spent": total}).encode()
                try:
                    write_atomic(self._path, record, 0o600)
                except OSError as exc:
                    raise EventError(
                        f"cannot record the privacy budget in {self._path} ({exc.strerror}): "
                        "presence counts withheld"
                    ) from exc
            self._spent = total
            return total


class CountProtector:
    """Applies a :class:`CountPrivacy` to a window's counts: budget, noise, suppression."""

    def __init__(self, privacy: CountPrivacy, budget_path: Path | None = None) -> None:
        self.privacy = privacy
        self._noise = CountNoise(privacy.epsilon) if privacy.epsilon is not None else None
        self._budget = (
            DailyBudget(privacy.day_budget, budget_path) if privacy.epsilon is not None else None
        )

    def protect(
        self, counts: Sequence[int], sensitivity: int | None = None
    ) -> tuple[list[int | None], Release | None]:
        """The counts to publish (None = suppressed or withheld) and the ``dp`` record.

        ``sensitivity``: the L1 distance one person can move the vector by; default
        ``len(counts)`` (each count moves by at most 1)."""
        values, _, release = self._release(counts, sensitivity)
        return values, release

    def protect_histogram(
        self, counts: Sequence[int]
    ) -> tuple[list[int | None], int | None, Release | None]:
        """A histogram in which each person falls into exactly one bucket (L1 sensitivity 1):
        the buckets to publish, their total (the sum of the noised buckets before suppression,
        itself suppressed below ``suppress_below``) and the ``dp`` record."""
        return self._release(counts, HISTOGRAM_SENSITIVITY)

    def _release(
        self, counts: Sequence[int], sensitivity: int | None
    ) -> tuple[list[int | None], int | None, Release | None]:
        privacy = self.privacy
        k = privacy.suppress_below
        if not privacy.active:
            return list(counts), sum(counts), None
        release = Release(k)
        values: list[int]
        if self._noise is not None and self._budget is not None:
            cost = self._noise.cost(len(counts), sensitivity)
            spent = self._budget.try_spend(cost)
            if spent is None:
                return (
                    [None] * len(counts),
                    None,
                    Release(
                        k,
                        day_budget=self._budget.per_day,
                        spent_today=self._budget.spent_today,
                        exhausted=True,
                    ),
                )
            values = list(self._noise.release(counts, sensitivity))
            release = Release(k, cost, self._budget.per_day, spent)
        else:
            values = list(counts)
        total = sum(values)
        return (
            [None if v < k else v for v in values],
            None if total < k else total,
            release,
        )


def budget_path(state_dir: Path) -> Path:
    return state_dir / BUDGET_FILE


__all__ = [
    "BUDGET_FILE",
    "DEFAULT_EPSILON_PER_DAY",
    "CountNoise",
    "CountPrivacy",
    "CountProtector",
    "DailyBudget",
    "Release",
    "budget_path",
    "utc_day",
]
