"""TFLite inference runtime: LiteRT (``ai_edge_litert``) preferred, ``tflite_runtime`` as fallback.

XNNPACK is the default CPU delegate of both runtimes; ``num_threads`` sets its thread count.
A Coral EdgeTPU delegate is loaded when asked for and ``libedgetpu`` exists.

The runtimes' C++ side prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to the
process's stderr (file descriptor 2) when an interpreter is built, which lands in the journal on
every start; Python has no switch for it. :func:`_native_stderr_filtered` captures descriptor 2
while an interpreter is built and allocated, logs those known lines at DEBUG and writes every
other line back to stderr, so errors still show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from contract.errors import ModelMissingError, RuntimeUnavailableError

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install a TFLite runtime: `pip install ai-edge-litert` (preferred) "
    "or `pip install tflite-runtime 'numpy<2'`"
)


#: lines the runtimes print on every start that say nothing an operator needs
_NATIVE_NOISE = (
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "INFO: Initialized TensorFlow Lite runtime.",
)


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 for the block; afterwards log the runtimes' known INFO lines at
    DEBUG and write everything else back to stderr. Does nothing when descriptor 2 is closed."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = []
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if line.strip() in _NATIVE_NOISE:
                    logger.debug("runtime: %s", line.strip())
                else:
                    kept.append(line)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape, dtype and int8 quantization (scale, zero point) of one tensor."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int


class Runtime(Protocol):
    """One loaded model: set inputs, invoke, read outputs."""

    @property
    def inputs(self) -> list[TensorInfo]: ...

    @property
    def outputs(self) -> list[TensorInfo]: ...

    def run(self, *inputs: npt.NDArray[Any]) -> list[npt.NDArray[Any]]: ...

    def resize_input(self, shape: tuple[int, ...]) -> None: ...


def _interpreter_class() -> tuple[Any, Any, str]:
    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, litert.load_delegate, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflr

        return tflr.Interpreter, tflr.load_delegate, "tflite_runtime"
    except ImportError as exc:
        raise RuntimeUnavailableError(f"no TFLite runtime is importable; {_INSTALL_HINT}") from exc


def runtime_name() -> str:
    """Which runtime would be used (``ai_edge_litert`` or ``tflite_runtime``)."""
    return _interpreter_class()[2]


def _info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=int(detail["index"]),
        name=str(detail["name"]),
        shape=tuple(int(s) for s in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero),
    )


def _has_delegate(interp: Any) -> bool | None:
    """True if a delegate node runs part of the graph (an op named DELEGATE in the plan).

    Uses the interpreter's private ``_get_ops_details``; ``None`` if that is unavailable."""
    try:
        return any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details())
    except Exception:  # private API: absent or changed in this runtime version
        return None


class TFLiteRuntime:
    """A TFLite interpreter over one model file. ``load()`` does the I/O."""

    def __init__(self, path: Path, num_threads: int = 1, edgetpu: bool = False) -> None:
        self._path = path
        self._threads = num_threads
        self._edgetpu = edgetpu
        self._interp: Any = None
        self.delegated: bool | None = None
        """Whether a delegate (XNNPACK, EdgeTPU) runs part of the graph; ``None``: unknown."""

    def load(self) -> TFLiteRuntime:
        if not self._path.is_file():
            raise ModelMissingError(f"model file {self._path} does not exist; run `make models`")
        cls, load_delegate, name = _interpreter_class()
        delegates = []
        if self._edgetpu:
            try:
                delegates.append(load_delegate("libedgetpu.so.1"))
            except (OSError, ValueError) as exc:
                raise RuntimeUnavailableError(
                    f"EdgeTPU delegate requested but libedgetpu cannot be loaded ({exc}); "
                    "install libedgetpu1-std or set edgetpu = false"
                ) from exc
        with _native_stderr_filtered():
            self._interp = cls(
                model_path=str(self._path),
                num_threads=self._threads,
                experimental_delegates=delegates or None,
            )
            self._interp.allocate_tensors()
        self.delegated = _has_delegate(self._interp)
        logger.debug("loaded %s with %s, %d threads", self._path.name, name, self._threads)
        if self.delegated is False:
            logger.warning(
                "%s runs on TFLite's reference kernels, not XNNPACK (%s): slower, and its int8 "
                "results differ from the measured ones. XNNPACK needs /sys and /proc/cpuinfo to "
                "detect the CPU; tflite-runtime does not accelerate int8 (install ai-edge-litert)",
                self._path.name,
                name,
            )
        return self

    def _require(self) -> Any:
        if self._interp is None:
            raise RuntimeError("TFLiteRuntime.load() was not called")
        return self._interp

    @property
    def inputs(self) -> list[TensorInfo]:
        return [_info(d) for d in self._require().get_input_details()]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [_info(d) for d in self._require().get_output_details()]

    def resize_input(self, shape: tuple[int, ...]) -> None:
        interp = self._require()
        idx = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(idx, list(shape), strict=False)
        interp.allocate_tensors()

    def run(self, *inputs: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        interp = self._require()
        for detail, value in zip(interp.get_input_details(), inputs, strict=True):
            interp.set_tensor(detail["index"], value)
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]
