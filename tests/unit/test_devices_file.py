"""The device-list poller: a rewritten peers file is loaded once, a damaged one keeps the old
list, and the change says who was added, removed or re-keyed."""

from __future__ import annotations

from pathlib import Path

from contract.envelope.keys import Identity, PeerKeys, save_peers
from dashboard.devices import DevicesFile, diff


def test_poll_loads_each_change_once_and_keeps_the_list_when_damaged(tmp_path: Path) -> None:
    path = tmp_path / "devices.cbor"
    a, b = Identity.generate("cv-a"), Identity.generate("cv-b")
    save_peers(path, [a.public()])
    seen: list[PeerKeys] = []
    watch = DevicesFile(path, seen.append, interval_s=3600)
    assert set(watch.load()) == {"cv-a"}
    assert not watch.poll()
    save_peers(path, [a.public(), b.public()])
    assert watch.poll() and set(seen[-1]) == {"cv-a", "cv-b"}
    assert not watch.poll()
    path.write_bytes(b"\x00 damaged")
    assert not watch.poll() and len(seen) == 1
    path.unlink()
    assert not watch.poll()
    save_peers(path, [b.public()])
    assert watch.poll() and set(seen[-1]) == {"cv-b"}
    assert watch.reloads == 2


def test_diff_names_added_removed_and_rekeyed() -> None:
    a, b, c = (Identity.generate(k) for k in ("cv-a", "cv-b", "cv-c"))
    b2 = Identity.generate("cv-b")
    change = diff(PeerKeys([a.public(), b.public()]), PeerKeys([b2.public(), c.public()]))
    assert change.added == {"cv-c"}
    assert change.removed == {"cv-a"}
    assert change.rekeyed == {"cv-b"}
