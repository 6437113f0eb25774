"""contract.certclaim: one client certificate per process, by an flock on its key file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import certclaim
from contract.certclaim import claim_client_cert
from contract.errors import ConfigError

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from contract.certclaim import claim_client_cert
    cert = Path(sys.argv[1])
    claim_client_cert([(cert, cert.with_suffix(".key"))], hint="-")
    print("held", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture(autouse=True)
def _release() -> Iterator[None]:
    yield
    certclaim.release_all()


def _pairs(tmp_path: Path, *names: str) -> list[tuple[Path, Path]]:
    pairs = []
    for name in names:
        (tmp_path / f"{name}.crt").write_text("cert")
        (tmp_path / f"{name}.key").write_text("key")
        pairs.append((tmp_path / f"{name}.crt", tmp_path / f"{name}.key"))
    return pairs


def test_a_certificate_held_by_another_process_is_skipped_then_refused(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path, "backend-a", "backend-b")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(pairs[0][0])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert claim_client_cert(pairs, hint="-").cert == pairs[1][0]
        assert claim_client_cert(pairs, hint="-").cert == pairs[1][0]  # ours, again
        with pytest.raises(ConfigError, match=r"in use by another process.*make more"):
            claim_client_cert(pairs[:1], hint="make more")
    finally:
        holder.communicate("")  # the holder exits: its claim ends with it
    certclaim.release_all()
    assert claim_client_cert(pairs, hint="-").cert == pairs[0][0]


def test_no_certificate_or_an_unreadable_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no client certificate"):
        claim_client_cert([], hint="-")
    with pytest.raises(ConfigError, match="cannot open the client key"):
        claim_client_cert([(tmp_path / "x.crt", tmp_path / "x.key")], hint="-")
