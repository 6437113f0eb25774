"""`camveil bench`: a tiny run of the real pipeline gives sane numbers, in-process and per case in
a fresh process."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from agent.vision.detection import Box, Detection
from agent.vision.factory import DETECTOR_MODELS, DetectorConfig
from camveil.__main__ import main
from contract.errors import ConfigError
from models import load_manifest
from tools.bench import (
    STAGES,
    BenchCase,
    BenchSettings,
    format_table,
    parse_sizes,
    parse_threads,
    run_case,
)
from tools.bench_envelope import bench_envelope, bench_outbox
from tools.bench_frames import check_source


@pytest.fixture(scope="module")
def model() -> str:
    available = [m for m in DETECTOR_MODELS if m in load_manifest()]
    if not available:
        pytest.fail("no detector model in models/manifest.json: run `make models`")
    return available[0]


def _assert_sane(result: dict[str, object] | object) -> None:
    r = result if isinstance(result, dict) else result.to_dict()  # type: ignore[attr-defined]
    assert r["fps"] > 0 and r["frames"] > 0
    assert r["peak_rss_mb"] > 0
    assert set(r["stages"]) == set(STAGES)
    for stage in STAGES:
        s = r["stages"][stage]
        assert s["n"] > 0, stage
        assert 0 <= s["p50_ms"] <= s["p99_ms"], stage


def test_one_case_with_the_real_model_in_process(model: str) -> None:
    settings = BenchSettings(
        seconds=0.3, warmup_frames=1, source="photo", detector=DetectorConfig(model=model)
    )
    result = run_case(BenchCase(320, 240, 1), settings)
    _assert_sane(result)
    assert result.model == model and result.source == "photo" and result.size == "320x240"
    assert not result.dropped


def test_cli_runs_each_case_in_a_fresh_process(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["bench", "--json", "--suite", "all", "--seconds", "0.3", "--sizes", "320x240",
                   "--threads", "1,2", "--warmup", "1", "--model", model,
                   "--latency-events", "5", "--latency-rate", "50"])  # fmt: skip
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    cases = report["pipeline"]
    assert [(c["size"], c["threads"]) for c in cases] == [("320x240", 1), ("320x240", 2)]
    for case in cases:
        _assert_sane(case)
        assert case["subprocess"] is True
        assert 0 < case["base_rss_mb"] <= case["peak_rss_mb"]
    envelope = report["envelope"]
    assert envelope["available"] and envelope["seal_per_s"] > 0
    assert envelope["latency"]["n"] == 5


def test_table_output(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "--suite", "pipeline", "--seconds", "0.2", "--sizes", "160x120",
                   "--threads", "1", "--warmup", "0", "--model", model])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "160x120" in out and "fps" in out and "encode" in out and "MiB" in out


class Fixed:
    """A fake detector: one face in the middle of every frame."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        return [Detection(Box(w * 0.4, h * 0.4, w * 0.6, h * 0.6), 0.9)]


def test_synthetic_frames_with_an_injected_detector() -> None:
    settings = BenchSettings(seconds=0.2, warmup_frames=0, source="synthetic")
    result = run_case(BenchCase(128, 96, 1), settings, detector=Fixed())
    _assert_sane(result)
    assert result.source == "synthetic" and result.model == "Fixed"
    assert "128x96" in format_table([result], None)


def test_envelope_suite_against_a_local_mosquitto(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_envelope(0.2, latency_events=20, latency_rate=40.0)
    assert report["available"] is True
    assert report["seal_per_s"] > 0 and report["open_per_s"] > 0
    assert report["envelope_bytes"] > report["plaintext_bytes"] > 0
    box = report["outbox"]
    assert box["enqueue_per_s"] > 0 and box["drain_per_s"] > 0 and box["left"] == 0
    assert box["enqueue_ack_per_s"] <= box["enqueue_per_s"]
    lat = report["latency"]
    assert lat["available"] is True and lat["n"] == 20 and lat["rate_per_s"] == 40.0
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]
    assert 0 < lat["enqueue_to_puback_p50_ms"] <= lat["p50_ms"]
    table = format_table([], report)
    assert "capture->PUBACK" in table and "enqueue+ack" in table and "seal" in table
    assert "unavailable" in format_table([], {"available": False, "reason": "x"})
    # the CLI: envelope suite only, human-readable
    argv = ["bench", "--suite", "envelope", "--seconds", "0.1", "--latency-events", "3"]
    assert main(argv) == 0
    assert "capture->PUBACK at 10 events/s" in capsys.readouterr().out


def test_outbox_throughput_is_durable_and_drains() -> None:
    box = bench_outbox(0.1, pool=8)
    assert box["n"] >= 1 and box["left"] == 0 and box["synchronous"].startswith("FULL")


@pytest.mark.parametrize("text", ["", "640", "640x", "axb", "641x480", "8x8"])
def test_bad_sizes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_sizes(text)


def test_sizes_and_threads_parse() -> None:
    assert parse_sizes("640x480, 1280X720") == [(640, 480), (1280, 720)]
    assert parse_threads("1,2") == [1, 2]
    with pytest.raises(ConfigError):
        parse_threads("0")


def test_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--suite", "pipeline", "--sizes", "big"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_a_video_is_replayed_through_the_replay_camera(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    settings = BenchSettings(seconds=0.2, warmup_frames=0, source=str(video))
    result = run_case(BenchCase(96, 64, 1), settings, detector=Fixed())
    _assert_sane(result)
    assert result.frames > 4  # it loops


