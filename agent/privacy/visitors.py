"""What a re-identification window says about its visitors: aggregate counts, nothing else.

:class:`VisitorWindow` is the only value that leaves :mod:`agent.vision.reid` for the event
path. It holds the window's interval and a histogram: how many pseudonymous visitor ids had a
dwell time (last sighting minus first, inside the window) in each bucket. No id, no embedding,
no per-visitor time: each visitor is one unit in one bucket, so adding or removing one visitor
moves the histogram by 1 in L1 (the sensitivity :func:`agent.privacy.counts` is told when it
noises the histogram). The number of unique visitors is the sum of the buckets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_DWELL_EDGES_S: Final = (30, 120, 300)
"""Bucket edges in seconds: under 30 s (passing by), 30 s-2 min, 2-5 min, 5 min or more."""

HISTOGRAM_SENSITIVITY: Final = 1
"""One visitor is in exactly one bucket: adding or removing them moves the histogram by 1."""


def check_edges(edges: Sequence[int]) -> tuple[int, ...]:
    """Bucket edges: strictly increasing whole seconds above 0 (at most 16)."""
    out = tuple(edges)
    if not 1 <= len(out) <= 16:
        raise ValueError(f"dwell buckets need 1 to 16 edges, got {len(out)}")
    if any(type(e) is not int for e in out) or out[0] <= 0:
        raise ValueError(f"dwell bucket edges must be whole seconds > 0, got {list(out)}")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"dwell bucket edges must increase, got {list(out)}")
    return out


def dwell_histogram(dwell_s: Iterable[float], edges: Sequence[int]) -> tuple[int, ...]:
    """How many dwell times fall in each bucket ``[0, e0), [e0, e1), ..., [e_last, inf)``."""
    counts = [0] * (len(edges) + 1)
    for d in dwell_s:
        i = 0
        while i < len(edges) and d >= edges[i]:
            i += 1
        counts[i] += 1
    return tuple(counts)


@dataclass(frozen=True)
class VisitorWindow:
    """One closed re-identification window: [start, end] in Unix seconds, its dwell buckets
    (``edges`` in seconds) and the number of visitors in each (``len(edges) + 1`` counts)."""

    start: float
    end: float
    edges: tuple[int, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.edges) + 1 or min(self.counts, default=0) < 0:
            raise ValueError("a visitor window needs len(edges) + 1 counts, all >= 0")
        if not self.end >= self.start:
            raise ValueError(f"visitor window ends ({self.end}) before it starts ({self.start})")

    @property
    def unique(self) -> int:
        return sum(self.counts)

    @classmethod
    def of(
        cls, start: float, end: float, dwell_s: Iterable[float], edges: Sequence[int]
    ) -> VisitorWindow:
        """The window's histogram of ``dwell_s`` (one value per visitor id)."""
        edges = check_edges(edges)
        return cls(start, end, edges, dwell_histogram(dwell_s, edges))


__all__ = [
    "DEFAULT_DWELL_EDGES_S",
    "HISTOGRAM_SENSITIVITY",
    "VisitorWindow",
    "check_edges",
    "dwell_histogram",
]
