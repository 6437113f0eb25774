"""Typed, validated configuration of the camera (the ``[camera]`` table of the agent's TOML).

``agent.config.from_mapping`` builds it from TOML (unknown keys, wrong types); ``__post_init__``
checks the values, so an invalid CameraConfig cannot exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import urlsplit

from contract.errors import ConfigError

CameraKind = Literal["synthetic", "replay", "v4l2", "picamera2", "gstreamer", "rtsp"]
RtspTransport = Literal["tcp", "udp"]
KINDS: tuple[str, ...] = get_args(CameraKind)
MAX_SIDE = 8192


@dataclass(frozen=True)
class CameraConfig:
    """Which camera to open and how. Validated on construction (raises ConfigError)."""

    kind: CameraKind = "synthetic"
    """Backend: ``synthetic`` (moving shapes, no hardware), ``replay`` (a video file or an image
    folder), ``v4l2`` (USB/UVC webcam), ``picamera2`` (Raspberry Pi CSI), ``gstreamer`` (Jetson
    CSI through ``nvarguscamerasrc``), ``rtsp`` (an IP camera's stream, decoded by FFmpeg)."""

    source: str = ""
    """What to open, per kind: ``replay``: path of a video file or of a folder of images (read in
    natural sort order); ``v4l2``: device path (``/dev/video0``) or index (``0``); ``picamera2``:
    camera number (``0``, default ``0``); ``gstreamer``: sensor id (``0``, default ``0``) or a
    complete pipeline containing ``!`` and ending in ``appsink`` that yields BGR; ``rtsp``: the
    stream URL, ``rtsp://[user:password@]host[:port]/path`` (``rtsps://`` for RTSP over TLS; the
    password never appears in logs, keep the config file readable by root and camveil only);
    ``synthetic``: ignored."""

    width: int | None = None
    """Frame width in pixels. ``None``: synthetic 640, replay the file's own size, live cameras the
    driver default (Jetson 1280). For replay a set size resizes every frame. Set both or neither."""

    height: int | None = None
    """Frame height in pixels; see ``width`` (synthetic default 480, Jetson 720)."""

    fps: float | None = None
    """Frames per second. Live cameras: the rate requested from the driver (``None``: its default;
    Jetson 30). Synthetic: the generated rate (``None``: 15). Replay: the pacing rate (``None``: the
    video's own rate; an image folder replayed in real time needs it)."""

    loop: bool = False
    """Replay only: start again at the first frame after the last one instead of ending the
    stream with EndOfStream."""

    realtime: bool = True
    """Synthetic and replay: deliver frames at ``fps`` like a live camera (a late reader loses the
    frames it missed, counted). ``False``: every frame, as fast as the reader asks."""

    fourcc: str | None = None
    """V4L2 only: pixel format asked from the webcam, four characters such as ``MJPG`` (needed for
    high resolutions at full rate on most UVC webcams) or ``YUYV``. ``None``: driver default."""

    reconnect: bool = True
    """Reopen a camera that disappears, with exponential backoff (frames missed meanwhile are
    counted as lost). ``False``: the first CameraUnavailableError reaches the caller."""

    rtsp_transport: RtspTransport = "tcp"
    """RTSP only: ``tcp`` (interleaved in the RTSP connection; passes firewalls and NAT, no
    packet loss) or ``udp`` (lower latency on a clean LAN; lost packets become corrupt frames)."""

    timeout_s: float = 5.0
    """RTSP only: seconds to open the stream, and seconds without a frame before the camera counts
    as gone (then it is reopened with backoff)."""

    backoff_initial_s: float = 0.5
    """First wait before reopening a lost camera, in seconds (doubles on every failed attempt)."""

    backoff_max_s: float = 30.0
    """Longest wait between two reopening attempts, in seconds."""

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_type("source", self.source, str)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (
                not _is_int(value) or value <= 0 or value > MAX_SIDE or value % 2
            ):
                raise ConfigError(
                    f"camera.{name}: must be an even whole number of pixels between 2 and "
                    f"{MAX_SIDE}, got {value!r}; set it (e.g. 640 x 480) or remove it to keep the "
                    "source's size"
                )
        if (self.width is None) != (self.height is None):
            raise ConfigError(
                "camera.width / camera.height: set both or neither, got "
                f"width={self.width!r} height={self.height!r}"
            )
        if self.fps is not None and not _is_positive(self.fps, upper=1000.0):
            raise ConfigError(
                f"camera.fps: must be a number of frames per second above 0 and at most 1000, "
                f"got {self.fps!r}; set e.g. fps = 15, or remove it for the source's own rate"
            )
        for name in ("loop", "realtime", "reconnect"):
            _check_type(name, getattr(self, name), bool)
        if self.fourcc is not None and (
            not isinstance(self.fourcc, str) or len(self.fourcc) != 4 or not self.fourcc.isascii()
        ):
            raise ConfigError(
                f'camera.fourcc: must be four ASCII characters such as "MJPG" or "YUYV", got '
                f"{self.fourcc!r}; list what the webcam offers with `v4l2-ctl --list-formats-ext`"
            )
        if self.fourcc is not None and self.kind != "v4l2":
            raise ConfigError(f'camera.fourcc: only applies to kind = "v4l2", not {self.kind!r}')
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(
                f'camera.rtsp_transport: must be "tcp" or "udp", got {self.rtsp_transport!r}'
            )
        if not _is_positive(self.timeout_s, upper=600.0):
            raise ConfigError(
                f"camera.timeout_s: must be a number of seconds above 0 and at most 600, got "
                f"{self.timeout_s!r}"
            )
        if self.kind == "rtsp":
            _check_rtsp_url(self.source)
        if self.kind == "replay" and not self.source:
            raise ConfigError(
                'camera.source: kind = "replay" needs the path of a video file or image folder'
            )
        if self.loop and self.kind != "replay":
            raise ConfigError(f'camera.loop: only applies to kind = "replay", not {self.kind!r}')
        for name in ("backoff_initial_s", "backoff_max_s"):
            if not _is_positive(getattr(self, name), upper=3600.0):
                raise ConfigError(
                    f"camera.{name}: must be a number of seconds above 0 and at most 3600, got "
                    f"{getattr(self, name)!r}"
                )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"camera.backoff_max_s: must not be below camera.backoff_initial_s "
                f"({self.backoff_initial_s}), got {self.backoff_max_s}"
            )


def _check_rtsp_url(url: str) -> None:
    hint = 'e.g. source = "rtsp://user:password@192.168.1.64:554/Streaming/Channels/101"'
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ConfigError(f"camera.source: not a valid RTSP URL; {hint}") from None
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise ConfigError(
            f'camera.source: kind = "rtsp" needs an rtsp:// or rtsps:// URL with a host; {hint}'
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: object, upper: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= upper
    )


def _check_type(name: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConfigError(
            f"camera.{name}: must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"camera.{name}: must be one of {', '.join(choices)}, got {value!r}; pick the backend "
            "for your hardware (synthetic needs none)"
        )
