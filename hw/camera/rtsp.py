"""An IP camera over RTSP (``CameraConfig.kind == "rtsp"``), decoded by FFmpeg through PyAV.

Most installed CCTV is IP cameras that serve H.264/H.265 over RTSP. A thread of its own reads
and decodes the stream as fast as the camera sends it and keeps only the newest frame, like a
live sensor: a reader slower than the camera loses the frames it missed (counted, the index
jumps) instead of falling ever further behind. Only the frame that is read is converted to RGB.

Failure rules, the same as every other backend (hw.camera.base):

- a packet FFmpeg cannot decode raises FrameError once (counted); the stream goes on;
- no frame for ``timeout_s`` (the first one of a session: 10 s more, for the key frame), a
  refused or dropped connection, or the end of the stream raise CameraUnavailableError, and the
  reconnecting wrapper opens the camera again with backoff;
- a URL's password never reaches a log line, an error or a health report: the camera's name is
  the URL with the password replaced by ``***``, and FFmpeg's messages are stripped of the URL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from contract.errors import CameraUnavailableError, FrameError
from hw.camera.base import BaseCamera
from hw.camera.config import CameraConfig
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame

logger = logging.getLogger(__name__)

#: extra seconds the first frame of a session may take (see :meth:`RtspCamera._next`)
FIRST_FRAME_GRACE_S = 10.0

_PYAV_HINT = "install PyAV (`pip install av`, a camveil dependency) to read RTSP cameras"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``rtsp://admin:***@cam/stream``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RtspCamera(BaseCamera):
    """An RTSP stream through the Camera protocol (see the module docstring)."""

    def __init__(self, config: CameraConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(redact_url(config.source), clock)
        self._config = config
        self._url = config.source
        self._size = (
            (config.width, config.height)
            if config.width is not None and config.height is not None
            else None
        )
        self._cond = threading.Condition()
        self._latest: Any = None  # newest decoded av.VideoFrame not yet read
        self._latest_index = -1
        self._delivered_index = -1
        self._bad_packets = 0  # undecodable packets not yet reported by read()
        self._failure: str | None = None  # why the stream is gone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate: float | None = None

    @property
    def fps(self) -> float | None:
        return self._rate

    def _scrub(self, exc: BaseException) -> str:
        """FFmpeg's message for ``exc`` without the URL (which may hold a password)."""
        text = str(getattr(exc, "strerror", None) or exc)
        return text.replace(repr(self._url), "").replace(self._url, "<url>").strip(" :")

    def _open(self) -> None:
        try:
            import av
        except ImportError as exc:
            raise CameraUnavailableError(f"{self.name}: {_PYAV_HINT}") from exc
        timeout = self._config.timeout_s
        options = {
            "rtsp_transport": self._config.rtsp_transport,
            # FFmpeg's socket I/O timeout, in microseconds
            "timeout": str(int(timeout * 1_000_000)),
        }
        try:
            container = av.open(self._url, options=options, timeout=(timeout, timeout))
        except (av.FFmpegError, OSError) as exc:
            raise CameraUnavailableError(
                f"{self.name}: cannot open the stream ({self._scrub(exc)}); check the URL, the "
                "camera's address and credentials, and that it serves RTSP"
            ) from None
        if not container.streams.video:
            container.close()
            raise CameraUnavailableError(f"{self.name}: the stream has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self._rate = float(rate) if rate else None
        self._latest = None
        self._latest_index = -1
        self._delivered_index = -1
        self._bad_packets = 0
        self._failure = None
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._pump, args=(container, stream), name="rtsp-camera", daemon=True
        )
        self._thread.start()
        logger.info(
            "%s: %s %dx%d at %s fps over %s",
            self.name,
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
            self._rate,
            self._config.rtsp_transport.upper(),
        )

    def _pump(self, container: Any, stream: Any) -> None:
        """Demux and decode until stopped or the stream fails; the thread owns the container."""
        import av

        failure = "the stream ended"
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, av.InvalidDataError):
                        raise
                    with self._cond:
                        self._bad_packets += 1
                        self._cond.notify_all()
                    continue
                for frame in frames:
                    with self._cond:
                        self._latest = frame
                        self._latest_index += 1
                        self._cond.notify_all()
        except (av.FFmpegError, OSError) as exc:
            failure = f"the stream failed ({self._scrub(exc)})"
        except Exception as exc:  # a decoder bug must not kill the thread silently
            failure = f"the reader failed ({type(exc).__name__})"
            logger.exception("%s: reader thread failed", self.name)
        finally:
            with self._cond:
                self._failure = failure
                self._cond.notify_all()
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()

    def _next(self) -> Frame:
        deadline_s = self._config.timeout_s
        if self._delivered_index < 0:
            # a stream joined mid-GOP decodes nothing before the next key frame, which cameras
            # send every 1 to 10 s (longer with "smart" codecs)
            deadline_s += FIRST_FRAME_GRACE_S
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (
                    self._latest is not None or self._bad_packets > 0 or self._failure is not None
                ),
                timeout=deadline_s,
            )
            if self._latest is not None:
                frame, index = self._latest, self._latest_index
                self._latest = None
            elif self._bad_packets > 0:
                self._bad_packets -= 1
                raise FrameError(f"{self.name}: a packet could not be decoded")
            elif self._failure is not None:
                raise CameraUnavailableError(f"{self.name}: {self._failure}")
            else:
                assert not ready
                raise CameraUnavailableError(f"{self.name}: no frame for {deadline_s:g} s")
        self._count_lost(index - self._delivered_index - 1)
        self._delivered_index = index
        try:
            if self._size is not None:
                pixels = frame.to_ndarray(format="rgb24", width=self._size[0], height=self._size[1])
            else:
                pixels = frame.to_ndarray(format="rgb24")
        except (ValueError, OSError) as exc:
            raise FrameError(f"{self.name}: frame conversion failed ({exc})") from None
        return self._frame(pixels, index)

    def _release(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # the reader stops at its next packet, or when FFmpeg's timeout ends a blocked read
            thread.join(self._config.timeout_s + 2.0)
            if thread.is_alive():
                logger.warning("%s: the reader thread did not stop in time", self.name)
