"""`camveil run [--config FILE] [--state-dir DIR] [--demo]`: the agent's main loop.

With ``[mqtt] enabled = true`` (in the config file, or from the settings the station put in the
provisioning bundle: agent.config) this is the MQTT daemon (agent.daemon: sealed events to the
broker, signed commands back; it prints a JSON summary line at the end); otherwise redacted video
and snapshots are written to ``[output] dir``, and a provisioned unit says at WARNING why it
publishes nothing.

``--demo`` runs on an embedded default instead of a config file: a replay camera of the sample
video (``--demo-source``; the Makefile passes the one in ../shared/data when it exists) or, if there
is none, real photos from scikit-image replayed as a stream; redacted video and snapshots go to
``out/demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    LoadedConfig,
    OutputConfig,
    load_layers,
    load_with_remote,
)
from agent.pipeline import ProcessedFrame, open_frame_path
from agent.privacy.store import VideoSink, write_png
from agent.watchdog import DEFAULT_INTERVAL, Notifier, Watchdog, watchdog_interval
from camveil.cli.common import non_negative_int
from camveil.cli.logs import progress_on
from hw.camera.config import CameraConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=f"TOML config (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the unit's state directory (provisioned keys and settings); replaces [mqtt] "
        "state_dir of the config",
    )
    parser.add_argument("--demo", action="store_true", help="run on the embedded demo default")
    parser.add_argument("--demo-source", type=Path, help="video or image folder for --demo")
    parser.add_argument(
        "--frames", type=non_negative_int, default=0, help="stop after N frames (0: no limit)"
    )
    parser.add_argument("--out", type=Path, help="override [output] dir")
    parser.add_argument("--model", help="override [detector] model")


def demo_config(source: Path | None, out: Path) -> AgentConfig:
    """The embedded default: replay of ``source`` (or of real photos) as fast as possible."""
    if source is None or not source.exists():
        source = _demo_photos(out / "photos")
    camera = CameraConfig(kind="replay", source=str(source), realtime=False, loop=False)
    output = OutputConfig(dir=out, video=True, snapshot_every=25)
    return AgentConfig(camera=camera, output=output)


def _demo_photos(folder: Path) -> Path:
    """Write a few real photos (scikit-image's sample data, with faces) as a replayable folder."""
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit(
            "camveil run --demo: no demo video given and scikit-image is not installed "
            "(pip install scikit-image, or pass --demo-source VIDEO)"
        ) from exc
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "camera"]):
        img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((640, 480))
        for j in range(10):
            img.save(folder / f"{i:02d}_{name}_{j:02d}.png")
    return folder


class OutputSink:
    """Writes redacted frames: optional video (at ``fps``, set once the camera is open) and every
    N-th frame as a PNG snapshot."""

    def __init__(self, config: OutputConfig) -> None:
        self._config = config
        self._video: VideoSink | None = None
        self.fps = 10.0
        self.snapshots: list[Path] = []

    def __call__(self, processed: ProcessedFrame) -> None:
        frame = processed.redacted
        if self._config.video:
            if self._video is None:
                self._video = VideoSink(self._config.dir / "redacted.mp4", self.fps)
            self._video.write(frame)
        every = self._config.snapshot_every
        if every and frame.index % every == 0:
            path = self._config.dir / "snapshots" / f"frame_{frame.index:06d}.png"
            write_png(frame, path)
            self.snapshots.append(path)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


