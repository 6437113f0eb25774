"""Differentially private presence counts (agent/privacy/counts.py): OpenDP's discrete Laplace,
the daily ε budget kept on disk, suppression, and what a presence event says about them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cbor2
import numpy as np
import pycddl
import pytest

from agent.events import EventBuilder, to_cbor, to_map
from agent.privacy.counts import (
    CountNoise,
    CountPrivacy,
    CountProtector,
    DailyBudget,
    utc_day,
)
from agent.sequence import CountingSequence
from contract.errors import EventError

SCHEMA = pycddl.Schema((Path(__file__).resolve().parents[2] / "docs" / "events.cddl").read_text())
DAY = 86400.0
T0 = 20_000 * DAY + 3600.0  # 01:00 UTC on day 20000


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_noise_is_discrete_laplace_with_the_scale_opendp_charges_for() -> None:
    for epsilon, n in ((0.5, 1), (1.0, 2), (2.0, 4)):
        noise = CountNoise(epsilon)
        assert noise.cost(n) <= epsilon + 1e-12
        assert noise.cost(n) == pytest.approx(epsilon)
    # the spread at scale n/epsilon, from 20,000 draws (vectors of 1,000 counts at once): the
    # sample variance of a (discrete) Laplace is within 10% with overwhelming probability
    for scale in (2.0, 0.5):
        n = 1000
        noise = CountNoise(n / scale)
        draws = np.array([noise.release([30] * n) for _ in range(20)], dtype=float).ravel()
        q = math.exp(-1 / scale)  # discrete Laplace, parameter t = scale
        expected_var = 2 * q / (1 - q) ** 2
        assert abs(draws.mean() - 30) < 6 * math.sqrt(expected_var / len(draws))
        assert draws.var() == pytest.approx(expected_var, rel=0.1)
        assert np.all(draws == np.round(draws))  # integers: no floating-point sampler


def test_noised_counts_are_clamped_at_zero_and_differ_between_releases() -> None:
    noise = CountNoise(0.5)
    values = [noise.release([0, 0])[0] for _ in range(300)]
    assert min(values) == 0
    assert len(set(values)) > 3


def test_the_budget_pays_for_windows_until_the_day_is_spent_then_withholds() -> None:
    clock = Clock()
    budget = DailyBudget(3.0, clock=clock)
    assert [budget.try_spend(1.0) for _ in range(4)] == [1.0, 2.0, 3.0, None]
    assert budget.spent_today == 3.0
    clock.t += DAY
    assert budget.spent_today == 0.0
    assert budget.try_spend(1.0) == 1.0


def test_the_budget_survives_a_restart_and_a_clock_stepped_back(tmp_path: Path) -> None:
    path = tmp_path / "dp-budget.json"
    clock = Clock()
    budget = DailyBudget(2.0, path, clock)
    assert budget.try_spend(1.5) == 1.5
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = DailyBudget(2.0, path, clock)  # a reboot does not refund the day
    assert again.try_spend(1.0) is None
    assert again.try_spend(0.5) == 2.0
    clock.t += DAY
    assert DailyBudget(2.0, path, clock).try_spend(2.0) == 2.0
    clock.t -= DAY  # the clock steps back a day: the later day's spending still counts
    back = DailyBudget(2.0, path, clock)
    assert back.try_spend(0.5) is None
    assert json.loads(path.read_bytes())["day"] == utc_day(T0 + DAY)


def test_an_unreadable_budget_record_counts_the_day_as_spent(tmp_path: Path) -> None:
    path = tmp_path / "dp-budget.json"
    path.write_bytes(b"{not json")
    clock = Clock()
    budget = DailyBudget(5.0, path, clock)
    assert budget.try_spend(0.1) is None
    clock.t += DAY
    assert budget.try_spend(0.1) == pytest.approx(0.1)


def test_a_budget_that_cannot_be_written_releases_nothing(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    protector = CountProtector(CountPrivacy(epsilon=1.0), budget_path=ro / "dp-budget.json")
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: make the path a directory instead
            ro.chmod(0o700)
            (ro / "dp-budget.json").mkdir()
        with pytest.raises(EventError, match="privacy budget"):
            protector.protect([3, 2])
    finally:
        ro.chmod(0o700)


def test_small_counts_are_suppressed_after_the_noise() -> None:
    exact = CountProtector(CountPrivacy(suppress_below=5))
    values, release = exact.protect(list(range(8)))
    assert values == [None] * 5 + [5, 6, 7]
    assert release is not None and release.epsilon is None
    noisy = CountProtector(CountPrivacy(epsilon=1.0, suppress_below=5, epsilon_per_day=1e6))
    zero = [noisy.protect([0])[0][0] for _ in range(3000)]
    assert sum(v is None for v in zero) / len(zero) > 0.97
    large = [noisy.protect([40])[0][0] for _ in range(500)]
    assert all(v is not None for v in large)


def builder(privacy: CountPrivacy, budget_path: Path | None = None) -> EventBuilder:
    return EventBuilder(
        "cv-test-0001",
        "0123456789abcdef",
        CountingSequence(start=1),
        clock=lambda: T0,
        count_privacy=privacy,
        budget_path=budget_path,
    )


def test_a_presence_event_says_what_it_spent_and_when_the_day_is_spent(tmp_path: Path) -> None:
    b = builder(CountPrivacy(epsilon=1.0, suppress_below=2, epsilon_per_day=2.0), tmp_path / "b")
    counts = {"all": (40, 30), "door": (20, 10)}
    first, second, third = (to_map(b.presence(T0 - 60, T0, counts))["body"] for _ in range(3))
    assert first["dp"] == {"eps": pytest.approx(1.0), "day": 2.0, "spent": 1.0, "min": 2}
    assert second["dp"]["spent"] == pytest.approx(2.0)
    assert all(z["people"] is not None for z in second["zones"])
    assert third["dp"] == {"day": 2.0, "spent": 2.0, "exhausted": True, "min": 2}
    assert all(z["people"] is None and z["faces"] is None for z in third["zones"])
    SCHEMA.validate_cbor(to_cbor(b.presence(T0 - 60, T0, counts)))
    exhausted = cbor2.loads(to_cbor(b.presence(T0 - 60, T0, counts)))["body"]
    assert exhausted["dp"]["exhausted"] is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": -1.0},
        {"suppress_below": -1},
        {"epsilon": 1.0, "epsilon_per_day": 0.5},
        {"epsilon": 1.0, "epsilon_per_day": math.inf},
        {"epsilon": 20.0},  # above the default day budget
    ],
)
def test_count_privacy_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CountPrivacy(**kwargs)  # type: ignore[arg-type]