def test_an_image_path_is_tiled(tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(image)
    settings = BenchSettings(seconds=0.1, warmup_frames=0, source=str(image))
    _assert_sane(run_case(BenchCase(100, 80, 1), settings, detector=Fixed()))
    with pytest.raises(ConfigError):
        check_source(str(tmp_path / "absent.png"))


def test_child_command_line_carries_every_setting() -> None:
    """Each case runs in a fresh process: its command line must rebuild the same settings."""
    import argparse
    from dataclasses import replace

    from agent.pipeline import PrivacyConfig
    from agent.privacy.redact import FillMode, RedactionConfig
    from camveil.cli import bench as bench_cli
    from tools.bench import BenchCase, BenchSettings, child_argv

    settings = BenchSettings(
        seconds=0.5,
        warmup_frames=2,
        source="synthetic",
        detector=DetectorConfig(
            threshold=0.3,
            small_threshold=0.06,
            scale=2.0,
            extra_scale=0.5,
            partner="yunet_int8",
            partner_threshold=0.45,
            tile=256,
        ),
        privacy=PrivacyConfig(redaction=RedactionConfig(margin=0.4, fill=FillMode.NOISE)),
    )
    argv = child_argv(BenchCase(640, 480, 2), settings)
    assert argv[1:4] == ["-m", "camveil", "bench"]
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    rebuilt = bench_cli.settings_from(parser.parse_args(argv[4:]))
    assert rebuilt == replace(settings, detector=replace(settings.detector, threads=1))


def test_anchor_suite_runs_deface_and_camveil_on_the_same_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real deface (dev dependency) and camveil, one core each, then both whole processes."""
    from skimage import data

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.astronaut()).save(images / "astronaut.jpg")  # type: ignore[no-untyped-call]
    Image.fromarray(data.coffee()).save(images / "coffee.jpg")  # type: ignore[no-untyped-call]
    argv = ["bench", "--suite", "anchor", "--images", str(images), "--rounds", "2", "--json"]
    status = main(argv)
    assert status == 0
    report = json.loads(capsys.readouterr().out)["anchor"]
    assert report["images"] == 2
    det = report["detect"]
    assert det["deface"]["faces"] >= 1 and det["camveil"]["faces"] >= 1  # the astronaut
    assert det["deface"]["megapixels"] == det["camveil"]["megapixels"] > 0.5
    assert det["deface"]["s_per_mp"] > 0 and det["camveil"]["s_per_mp"] > 0
    assert det["rounds"] == 2 and len(det["speedup_per_round"]) == 2
    assert all(r > 0 for r in det["speedup_per_round"])
    assert det["speedup"] == round(statistics.median(det["speedup_per_round"]), 2)
    # the per-pass costs average to the reported ones, so the two views of the ratio agree
    low, high = min(det["speedup_per_round"]), max(det["speedup_per_round"])
    assert low * 0.99 <= det["deface"]["s_per_mp"] / det["camveil"]["s_per_mp"] <= high * 1.01
    red = report["redact"]
    assert red["deface"]["exit_status"] == 0 and red["camveil"]["exit_status"] == 0
    assert red["deface"]["wall_s"] > 0 and red["camveil"]["wall_s"] > 0


def test_anchor_suite_needs_a_folder_of_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--suite", "anchor"]) == 2
    assert "needs --images DIR" in capsys.readouterr().err
    assert main(["bench", "--suite", "anchor", "--images", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err
    Image.new("RGB", (64, 64)).save(tmp_path / "one.png")
    assert main(["bench", "--suite", "anchor", "--images", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_reid_suite_takes_turns_with_the_face_observers_off_and_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real detector and embedder (MobileFaceNet): each configuration once per round; faces
    are embedded only where an observer is on, and the both-on row used one embedder for both."""
    argv = ["bench", "--suite", "reid", "--json", "--seconds", "0.3", "--rounds", "2",
            "--sizes", "640x480", "--threads", "1", "--warmup", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)["reid"]
    assert report["size"] == "640x480" and report["threads"] == 1 and report["rounds"] == 2
    rows = {m["mode"]: m for m in report["modes"]}
    assert list(rows) == ["off", "reid", "match", "both"]
    for mode, row in rows.items():
        assert len(row["fps_rounds"]) == len(row["cpu_ms_rounds"]) == 2, mode
        assert row["fps"] > 0 and row["cpu_ms_per_frame"] > 0 and row["frames"] > 0, mode
        assert not any(k.endswith(("_failed", "_bad_crop")) for k in row["dropped"]), mode
    assert rows["off"]["embedded"] == 0 and rows["off"]["visitors"] is None
    for mode in ("reid", "match", "both"):
        assert rows[mode]["embedded"] > 0, mode
    assert rows["reid"]["visitors"] >= 1 and rows["both"]["visitors"] >= 1
    assert rows["match"]["visitors"] is None

    text_argv = [*argv[:3], "--seconds", "0.2", "--rounds", "1", "--sizes", "320x240",
                 "--threads", "1", "--reid-modes", "off,every-frame"]  # fmt: skip
    assert main(text_argv) == 0
    out = capsys.readouterr().out
    assert "reid suite: 320x240" in out and "every-frame" in out and "load (1 min)" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--reid-modes", "off,sometimes"],
        ["--reid-modes", "off,off"],
        ["--sizes", "640x480,1280x720"],
        ["--rounds", "0"],
    ],
)
def test_reid_suite_refuses_bad_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--suite", "reid", "--seconds", "0.1", *argv]) == 2
    assert "bench" in capsys.readouterr().err
