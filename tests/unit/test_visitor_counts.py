"""Unique-visitor and dwell-time counts in presence events: the histogram, OpenDP noise at L1
sensitivity 1, the same daily budget and suppression as the zone counts, the wire format."""

from __future__ import annotations

import math
from pathlib import Path

import cbor2
import numpy as np
import pycddl
import pytest

from agent.events import EventBuilder, to_cbor, to_map
from agent.privacy.counts import CountNoise, CountPrivacy, CountProtector
from agent.privacy.visitors import VisitorWindow, check_edges, dwell_histogram
from agent.sequence import CountingSequence

SCHEMA = pycddl.Schema((Path(__file__).resolve().parents[2] / "docs" / "events.cddl").read_text())
T0 = 20_000 * 86400.0 + 3600.0
EDGES = (30, 120, 300)


def builder(privacy: CountPrivacy, budget: Path | None = None) -> EventBuilder:
    return EventBuilder(
        "cv-test-0001",
        "0123456789abcdef",
        CountingSequence(start=1),
        clock=lambda: T0,
        count_privacy=privacy,
        budget_path=budget,
    )


def test_dwell_histogram_buckets_and_edges() -> None:
    assert dwell_histogram([0, 29.9, 30, 119, 120, 299, 300, 5000], EDGES) == (2, 2, 2, 2)
    window = VisitorWindow.of(0.0, 600.0, [10.0, 400.0, 50.0], EDGES)
    assert window.counts == (1, 1, 0, 1) and window.unique == 3
    for bad in ((), (30, 30), (0, 10), (10, 5)):
        with pytest.raises(ValueError, match="edge"):
            check_edges(bad)


def test_exact_release_and_suppression_of_buckets_and_total() -> None:
    exact = CountProtector(CountPrivacy())
    assert exact.protect_histogram([3, 0, 2, 1]) == ([3, 0, 2, 1], 6, None)
    suppressed = CountProtector(CountPrivacy(suppress_below=3))
    values, unique, release = suppressed.protect_histogram([3, 0, 2, 1])
    assert values == [3, None, None, None] and unique == 6
    assert release is not None and release.epsilon is None
    assert suppressed.protect_histogram([1, 1, 0, 0])[1] is None


def test_histogram_noise_is_charged_at_sensitivity_one() -> None:
    """One visitor is in one bucket: a histogram of 4 buckets costs what one count costs, so at
    the same ε its noise is a quarter of a 4-count vector's (sensitivity 4)."""
    noise = CountNoise(1.0)
    assert noise.cost(4, 1) == pytest.approx(1.0) and noise.cost(4, 1) <= 1.0 + 1e-12
    assert noise.cost(4) == pytest.approx(1.0)
    n = 1000
    hist = np.array([noise.release([50] * n, 1) for _ in range(10)], float).ravel()
    q = math.exp(-1.0)  # discrete Laplace at scale 1/ε = 1
    assert hist.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.1)
    vector = np.array([noise.release([50] * 4) for _ in range(2500)], float).ravel()
    q4 = math.exp(-1 / 4)  # scale 4/ε
    assert vector.var() == pytest.approx(2 * q4 / (1 - q4) ** 2, rel=0.1)


def test_visitors_spend_the_same_daily_budget_after_the_zone_counts(tmp_path: Path) -> None:
    b = builder(CountPrivacy(epsilon=1.0, suppress_below=2, epsilon_per_day=3.0), tmp_path / "b")
    counts = {"all": (40, 30)}
    window = VisitorWindow.of(T0 - 600, T0, [10.0] * 30 + [200.0] * 20, EDGES)
    first = to_map(b.presence(T0 - 60, T0, counts, window))["body"]
    assert first["dp"]["spent"] == pytest.approx(1.0)
    visitors = first["visitors"]
    assert visitors["dp"] == {"eps": pytest.approx(1.0), "day": 3.0, "spent": 2.0, "min": 2}
    assert (visitors["start"], visitors["end"]) == (round((T0 - 600) * 1000), round(T0 * 1000))
    assert [(d["min"], d["max"]) for d in visitors["dwell"]] == [
        (0, 30),
        (30, 120),
        (120, 300),
        (300, None),
    ]
    assert abs(visitors["unique"] - 50) < 25
    assert visitors["dwell"][0]["n"] is not None and visitors["dwell"][2]["n"] is not None
    # the second event: the zones take the last ε of the day, the visitors find it spent
    second = to_map(b.presence(T0, T0 + 60, counts, window))["body"]
    assert second["dp"]["spent"] == pytest.approx(3.0)
    assert second["visitors"]["dp"]["exhausted"] is True
    assert second["visitors"]["unique"] is None
    assert all(d["n"] is None for d in second["visitors"]["dwell"])
    # the day is spent: both withheld
    third = to_map(b.presence(T0, T0 + 60, counts, window))["body"]
    assert third["dp"]["exhausted"] and third["visitors"]["dp"]["exhausted"]


def test_presence_with_visitors_matches_the_cddl() -> None:
    window = VisitorWindow.of(T0 - 600, T0, [5.0, 40.0, 40.0, 700.0], EDGES)
    for privacy in (CountPrivacy(), CountPrivacy(suppress_below=2), CountPrivacy(epsilon=0.5)):
        event = builder(privacy).presence(T0 - 60, T0, {"all": (4, 4)}, window)
        data = to_cbor(event)
        SCHEMA.validate_cbor(data)
        body = cbor2.loads(data)["body"]
        assert set(body["visitors"]) >= {"start", "end", "unique", "dwell"}
    exact = to_map(builder(CountPrivacy()).presence(T0 - 60, T0, {"all": (4, 4)}, window))
    assert exact["body"]["visitors"]["unique"] == 4
    assert [d["n"] for d in exact["body"]["visitors"]["dwell"]] == [1, 2, 0, 1]
    without = to_map(builder(CountPrivacy()).presence(T0 - 60, T0, {"all": (4, 4)}))
    assert "visitors" not in without["body"]
