"""Counters and latency windows that every stage reports into (and `health` events read)."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LatencyWindow:
    """The last ``size`` samples of one stage's latency, in seconds."""

    size: int = 2048
    _samples: deque[float] = field(default_factory=deque)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        if len(self._samples) > self.size:
            self._samples.popleft()

    def percentile(self, q: float) -> float | None:
        if not self._samples:
            return None
        return float(np.percentile(np.fromiter(self._samples, dtype=np.float64), q))

    def __len__(self) -> int:
        return len(self._samples)


@dataclass
class PipelineStats:
    """Frames in and out, drops by reason, and per-stage latency. Thread-safe counters."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    stages: dict[str, LatencyWindow] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages.setdefault(stage, LatencyWindow()).add(seconds)

    def snapshot(self) -> dict[str, object]:
        """A plain dict for health events and `camveil bench`: counts and p50/p99 in ms."""
        with self._lock:
            latency = {
                name: {
                    "p50_ms": _ms(win.percentile(50)),
                    "p99_ms": _ms(win.percentile(99)),
                    "n": len(win),
                }
                for name, win in self.stages.items()
            }
            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "dropped": dict(self.dropped),
                "latency": latency,
            }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
