"""Sequence numbers continue above everything handed out, across restarts and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agent.sequence import CountingSequence, SequenceStore
from contract.errors import SequenceError


def test_starts_at_zero_and_increases(tmp_path: Path) -> None:
    with SequenceStore(tmp_path / "seq", block=4) as seqs:
        assert [seqs.next() for _ in range(10)] == list(range(10))


def test_clean_restart_continues_without_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    with SequenceStore(path, block=100) as seqs:
        handed = [seqs.next() for _ in range(7)]
    with SequenceStore(path, block=100) as seqs:
        assert seqs.next() == handed[-1] + 1


def test_high_water_mark_is_persisted_before_a_block_is_used(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    seqs = SequenceStore(path, block=10)
    seqs.open()
    assert seqs.next() == 0
    assert "camveil-seq 1 10 " in path.read_text()
    for _ in range(9):
        seqs.next()
    assert "camveil-seq 1 10 " in path.read_text()
    assert seqs.next() == 10  # first of the next block: reserved (persisted) first
    assert "camveil-seq 1 20 " in path.read_text()
    seqs.close()


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from agent.sequence import SequenceStore

    seqs = SequenceStore(Path(sys.argv[1]), block=int(sys.argv[2]))
    seqs.open()
    for _ in range(int(sys.argv[3])):
        os.write(1, f"{seqs.next()}\\n".encode())
    os.write(1, b"done\\n")
    time.sleep(60)  # reserved, partly used, never closed: killed here
    """
)


@pytest.mark.parametrize("used", [0, 5, 17])
def test_kill_between_reservation_and_use_never_repeats(tmp_path: Path, used: int) -> None:
    path = tmp_path / "seq"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    with SequenceStore(path, block=16) as seqs:
        before = [seqs.next() for _ in range(3)]
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), "16", str(used)], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    lines = []
    while (line := child.stdout.readline().decode().strip()) != "done":
        lines.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    handed = before + lines
    with SequenceStore(path, block=16) as seqs:
        after = [seqs.next() for _ in range(40)]
    assert min(after) > max(handed)
    assert len(set(handed + after)) == len(handed) + len(after)


def test_abandoned_store_in_process_never_repeats(tmp_path: Path) -> None:
    """A crash is simulated by dropping the store without close (only the lock is released)."""
    path = tmp_path / "seq"
    seqs = SequenceStore(path, block=50)
    seqs.open()
    handed = [seqs.next() for _ in range(13)]
    seqs._unlock()  # what the kernel does for a dead process
    with SequenceStore(path, block=50) as again:
        assert again.next() == 50 > max(handed)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with SequenceStore(tmp_path / "seq"), pytest.raises(SequenceError, match="in use"):
        SequenceStore(tmp_path / "seq").open()


def test_leftover_temp_file_from_a_crash_mid_write_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    with SequenceStore(path, block=8) as seqs:
        seqs.next()
    (tmp_path / "seq.tmp").write_bytes(b"camveil-seq 1 9")  # torn, never renamed
    with SequenceStore(path, block=8) as seqs:
        assert seqs.next() == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"camveil-seq 1 100 00000000\n", b"camveil-seq 2 5 deadbeef\n", b"\xff\xfe"],
)
def test_corrupt_file_is_a_clear_error_not_a_restart_at_zero(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "seq"
    path.write_bytes(content)
    with pytest.raises(SequenceError, match="corrupt"):
        SequenceStore(path).open()


def test_failure_to_persist_hands_out_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "seq"
    seqs = SequenceStore(path, block=2)
    seqs.open()
    assert [seqs.next(), seqs.next()] == [0, 1]

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("agent.sequence.os.fsync", disk_full)
        with pytest.raises(SequenceError, match="cannot persist"):
            seqs.next()  # the next block cannot be reserved: no number is handed out
    assert "camveil-seq 1 2 " in path.read_text()
    assert seqs.next() == 2
    seqs.close()


def test_threads_get_distinct_seqs(tmp_path: Path) -> None:
    got: list[int] = []
    lock = threading.Lock()
    with SequenceStore(tmp_path / "seq", block=50) as seqs:

        def take() -> None:
            mine = [seqs.next() for _ in range(500)]
            with lock:
                got.extend(mine)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(got) == list(range(2000))


def test_next_outside_the_context_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SequenceError, match="not opened"):
        SequenceStore(tmp_path / "seq").next()


def test_counting_sequence_fake() -> None:
    fake = CountingSequence(start=5)
    assert [fake.next(), fake.next()] == [5, 6]
