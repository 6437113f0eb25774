"""The TFLite wrapper says whether XNNPACK runs the model (real LiteRT, real model)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import hw.runtime as runtime
from hw.runtime import TFLiteRuntime
from models import verified_path


def test_litert_delegates_the_int8_detector_to_xnnpack(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hw.runtime"):
        rt = TFLiteRuntime(verified_path("centerface_int8")).load()
    assert rt.delegated is True
    assert not caplog.records


def test_reference_kernels_are_detected_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ai_edge_litert import interpreter as litert

    plain = litert.Interpreter(
        model_path=str(verified_path("centerface_int8")),
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    plain.allocate_tensors()
    assert runtime._has_delegate(plain) is False
    assert runtime._has_delegate(object()) is None  # a runtime without the private API

    original = runtime._interpreter_class

    def reference_only() -> tuple[object, object, str]:  # as on a unit without /sys
        cls, load_delegate, name = original()

        def make(**kwargs: object) -> object:
            return cls(
                **kwargs,
                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )

        return make, load_delegate, name

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, logger="hw.runtime"):
        mp.setattr(runtime, "_interpreter_class", reference_only)
        rt = TFLiteRuntime(verified_path("centerface_int8")).load()
    assert rt.delegated is False
    assert any("not XNNPACK" in r.getMessage() for r in caplog.records)


def test_the_runtime_start_line_stays_out_of_the_journal_but_other_output_does_not() -> None:
    """Run in a child process, whose descriptor 2 is what journald would read: the XNNPACK INFO
    line the runtime prints on every load is gone; a line written to descriptor 2 during the
    load by anything else (here the model's own loader, stood in for by a write) still shows."""
    script = textwrap.dedent(
        """
        import os
        import hw.runtime as runtime
        from hw.runtime import TFLiteRuntime
        from models import verified_path

        original = runtime._interpreter_class

        def noisy():
            cls, load_delegate, name = original()

            def make(**kwargs):
                os.write(2, b"E tflite: something that matters\\n")
                return cls(**kwargs)

            return make, load_delegate, name

        TFLiteRuntime(verified_path("centerface_int8")).load()
        runtime._interpreter_class = noisy
        TFLiteRuntime(verified_path("blazeface_full_int8")).load()
        print("loaded")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "loaded"
    assert "XNNPACK" not in done.stderr, done.stderr
    assert done.stderr.count("something that matters") == 1, done.stderr
