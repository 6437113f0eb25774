"""The TFLite wrapper says whether XNNPACK runs the model (real LiteRT, real model)."""

from __future__ import annotations

import logging

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
