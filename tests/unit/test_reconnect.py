"""ReconnectingCamera: loss and reopening on a fake clock, backoff, lost-frame accounting."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import (
    CameraError,
    CameraUnavailableError,
    ConfigError,
    EndOfStream,
    FrameError,
)
from hw.camera import (
    Backoff,
    CameraConfig,
    CameraStats,
    FakeClock,
    ReconnectingCamera,
    SyntheticCamera,
    SyntheticFaults,
    open_camera,
)
from hw.camera.base import Camera
from hw.frame import Frame

NO_JITTER = Backoff(initial=0.5, factor=2.0, maximum=4.0, jitter=0.0)
CFG = CameraConfig(width=32, height=24, fps=10.0)


def scripted(clock: FakeClock, plan: list[SyntheticFaults | None]) -> Callable[[], Camera]:
    """A factory: each call opens the next planned synthetic camera (None: device absent)."""
    it: Iterator[SyntheticFaults | None] = iter(plan)
    opened: list[int] = []

    def factory() -> Camera:
        faults = next(it, SyntheticFaults())
        opened.append(1)
        if faults is None:
            raise CameraUnavailableError("no such device (scripted)")
        return SyntheticCamera(CFG, faults=faults, clock=clock)

    factory.opened = opened  # type: ignore[attr-defined]
    return factory


def test_backoff_sequence_doubles_and_caps() -> None:
    rng = random.Random(1)
    assert [NO_JITTER.delay(a, rng) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@given(attempt=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_backoff_jitter_stays_positive_and_capped(attempt: int, seed: int) -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.2)
    delay = backoff.delay(attempt, random.Random(seed))
    base = min(30.0, 0.5 * 2.0**attempt) if attempt < 64 else 30.0
    assert 0.8 * base <= delay <= base <= 30.0


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"factor": 0.5}, {"maximum": 0.1}, {"jitter": 1.0}]
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)


def test_reconnects_after_loss_with_backoff_and_counts_the_outage() -> None:
    clock = FakeClock()
    plan: list[SyntheticFaults | None] = [SyntheticFaults(disconnect_after=3), None, None]
    cam = ReconnectingCamera(scripted(clock, plan), NO_JITTER, clock=clock)
    with cam:
        frames = [cam.read() for _ in range(5)]
        stats = cam.stats
    # 3 frames, loss at t=0.3, sleeps 0.5 + 1.0 (absent twice) + 2.0, first new frame at t=3.8.
    assert [f.index for f in frames[:3]] == [0, 1, 2]
    backoff_sleeps = [s for s in clock.sleeps if s >= 0.5]
    assert backoff_sleeps == [0.5, 1.0, 2.0]
    outage = frames[3].mono - frames[2].mono
    assert outage == pytest.approx(3.6)
    assert frames[3].index == 2 + round(outage * 10)  # 35 missed frames, 10 fps
    assert frames[4].index == frames[3].index + 1
    assert stats == CameraStats(delivered=5, lost=35, corrupt=0, reconnects=1)
    assert stats.lost == frames[-1].index + 1 - stats.delivered


def test_attempts_reset_only_after_a_frame() -> None:
    """A camera that opens but dies at once must back off like one that does not open."""
    clock = FakeClock()
    dies_at_once = SyntheticFaults(disconnect_after=0)
    plan = [SyntheticFaults(disconnect_after=1), dies_at_once, dies_at_once, dies_at_once]
    cam = ReconnectingCamera(scripted(clock, plan), NO_JITTER, clock=clock)
    with cam:
        cam.read()
        cam.read()  # first frame after 3 bad reopenings
    assert [s for s in clock.sleeps if s >= 0.5] == [0.5, 1.0, 2.0, 4.0]
    assert cam.stats.reconnects == 4


def test_never_busy_loops_and_can_give_up() -> None:
    clock = FakeClock()
    factory = scripted(clock, [SyntheticFaults(disconnect_after=1)] + [None] * 50)
    cam = ReconnectingCamera(factory, NO_JITTER, clock=clock, max_attempts=6)
    with cam:
        cam.read()
        with pytest.raises(CameraUnavailableError, match="gave up after 6"):
            cam.read()
    # every reopening attempt was preceded by a sleep
    assert len(factory.opened) == 1 + 6  # type: ignore[attr-defined]
    assert [s for s in clock.sleeps if s >= 0.5] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_corrupt_frames_are_counted_skipped_and_leave_gaps() -> None:
    clock = FakeClock()
    factory = scripted(clock, [SyntheticFaults(corrupt=frozenset({1, 2, 5}))])
    with ReconnectingCamera(factory, NO_JITTER, clock=clock) as cam:
        indices = [cam.read().index for _ in range(4)]
        assert cam.stats == CameraStats(delivered=4, lost=3, corrupt=3, reconnects=0)
    assert indices == [0, 3, 4, 6]


def test_a_stream_of_garbage_resets_the_camera() -> None:
    clock = FakeClock()
    garbage = SyntheticFaults(corrupt_every=1)
    factory = scripted(clock, [garbage, SyntheticFaults()])
    cam = ReconnectingCamera(factory, NO_JITTER, clock=clock, max_corrupt_in_row=5)
    with cam:
        frame = cam.read()
    assert cam.stats.corrupt == 5
    assert cam.stats.reconnects == 1
    # no frame was ever delivered, so there is no outage estimate: the 5 known losses count
    assert frame.index == 5
    assert cam.stats.lost == 5


def test_corrupt_frames_before_a_loss_are_not_forgotten_without_fps() -> None:
    clock = FakeClock()
    plan = [SyntheticFaults(corrupt=frozenset({2, 3}), disconnect_after=4), SyntheticFaults()]

    def factory() -> Camera:
        return SyntheticCamera(
            CameraConfig(width=32, height=24, realtime=False),
            faults=next(it),
            clock=clock,
        )

    it = iter(plan)
    with ReconnectingCamera(factory, NO_JITTER, clock=clock) as cam:
        assert cam.fps is None  # as fast as possible: no outage estimate
        indices = [cam.read().index for _ in range(3)]
    assert indices == [0, 1, 4]  # 2 and 3 were corrupt, then the device went away
    assert cam.stats == CameraStats(delivered=3, lost=2, corrupt=2, reconnects=1)


def test_first_open_failure_reaches_the_caller() -> None:
    clock = FakeClock()
    cam = ReconnectingCamera(scripted(clock, [None]), NO_JITTER, clock=clock)
    with pytest.raises(CameraUnavailableError, match="no such device"):
        cam.start()
    assert clock.sleeps == []


def test_config_errors_are_not_retried() -> None:
    clock = FakeClock()
    calls = iter([SyntheticFaults(disconnect_after=1)])

    def factory() -> Camera:
        faults = next(calls, None)
        if faults is None:
            raise ConfigError("camera.source: wrong (scripted)")
        return SyntheticCamera(CFG, faults=faults, clock=clock)

    with ReconnectingCamera(factory, NO_JITTER, clock=clock) as cam:
        cam.read()
        with pytest.raises(ConfigError):
            cam.read()


class _Finite:
    """A minimal hand-written Camera: two frames, then EndOfStream."""

    def __init__(self, inner: SyntheticCamera) -> None:
        self._inner = inner
        self.name, self.fps = "finite", None

    @property
    def stats(self) -> CameraStats:
        return self._inner.stats

    def start(self) -> None:
        self._inner.start()

    def close(self) -> None:
        self._inner.close()

    def read(self) -> Frame:
        if self._inner.stats.delivered >= 2:
            raise EndOfStream("done")
        return self._inner.read()

    def __enter__(self) -> _Finite:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_end_of_stream_passes_through() -> None:
    clock = FakeClock()
    with ReconnectingCamera(
        lambda: _Finite(SyntheticCamera(CFG, clock=clock)), NO_JITTER, clock=clock
    ) as cam:
        cam.read()
        cam.read()
        with pytest.raises(EndOfStream):
            cam.read()


def test_read_needs_start() -> None:
    cam = ReconnectingCamera(scripted(FakeClock(), []), NO_JITTER)
    with pytest.raises(CameraError, match="not started"):
        cam.read()


def test_open_camera_wraps_in_reconnect_by_default() -> None:
    clock = FakeClock()
    cam = open_camera(CameraConfig(width=32, height=24), clock=clock)
    assert isinstance(cam, ReconnectingCamera)
    with cam:
        assert cam.connected
        assert cam.read().pixels.shape == (24, 32, 3)
        assert cam.fps == 15.0
    assert not cam.connected
    bare = open_camera(CameraConfig(reconnect=False), clock=clock)
    assert isinstance(bare, SyntheticCamera)


def test_frame_errors_do_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    factory = scripted(clock, [SyntheticFaults(corrupt=frozenset({0}))])
    with ReconnectingCamera(factory, NO_JITTER, clock=clock) as cam:
        try:
            frame = cam.read()
        except FrameError:  # pragma: no cover - the point of the test
            pytest.fail("FrameError escaped")
    assert frame.index == 1
    assert cam.stats.lost == 1


def test_interrupt_ends_a_backoff_wait_at_once() -> None:
    clock = FakeClock()
    cam = ReconnectingCamera(scripted(clock, [SyntheticFaults(disconnect_after=1)]), clock=clock)
    with cam:
        cam.read()
        cam.interrupt()
        with pytest.raises(CameraUnavailableError, match="interrupted"):
            cam.read()
    assert [s for s in clock.sleeps if s > 0.2] == []  # no backoff (>= 0.4 s) was waited out


def test_interrupt_from_another_thread_on_the_real_clock() -> None:
    import threading
    import time

    config = CameraConfig(width=32, height=24, realtime=False)
    faults = iter([SyntheticFaults(disconnect_after=1)])
    slow = Backoff(initial=30.0, maximum=30.0, jitter=0.0)
    cam = ReconnectingCamera(
        lambda: SyntheticCamera(config, faults=next(faults, SyntheticFaults())), slow
    )
    with cam:
        cam.read()
        timer = threading.Timer(0.2, cam.interrupt)
        timer.start()
        started = time.monotonic()
        with pytest.raises(CameraUnavailableError, match="interrupted"):
            cam.read()
        timer.join()
    assert time.monotonic() - started < 5.0


_session = st.one_of(
    st.none(),
    st.builds(
        SyntheticFaults,
        corrupt=st.frozensets(st.integers(0, 12), max_size=5),
        disconnect_after=st.one_of(st.none(), st.integers(0, 12)),
    ),
)


@given(
    plan=st.lists(_session, min_size=1, max_size=8),
    realtime=st.booleans(),
    late=st.lists(st.sampled_from([0.0, 0.0, 0.05, 0.25, 1.0]), min_size=20, max_size=20),
)
def test_accounting_invariants_hold_for_any_fault_plan(
    plan: list[SyntheticFaults | None], realtime: bool, late: list[float]
) -> None:
    """Indices only grow, and every index not delivered is counted as lost, whatever happens."""
    clock = FakeClock()
    sessions = iter([SyntheticFaults(), *plan])  # the first open works (start() would raise)
    config = CameraConfig(width=16, height=12, fps=10.0, realtime=realtime)

    def factory() -> Camera:
        faults = next(sessions, SyntheticFaults())
        if faults is None:
            raise CameraUnavailableError("absent")
        return SyntheticCamera(config, faults=faults, clock=clock)

    cam = ReconnectingCamera(factory, NO_JITTER, clock=clock, max_corrupt_in_row=4)
    with cam:
        indices = []
        for pause in late:
            clock.advance(pause)
            indices.append(cam.read().index)
        stats = cam.stats
    assert indices == sorted(set(indices))
    assert stats.delivered == len(late)
    assert stats.lost == indices[-1] + 1 - stats.delivered
    assert stats.corrupt <= stats.lost
