"""The command line's detector options build the same DetectorConfig as the TOML keys, and an
error names the option as typed."""

from __future__ import annotations

import argparse

import pytest

from agent.vision.factory import DetectorConfig
from camveil.cli.common import add_detector_arguments, detector_config
from contract.errors import ConfigError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_detector_arguments(parser)
    return parser.parse_args(list(argv))


def test_small_threshold_pairs_with_threshold_and_partner() -> None:
    args = _parse("--threshold", "0.10", "--small-threshold", "0.06", "--partner", "yunet_int8")
    assert detector_config(args) == DetectorConfig(
        threshold=0.10, small_threshold=0.06, partner="yunet_int8"
    )
    assert detector_config(_parse()).small_threshold is None


def test_an_error_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^--small-threshold 1\.5 must be between 0 and 1$"):
        detector_config(_parse("--small-threshold", "1.5"))
    with pytest.raises(ConfigError, match=r"^--small-threshold applies to centerface_int8 only$"):
        detector_config(_parse("--model", "yunet_int8", "--small-threshold", "0.06"))


def test_persons_is_off_unless_asked_for() -> None:
    assert detector_config(_parse()).persons is False
    assert detector_config(_parse("--persons")) == DetectorConfig(persons=True)


def test_bench_children_run_with_the_person_detector_when_asked() -> None:
    from agent.pipeline import PrivacyConfig
    from tools.bench import BenchCase, BenchSettings, child_argv

    case = BenchCase(1280, 720, 1)
    on = BenchSettings(detector=DetectorConfig(persons=True), privacy=PrivacyConfig())
    off = BenchSettings(detector=DetectorConfig(), privacy=PrivacyConfig())
    assert "--persons" in child_argv(case, on)
    assert "--persons" not in child_argv(case, off)
