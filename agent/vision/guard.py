"""Fail-closed wrapper around a detector: exceptions, timeouts and overload become PrivacyErrors.

The detector runs on one worker thread. A call that does not finish within ``timeout`` raises
:class:`~contract.errors.DetectorTimeoutError`; while that late call is still running, further
frames raise :class:`~contract.errors.DetectorOverloadError` at once instead of queueing up. The
caller drops the frame in every one of these cases: nothing derived from it is emitted.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import numpy as np
import numpy.typing as npt

from agent.vision.detection import Detection, Detector
from contract.errors import (
    DetectorFailedError,
    DetectorOverloadError,
    DetectorTimeoutError,
    PrivacyError,
)


class GuardedDetector:
    """Runs ``inner.detect`` with a deadline; see the module docstring."""

    def __init__(self, inner: Detector, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._pool: cf.ThreadPoolExecutor | None = None
        self._busy: cf.Future[list[Detection]] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> GuardedDetector:
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        with self._lock:
            if self._pool is None:
                self.__enter__()
            assert self._pool is not None
            if self._busy is not None and not self._busy.done():
                raise DetectorOverloadError("detector still busy with an earlier frame")
            future = self._pool.submit(self._inner.detect, rgb)
            self._busy = future
        try:
            result = future.result(timeout=self._timeout)
        except cf.TimeoutError as exc:
            raise DetectorTimeoutError(f"detector took longer than {self._timeout:.3f} s") from exc
        except PrivacyError:
            raise
        except Exception as exc:
            raise DetectorFailedError(f"detector raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, list) or not all(isinstance(d, Detection) for d in result):
            raise DetectorFailedError("detector returned something other than a list of Detection")
        return result
