"""The detector guard turns every failure into a PrivacyError: the pipeline then drops the frame."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.vision.detection import Box, Detection
from agent.vision.guard import GuardedDetector
from contract.errors import DetectorFailedError, DetectorOverloadError, DetectorTimeoutError

IMG = np.zeros((8, 8, 3), np.uint8)


class Raising:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        raise ZeroDivisionError("boom")


class Blocking:
    def __init__(self) -> None:
        self.release = threading.Event()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.release.wait(5)
        return []


class Fine:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection(Box(0, 0, 1, 1), 0.9)]


class Wrong:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [(0, 0, 1, 1)]  # type: ignore[list-item]


def test_exception_becomes_detector_failed() -> None:
    with GuardedDetector(Raising(), timeout=1.0) as guard, pytest.raises(DetectorFailedError):
        guard.detect(IMG)


def test_timeout_then_overload_then_recovery() -> None:
    inner = Blocking()
    with GuardedDetector(inner, timeout=0.05) as guard:
        with pytest.raises(DetectorTimeoutError):
            guard.detect(IMG)
        with pytest.raises(DetectorOverloadError):
            guard.detect(IMG)
        inner.release.set()
        for _ in range(100):
            try:
                assert guard.detect(IMG) == []
                break
            except DetectorOverloadError:
                threading.Event().wait(0.01)
        else:
            pytest.fail("guard never recovered after the slow call finished")


def test_success_passes_detections_through() -> None:
    with GuardedDetector(Fine(), timeout=1.0) as guard:
        assert guard.detect(IMG)[0].score == 0.9


def test_malformed_result_is_refused() -> None:
    with GuardedDetector(Wrong(), timeout=1.0) as guard, pytest.raises(DetectorFailedError):
        guard.detect(IMG)
