"""Replay of real files: an mp4 written with OpenCV and a folder of images with a corrupt one."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from contract.errors import CameraUnavailableError, ConfigError, EndOfStream, FrameError
from hw.camera import Backoff, CameraConfig, CameraStats, FakeClock, ReconnectingCamera
from hw.camera.base import Camera
from hw.camera.replay import ReplayCamera
from hw.camera.replay_sources import natural_key

FPS = 10.0
N_VIDEO = 12
# Frame i is one flat colour; in RGB: red for even frames, blue for odd ones, brightness ~ i.
SIZE = (64, 48)


def _rgb(i: int) -> tuple[int, int, int]:
    level = 80 + 10 * i
    return (level, 0, 0) if i % 2 == 0 else (0, 0, level)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    for i in range(N_VIDEO):
        rgb = np.full((SIZE[1], SIZE[0], 3), _rgb(i), np.uint8)
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # VideoWriter takes BGR
    writer.release()
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i, name in [(0, "f1.png"), (1, "f2.jpg"), (3, "f10.png"), (4, "F11.bmp")]:
        Image.new("RGB", SIZE, _rgb(i)).save(root / name)
    # a truncated JPEG sorts between f2 and f10
    good = root / "f3.jpg"
    Image.new("RGB", SIZE, _rgb(2)).save(good, quality=95)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    Image.new("L", SIZE, 200).save(root / "f12.png")  # grey: converted to RGB
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def _replay(source: Path, clock: FakeClock | None = None, **kw: object) -> ReplayCamera:
    cfg = CameraConfig(kind="replay", source=str(source), **kw)  # type: ignore[arg-type]
    return ReplayCamera(cfg, clock=clock or FakeClock())


def _colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).mean(axis=0)


def _assert_colour(pixels: np.ndarray, i: int) -> None:
    assert np.allclose(_colour(pixels), _rgb(i), atol=12), (i, _colour(pixels))


def test_video_as_fast_as_possible_then_end_of_stream(video: Path) -> None:
    clock = FakeClock()
    with _replay(video, clock, realtime=False) as cam:
        frames = [cam.read() for _ in range(N_VIDEO)]
        for _ in range(2):
            with pytest.raises(EndOfStream):
                cam.read()
        assert cam.stats == CameraStats(delivered=N_VIDEO)
        assert cam.fps is None
    assert [f.index for f in frames] == list(range(N_VIDEO))
    for i, frame in enumerate(frames):
        assert frame.pixels.shape == (48, 64, 3)
        _assert_colour(frame.pixels, i)  # BGR from OpenCV became RGB
    assert clock.sleeps == []


def test_video_paced_at_its_own_rate_or_the_configured_one(video: Path) -> None:
    clock = FakeClock()
    with _replay(video, clock) as cam:
        assert cam.fps == FPS
        monos = [cam.read().mono for _ in range(4)]
    assert np.diff(monos) == pytest.approx([0.1] * 3)
    clock = FakeClock()
    with _replay(video, clock, fps=4.0) as cam:
        monos = [cam.read().mono for _ in range(3)]
    assert np.diff(monos) == pytest.approx([0.25] * 2)


def test_video_late_reader_skips_like_a_live_camera(video: Path) -> None:
    clock = FakeClock()
    with _replay(video, clock) as cam:
        cam.read()
        clock.advance(0.42)
        frame = cam.read()
        assert frame.index == 4
        _assert_colour(frame.pixels, 4)
        assert cam.stats.lost == 3


def test_video_loops_with_a_continuous_index(video: Path) -> None:
    with _replay(video, realtime=False, loop=True) as cam:
        frames = [cam.read() for _ in range(2 * N_VIDEO + 3)]
    assert [f.index for f in frames] == list(range(2 * N_VIDEO + 3))
    for k in (0, N_VIDEO, 2 * N_VIDEO):
        _assert_colour(frames[k].pixels, 0)


def test_video_resize(video: Path) -> None:
    with _replay(video, realtime=False, width=32, height=24) as cam:
        frame = cam.read()
    assert frame.pixels.shape == (24, 32, 3)
    _assert_colour(frame.pixels, 0)


def test_folder_in_natural_order_with_a_corrupt_image(folder: Path) -> None:
    got: list[int | str] = []
    with _replay(folder, realtime=False) as cam:
        while True:
            try:
                frame = cam.read()
            except FrameError as exc:
                assert "f3.jpg" in str(exc)
                got.append("corrupt")
                continue
            except EndOfStream:
                break
            got.append(frame.index)
            assert not frame.pixels.flags.writeable
        assert cam.stats == CameraStats(delivered=5, lost=1, corrupt=1)
    assert got == [0, 1, "corrupt", 3, 4, 5]


def test_folder_colours_and_grey_to_rgb(folder: Path) -> None:
    with _replay(folder, realtime=False) as cam:
        _assert_colour(cam.read().pixels, 0)
        _assert_colour(cam.read().pixels, 1)
        with pytest.raises(FrameError):
            cam.read()
        _assert_colour(cam.read().pixels, 3)
        _assert_colour(cam.read().pixels, 4)
        assert np.array_equal(_colour(cam.read().pixels), [200, 200, 200])


def test_folder_realtime_needs_fps(folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"camera\.fps"):
        _replay(folder).start()
    clock = FakeClock()
    with _replay(folder, clock, fps=5.0, loop=True) as cam:
        indices = []
        for _ in range(10):
            with contextlib.suppress(FrameError):
                indices.append(cam.read().index)
    assert indices == [0, 1, 3, 4, 5, 6, 7, 9]  # 2 and 8 are the corrupt jpeg, looping
    assert [s for s in clock.sleeps if s > 0] == pytest.approx([0.2] * 9)


def test_missing_empty_and_undecodable_sources(tmp_path: Path) -> None:
    with pytest.raises(CameraUnavailableError, match="does not exist"):
        _replay(tmp_path / "nope.mp4").start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraUnavailableError, match="no images"):
        _replay(tmp_path / "empty", fps=5.0).start()
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\x00" * 100)
    with pytest.raises(CameraUnavailableError, match="cannot open"):
        _replay(bogus).start()


def test_file_deleted_mid_replay_is_an_unplugged_camera(video: Path) -> None:
    with _replay(video, realtime=False) as cam:
        cam.read()
        video.unlink()
        with pytest.raises(CameraUnavailableError, match="disappeared"):
            cam.read()


class _RestoringClock(FakeClock):
    """A fake clock that puts the video back after some backoff sleeps."""

    def __init__(self, video: Path, after: int) -> None:
        super().__init__()
        self._video, self._data, self._after = video, video.read_bytes(), after

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if seconds >= 0.5:
            self._after -= 1
            if self._after == 0:
                self._video.write_bytes(self._data)


def test_reconnecting_camera_survives_the_file_vanishing(video: Path) -> None:
    clock = _RestoringClock(video, after=3)
    cfg = CameraConfig(kind="replay", source=str(video), loop=True)

    def factory() -> Camera:
        return ReplayCamera(cfg, clock=clock)

    backoff = Backoff(initial=0.5, maximum=8.0, jitter=0.0)
    with ReconnectingCamera(factory, backoff, clock=clock) as cam:
        first = [cam.read() for _ in range(3)]
        video.unlink()
        after = [cam.read() for _ in range(3)]
        stats = cam.stats
    assert [f.index for f in first] == [0, 1, 2]
    assert [s for s in clock.sleeps if s >= 0.5] == [0.5, 1.0, 2.0]
    # outage: 0.5 + 1.0 + 2.0 s after frame 2, at 10 fps -> 35 frames missed
    assert after[0].index == 2 + 35 + 1
    assert [f.index for f in after] == [38, 39, 40]
    _assert_colour(after[0].pixels, 0)  # the reopened replay starts again at its first frame
    assert stats == CameraStats(delivered=6, lost=35, corrupt=0, reconnects=1)


def test_natural_key() -> None:
    names = ["img10.png", "img2.png", "IMG1.png", "img2a.png", "a.png"]
    assert sorted(names, key=natural_key) == [
        "a.png",
        "IMG1.png",
        "img2.png",
        "img2a.png",
        "img10.png",
    ]
