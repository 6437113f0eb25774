"""Sequence numbers as sorted inclusive ranges, the compact form in which summaries (and the
backend's receipts) name sets of seqs."""

from __future__ import annotations

from collections.abc import Iterable


def seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted inclusive ranges: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out