def run(args: argparse.Namespace) -> int:
    path = args.config or DEFAULT_CONFIG_PATH
    if args.demo:
        config = demo_config(args.demo_source, args.out or Path("out/demo"))
    else:
        loaded = load_layers(path, args.state_dir)
        config = loaded.config
        if not config.mqtt.enabled:
            say_why_silent(loaded, path)
        if args.out:
            config = dataclasses.replace(
                config, output=dataclasses.replace(config.output, dir=args.out)
            )
    if args.model:
        config = dataclasses.replace(
            config, detector=dataclasses.replace(config.detector, model=args.model)
        )
    if config.mqtt.enabled and not args.demo:
        # with the changes made by set_config commands
        config, _, overlay = load_with_remote(path, args.state_dir)
        if args.model:
            config = dataclasses.replace(
                config, detector=dataclasses.replace(config.detector, model=args.model)
            )
        return run_daemon(config, path, args.frames or None, overlay)
    config.output.dir.mkdir(parents=True, exist_ok=True)
    sink = OutputSink(config.output)
    with open_frame_path(config.camera, config.detector, config.privacy, sink) as path:
        camera, pipeline = path.camera, path.pipeline
        sink.fps = camera.fps or 10.0

        def stop(signum: int, frame: FrameType | None) -> None:
            pipeline.stop()
            interrupt = getattr(camera, "interrupt", None)  # ends a reconnect backoff wait
            if interrupt is not None:
                interrupt()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        start = time.monotonic()
        bar = tqdm(
            desc="frames",
            unit="f",
            file=sys.stderr,
            total=args.frames or None,
            disable=not progress_on(),
        )
        last = 0
        limit = args.frames or None
        try:
            with _watchdog(lambda: pipeline.last_output_mono, lambda: True):
                while not pipeline.stopped and (limit is None or pipeline.stats.frames_in < limit):
                    if not pipeline.run_once():
                        break
                    bar.update(pipeline.stats.frames_in - last)
                    last = pipeline.stats.frames_in
        finally:
            bar.close()
            sink.close()
        elapsed = time.monotonic() - start
        stats = pipeline.stats
        cam = camera.stats
    print(
        f"camveil run: {stats.frames_out} of {stats.frames_in} frames redacted in "
        f"{elapsed:.1f} s ({stats.frames_out / max(elapsed, 1e-9):.1f} fps); "
        f"dropped {dict(stats.dropped) or 'none'}; camera lost {cam.lost} frames"
    )
    if config.output.video:
        print(f"redacted video: {config.output.dir / 'redacted.mp4'}")
    if sink.snapshots:
        print(f"snapshots ({len(sink.snapshots)}): {sink.snapshots[0].parent}/")
    return 0


def say_why_silent(loaded: LoadedConfig, path: Path) -> None:
    """A provisioned unit without ``[mqtt] enabled`` publishes nothing: say why, at WARNING
    (once per start: a service restarted in a loop is rate-limited by the journal's filter)."""
    provisioned = loaded.provisioned
    if not provisioned.present:
        return  # not a unit (a local run on a laptop): nothing was expected to be published
    if loaded.set_in_file("mqtt", "enabled"):
        logger.warning(
            "this unit is provisioned but %s sets [mqtt] enabled = false: it publishes nothing "
            "(only [output] files); delete that line or set it to true",
            path,
        )
    else:
        logger.warning(
            "this unit is provisioned but publishes nothing: its bundle (%s) has no settings "
            "(provisioned before first-boot settings) and %s does not set [mqtt] enabled; set "
            "[mqtt] enabled = true and [camera] kind there, or factory-reset and provision it "
            "again",
            provisioned.path,
            path,
        )


def run_daemon(
    config: AgentConfig,
    config_path: Path,
    max_frames: int | None,
    remote_overlay: dict[str, Any] | None = None,
) -> int:
    """The MQTT daemon until SIGTERM/SIGINT, the end of a finite camera, or ``max_frames``;
    ``remote_overlay``: the ``remote.toml`` mapping merged into ``config``."""
    from agent.daemon import Daemon
    from agent.unitstate import UnitState

    unit = UnitState.load(config.mqtt.state_dir)
    daemon = Daemon(
        config, unit, config_path=config_path, remote_overlay=remote_overlay, max_frames=max_frames
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("camveil daemon: device %s", unit.device_id)
    with _watchdog(daemon.last_frame_at, daemon.outbox_writable, daemon.publishing_ok):
        summary = daemon.run()
    print(json.dumps({"summary": {"device": unit.device_id, **summary.as_dict()}}), flush=True)
    return 0


def _watchdog(
    last_frame_at: Callable[[], float | None],
    writable: Callable[[], bool],
    publishing_ok: Callable[[], bool] | None = None,
) -> Watchdog:
    """systemd READY/WATCHDOG pings (agent.watchdog) while frames flow; inert outside systemd."""
    interval = watchdog_interval(os.environ, os.getpid()) or DEFAULT_INTERVAL
    notifier = Notifier.from_environ(os.environ)
    return Watchdog(
        notifier,
        last_frame_at=last_frame_at,
        outbox_writable=writable,
        publishing_ok=publishing_ok,
        interval=interval,
    )
