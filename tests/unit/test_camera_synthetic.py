"""The synthetic camera: deterministic pixels, live-camera pacing, injected faults."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import CameraError, CameraUnavailableError, FrameError
from hw.camera import CameraConfig, FakeClock, SyntheticCamera, SyntheticFaults
from hw.camera.base import Camera, CameraStats


def _cam(
    clock: FakeClock | None = None,
    faults: SyntheticFaults | None = None,
    seed: int = 0,
    **kw: object,
) -> SyntheticCamera:
    cfg = CameraConfig(**{"width": 64, "height": 48, "fps": 10.0, **kw})  # type: ignore[arg-type]
    return SyntheticCamera(cfg, faults=faults, seed=seed, clock=clock or FakeClock())


def _decode_stripe(pixels: np.ndarray) -> int:
    cell = max(1, pixels.shape[1] // 64)
    bits = pixels[0, : 16 * cell : cell, 0] > 127
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def test_frames_are_rgb_read_only_and_counted() -> None:
    with _cam() as cam:
        frames = [cam.read() for _ in range(5)]
        stats = cam.stats
    for i, frame in enumerate(frames):
        assert frame.pixels.shape == (48, 64, 3)
        assert frame.pixels.dtype == np.uint8
        assert not frame.pixels.flags.writeable
        assert frame.index == i
        assert frame.source == "synthetic:0"
    assert stats == CameraStats(delivered=5, lost=0, corrupt=0, reconnects=0)


def test_default_size_and_rate() -> None:
    cam = SyntheticCamera(CameraConfig(), clock=FakeClock())
    with cam:
        assert cam.read().pixels.shape == (480, 640, 3)
        assert cam.fps == 15.0


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    with _cam(seed=7) as a, _cam(seed=7) as b, _cam(seed=8) as c:
        for _ in range(4):
            fa, fb, fc = a.read(), b.read(), c.read()
            assert np.array_equal(fa.pixels, fb.pixels)
            assert not np.array_equal(fa.pixels, fc.pixels)


def test_shapes_move_between_frames() -> None:
    with _cam() as cam:
        first, second = cam.read(), cam.read()
    assert not np.array_equal(first.pixels[2:], second.pixels[2:])


@settings(max_examples=40, deadline=None)
@given(index=st.integers(min_value=0, max_value=2**16 - 1))
def test_every_frame_carries_its_index(index: int) -> None:
    cam = _cam()
    with cam:
        assert _decode_stripe(cam.render(index)) == index


def test_realtime_pacing_sleeps_one_period_per_frame() -> None:
    clock = FakeClock()
    with _cam(clock) as cam:
        monos = [cam.read().mono for _ in range(4)]
    assert monos == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3])
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])


def test_late_reader_loses_frames_like_a_live_camera() -> None:
    clock = FakeClock()
    with _cam(clock) as cam:
        assert cam.read().index == 0
        clock.advance(0.35)  # the pipeline was busy for three and a half periods
        assert cam.read().index == 3
        assert cam.read().index == 4
        assert cam.stats.lost == 2
        assert cam.stats.delivered == 3


def test_not_realtime_never_sleeps() -> None:
    clock = FakeClock()
    with _cam(clock, realtime=False) as cam:
        assert [cam.read().index for _ in range(5)] == [0, 1, 2, 3, 4]
        assert cam.fps is None
    assert clock.sleeps == []


def test_corrupt_frames_raise_and_consume_their_index() -> None:
    faults = SyntheticFaults(corrupt=frozenset({1}), corrupt_every=4)
    got: list[int | str] = []
    with _cam(faults=faults) as cam:
        for _ in range(8):
            try:
                got.append(cam.read().index)
            except FrameError:
                got.append("corrupt")
        assert cam.stats == CameraStats(delivered=5, lost=3, corrupt=3)
    assert got == [0, "corrupt", 2, "corrupt", 4, 5, 6, "corrupt"]


def test_disconnect_is_permanent_until_reopened() -> None:
    cam = _cam(faults=SyntheticFaults(disconnect_after=3))
    with cam:
        assert [cam.read().index for _ in range(3)] == [0, 1, 2]
        for _ in range(2):
            with pytest.raises(CameraUnavailableError):
                cam.read()
    with cam:  # reopening the same device starts a fresh stream
        assert cam.read().index == 0


def test_fail_open() -> None:
    cam = _cam(faults=SyntheticFaults(fail_open=True))
    with pytest.raises(CameraUnavailableError, match="absent"):
        cam.start()


def test_read_needs_start_and_lifecycle_is_idempotent() -> None:
    cam: Camera = _cam()
    with pytest.raises(CameraError, match="not started"):
        cam.read()
    cam.start()
    cam.start()
    assert cam.read().index == 0
    cam.close()
    cam.close()
    with pytest.raises(CameraError, match="not started"):
        cam.read()


def test_paces_on_the_real_clock_too() -> None:
    cfg = CameraConfig(width=16, height=12, fps=50.0)
    with SyntheticCamera(cfg) as cam:
        frames = [cam.read() for _ in range(4)]
    assert frames[-1].mono - frames[0].mono >= 3 / 50 * 0.9
    assert abs(frames[0].ts - time.time()) < 5.0


def test_timestamps_come_from_the_injected_clock() -> None:
    clock = FakeClock(start=50.0, epoch=1_800_000_000.0)
    with _cam(clock) as cam:
        frame = cam.read()
    assert (frame.mono, frame.ts) == (50.0, 1_800_000_000.0)
