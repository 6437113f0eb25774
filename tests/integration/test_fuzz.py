"""`camveil fuzz`: thousands of mutated envelopes and commands against the real openers give no
crash and no acceptance, while every genuine control message is accepted."""

from __future__ import annotations

import json

import pytest

from camveil.__main__ import main
from tools.fuzz import MUTATIONS, run_fuzz


def test_5000_cases_no_crash_no_acceptance(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["fuzz", "--cases", "5000", "--seed", "20261126", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["crashes"] == 0, report["crash_samples"]
    assert report["acceptances"] == 0, report["accepted_samples"]
    assert report["controls"] > 0 and report["controls_accepted"] == report["controls"]
    assert report["cases"] == 5000 and status == 0
    # every kind of mutation ran, and both targets refused for many different reasons
    assert set(report["by_kind"]) == {*MUTATIONS, "replay"}
    reasons = report["rejections"]
    for reason in ("command.bad_signature", "command.replay", "command.expired",
                   "command.unknown_key", "command.decrypt", "command.binding",
                   "event.BadSignatureError", "event.DecryptError", "event.ExpiredError",
                   "event.MalformedEnvelopeError", "event.UnknownKeyError"):  # fmt: skip
        assert reasons.get(reason, 0) > 0, reason


def test_a_crash_or_an_acceptance_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counters work: a target that raises, or a mutation that is the original."""
    from dashboard.listener import Opener
    from tools import fuzz
    from tools.fuzz import run as fuzz_run

    calls = {"n": 0}
    real_open = Opener.open

    def flaky_open(self: Opener, topic: str, payload: bytes) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_open(self, topic, payload)

    monkeypatch.setattr(Opener, "open", flaky_open)
    report = run_fuzz(200, seed=1)
    assert report.crashes == 1 and "RuntimeError: boom" in report.crash_samples[0]
    assert not report.ok
    monkeypatch.undo()

    def replay_on_other_kind(f: fuzz.Fuzzer, o: fuzz.Original) -> tuple[str, bytes]:
        # a "mutation" that is really a fresh genuine message: must show up as accepted
        fresh = (
            fuzz.make_event(f.p, f.rng) if o.target == "event" else fuzz.make_command(f.p, f.rng)
        )
        return fresh.envelope.topic, fresh.envelope.data

    monkeypatch.setattr(fuzz_run, "MUTATIONS", {"genuine": replay_on_other_kind})
    report = run_fuzz(100, seed=1)
    assert report.acceptances > 0 and not report.ok
