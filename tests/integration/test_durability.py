"""Crash-safe writes, checked on the real system calls of a real process (strace), not on
monkeypatched helpers: a missing fsync, or a rename before the data is on disk, fails here.

The rules every atomic commit of camveil's must follow, in this order:
1. each file's bytes are written to a temporary name and fsynced before that name is renamed
   over the final one;
2. a directory built aside (provisioning's ``.tmp-provisioned-*``) is fsynced after its last
   entry was renamed into it and before it is renamed into place;
3. the directory that received a rename is fsynced afterwards, so the rename itself survives.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

STRACE = shutil.which("strace")

_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Op:
    """One system call that matters for durability, with the paths resolved."""

    kind: str  # "write" | "fsync" | "rename"
    path: str  # the file written/fsynced, or the rename's source
    target: str = ""  # the rename's destination


def trace(script: str, tmp_path: Path) -> list[Op]:
    """Run ``script`` in a fresh Python under strace; return its writes, fsyncs and renames in
    order, each resolved from its file descriptor to the path that descriptor was opened on."""
    assert STRACE is not None, "strace is not installed (scripts/setup.sh installs it)"
    log = tmp_path / "strace.log"
    src = tmp_path / "script.py"
    src.write_text(textwrap.dedent(script))
    calls = "openat,write,pwrite64,fsync,fdatasync,close,rename,renameat,renameat2"
    subprocess.run(
        [STRACE, "-f", "-qq", "-e", f"trace={calls}", "-o", str(log), sys.executable, str(src)],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    fds: dict[tuple[str, int], str] = {}
    ops: list[Op] = []
    for line in log.read_text().splitlines():
        m = _CALL.match(line)
        if m is None or int(m["ret"]) < 0:
            continue
        pid, name, args, ret = m["pid"], m["name"], m["args"], int(m["ret"])
        strings = _STR.findall(args)
        if name == "openat" and strings:
            fds[(pid, ret)] = strings[0]
        elif name == "close":
            fds.pop((pid, int(args.split(",")[0])), None)
        elif name in ("write", "pwrite64", "fsync", "fdatasync"):
            path = fds.get((pid, int(args.split(",")[0])))
            if path is not None:
                ops.append(Op("write" if "write" in name else "fsync", path))
        elif name.startswith("rename") and len(strings) == 2:
            ops.append(Op("rename", strings[0], strings[1]))
    return ops


def check_atomic_commit(ops: list[Op], final: Path) -> None:
    """``final`` (a file or a directory) reached its place by the rules in the module docstring."""
    renames = [i for i, op in enumerate(ops) if op.kind == "rename" and op.target == str(final)]
    assert renames, f"{final} was never renamed into place: {ops}"
    at = renames[-1]
    source = ops[at].path
    if not Path(final).is_dir():
        wrote = [i for i, op in enumerate(ops[:at]) if op.kind == "write" and op.path == source]
        synced = [i for i, op in enumerate(ops[:at]) if op.kind == "fsync" and op.path == source]
        assert wrote, f"{final}: nothing was written to {source} before its rename"
        assert synced and synced[-1] > wrote[-1], (
            f"{final}: {source} was renamed into place without an fsync after its last write"
        )
    else:
        into = [
            i
            for i, op in enumerate(ops[:at])
            if op.kind == "rename" and Path(op.target).parent == Path(source)
        ]
        synced = [i for i, op in enumerate(ops[:at]) if op.kind == "fsync" and op.path == source]
        assert synced, f"{final}: the directory {source} was renamed without an fsync"
        if into:
            assert synced[-1] > into[-1], f"{final}: {source} fsynced before its last entry"
    parent = str(Path(final).parent)
    after = [op for op in ops[at + 1 :] if op.kind == "fsync" and op.path == parent]
    assert after, f"{final}: its directory {parent} was not fsynced after the rename"


def test_the_checker_notices_a_rename_without_fsync(tmp_path: Path) -> None:
    """The checker itself can fail: a plain write-and-rename without fsync is caught."""
    target = tmp_path / "state" / "file"
    ops = trace(
        f"""
        import os
        from pathlib import Path
        target = Path({str(target)!r})
        target.parent.mkdir()
        tmp = target.with_name("file.tmp")
        tmp.write_bytes(b"x" * 100)
        os.replace(tmp, target)
        """,
        tmp_path,
    )
    with pytest.raises(AssertionError, match="without an fsync"):
        check_atomic_commit(ops, target)


def test_provisioning_commit_is_crash_safe_on_real_syscalls(tmp_path: Path) -> None:
    """The unit's pending keys (the same commit path as the provisioned state: keys written
    0600 under a temporary directory, which is renamed into place)."""
    state = tmp_path / "state"
    ops = trace(
        f"""
        from pathlib import Path
        from provisioning.unit import UnitStore
        store = UnitStore(Path({str(state)!r}))
        store.recover()
        store.pending_keys()
        """,
        tmp_path,
    )
    pending = state / "pending"
    for name in ("identity.cbor", "tls.key"):
        renamed = [op for op in ops if op.kind == "rename" and op.target.endswith("/" + name)]
        assert len(renamed) == 1, f"{name}: {renamed}"
        check_atomic_commit(ops, Path(renamed[0].target))
    check_atomic_commit(ops, pending)
    assert (pending / "identity.cbor").stat().st_mode & 0o777 == 0o600


def test_sequence_high_water_mark_is_crash_safe_on_real_syscalls(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    ops = trace(
        f"""
        from pathlib import Path
        from agent.sequence import SequenceStore
        with SequenceStore(Path({str(path)!r}), block=4) as store:
            for _ in range(6):  # crosses a block: a second high-water mark is written
                store.next()
        """,
        tmp_path,
    )
    check_atomic_commit(ops, path)
    assert len([op for op in ops if op.kind == "rename" and op.target == str(path)]) >= 2


def test_remote_config_is_crash_safe_on_real_syscalls(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "remote.toml"
    ops = trace(
        f"""
        from pathlib import Path
        from agent.config import write_config_atomic
        write_config_atomic(Path({str(path)!r}), "[events]\\npresence_window_s = 5.0\\n")
        """,
        tmp_path,
    )
    check_atomic_commit(ops, path)
