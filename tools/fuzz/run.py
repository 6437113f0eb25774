"""The fuzz run (:func:`run_fuzz`): rounds of originals, their mutations, the controls and the
replays, fed to the targets; crashes and acceptances counted in a :class:`FuzzReport`.

Each round makes one original of each, feeds mutations of them, then the originals themselves
(the controls, which must be accepted: a mutation that had burnt the original's seq would show
here), then replays on the same and other topics.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from contract.topics import ack_topic, event_topic, receipt_topic
from tools.fuzz.forge import Fuzzer
from tools.fuzz.mutations import MUTATIONS
from tools.fuzz.parties import (
    DEVICE,
    OTHER_DEVICE,
    Case,
    Original,
    Parties,
    make_command,
    make_event,
    make_receipt,
)

MUTATIONS_PER_ROUND: Final = 24


@dataclass
class FuzzReport:
    cases: int = 0
    crashes: int = 0
    acceptances: int = 0
    controls: int = 0
    controls_accepted: int = 0
    seed: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    """Why inputs were refused: command ack reasons and listener error classes."""
    crash_samples: list[str] = field(default_factory=list)
    accepted_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.crashes == 0
            and self.acceptances == 0
            and self.controls_accepted == self.controls > 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def replays(f: Fuzzer, o: Original) -> list[Case]:
    """After the control: the original again, on another topic, and an older original."""
    env = o.envelope
    other = {"event": event_topic(DEVICE, "other"), "receipt": receipt_topic(OTHER_DEVICE)}.get(
        o.target, ack_topic(DEVICE)
    )
    cases = [
        Case(o.target, "replay", env.topic, env.data),
        Case(o.target, "replay", other, env.data),
    ]
    older = [x for x in f.pool if x.target == o.target and x is not o]
    if older:
        old = f.rng.choice(older).envelope
        cases.append(Case(o.target, "replay", old.topic, old.data))
    return cases


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Rejections are expected by the thousand: keep the openers' warnings out of the log."""
    names = ("agent.commands", "dashboard.listener", "agent.receipts")
    saved = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved:
            logging.getLogger(n).setLevel(level)


def run_fuzz(
    cases: int,
    *,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Feed ``cases`` mutated inputs (plus the controls) to both targets."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)  # noqa: S311 - reproducible choice of mutations, not cryptography
    report = FuzzReport(seed=seed)
    kinds: Counter[str] = Counter()
    names = list(MUTATIONS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="camveil-fuzz-") as tmp, _quiet():
        parties = Parties(Path(tmp))
        fuzzer = Fuzzer(parties, rng)

        def run_case(case: Case) -> bool:
            try:
                return parties.feed(case)
            except Exception as exc:  # a crash: anything the targets let escape
                report.crashes += 1
                if len(report.crash_samples) < 20:
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    report.crash_samples.append(
                        f"{case.target}/{case.kind}: {type(exc).__name__}: {exc} "
                        f"({where.filename}:{where.lineno})"
                    )
                return False

        while report.cases < cases:
            originals = [
                make_event(parties, rng),
                make_command(parties, rng),
                make_receipt(parties, rng),
            ]
            batch: list[Case] = []
            for _ in range(MUTATIONS_PER_ROUND):
                o = rng.choice(originals)
                kind = rng.choice(names)
                topic, data = MUTATIONS[kind](fuzzer, o)
                if (topic, data) == (o.envelope.topic, o.envelope.data):
                    continue  # e.g. two bit flips that cancel: not a mutation
                batch.append(Case(o.target, kind, topic, data))
            for o in originals:  # controls last: no mutation may have burnt their seq
                batch.append(Case(o.target, "control", o.envelope.topic, o.envelope.data))
            for o in originals:
                batch.extend(replays(fuzzer, o))
            for case in batch:
                if case.kind != "control" and report.cases >= cases:
                    continue
                accepted = run_case(case)
                if case.kind == "control":
                    report.controls += 1
                    report.controls_accepted += int(accepted)
                    continue
                report.cases += 1
                kinds[case.kind] += 1
                if accepted:
                    report.acceptances += 1
                    if len(report.accepted_samples) < 20:
                        report.accepted_samples.append(
                            f"{case.target}/{case.kind} on {case.topic}: {case.data.hex()[:200]}"
                        )
                if progress is not None and report.cases % 1000 == 0:
                    progress(report.cases)
            fuzzer.pool = (fuzzer.pool + originals)[-32:]
        report.rejections = parties.rejections()
        parties.outbox.close()
    report.by_kind = dict(sorted(kinds.items()))
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
