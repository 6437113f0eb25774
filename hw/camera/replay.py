"""Replay of a video file or an image folder as a camera (``CameraConfig.kind == "replay"``).

- ``realtime = True``: frames are paced at ``fps`` (the configured one, else the video's own) and a
  late reader loses frames like on a live camera (counted, the index jumps);
  ``realtime = False``: every frame, as fast as the reader asks (evaluation, batch redaction).
- ``loop = True`` starts again after the last frame; otherwise ``read`` raises EndOfStream.
- A corrupt image or undecodable video frame raises FrameError (counted); the replay goes on.
- A file or folder that disappears raises CameraUnavailableError, like an unplugged camera.
- ``width``/``height`` resize every frame.

``Frame.index`` counts slots across loops (it keeps growing), so downstream sees one stream.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contract.errors import CameraUnavailableError, ConfigError, EndOfStream
from hw.camera.base import BaseCamera
from hw.camera.config import CameraConfig
from hw.camera.convert import resize
from hw.camera.pacing import FramePacer
from hw.camera.replay_sources import ImageFolderSource, ReplaySource, VideoFileSource
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame

logger = logging.getLogger(__name__)


class ReplayCamera(BaseCamera):
    """Plays back recorded frames through the Camera protocol."""

    def __init__(self, config: CameraConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(f"replay:{config.source}", clock)
        self._config = config
        self._path = Path(config.source)
        self._size = (
            (config.width, config.height)
            if config.width is not None and config.height is not None
            else None
        )
        self._source: ReplaySource | None = None
        self._pacer: FramePacer | None = None
        self._rate: float | None = None
        self._next_index = 0
        self._pass_frames = 0  # slots seen in the current pass (to spot an empty loop)

    @property
    def fps(self) -> float | None:
        return self._rate if self._pacer is not None else None

    def _open(self) -> None:
        if self._path.is_dir():
            source: ReplaySource = ImageFolderSource(self._path)
        elif self._path.exists():
            source = VideoFileSource(self._path)
        else:
            raise CameraUnavailableError(
                f"replay: {self._path} does not exist; set camera.source to a video file or a "
                "folder of images"
            )
        source.open()
        rate = self._config.fps if self._config.fps is not None else source.fps
        if self._config.realtime and rate is None:
            source.close()
            raise ConfigError(
                f"camera.fps: {self._path} does not say its frame rate, so real-time replay "
                "needs one; set camera.fps (e.g. 10) or camera.realtime = false"
            )
        self._source = source
        self._rate = rate
        self._pacer = FramePacer(self._clock, rate) if self._config.realtime and rate else None
        self._next_index = 0
        self._pass_frames = 0
        logger.info("replay of %s at %s fps (loop=%s)", self._path, rate, self._config.loop)

    def _release(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def _next(self) -> Frame:
        source = self._source
        if source is None:
            raise CameraUnavailableError(f"{self.name}: not open")
        index = self._next_index
        if self._pacer is not None:
            index = self._pacer.wait(index)
        skipped = 0
        while skipped < index - self._next_index:
            if source.skip():
                self._pass_frames += 1
                skipped += 1
            elif not self._wrap(source):
                break
        self._count_lost(skipped)
        index = self._next_index + skipped
        while True:
            self._next_index = index + 1
            self._pass_frames += 1
            pixels = source.next()  # FrameError consumes the slot (next_index already moved)
            if pixels is not None:
                return self._frame(resize(pixels, self._size), index)
            self._pass_frames -= 1
            self._next_index = index
            if not self._wrap(source):
                raise EndOfStream(f"{self.name}: end of replay after {index} frames")

    def _wrap(self, source: ReplaySource) -> bool:
        """At the end of a pass: rewind if looping (True), else report the end (False)."""
        if not self._config.loop:
            return False
        if self._pass_frames == 0:
            raise CameraUnavailableError(f"{self.name}: no frames to loop over")
        logger.debug("replay of %s: looping after %d frames", self._path, self._pass_frames)
        source.rewind()
        self._pass_frames = 0
        return True
